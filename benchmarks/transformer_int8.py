#!/usr/bin/env python
"""Transformer INT8 on OpenVINO CPU (issue 17, item 2): NNCF ONNX QDQ variants vs FP32 (f32), one process.

    python benchmarks/transformer_int8.py ARTIFACT_DIR VARIANT   (VARIANT: tr | tr_sq | tr_mixed | default)

tr = nncf.ModelType.TRANSFORMER (SmoothQuant on by default), _sq = SmoothQuant alpha 0.95 for MatMul,
_mixed = MIXED preset. Calibration: the first 48 shared photos; hold-out: photos 60-84. Prints one JSON
line with cosine to FP32 on OpenVINO, output absmax, interleaved medians and os.getloadavg(), and appends
it to benchmarks/results/transformer_int8.jsonl.
"""
import os, sys, time, statistics, json
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import nncf, onnx, openvino as ov
from edgeinfer.runtime.artifact import Artifact
from edgeinfer.runtime.preprocess import preprocess_image
d = sys.argv[1]; variant = sys.argv[2]
art = Artifact(d)
photos = sorted(os.scandir(os.environ.get("EDGEINFER_PHOTOS", "../shared/data/photos")), key=lambda e: e.name)
x = np.stack([preprocess_image(p.path, art.preprocess) for p in photos]).astype(np.float32)
calib, hold = x[:48], x[60:84]
fp32 = str(art.path("fp32"))
m = onnx.load(fp32)
name = m.graph.input[0].name
kw = dict(subset_size=len(calib))
if variant.startswith("tr"):
    kw["model_type"] = nncf.ModelType.TRANSFORMER
if "sq" in variant:
    kw["advanced_parameters"] = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=0.95))
if "mixed" in variant:
    kw["preset"] = nncf.QuantizationPreset.MIXED
t0 = time.perf_counter()
q = nncf.quantize(m, nncf.Dataset([calib[i:i+1] for i in range(len(calib))], lambda a: {name: a}), **kw)
qs = time.perf_counter() - t0
import tempfile; out = os.path.join(tempfile.gettempdir(), f"{art.name}.{variant}.int8.onnx"); onnx.save(q, out)
core = ov.Core()
cfgs = {"fp32 f32": (fp32, {"INFERENCE_PRECISION_HINT": "f32"}), "int8": (out, {"INFERENCE_PRECISION_HINT": "f32"})}
reqs = {}
for k, (p, c) in cfgs.items():
    cm = core.compile_model(p, "CPU", c); reqs[k] = cm.create_infer_request()
outs = {k: np.concatenate([np.array(r.infer({0: hold[i:i+1]})[0]) for i in range(len(hold))]) for k, r in reqs.items()}
ref = outs["fp32 f32"]
def cos(a, b): return float(np.mean(np.sum(a*b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))
ts = {k: [] for k in reqs}
for _ in range(12):
    for k, r in reqs.items():
        t0 = time.perf_counter(); r.infer({0: hold[:1]}); ts[k].append(time.perf_counter() - t0)
med = {k: statistics.median(v) * 1000 for k, v in ts.items()}
print(json.dumps({"model": art.name, "variant": variant, "quantize_s": round(qs, 1), "cos_int8": cos(outs["int8"], ref),
                  "absmax": float(np.abs(outs["int8"]).max()), "ms": med, "ratio_int8_vs_fp32": med["int8"] / med["fp32 f32"],
                  "loadavg": os.getloadavg()}))
_rec = {"command": "python " + " ".join(sys.argv), "model": art.name, "variant": variant, "quantize_s": round(qs, 1),
        "cos_int8": cos(outs["int8"], ref), "absmax": float(np.abs(outs["int8"]).max()), "ms": med,
        "loadavg": os.getloadavg()}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "transformer_int8.jsonl"), "a") as f:
    f.write(json.dumps(_rec) + "\n")
