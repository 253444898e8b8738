"""INT8 static post-training quantization (QDQ, per-channel weights) with the accuracy guard.

The heavy lifting is onnxruntime.quantization (quant_pre_process + quantize_static). What is
ours: ISA/target-aware settings (settings.py), the recipe's transformer-aware float nodes, and the
guard loop (calibrate once, cache the tensor ranges, re-quantize with the worst nodes kept in
float until the hold-out fidelity fits the budget).
"""
from __future__ import annotations

import contextlib
import os

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import AccuracyBudgetError, MissingDependencyError, QuantizationError
from . import guard
from .calib import ArrayDataReader, CalibrationSet
from .graph import float_keep_nodes, load, name_nodes, onnx_mod, run_model
from .settings import Int8Settings

# Node types whose INT8 version can add error (data-movement ops only pass quantized values on).
SENSITIVE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Softmax",
                 "LayerNormalization", "InstanceNormalization", "Sigmoid", "AveragePool",
                 "GlobalAveragePool", "Resize", "LeakyRelu", "Concat", "Where", "Gather",
                 "BatchNormalization"}
MAX_GUARD_STEPS = 9
BISECT_STEPS = 6
# The guard gives up (INT8 rejected) rather than keep more than this share of the quantizable
# nodes in float: such a file is mostly float and not faster than FP32, and each further try
# re-quantizes the whole model (~25 s for CLIP ViT-B/32).
MAX_FLOAT_SHARE = 0.5
# ... or when keeping the most sensitive nodes in float does not help: after this many
# doublings that each removed less than NO_PROGRESS of the drop still over budget, the error is
# spread over the whole model, not in a few nodes the guard could keep in float.
NO_PROGRESS_STEPS = 2
NO_PROGRESS = 0.1
RANK_IMAGES = 8


def _ort_quant():
    try:
        from onnxruntime import quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:  # pragma: no cover - onnxruntime is a base dependency
        raise MissingDependencyError("onnxruntime", "export", "INT8 quantization") from e
    return quantization, quant_pre_process


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def prepare(fp32_path: str | Path, out_path: str | Path) -> dict:
    """quant_pre_process (symbolic shape inference + ORT basic optimizations), then name nodes.

    Falls back to fewer steps when a step fails on a graph (recorded)."""
    onnx = onnx_mod()
    _, qpp = _ort_quant()
    attempts = [dict(), dict(skip_symbolic_shape=True), dict(skip_optimization=True),
                dict(skip_optimization=True, skip_symbolic_shape=True)]
    errors = []
    for kw in attempts:
        try:
            # ORT's symbolic shape inference writes sym_shape_infer_temp.onnx plus a <uuid>.data
            # file (hundreds of MB for CLIP) into the *current directory* and leaves them there
            # when it fails: run it from the private work directory so nothing leaks into the
            # user's folder.
            with _cwd(Path(out_path).resolve().parent):
                qpp(str(Path(fp32_path).resolve()), str(Path(out_path).resolve()), **kw)
            break
        except Exception as e:  # noqa: BLE001 - any failure: try the next, simpler variant
            errors.append(f"{kw or 'full'}: {type(e).__name__}: {str(e)[:200]}")
    else:
        m = onnx.load(str(fp32_path))
        onnx.save(m, str(out_path))
        kw = {"skipped": True}
    m = onnx.load(str(out_path))
    renamed = name_nodes(m)
    onnx.save(m, str(out_path))
    return {"pre_process": kw or "full", "pre_process_errors": errors, "renamed_nodes": renamed}


