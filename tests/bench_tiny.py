"""A tiny classifier artifact built with onnx.helper (no torch): conv -> pool -> gemm, 10 classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeinfer.runtime.artifact import file_entry, new_manifest, write_manifest

LABELS = [f"class {i}" for i in range(10)]


def tiny_onnx(path: Path, *, seed: int = 0, noise: float = 0.0, classes: int = 10) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.5, (classes, 8)).astype(np.float32)
    b2 = rng.normal(0, 0.1, classes).astype(np.float32)
    if noise:
        nrng = np.random.default_rng(seed + 99)
        w1 = w1 + nrng.normal(0, noise, w1.shape).astype(np.float32)
        w2 = w2 + nrng.normal(0, noise, w2.shape).astype(np.float32)
    nodes = [helper.make_node("Conv", ["pixel_values", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "tiny",
                          [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                          [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def make_tiny_artifact(d: Path, *, precisions=("fp32", "int8"), int8_noise: float = 0.02,
                       labels=LABELS, name: str = "tiny_test") -> Path:
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    pre = {"input_size": [3, 32, 32], "resize_size": 36, "crop": "center", "crop_pct": 0.9,
           "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
           "channel_order": "RGB", "layout": "NCHW"}
    m = new_manifest(name=name, source="timm", source_name=name, family="test", kind="classifier",
                     weights={"origin": "random", "seed": 0}, preprocess=pre,
                     output={"kind": "logits", "dim": len(labels)}, labels=list(labels), opset=17)
    io_ = dict(inputs=[{"name": "pixel_values", "shape": ["N", 3, 32, 32], "dtype": "float32"}],
               outputs=[{"name": "logits", "shape": ["N", len(labels)], "dtype": "float32"}])
    for p in precisions:
        path = tiny_onnx(d / f"model.{p}.onnx", noise=0.0 if p == "fp32" else int8_noise,
                         classes=len(labels))
        m["files"][p] = file_entry(path, precision=p, **io_)
    write_manifest(d, m)
    return d
