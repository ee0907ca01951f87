"""QuantConfig is the quantize stage's options object; ``quantize()`` and `onnxprune quantize`
spell its fields out again (keywords, flags). Until they take it whole, their defaults are held
to its own here, so that the three cannot drift apart."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

from onnxprune.api.quantize_api import quantize
from onnxprune.passes.quantize.config import QuantConfig

FIELDS = {f.name: f.default for f in dataclasses.fields(QuantConfig)}


def test_quantize_keywords_default_to_the_configs():
    parameters = inspect.signature(quantize).parameters
    for name, default in FIELDS.items():
        assert name in parameters, f"QuantConfig.{name} is no keyword of quantize()"
        given = parameters[name].default
        assert (frozenset(given) if name == "exclude" else given) == default, name


def test_quantize_flags_default_to_the_configs():
    command = importlib.import_module("onnxprune.cli.quantize_cmd").quantize_cmd
    ctx = command.make_context("quantize", ["m.onnx", "-o", "q.onnx"], resilient_parsing=True)
    for name, default in FIELDS.items():
        assert name in ctx.params, f"QuantConfig.{name} has no flag on `onnxprune quantize`"
        value = frozenset(ctx.params[name]) if name == "exclude" else ctx.params[name]
        assert value == default, name