def _quantize(pre_path: Path, out_path: Path, s: Int8Settings, calib: CalibrationSet,
              cache: Path, exclude: list[str], input_name: str) -> None:
    quantization, _ = _ort_quant()
    opts = s.ort_extra_options()
    # Bounded memory on big models: calibrate in strides of <= 8 images (ranges merged between
    # strides). Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 it discards the collected
    # outputs without computing their ranges ("No data is collected").
    n = len(calib.calib)
    opts.setdefault("CalibStridedMinMax", max(d for d in range(1, min(8, n) + 1) if n % d == 0))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # ORT logs "please pre-process" warnings at WARNING
    try:
        quantization.quantize_static(
            str(pre_path), str(out_path),
            calibration_data_reader=ArrayDataReader(input_name, calib.calib, batch=1),
            quant_format=quantization.QuantFormat.QDQ, per_channel=s.per_channel,
            reduce_range=s.reduce_range,
            activation_type=getattr(quantization.QuantType, s.activation_type),
            weight_type=getattr(quantization.QuantType, s.weight_type),
            nodes_to_exclude=sorted(set(exclude)),
            calibrate_method=getattr(quantization.CalibrationMethod, s.calibrate_method),
            extra_options=opts, calibration_cache_path=str(cache))
    except Exception as e:  # noqa: BLE001
        raise QuantizationError(f"onnxruntime quantize_static failed: {type(e).__name__}: {e}") from e
    finally:
        root.setLevel(level)


