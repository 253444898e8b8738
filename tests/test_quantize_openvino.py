"""INT8 for OpenVINO: NNCF leaves Concat-fed Conv/MatMul nodes in float (an OpenVINO CPU defect).

OpenVINO's CPU plugin computes an INT8 Convolution fed by an INT8 Concat of two quantized
branches wrongly (MobileViT's fusion Conv; edgeinfer/quantize/openvino.py, concat_fed_nodes).
These tests use a tiny QDQ/float graph built here; no network, seconds each.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _conv(nodes, inits, x, cin, cout, name, rng):
    inits.append(numpy_helper.from_array(rng.standard_normal((cout, cin, 1, 1)).astype(np.float32) * 0.2,
                                         name + "_w"))
    nodes.append(helper.make_node("Conv", [x, name + "_w"], [name], name=name))
    return name


def concat_model(*, layout_ops: bool = False):
    """x -> c1, c2 (1x1 Convs) -> Concat -> [Reshape -> Reshape] -> c3 (the Concat consumer)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    a = _conv(nodes, inits, "x", 8, 8, "c1", rng)
    b = _conv(nodes, inits, "x", 8, 8, "c2", rng)
    nodes.append(helper.make_node("Concat", [a, b], ["cat"], axis=1, name="cat"))
    src = "cat"
    if layout_ops:
        inits += [numpy_helper.from_array(np.array([1, 16, 64], np.int64), "s1"),
                  numpy_helper.from_array(np.array([1, 16, 8, 8], np.int64), "s2")]
        nodes += [helper.make_node("Reshape", ["cat", "s1"], ["r1"], name="r1"),
                  helper.make_node("Reshape", ["r1", "s2"], ["r2"], name="r2")]
        src = "r2"
    _conv(nodes, inits, src, 16, 4, "c3", rng)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8, 8])],
                          [helper.make_tensor_value_info("c3", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("layout_ops", [False, True])
def test_concat_fed_nodes_finds_the_consumer_of_a_concat(layout_ops):
    from edgeinfer.quantize.openvino import concat_fed_nodes

    assert concat_fed_nodes(concat_model(layout_ops=layout_ops)) == ["c3"]


def test_concat_fed_nodes_is_empty_without_a_concat():
    from edgeinfer.quantize.openvino import concat_fed_nodes

    m = concat_model()
    cat = next(n for n in m.graph.node if n.op_type == "Concat")
    cat.op_type, cat.input[:] = "Add", list(cat.input)  # same graph, Add instead of Concat
    for a in list(cat.attribute):
        cat.attribute.remove(a)
    assert concat_fed_nodes(m) == []


@pytest.mark.openvino
@pytest.mark.slow  # NNCF import + calibration: ~16 s on the shared 2-core machine
def test_nncf_leaves_the_concat_consumer_in_float(tmp_path):
    pytest.importorskip("nncf")
    from edgeinfer.quantize.openvino import nncf_quantize_onnx

    src, out = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    onnx.save(concat_model(), str(src))

    class Calib:
        calib = np.random.default_rng(1).uniform(-1, 1, (8, 8, 8, 8)).astype(np.float32)

    info = nncf_quantize_onnx(src, out, Calib(), transformer=False)
    assert info["ignored_concat_consumers"] == ["c3"]
    q = onnx.load(str(out))
    producer = {o: n for n in q.graph.node for o in n.output}
    conv_w = {n.name: producer.get(n.input[1]) for n in q.graph.node if n.op_type == "Conv"}
    # c1/c2 are quantized (their weights come through DequantizeLinear); c3 keeps float weights
    assert conv_w["c1"] is not None and conv_w["c1"].op_type == "DequantizeLinear"
    assert conv_w["c3"] is None
