"""Make the tiny models bundled with the agent for ``nnflash-agent selftest``.

Writes ``agent/data/selftest.onnx`` and ``agent/data/selftest.tflite``: the same small CNN
(1x3x32x32 -> conv 3x3 (8) -> ReLU -> conv 3x3 stride 2 (16) -> ReLU -> global average pool ->
linear 10), fixed weights from seed 0. Needs the host/tflite extras (torch, onnx, litert-torch); it
is not part of the agent package. Run from the repository root:

    python scripts/make_selftest_models.py
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = x.mean(dim=(2, 3))
        return self.fc(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("agent", "data"))
    ns = parser.parse_args()
    os.makedirs(ns.out, exist_ok=True)
    torch.manual_seed(0)
    model = TinyNet().eval()
    sample = torch.randn(1, 3, 32, 32)

    onnx_path = os.path.join(ns.out, "selftest.onnx")
    torch.onnx.export(
        model,
        (sample,),
        onnx_path,
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
    )

    import litert_torch

    tfl_path = os.path.join(ns.out, "selftest.tflite")
    litert_torch.convert(model, (sample,)).export(tfl_path)

    for path in (onnx_path, tfl_path):
        with open(path, "rb") as f:
            data = f.read()
        print(f"{path}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
