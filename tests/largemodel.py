"""A model over 2 GiB (protobuf's limit) written straight to disk, for tests and benchmarks.

    from largemodel import write_large_mlp
    path, feeds = write_large_mlp(folder)   # folder/model.onnx + folder/model.onnx.data
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 17


def write_large_mlp(folder, *, total_bytes: int = 2_300_000_000, width: int = 8192, seed: int = 0,
                    batchnorm: bool = True) -> tuple[os.PathLike, dict[str, np.ndarray]]:
    """Write an MLP of float32 (width x width) MatMul layers, ``total_bytes`` of weights or more.

    ``model.onnx`` + ``model.onnx.data`` in ``folder``; the data is streamed to disk a chunk
    at a time (never held in memory), from a small random block varied per chunk, so the
    file is not sparse and no two layers are equal. The hidden widths are prunable groups:
    input (N, width) -> [MatMul W_i -> Add b_i (-> BatchNormalization, first layer) -> Relu] * L
    -> output (N, width).
    Returns the model path and sample inputs (batch 2).
    """
    folder = pathlib.Path(folder)
    path, data = folder / "model.onnx", folder / "model.onnx.data"
    layer_bytes = width * width * 4
    layers = -(-total_bytes // layer_bytes)
    rng = np.random.default_rng(seed)
    chunk_rows = max(1, (16 << 20) // (width * 4))  # 16 MiB per write
    block = (rng.standard_normal((chunk_rows, width)) / math.sqrt(width)).astype(np.float32)
    inits, nodes, offset, x = [], [], 0, "input"
    with open(data, "wb") as handle:
        for i in range(layers):
            for row in range(0, width, chunk_rows):  # vary the block: roll + per-chunk sign
                chunk = np.roll(block, i * 7 + row, axis=1)[: width - row]
                handle.write((chunk if (row // chunk_rows + i) % 2 else -chunk).tobytes())
            tensor = onnx.TensorProto(name=f"w{i}", data_type=onnx.TensorProto.FLOAT, dims=[width, width],
                                      data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(layer_bytes))):
                tensor.external_data.add(key=key, value=value)
            offset += layer_bytes
            bias = numpy_helper.from_array(rng.uniform(-0.1, 0.1, width).astype(np.float32), f"b{i}")
            inits += [tensor, bias]
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"MatMul_{i}"),
                      helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"Add_{i}")]
            x = f"add{i}"
            if i == 0 and batchnorm:  # BatchNorm1d: folding it rewrites a 256 MiB weight
                stats = [numpy_helper.from_array(rng.uniform(lo, hi, width).astype(np.float32), f"bn_{k}")
                         for k, lo, hi in (("scale", 0.5, 1.5), ("bias", -0.1, 0.1), ("mean", -0.1, 0.1),
                                           ("var", 0.5, 1.5))]
                inits += stats
                bn_inputs = [x, *(t.name for t in stats)]
                nodes.append(helper.make_node("BatchNormalization", bn_inputs, ["bn0"], name="BN_0"))
                x = "bn0"
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"Relu_{i}"))
            x = f"relu{i}"
    nodes.append(helper.make_node("Identity", [x], ["output"], name="out"))
    graph = helper.make_graph(
        nodes, "large_mlp",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["N", width])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="graphgen")
    proto.ir_version = 8
    onnx.save(proto, str(path))  # small: the weights are already in model.onnx.data
    return path, {"input": rng.standard_normal((2, width)).astype(np.float32)}