def quantize_int8(fp32_path: str | Path, out_path: str | Path, *, settings: Int8Settings,
                  calib: CalibrationSet, quantize_cfg: dict | None, output_kind: str,
                  max_drop: float | None, workdir: str | Path, budget_kind: str | None = None,
                  progress: Callable[[str], None] | None = None,
                  ref_holdout: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Quantize ``fp32_path`` into ``out_path`` and return the manifest's ``quantization`` info.

    Raises AccuracyBudgetError (with the numbers) when no float/INT8 split meets the budget.
    """
    say = progress or (lambda _m: None)
    workdir = Path(workdir)
    fkind = "classifier" if output_kind == "logits" else "embedding"
    kind = budget_kind or fkind
    budget = guard.DEFAULT_MAX_DROP[kind] if max_drop is None else float(max_drop)
    t0 = time.perf_counter()
    pre = workdir / "pre.onnx"
    say("INT8: pre-processing graph (shape inference, ORT basic optimizations)")
    prep = prepare(fp32_path, pre)
    model = load(pre)
    input_name = model.graph.input[0].name
    keep = float_keep_nodes(model, quantize_cfg or {})
    base_exclude = sorted({n for v in keep.values() for n in v})
    cache = workdir / "calib_ranges.json"
    ref = ref_holdout if ref_holdout is not None else run_model(fp32_path, calib.holdout)
    trial = workdir / "trial.onnx"
    best_path = workdir / "best.onnx"
    steps: list[dict] = []

    def attempt(extra: list[str], label: str) -> dict:
        say(f"INT8: quantizing ({label}; {len(base_exclude) + len(extra)} nodes in float)")
        _quantize(pre, trial, settings, calib, cache, base_exclude + extra, input_name)
        out = run_model(trial, calib.holdout, input_name=input_name)
        fid = guard.fidelity(ref, out, fkind)
        st = {"label": label, "kept_float_by_guard": len(extra), "drop": guard.drop(fid, kind),
              "fidelity": fid, "within_budget": guard.within(fid, kind, budget), "out": out}
        steps.append(st)
        say(f"INT8: {label}: drop {st['drop']} ({'ok' if st['within_budget'] else 'over budget'})")
        return st

    st = attempt([], "recipe settings")
    guard_nodes: list[str] = []
    ranking: list[tuple[str, float]] = []
    if not st["within_budget"]:
        say("INT8: over budget; ranking nodes by the error each adds")
        cand = [n.name for n in model.graph.node
                if n.op_type in SENSITIVE_OPS and n.name not in set(base_exclude)]
        ranking = guard.rank_by_added_error(model, trial, calib.calib[:RANK_IMAGES], cand)
        if not ranking:
            raise QuantizationError("no quantized node found to keep in float (the QDQ graph "
                                    "has no activation QuantizeLinear/DequantizeLinear pairs)")
        ranked = [n for n, _ in ranking]
        k_max = max(1, int(len(ranked) * MAX_FLOAT_SHARE))
        k, lo, best, stalled, why = 1, 0, None, 0, ""
        for i in range(MAX_GUARD_STEPS):
            k = min(k, k_max)
            prev = steps[-1]["drop"]
            st = attempt(ranked[:k], f"guard: worst {k} in float")
            if st["within_budget"]:
                best, guard_nodes = st, ranked[:k]
                shutil.copyfile(trial, best_path)
                break
            lo = k
            stalled = stalled + 1 if prev - st["drop"] < NO_PROGRESS * (prev - budget) else 0
            if stalled >= NO_PROGRESS_STEPS:
                why = ("the drop did not shrink as the most sensitive nodes went to float, so "
                       "the error is spread over the model")
                break
            if k >= k_max:
                why = (f"more than {MAX_FLOAT_SHARE:.0%} of them in float would make the file "
                       f"mostly float and no faster than FP32")
                break
            k = k * 2 if k * 2 < k_max and i < MAX_GUARD_STEPS - 2 else k_max
        if best is None:
            last = steps[-1]
            raise AccuracyBudgetError(
                f"INT8 cannot meet the accuracy budget ({guard.budget_text(kind, budget)}): with the "
                f"recipe settings the drop was {steps[0]['drop']}, and with the "
                f"{last['kept_float_by_guard']} most sensitive of {len(ranked)} quantizable nodes "
                f"kept in float it is still {last['drop']} (cosine mean "
                f"{last['fidelity']['cosine_mean']:.4f}, measured on {len(calib.holdout)} "
                f"hold-out images){'; ' + why if why else ''}. Raise --max-drop, calibrate on "
                f"more representative images (--calib DIR), or use --fp16.")
        # Narrow down: the nodes that made the difference are among ranked[lo:k] (the last
        # failing and the first passing count). Halve that set while the budget still holds,
        # then try it without the lower-ranked prefix: a single critical node ranked low
        # (CLIP's class-token Concat: tiny next to the patch tokens, so a per-tensor scale
        # wipes it out) should not drag 100 others into float.
        base, crit = ranked[:lo], ranked[lo:len(guard_nodes)]

        def adopt(nodes: list[str], st: dict) -> None:
            nonlocal best, guard_nodes
            if len(nodes) < len(guard_nodes):
                best, guard_nodes = st, list(nodes)
                shutil.copyfile(trial, best_path)

        for _ in range(BISECT_STEPS):
            if len(crit) <= 1:
                break
            h = len(crit) // 2
            for half in (crit[:h], crit[h:]):
                st = attempt(base + half, f"guard: narrowing, {len(base) + len(half)} in float")
                if st["within_budget"]:
                    adopt(base + half, st)
                    crit = half
                    break
            else:
                break
        if base:
            st = attempt(crit, f"guard: only the {len(crit)} critical node(s) in float")
            if st["within_budget"]:
                adopt(crit, st)
        final = best
        trial = best_path
    else:
        final = st
    final["chosen"] = True
    Path(trial).replace(out_path)
    qm = load(out_path)
    n_q = sum(1 for n in qm.graph.node if n.op_type == "QuantizeLinear")
    n_dq = sum(1 for n in qm.graph.node if n.op_type == "DequantizeLinear")
    info = {
        "method": "static-ptq", "engine": "onnxruntime.quantization",
        "settings": settings.to_dict(),
        "calibration": calib.summary(),
        "kept_in_float": {**keep, "guard": guard_nodes},
        "kept_in_float_count": len(base_exclude) + len(guard_nodes),
        "quantizable_nodes": sum(1 for n in model.graph.node if n.op_type in SENSITIVE_OPS),
        "budget": guard.budget_record(kind, budget, resolution=(
            round(100.0 / len(calib.holdout), 3) if kind == "classifier" else None)),
        "guard_steps": [{k: v for k, v in s.items() if k not in ("out",)} for s in steps],
        "sensitivity": "added error (output minus input relative error, float vs QDQ)",
        "sensitivity_top": [{"node": n, "added_error": round(e, 6)} for n, e in ranking[:20]],
        "fidelity": {**final["fidelity"], "images": len(calib.holdout),
                     "holdout_is_calibration": calib.holdout_is_calib, "reference": "fp32",
                     "engine": "onnxruntime-cpu"},
        "graph": {**prep, "quantize_linear": n_q, "dequantize_linear": n_dq},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return info, final["out"]  # the record for the manifest, and the INT8 outputs on the hold-out
