"""OpenVINO CPU performance choices (issue 17): an FP16 file on the CPU compiles its FP32 graph."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")


def _tiny_ln_model(path):
    """x[1,8,16] -> MatMul -> LayerNormalization -> Add(residual): the pattern an FP16
    conversion wraps in Casts when LayerNormalization is kept in float."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    g = numpy_helper.from_array(np.ones(16, np.float32), "g")
    b = numpy_helper.from_array(np.zeros(16, np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1),
             helper.make_node("Add", ["n", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 16])],
                              [w, g, b])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return m


def _fp16(m, path):
    float16 = pytest.importorskip("onnxconverter_common.float16")
    m16 = float16.convert_float_to_float16(m, keep_io_types=True, op_block_list=["LayerNormalization"])
    assert any(n.op_type == "Cast" for n in m16.graph.node)  # the Casts this change avoids
    onnx.save(m16, str(path))


def test_cpu_graph_for_picks_the_fp32_sibling_only_for_fp16_on_cpu(tmp_path):
    from edgeinfer.backends.openvino import cpu_graph_for

    f32, f16 = tmp_path / "model.fp32.onnx", tmp_path / "model.fp16.onnx"
    f16.write_bytes(b"x")
    assert cpu_graph_for(f16, "fp16", "CPU") == f16  # no sibling: the file itself
    f32.write_bytes(b"x")
    assert cpu_graph_for(f16, "fp16", "CPU") == f32
    assert cpu_graph_for(f16, "fp16", "GPU.0") == f16  # the GPU computes f16: keep the file
    assert cpu_graph_for(f32, "fp32", "CPU") == f32
    i8 = tmp_path / "model.int8.onnx"
    assert cpu_graph_for(i8, "int8", "CPU") == i8


def test_fp16_session_on_cpu_compiles_fp32_graph_with_same_outputs(tmp_path):
    from edgeinfer.backends import SessionOptions, create_session

    m = _tiny_ln_model(tmp_path / "model.fp32.onnx")
    _fp16(m, tmp_path / "model.fp16.onnx")
    x = np.random.default_rng(1).standard_normal((2, 8, 16)).astype(np.float32)
    opts = SessionOptions(cache_dir=str(tmp_path / "cache"))
    with create_session(tmp_path / "model.fp32.onnx", provider="openvino", precision="fp32",
                        options=opts) as s32:
        ref = s32.run(x)
    with create_session(tmp_path / "model.fp16.onnx", provider="openvino", precision="fp16",
                        options=opts) as s16:
        out = s16.run(x)
        d = s16.describe()
        cache16 = s16.cache_dir
    assert d["compiled_file"] == "model.fp32.onnx"
    assert cache16 != s32.cache_dir  # fp16 (half hint) and fp32 (f32 hint) never share a blob
    # same graph; at most the CPU's half type (bf16) differs from f32
    cos = float((ref * out).sum() / np.linalg.norm(ref) / np.linalg.norm(out))
    assert cos > 0.999, cos
