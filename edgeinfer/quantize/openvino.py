"""INT8 for OpenVINO: NNCF vs the ONNX Runtime quantizer, measured on OpenVINO CPU.

Both produce a QDQ ONNX file that OpenVINO reads. We build both, run both on OpenVINO (CPU,
f32 for the float parts) on the hold-out images, and keep the faster one among those that meet
the accuracy budget; the measurement (few runs: it is a choice, not a benchmark) is recorded.
"""
from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import AccuracyBudgetError, MissingDependencyError
from . import guard
from .calib import CalibrationSet

TIMING_RUNS = 15


def _ov_measure(path: Path, x: np.ndarray, precision: str, cache: Path, *,
                static_batch: int | None = None) -> tuple[np.ndarray, float]:
    from ..backends import SessionOptions, create_session

    with create_session(path, provider="openvino", precision=precision,
                        options=SessionOptions(cache_dir=str(cache), static_batch=static_batch)) as s:
        outs = np.concatenate([s.run(x[i:i + 8]) for i in range(0, len(x), 8)])
        one = x[:1]
        for _ in range(3):
            s.run(one)
        ts = []
        for _ in range(TIMING_RUNS):
            t0 = time.perf_counter()
            s.run(one)
            ts.append(time.perf_counter() - t0)
    return outs, statistics.median(ts) * 1000


# Ops that only move or reshape data: a quantized tensor passes through them unchanged.
_LAYOUT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def concat_fed_nodes(model) -> list[str]:
    """Conv / MatMul / Gemm nodes whose data input is a Concat output (through layout-only ops).

    Why: OpenVINO's CPU plugin (2026.4, AVX2) computes an INT8 Convolution fed by an INT8 Concat of
    two quantized branches wrongly. A three-node QDQ graph (two quantized 1x1 Convs -> Concat ->
    quantized Conv) differs from ONNX Runtime by half its output range (maxdiff 0.91 of 1.73), with
    any zero point, 7-bit weights, any spatial size, and is exact with the low-precision
    transformations off (LP_TRANSFORMS_MODE=NO) or without the Concat (maxdiff 0.05). MobileViT's
    fusion Conv (cat(shortcut, transformer branch)) is this pattern; there the error compounds to
    all-zero logits (benchmarks/results/transformer_int8.md). Leaving these consumers in float
    keeps the Concat out of INT8; every other Conv/MatMul stays quantized.
    """
    producer = {o: n for n in model.graph.node for o in n.output}

    def from_concat(tensor: str) -> bool:
        n = producer.get(tensor)
        while n is not None and n.op_type in _LAYOUT_OPS + ("DequantizeLinear",):
            n = producer.get(n.input[0])
        return n is not None and n.op_type == "Concat"

    return [n.name for n in model.graph.node
            if n.op_type in ("Conv", "MatMul", "Gemm") and n.input and from_concat(n.input[0])]


def nncf_quantize_onnx(fp32_path: Path, out_path: Path, calib: CalibrationSet, *,
                       transformer: bool) -> dict:
    try:
        import nncf
    except ImportError as e:
        raise MissingDependencyError("nncf", "openvino", "NNCF quantization") from e
    from .graph import load, name_nodes, onnx_mod

    onnx = onnx_mod()
    model = load(fp32_path)
    name = model.graph.input[0].name
    data = [calib.calib[i:i + 1] for i in range(len(calib.calib))]
    kw: dict[str, Any] = {"preset": nncf.QuantizationPreset.MIXED, "subset_size": len(data)}
    if transformer:
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    name_nodes(model)  # ignored scopes match by node name
    ignored = concat_fed_nodes(model)
    if ignored:
        kw["ignored_scope"] = nncf.IgnoredScope(names=ignored, validate=False)
    q = nncf.quantize(model, nncf.Dataset(data, lambda x: {name: x}), **kw)
    onnx.save(q, str(out_path))
    return {"engine": f"nncf {getattr(nncf, '__version__', '')}".strip(), "preset": "MIXED",
            "model_type": "TRANSFORMER" if transformer else "default",
            "subset_size": len(data), "ignored_concat_consumers": ignored}


