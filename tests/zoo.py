"""A zoo of small but real architectures, defined in PyTorch and exported to ONNX for tests.

Usage (``tests/`` is on ``sys.path`` under pytest)::

    from zoo import ARCHITECTURES, export, sample_input
    path = export("resnet_basic")            # cached, read-only for tests: copy/load, never edit
    x = sample_input("resnet_basic")         # float32, batch 1, seeded

Every model is built under a fixed seed, in eval mode, with randomized BatchNorm statistics
and affine parameters (and LayerNorm affine parameters), so exact folding passes are really
exercised. The blocks follow their papers (BatchNorm after convs), at tens of channels and
16x16-32x32 inputs so that export + ONNX Runtime take well under a second each.

The legacy TorchScript exporter with ``do_constant_folding=False`` keeps BatchNormalization
nodes unfolded in the graph (the dynamo exporter would fold/decompose them).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoo_blocks import (
    MLP,
    BasicBlock,
    Bottleneck,
    ConcatBlock,
    DenseBlock,
    EncoderBlock,
    Fire,
    InvertedResidual,
    ShuffleUnit,
    SqueezeExcite,
    UNet,
    conv_bn,
)

Builder = Callable[[], tuple[nn.Module, tuple[int, ...]]]
ARCHITECTURES: dict[str, Builder] = {}

IMAGE = (1, 3, 32, 32)
SMALL_IMAGE = (1, 3, 16, 16)
TOKENS = (1, 16, 32)  # [batch, seq, dim]


def randomize_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (seeded).

    Fresh BatchNorms have mean 0, var 1, weight 1, bias 0: folding them is a no-op and would
    hide bugs. Variances stay in [0.5, 2] and scales near 1 so activations keep a sane range.
    """
    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_var.copy_(uniform(n, 0.5, 2.0))
                m.weight.copy_(uniform(n, 0.5, 1.5))
                m.bias.copy_(0.2 * torch.randn(n, generator=generator))
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.copy_(uniform(m.weight.shape, 0.5, 1.5))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))


def architecture(name: str, input_shape: tuple[int, ...]):
    """Register a model factory: seeded by name, norms randomized, returned in eval mode."""
    def register(factory: Callable[[], nn.Module]) -> Builder:
        def build() -> tuple[nn.Module, tuple[int, ...]]:
            seed = zlib.crc32(name.encode())
            torch.manual_seed(seed)
            model = factory()
            randomize_norms(model, torch.Generator().manual_seed(seed))
            return model.eval(), input_shape

        build.__name__ = build.__qualname__ = name
        build.__doc__ = factory.__doc__
        ARCHITECTURES[name] = build
        return build

    return register


def _classifier(channels: int, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


@architecture("resnet_basic", IMAGE)
def resnet_basic():
    """ResNet-18-style: basic blocks, the second with a strided 1x1 conv + BN shortcut."""
    return nn.Sequential(
        conv_bn(3, 16), BasicBlock(16, 16), BasicBlock(16, 32, stride=2), _classifier(32)
    )


@architecture("resnet_bottleneck", IMAGE)
def resnet_bottleneck():
    """ResNet-50-style bottlenecks (1x1 reduce, 3x3, 1x1 expand x4), projection + identity."""
    return nn.Sequential(
        conv_bn(3, 16),
        Bottleneck(16, 8, stride=2),
        Bottleneck(32, 8),
        _classifier(32),
    )


@architecture("resnext", IMAGE)
def resnext():
    """ResNeXt bottlenecks: grouped 3x3 conv with cardinality 4 (ResNeXt 4x8d-style)."""
    return nn.Sequential(
        conv_bn(3, 16),
        Bottleneck(16, 16, groups=4, expansion=2, stride=2),
        Bottleneck(32, 16, groups=4, expansion=2),
        _classifier(32),
    )


@architecture("mobilenet_v2", IMAGE)
def mobilenet_v2():
    """MobileNetV2: inverted residuals (expand 1x1, depthwise 3x3, linear project), ReLU6."""
    return nn.Sequential(
        conv_bn(3, 16, stride=2, act=nn.ReLU6),
        InvertedResidual(16, 16, expand=1),
        InvertedResidual(16, 24, expand=6, stride=2),
        InvertedResidual(24, 24, expand=6),
        conv_bn(24, 64, k=1, act=nn.ReLU6),
        _classifier(64),
    )


@architecture("mobilenet_v3", IMAGE)
def mobilenet_v3():
    """MobileNetV3: inverted residuals with squeeze-excitation (HardSigmoid) and HardSwish."""
    return nn.Sequential(
        conv_bn(3, 16, stride=2, act=nn.Hardswish),
        InvertedResidual(16, 16, expand=1, act=nn.ReLU, se=True, gate=nn.Hardsigmoid),
        InvertedResidual(16, 24, expand=4, stride=2, act=nn.Hardswish, k=5),
        InvertedResidual(24, 24, expand=3, act=nn.Hardswish, se=True, gate=nn.Hardsigmoid),
        conv_bn(24, 48, k=1, act=nn.Hardswish),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, 64),
        nn.Hardswish(),
        nn.Dropout(0.2),
        nn.Linear(64, 10),
    )


@architecture("efficientnet", IMAGE)
def efficientnet():
    """EfficientNet-B0-style MBConv: depthwise conv, SE with SiLU/Sigmoid, SiLU (Swish)."""
    mb = dict(act=nn.SiLU, se=True, se_act=nn.SiLU, gate=nn.Sigmoid, se_from_input=True)
    return nn.Sequential(
        conv_bn(3, 16, stride=2, act=nn.SiLU),
        InvertedResidual(16, 16, expand=1, **mb),
        InvertedResidual(16, 24, expand=6, stride=2, **mb),
        InvertedResidual(24, 24, expand=6, k=5, **mb),
        conv_bn(24, 64, k=1, act=nn.SiLU),
        _classifier(64),
    )


