"""Building blocks of the test zoo (``zoo.py``), written as in their papers at small widths."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation (``act=None``: linear, no activation)."""
    layers = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity, or a strided 1x1 conv + BN projection when the shape changes."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return conv_bn(cin, cout, k=1, stride=stride, act=None)


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=None))
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet/ResNeXt bottleneck: 1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand, + shortcut."""

    def __init__(self, cin: int, width: int, stride: int = 1, groups: int = 1, expansion: int = 4):
        super().__init__()
        cout = width * expansion
        self.body = nn.Sequential(
            conv_bn(cin, width, k=1),
            conv_bn(width, width, stride=stride, groups=groups),
            conv_bn(width, cout, k=1, act=None),
        )
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class SqueezeExcite(nn.Module):
    """x * gate(conv1x1(act(conv1x1(avgpool(x))))): per-channel attention (Hu et al.)."""

    def __init__(self, channels: int, reduced: int, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, reduced, 1),
            act(),
            nn.Conv2d(reduced, channels, 1),
            gate(),
        )

    def forward(self, x):
        return x * self.scale(x)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 and EfficientNet MBConv block.

    expand 1x1 (skipped when expand == 1) -> depthwise kxk -> optional SE -> linear 1x1
    projection, plus the input when stride == 1 and the channel count is kept.
    The SE width is a quarter of the block input (EfficientNet) or of the hidden width (V3).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        expand: int,
        stride: int = 1,
        k: int = 3,
        act=nn.ReLU6,
        se: bool = False,
        se_act=nn.ReLU,
        gate=nn.Sigmoid,
        se_from_input: bool = False,
    ):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [conv_bn(cin, hidden, k=1, act=act)]
        layers.append(conv_bn(hidden, hidden, k=k, stride=stride, groups=hidden, act=act))
        if se:
            reduced = max(4, (cin if se_from_input else hidden) // 4)
            layers.append(SqueezeExcite(hidden, reduced, act=se_act, gate=gate))
        layers.append(conv_bn(hidden, cout, k=1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class DenseBlock(nn.Module):
    """DenseNet-BC block: each layer BN-ReLU-1x1(4g)-BN-ReLU-3x3(g), concatenated to its input."""

    def __init__(self, cin: int, growth: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(cin + i * growth),
                nn.ReLU(),
                nn.Conv2d(cin + i * growth, 4 * growth, 1, bias=False),
                nn.BatchNorm2d(4 * growth),
                nn.ReLU(),
                nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
            )
            for i in range(layers)
        )

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Fire(nn.Module):
    """SqueezeNet fire module: squeeze 1x1 -> concat(expand 1x1, expand 3x3)."""

    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = conv_bn(cin, squeeze, k=1)
        self.expand1 = conv_bn(squeeze, expand, k=1)
        self.expand3 = conv_bn(squeeze, expand, k=3)

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.expand1(s), self.expand3(s)], dim=1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[b, g*c, h, w] -> view [b, g, c, h, w] -> swap g and c -> [b, c*g, h, w]."""
    b, channels, h, w = x.size()
    x = x.view(b, groups, channels // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, channels, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. Stride 1: split channels in half, transform one half, concat, shuffle.

    Stride 2: both branches see the whole input and downsample; their outputs are concatenated.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        half = cout // 2
        self.stride = stride
        branch_in = cin if stride == 2 else half
        self.branch2 = nn.Sequential(
            conv_bn(branch_in, half, k=1),
            conv_bn(half, half, stride=stride, groups=half, act=None),
            conv_bn(half, half, k=1),
        )
        if stride == 2:
            self.branch1 = nn.Sequential(
                conv_bn(cin, cin, stride=2, groups=cin, act=None), conv_bn(cin, half, k=1)
            )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))


class UNet(nn.Module):
    """U-Net: double convs and max pools down; ConvTranspose 2x2 up, concat the skip, double conv."""

    def __init__(self, cin: int, classes: int, widths: tuple[int, ...]):
        super().__init__()
        self.down = nn.ModuleList()
        for width in widths[:-1]:
            self.down.append(_double_conv(cin, width))
            cin = width
        self.pool = nn.MaxPool2d(2)
        self.bottom = _double_conv(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.decode = nn.ModuleList()
        for deep, skip in zip(widths[:0:-1], widths[-2::-1]):
            self.up.append(nn.ConvTranspose2d(deep, skip, 2, stride=2))
            self.decode.append(_double_conv(2 * skip, skip))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, decode, skip in zip(self.up, self.decode, reversed(skips)):
            x = decode(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class MLP(nn.Module):
    """Transformer feed-forward: Linear(dim -> hidden) -> GELU -> Linear(hidden -> dim)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-LN transformer encoder block (ViT/GPT-2 style) on [batch, seq, dim].

    x = x + proj(softmax(q k^T / sqrt(d_head)) v) over ``heads`` heads of LN(x);
    x = x + MLP(LN(x)). Separate q/k/v projections keep heads visible to pruning.
    """

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5  # a Python float: one constant Mul in the graph
        self.norm1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, hidden)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x):
        b, n, d = x.shape
        h = self.norm1(x)
        q, k, v = (self._split_heads(f(h)) for f in (self.q, self.k, self.v))
        scores = (q @ k.transpose(-2, -1)) * self.scale
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class ConcatBlock(nn.Module):
    """conv-BN-ReLU branches (3x3, 1x1) concatenated on channels, then a 1x1 conv-BN-ReLU."""

    def __init__(self, cin: int, branches: tuple[int, int], cout: int):
        super().__init__()
        self.branch3 = conv_bn(cin, branches[0], k=3)
        self.branch1 = conv_bn(cin, branches[1], k=1)
        self.fuse = conv_bn(sum(branches), cout, k=1)

    def forward(self, x):
        return self.fuse(torch.cat([self.branch3(x), self.branch1(x)], dim=1))
