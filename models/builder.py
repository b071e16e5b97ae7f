"""Spec -> ``torch.nn.Module``.

Modules are deterministic from the spec (weights from ``torch.manual_seed(seed)``; the skip wiring
is read from the spec, never drawn here) and export-friendly: long-range channel selection is a
static ``index_select`` with a registered index buffer, there is no data-dependent Python control
flow, and every shape is fixed by the spec.
"""

from __future__ import annotations

import torch
from torch import nn

from nnflash.models.nb201 import EDGES, Nb201Spec
from nnflash.models.spec import AnySpec, DenseSpec, MlpSpec, MobileNetV2Spec, ResNetSpec, VggSpec


class DenseLayer(nn.Module):
    """Pre-activation BN -> ReLU -> conv on its (concatenated) input; the stem has no BN-ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, conv: str, pre_act: bool) -> None:
        super().__init__()
        self.pre: nn.Module = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU()) if pre_act else nn.Identity()
        if conv == "regular":
            self.conv: nn.Module = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        else:
            self.conv = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(),
                nn.Conv2d(out_ch, out_ch, 3, stride, 1, groups=out_ch, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(),
                nn.Conv2d(out_ch, out_ch, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pre(x))


class DenseCell(nn.Module):
    """One cell: layer i >= 2 sees cat(out[i-1], index_select(cat(out[0..i-2]), skips[i]))."""

    def __init__(
        self,
        in_ch: int,
        depth: int,
        width: int,
        skips: tuple[tuple[int, ...], ...],
        stride: int,
        conv: str,
        stem: bool,
        linear: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.depth = depth
        self.layers = nn.ModuleList()
        self.has_skip = [len(s) > 0 for s in skips]
        for i in range(depth):
            cin = in_ch if i == 0 else width + len(skips[i])
            if linear:
                act = nn.ReLU() if activation == "relu" else nn.Tanh()
                self.layers.append(nn.Sequential(nn.Linear(cin, width), act))
            else:
                self.layers.append(DenseLayer(cin, width, stride if i == 0 else 1, conv, pre_act=not (stem and i == 0)))
            self.register_buffer(f"skip{i}", torch.tensor(skips[i], dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        h = x
        for i, layer in enumerate(self.layers):
            if i >= 2 and self.has_skip[i]:
                pool = outs[0] if i == 2 else torch.cat(outs[: i - 1], dim=1)
                chosen = torch.index_select(pool, 1, getattr(self, f"skip{i}"))
                h = torch.cat([h, chosen], dim=1)
            h = layer(h)
            outs.append(h)
        return h


class DenseNet(nn.Module):
    def __init__(self, spec: DenseSpec) -> None:
        super().__init__()
        cin = spec.input_shape[0]
        cells = []
        for c, cell in enumerate(spec.cells):
            cells.append(
                DenseCell(cin, cell.depth, cell.width, spec.skips[c], 2 if c > 0 else 1, spec.conv, stem=(c == 0))
            )
            cin = cell.width
        self.cells = nn.Sequential(*cells)
        self.head = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, spec.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(x))


class Mlp(nn.Module):
    def __init__(self, spec: MlpSpec) -> None:
        super().__init__()
        cin = spec.input_shape[0]
        cells = []
        for c, cell in enumerate(spec.cells):
            cells.append(
                DenseCell(
                    cin,
                    cell.depth,
                    cell.width,
                    spec.skips[c],
                    1,
                    "regular",
                    stem=False,
                    linear=True,
                    activation=spec.activation,
                )
            )
            cin = cell.width
        self.cells = nn.Sequential(*cells)
        self.head = nn.Linear(cin, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(x))


# ------------------------------------------------------------------------------ ResNet family


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int, width_per_group: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int, width_per_group: int) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if spec.block == "basic" else Bottleneck
        stem = spec.stem_width
        self.stem = nn.Sequential(
            nn.Conv2d(spec.input_shape[0], stem, 7, 2, 3, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        inplanes = stem
        stages = []
        for k, (planes, n) in enumerate(zip(spec.stage_planes(), spec.layers)):
            blocks = []
            for b in range(n):
                blocks.append(
                    block(inplanes, planes, 2 if (k > 0 and b == 0) else 1, spec.groups, spec.width_per_group)
                )
                inplanes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, spec: MobileNetV2Spec) -> None:
        super().__init__()
        stem = spec.stem_width
        feats: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(spec.input_shape[0], stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6(inplace=True)
            )
        ]
        blocks = spec.blocks()
        for inp, oup, stride, t in blocks:
            feats.append(InvertedResidual(inp, oup, stride, t))
        last = spec.head_width
        feats.append(
            nn.Sequential(nn.Conv2d(blocks[-1][1], last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True))
        )
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, spec.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------- NAS-Bench-201


class ReLUConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(), nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _nb201_op(op: str, c: int) -> nn.Module:
    if op == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1)
    if op == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    return nn.Identity()  # skip_connect (``none`` and dead edges are not built)


class Nb201Cell(nn.Module):
    """One effective NAS-Bench-201 cell: node i is the sum of its live incoming edges."""

    def __init__(self, ops: tuple[str, ...], live: tuple[bool, ...], c: int) -> None:
        super().__init__()
        self.edges = [(e, i, j) for e, (i, j) in enumerate(EDGES) if live[e]]
        self.ops = nn.ModuleDict({f"e{j}{i}": _nb201_op(ops[e], c) for e, i, j in self.edges})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes: dict[int, torch.Tensor] = {0: x}
        for _, i, j in self.edges:  # ordered by target node
            y = self.ops[f"e{j}{i}"](nodes[j])
            nodes[i] = nodes[i] + y if i in nodes else y
        return nodes[3]


class Nb201Reduction(nn.Module):
    """NAS-Bench-201's stride-2 ResNet basic block between stages."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, 2)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class Nb201Net(nn.Module):
    def __init__(self, spec: Nb201Spec) -> None:
        super().__init__()
        graph = spec.graph
        widths = spec.stage_widths()
        self.stem = nn.Sequential(
            nn.Conv2d(spec.input_shape[0], widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0])
        )
        body: list[nn.Module] = []
        cin = widths[0]
        for s, c in enumerate(widths):
            if s > 0:
                body.append(Nb201Reduction(cin, c))
            body += [Nb201Cell(graph.ops, graph.live, c) for _ in range(spec.cells_per_stage)]
            cin = c
        self.cells = nn.Sequential(*body)
        self.head = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, spec.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(self.stem(x)))