@architecture("densenet", IMAGE)
def densenet():
    """DenseNet-BC: dense blocks (BN-ReLU-1x1-BN-ReLU-3x3, concatenated), a transition."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        DenseBlock(16, growth=8, layers=3),
        nn.BatchNorm2d(40),
        nn.ReLU(),
        nn.Conv2d(40, 20, 1, bias=False),
        nn.AvgPool2d(2),
        DenseBlock(20, growth=8, layers=2),
        nn.BatchNorm2d(36),
        nn.ReLU(),
        _classifier(36),
    )


@architecture("squeezenet", IMAGE)
def squeezenet():
    """SqueezeNet 1.1 with BN: fire modules (squeeze 1x1 -> concat(expand 1x1, expand 3x3))."""
    return nn.Sequential(
        conv_bn(3, 32, stride=2),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Fire(32, 8, 16),
        Fire(32, 8, 16),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Fire(32, 12, 24),
        nn.Dropout(0.5),
        nn.Conv2d(48, 10, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


@architecture("shufflenet", IMAGE)
def shufflenet():
    """ShuffleNetV2 units: chunk split, branch, concat, channel shuffle (reshape/transpose)."""
    return nn.Sequential(
        conv_bn(3, 24, stride=2),
        ShuffleUnit(24, 48, stride=2),
        ShuffleUnit(48, 48),
        ShuffleUnit(48, 48),
        conv_bn(48, 64, k=1),
        _classifier(64),
    )


@architecture("vgg", SMALL_IMAGE)
def vgg():
    """VGG-BN: conv-BN-ReLU stacks, max pools, Flatten -> Linear -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(
        conv_bn(3, 16),
        conv_bn(16, 16),
        nn.MaxPool2d(2),
        conv_bn(16, 32),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(64, 10),
    )


@architecture("unet", (1, 3, 32, 32))
def unet():
    """U-Net: double-conv encoder, max-pool down, ConvTranspose up, skip Concat, 1x1 head."""
    return UNet(3, classes=2, widths=(8, 16, 32))


@architecture("transformer", TOKENS)
def transformer():
    """Pre-LN transformer encoder block: LN -> 4-head attention -> +, LN -> MLP (GELU) -> +."""
    return EncoderBlock(dim=32, heads=4, hidden=64)


@architecture("se_block", (1, 16, 16, 16))
def se_block():
    """Conv-BN-ReLU followed by squeeze-excitation (pool, 1x1 reduce, ReLU, 1x1 expand, Sigmoid)."""
    return nn.Sequential(conv_bn(16, 32), SqueezeExcite(32, 8), conv_bn(32, 16, k=1))


@architecture("concat_block", (1, 8, 16, 16))
def concat_block():
    """Two conv-BN-ReLU branches concatenated on channels, then a 1x1 conv-BN-ReLU."""
    return ConcatBlock(8, (12, 20), 16)


@architecture("transformer_mlp", TOKENS)
def transformer_mlp():
    """Transformer MLP: MatMul -> GELU -> MatMul over a hidden dim of 4x."""
    return MLP(32, 128)


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def sample_input(name: str, batch: int = 1, seed: int = 0) -> np.ndarray:
    """Standard-normal float32 input for architecture ``name``, with the given batch size."""
    _, shape = ARCHITECTURES[name]()
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *shape[1:])).astype(np.float32)


def torch_output(name: str, x: np.ndarray) -> np.ndarray:
    """The PyTorch reference output of architecture ``name`` on ``x``."""
    model, _ = ARCHITECTURES[name]()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def export_module(
    module: nn.Module,
    input_shape: tuple[int, ...],
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = False,
    opset: int = 17,
) -> Path:
    """Export ``module`` (eval mode) with the legacy exporter, BatchNorm left unfolded.

    Input ``input``, output ``output``; with ``dynamic_batch`` both get a ``batch`` axis.
    """
    path = Path(path)
    module.eval()
    dummy = torch.zeros(input_shape, dtype=torch.float32)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of the legacy exporter
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            dynamo=False,
            do_constant_folding=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=axes,
        )
    return path


def _source_digest() -> str:
    """Hash of the zoo sources, so editing an architecture invalidates the cache."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for part in ("zoo.py", "zoo_blocks.py"):
        digest.update((here / part).read_bytes())
    return digest.hexdigest()[:12]


CACHE_DIR = Path(tempfile.gettempdir()) / f"onnxprune-zoo-torch{torch.__version__}-{_source_digest()}"


def export(name: str, *, dynamic_batch: bool = False, opset: int = 17) -> Path:
    """Path of architecture ``name`` exported to ONNX, cached across test runs and workers.

    The file is shared: tests that modify a model must load it or copy it first. It is written
    to a unique temp name and moved into place with ``os.replace`` (atomic), so parallel
    pytest-xdist workers exporting the same model never see a half-written file.
    """
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown zoo architecture '{name}' (known: {', '.join(ARCHITECTURES)})")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    batch = "dynbatch" if dynamic_batch else "batch1"
    path = CACHE_DIR / f"{name}-{batch}-opset{opset}.onnx"
    if path.exists():
        return path
    fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, prefix=f".{name}-", suffix=".onnx.tmp")
    os.close(fd)
    try:
        model, shape = ARCHITECTURES[name]()
        export_module(model, shape, tmp, dynamic_batch=dynamic_batch, opset=opset)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
