"""Peak activation memory of a dense-family network at inference (batch 1, float32).

Our model of what an executor keeps alive, layer by layer (weights are not counted):

- the first layer of a cell holds its input (the previous cell's output, or the image) and its
  output;
- in a cell with long-range skips (``tc > 0`` and at least three layers), every layer output stays
  alive until the cell's last layer, because any later layer may gather channels from it (the
  exported graph concatenates all of them); layer ``i >= 1`` then holds those ``i`` outputs, its
  own input when that is a new tensor (the concatenation of the previous output and the
  ``s_i`` gathered channels: ``w + s_i`` channels, only when ``s_i > 0``) and its output;
- in a cell without skips, layer ``i >= 1`` holds its input and its output (``2 w`` channels);
- the head's BatchNorm holds its input and output (``2 w`` channels of the last cell).

``peak_memory_mb`` is the largest of these sets, in MB (10^6 bytes). It is a sum over the layer's
live tensors and a maximum over layers, so a limit on it is a filter on each cell given the width
entering it (:mod:`nnflash.search.evaluator` computes it for whole grids of cells at once).
"""

from __future__ import annotations

from nnflash.models.metrics import BYTES_PER_ELEMENT, conv_out
from nnflash.models.spec import DenseSpec

MB = 1e6


def peak_memory_mb(spec: DenseSpec) -> float:
    """Peak live activation memory of ``spec`` in MB (the rules in the module docstring)."""
    cin, h, w_px = spec.input_shape
    peak = 0
    for c, cell in enumerate(spec.cells):
        hw_in = h * w_px
        if c > 0:
            h, w_px = conv_out(h, 3, 2, 1), conv_out(w_px, 3, 2, 1)
        hw = h * w_px
        w = cell.width
        peak = max(peak, cin * hw_in + w * hw)
        skips = [len(spec.skips[c][i]) if i < len(spec.skips[c]) else 0 for i in range(cell.depth)]
        keep_all = cell.tc > 0 and cell.depth >= 3
        for i in range(1, cell.depth):
            s = skips[i] if i >= 2 else 0
            if keep_all:
                live = i * w + (w + s if s > 0 else 0) + w
            else:
                live = 2 * w
            peak = max(peak, live * hw)
        cin = w
    peak = max(peak, 2 * cin * h * w_px)
    return BYTES_PER_ELEMENT * peak / MB