class ConstantLogits(nn.Module):
    """The effective network of an nb201 cell without a path from its input to its output: the
    logits do not depend on the image, so they are one learnable vector. The image is still read
    (its mean, times zero) so that exported graphs keep their input."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.unsqueeze(0) + 0.0 * x.mean(dim=(1, 2, 3)).unsqueeze(1)


class Vgg(nn.Module):
    """A plain VGG-style network (``VggSpec``): conv [-> BN] -> ReLU, 2x2 max pools, then linear
    layers with ReLU and the classifier."""

    def __init__(self, spec: VggSpec) -> None:
        super().__init__()
        c, h, w = spec.input_shape
        feats: list[nn.Module] = []
        head: list[nn.Module] = []
        for entry in spec.layers:
            if entry.type == "conv":
                feats.append(nn.Conv2d(c, entry.out, entry.kernel, 1, entry.kernel // 2, bias=spec.bias))
                if spec.batch_norm:
                    feats.append(nn.BatchNorm2d(entry.out))
                feats.append(nn.ReLU(inplace=True))
                c = entry.out
            elif entry.type == "pool":
                feats.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            else:
                cin = c * h * w if not head else c
                head += [nn.Linear(cin, entry.out, bias=spec.bias), nn.ReLU(inplace=True)]
                c, h, w = entry.out, 1, 1
        head.append(nn.Linear(c * h * w, spec.num_classes, bias=spec.bias))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_module(spec: AnySpec, *, init_seed: int | None = None) -> nn.Module:
    """Build the module of ``spec`` in eval mode, weights drawn from ``init_seed`` (default: the
    spec's seed, 0 for families without one)."""
    seed = init_seed if init_seed is not None else int(getattr(spec, "seed", 0))
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        module: nn.Module
        if isinstance(spec, DenseSpec):
            module = DenseNet(spec)
        elif isinstance(spec, MlpSpec):
            module = Mlp(spec)
        elif isinstance(spec, ResNetSpec):
            module = ResNet(spec)
        elif isinstance(spec, MobileNetV2Spec):
            module = MobileNetV2(spec)
        elif isinstance(spec, VggSpec):
            module = Vgg(spec)
        elif isinstance(spec, Nb201Spec):
            module = Nb201Net(spec) if spec.graph.has_path else ConstantLogits(spec.num_classes)
        else:
            raise TypeError(f"not a spec: {type(spec).__name__}")
        if not isinstance(spec, MlpSpec):
            _init_weights(module)
    finally:
        torch.random.set_rng_state(gen_state)
    return module.eval()


def example_input(spec: AnySpec, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *spec.input_shape), generator=g)