def quantize_for_openvino(fp32_path, out_path, *, calib: CalibrationSet, quantize_cfg: dict,
                          output_kind: str, budget_kind: str, max_drop: float, workdir,
                          ref: np.ndarray, progress: Callable[[str], None] | None = None
                          ) -> tuple[dict, np.ndarray]:
    from .int8 import quantize_int8
    from .settings import choose_int8_settings

    say = progress or (lambda _m: None)
    workdir = Path(workdir)
    fkind = "classifier" if output_kind == "logits" else "embedding"
    cache = workdir / "ov_cache"
    cands: dict[str, dict] = {}
    say("OpenVINO target: FP32 on OpenVINO for reference latency")
    ref_ov, fp32_ms = _ov_measure(Path(fp32_path), calib.holdout, "fp32", cache)

    # (a) ONNX Runtime quantizer, OpenVINO settings, with the guard
    ort_path = workdir / "ov_ort.int8.onnx"
    ort_dir = workdir / "ort"
    ort_dir.mkdir()
    err_a = None
    try:
        info_a, _ = quantize_int8(fp32_path, ort_path, settings=choose_int8_settings("openvino"),
                               calib=calib, quantize_cfg=quantize_cfg, output_kind=output_kind,
                               budget_kind=budget_kind, max_drop=max_drop, workdir=ort_dir,
                               progress=say, ref_holdout=ref)
        out, ms = _ov_measure(ort_path, calib.holdout, "int8", cache)
        fid = guard.fidelity(ref_ov, out, fkind)
        cands["onnxruntime"] = {"path": ort_path, "info": info_a, "latency_ms": ms, "fid": fid,
                                "out": out, "ok": guard.within(fid, budget_kind, max_drop)}
    except AccuracyBudgetError as e:
        err_a = str(e)
    # (b) NNCF
    nncf_path = workdir / "ov_nncf.int8.onnx"
    err_b = None
    try:
        say("OpenVINO target: NNCF quantization")
        t0 = time.perf_counter()
        info_b = nncf_quantize_onnx(Path(fp32_path), nncf_path, calib,
                                    transformer=bool(quantize_cfg.get("transformer")))
        info_b["seconds"] = round(time.perf_counter() - t0, 2)
        out, ms = _ov_measure(nncf_path, calib.holdout, "int8", cache)
        fid = guard.fidelity(ref_ov, out, fkind)
        cands["nncf"] = {"path": nncf_path, "info": info_b, "latency_ms": ms, "fid": fid,
                         "out": out, "ok": guard.within(fid, budget_kind, max_drop)
                         and bool(np.isfinite(out).all())}
        if not np.abs(out).max() > 0:
            # the runtime compiles a dynamic batch; OpenVINO CPU returns zeros for some quantized
            # graphs (MobileViT) only then. Measure static batch 1 too, so the record says which
            # defect it is (the file is still rejected: batches > 1 would be all-zero)
            st, _ = _ov_measure(nncf_path, calib.holdout, "int8", cache / "static", static_batch=1)
            cands["nncf"]["static_b1_cosine"] = guard.fidelity(ref_ov, st, fkind)["cosine_mean"]
    except MissingDependencyError:
        raise
    except Exception as e:  # noqa: BLE001 - NNCF failing on a graph: keep the ORT result
        err_b = f"{type(e).__name__}: {str(e)[:300]}"
    ok = {k: v for k, v in cands.items() if v["ok"]}
    summary = {k: {"latency_ms_b1": round(v["latency_ms"], 3), "drop": guard.drop(v["fid"], budget_kind),
                   "within_budget": v["ok"], "cosine_mean": v["fid"]["cosine_mean"],
                   "finite": bool(np.isfinite(v["out"]).all()),
                   "all_zero": not bool(np.abs(v["out"]).max() > 0),
                   **({"static_b1_cosine": v["static_b1_cosine"]} if "static_b1_cosine" in v else {})}
               for k, v in cands.items()}
    if err_a:
        summary["onnxruntime"] = {"error": err_a}
    if err_b:
        summary["nncf"] = {"error": err_b}
    if not ok:
        raise AccuracyBudgetError(
            f"INT8 for OpenVINO meets no accuracy budget ({guard.budget_text(budget_kind, max_drop)}): "
            f"{summary}")
    best = min(ok, key=lambda k: ok[k]["latency_ms"])
    def _desc(k: str) -> str:
        c = cands[k]
        state = "within budget" if c["ok"] else (
            "non-finite outputs" if not np.isfinite(c["out"]).all() else
            # seen on mobilevit_s: NNCF's QDQ file runs fine in ONNX Runtime (non-zero outputs)
            # but OpenVINO CPU returns zeros when it compiles a dynamic batch; say so instead of
            # a bare "drop 1.0" (benchmarks/results/transformer_int8.md)
            ("all-zero outputs on OpenVINO with a dynamic batch"
             + (f"; static batch 1: cosine {c['static_b1_cosine']:.4f}" if "static_b1_cosine" in c else ""))
            if not np.abs(c["out"]).max() > 0 else
            f"over budget, drop {guard.drop(c['fid'], budget_kind)}")
        return f"{k} {c['latency_ms']:.2f} ms ({state})"

    why = ("fastest within budget on OpenVINO CPU: " + "; ".join(_desc(k) for k in cands)
           + f"; FP32 {fp32_ms:.2f} ms (batch 1, median of {TIMING_RUNS} runs, noisy)")
    for k, e in (("onnxruntime", err_a), ("nncf", err_b)):
        if e:
            why += f"; {k} failed: {e[:200]}"
    say(f"OpenVINO target: keeping {best}: {why}")
    shutil.copyfile(ok[best]["path"], out_path)
    c = ok[best]
    base = c["info"] if best == "onnxruntime" else {
        "method": "static-ptq", "engine": "nncf", "settings": {
            **c["info"], "target": "openvino", "scheme": "U8S8 (NNCF MIXED)",
            "reason": "NNCF MIXED preset: asymmetric activations, symmetric weights"},
        "calibration": calib.summary(), "kept_in_float": {}, "kept_in_float_count": None,
        "budget": guard.budget_record(budget_kind, max_drop)}  # the guard record the runtime reads
    fid = {**c["fid"], "images": len(calib.holdout), "reference": "fp32 on openvino",
           "holdout_is_calibration": calib.holdout_is_calib}
    return {**base, "fidelity": fid, "choice": f"kept {best}: {why}", "candidates": summary,
            "openvino_fp32_latency_ms_b1": round(fp32_ms, 3)}, c["out"]
