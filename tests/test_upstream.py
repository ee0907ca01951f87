"""Coupling to onnx-ir/onnxscript/onnx/onnxruntime goes through their public API only.

Private modules and names (a leading underscore) change without notice between releases, and
our version ranges are open-ended; this test fails when one creeps back in. The one private
method we override (onnx-ir's identity elimination, which drops a graph output) has onnx-ir
pinned below 1.2, a canary for the hook, and a test of the behaviour.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from onnxprune import runtime
from onnxprune.passes.cleanup import EliminateIdentity

PACKAGE = Path(__file__).resolve().parent.parent / "onnxprune"
UPSTREAM = ("onnx_ir", "onnxscript", "onnx", "onnxruntime")


def private_uses(source: str) -> list[str]:
    """Imports of private upstream modules or names in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UPSTREAM:
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if any(p.startswith("_") and not p.startswith("__") for p in parts)]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UPSTREAM
                      and any(p.startswith("_") for p in a.name.split("."))]
    return found


def test_no_private_upstream_api():
    uses = {str(p.relative_to(PACKAGE)): u for p in PACKAGE.rglob("*.py") if (u := private_uses(p.read_text()))}
    assert uses == {}


def test_the_check_sees_private_imports():
    assert private_uses("from onnxscript.optimizer import _constant_folding") != []
    assert private_uses("import onnx_ir._core") != []
    assert private_uses("from onnx_ir.passes.common import IdentityEliminationPass") == []


def test_the_private_hook_we_override_is_still_there():
    """cleanup._IdentityElimination overrides onnx-ir's private ``_try_eliminate_identity_node``
    (onnx-ir pinned below 1.2): fail loudly when an upgrade renames or reshapes it."""
    import inspect

    import onnx_ir.passes.common as common

    hook = common.IdentityEliminationPass._try_eliminate_identity_node
    assert list(inspect.signature(hook).parameters) == ["self", "node"]


def test_identity_between_two_graph_outputs_keeps_both():
    """``y = Identity(x)`` with x and y both graph outputs: onnx-ir 1.1.0 renames one into the
    other; we keep the node, and the model keeps both outputs with their values."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["input"], ["x"], name="relu"),
             helper.make_node("Identity", ["x"], ["y"], name="id"),
             helper.make_node("Identity", ["x"], ["z"], name="inner"),
             helper.make_node("Neg", ["z"], ["w"], name="neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2])],
                              [x, helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    result = EliminateIdentity()(model)
    assert [o.name for o in model.graph.outputs] == ["x", "y", "w"]
    assert {n.name for n in model.graph} == {"relu", "id", "neg"}  # the inner Identity went
    assert all(n.domain == "" for n in model.graph)
    assert result.changes == ["1 Identity nodes removed"]
    onnx.checker.check_model(ir.to_proto(model))
    out = runtime.run(model, {"input": np.array([-1.0, 2.0], np.float32)})
    np.testing.assert_array_equal(out["y"], [0.0, 2.0])
    np.testing.assert_array_equal(out["w"], [-0.0, -2.0])
