"""Tiny artifacts for the runtime tests, built with onnx.helper (no torch, seconds to make)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_onnx(path: Path, *, size: int = 32, classes: int = 10, dim: int | None = None,
              seed: int = 0, output: str = "logits") -> Path:
    """pixel_values [N,3,S,S] -> Conv 3x3 (8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    out_dim = dim or classes
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 1.0, (out_dim, 8)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(0, 0.1, (out_dim,)).astype(np.float32), "b2")
    nodes = [helper.make_node("Conv", ["pixel_values", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], [output], transB=1)]
    g = helper.make_graph(nodes, "tiny",
                          [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, size, size])],
                          [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", out_dim])],
                          initializer=[w1, b1, w2, b2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def tiny_artifact(d: Path, *, size: int = 32, classes: int = 10, kind: str = "classifier",
                  labels: list[str] | None = None, precisions=("fp32",), mean=(0.5, 0.5, 0.5),
                  std=(0.25, 0.25, 0.25)) -> Path:
    from edgeinfer.runtime.artifact import file_entry, new_manifest, onnx_file_name, write_manifest

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    output = "embedding" if kind == "clip" else "logits"
    if labels is None and kind != "clip":
        labels = [f"label{i}" for i in range(classes)]
    m = new_manifest(name="tiny", source="test", source_name="tiny", family="test", kind=kind,
                     weights={"origin": "random", "seed": 0},
                     preprocess={"input_size": [3, size, size], "resize_size": int(size * 1.14),
                                 "crop": "center", "crop_pct": 0.875, "interpolation": "bicubic",
                                 "mean": list(mean), "std": list(std), "channel_order": "RGB",
                                 "layout": "NCHW"},
                     output={"kind": "embedding" if kind == "clip" else "logits", "dim": classes},
                     labels=labels, opset=17)
    for p in precisions:
        f = d / onnx_file_name(p)
        tiny_onnx(f, size=size, classes=classes, output=output)
        m["files"][p] = file_entry(f, precision=p, inputs=[{"name": "pixel_values"}],
                                   outputs=[{"name": output}])
    write_manifest(d, m)
    return d
