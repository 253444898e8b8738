"""`edgeinfer inspect`: per-layer params and MACs (onnx-tool on the FP32 graph), module names
recovered from what the exporter kept, the nodes an INT8 / FP16 file leaves in float, and the
totals of real architectures against their published figures."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bench_tiny import make_tiny_artifact
from edgeinfer.evaluate import layers

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx_tool")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def test_tiny_counts_by_hand(tmp_path):
    art = make_tiny_artifact(tmp_path / "tiny", precisions=("fp32",))
    r = layers.inspect_artifact(art)
    # conv 3->8 (3x3, stride 2) + bias, gemm 8->10 + bias
    assert r["totals"]["params"] == 8 * 3 * 3 * 3 + 8 + 10 * 8 + 10
    conv = next(n for n in r["nodes"] if n["op"] == "Conv")
    assert conv["output_shape"] == [1, 8, 16, 16]
    # multiply-accumulates of the convolution (onnx-tool may add the bias additions)
    assert 8 * 16 * 16 * 27 <= conv["macs"] <= 8 * 16 * 16 * 28
    gemm = next(n for n in r["nodes"] if n["op"] == "Gemm")
    assert 80 <= gemm["macs"] <= 90 and gemm["output_shape"] == [1, 10]
    assert r["totals"]["macs"] == sum(n["macs"] for n in r["nodes"])
    assert sum(L["params"] for L in r["layers"]) == r["totals"]["params"]


def _graph(nodes, inits, out_shape=(1, 4, 8, 8)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_module_names_from_exporter_names_and_parameters():
    w = np.zeros((4, 3, 3, 3), np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "stem.conv.weight"], ["a"], name="node_Conv_1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"], name="node_relu"),                      # inherits stem.conv
        helper.make_node("Conv", ["b", "w2"], ["c"], name="/layer1/layer1.0/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["d"], name="/layer1/layer1.0/act/Relu"),
    ]
    m = _graph(nodes, {"stem.conv.weight": w, "w2": np.zeros((4, 4, 3, 3), np.float32)})
    mods = layers.module_names(m)
    assert mods == {"a": "stem.conv", "b": "stem.conv", "c": "layer1.0.conv1", "d": "layer1.0.act"}


def _tiny_onnx(tmp_path):
    from bench_tiny import tiny_onnx

    return tiny_onnx(tmp_path / "m.onnx")


class _Reader:
    def __init__(self):
        rng = np.random.default_rng(0)
        self.data = iter([{"pixel_values": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)}
                          for _ in range(4)])

    def get_next(self):
        return next(self.data, None)


def test_int8_float_nodes_from_a_real_qdq_file(tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src = _tiny_onnx(tmp_path)
    m = onnx.load(str(src))
    for i, n in enumerate(m.graph.node):
        n.name = n.name or f"{n.op_type.lower()}_{i}"
    onnx.save(m, str(src))
    gemm = next(n.name for n in m.graph.node if n.op_type == "Gemm")
    dst = tmp_path / "m.int8.onnx"
    quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=[gemm])
    fl = layers.float_nodes(dst, precision="int8")
    ops = {f["op"] for f in fl}
    assert "Gemm" in ops and "Conv" not in ops          # the excluded Gemm stayed float, Conv did not


def test_fp16_float_nodes(tmp_path):
    from onnxconverter_common import float16

    src = _tiny_onnx(tmp_path)
    m16 = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                           op_block_list=["GlobalAveragePool"])
    dst = tmp_path / "m.fp16.onnx"
    onnx.save(m16, str(dst))
    fl = layers.float_nodes(dst, precision="fp16")
    assert [f["op"] for f in fl] == ["GlobalAveragePool"]


def test_cli_inspect_table_and_json(tmp_path, capsys):
    from edgeinfer.cli.main import main

    art = str(make_tiny_artifact(tmp_path / "tiny", precisions=("fp32", "int8")))
    assert main(["inspect", art, "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["totals"]["params"] == 314 and j["counted_on"] == "fp32" and j["layers"]
    assert main(["inspect", art, "--precision", "int8"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "stayed in float32" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert main(["inspect", art, "--precision", "fp16"]) == 1
    assert "no fp16" in capsys.readouterr().err


# Published figures (timm / torchvision model cards, papers): params and GMACs at 224 px.
KNOWN = {"resnet50": (25.6e6, 4.1e9), "mobilenetv3_large_100": (5.5e6, 0.22e9),
         "vgg16": (138.4e6, 15.5e9)}   # vgg16: the torchvision recipe of export/vgg.toml


@pytest.mark.slow   # real architectures with random weights: 30 s (resnet50) to 5 min (vgg16) export
@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_architectures_match_published_figures(name, tmp_path):
    out = tmp_path / name
    subprocess.run([sys.executable, "-m", "edgeinfer.cli.main", "export", "--model", name,
                    "--weights", "random", "--out", str(out)], check=True, capture_output=True)
    r = layers.inspect_artifact(out)
    params, macs = KNOWN[name]
    # BatchNorm folds into the convolutions (its 2 x channels scale/shift vanish: -0.2 % for
    # resnet50, -0.5 % for mobilenetv3) and onnx-tool counts element-wise ops as MACs too
    assert r["totals"]["params"] == pytest.approx(params, rel=0.03)
    assert r["totals"]["macs"] == pytest.approx(macs, rel=0.06)
    mods = [L["module"] for L in r["layers"]]
    head = {"resnet50": "fc", "mobilenetv3_large_100": "classifier", "vgg16": "classifier.6"}[name]
    assert head in mods and not any(m.startswith("node_") for m in mods)   # torch module names
    assert next(L for L in r["layers"] if L["module"] == head)["output_shape"] == [1, 1000]
