"""FP16 conversion with onnxconverter-common, parity-checked, with a mixed-precision fallback.

1. Scan FP32 activations on a few images: nodes whose values would overflow FP16 (|x| > 65504/2)
   stay in float, and so does a LayerNormalization / ReduceMean / Pow whose input exceeds 256
   (its x*x overflows FP16: the "LayerNorm overflowing in FP16" failure).
2. ``convert_float_to_float16(keep_io_types=True, op_block_list=...)``: inputs/outputs stay
   float32 so callers feed the same arrays; ops with no FP16 kernel or that break in FP16
   (Resize, Range, TopK, CumSum, ...: onnxconverter-common's default list) stay in float.
3. Parity against FP32 on the hold-out images; if plain FP16 breaks it, fall back to
   ``auto_mixed_precision.auto_convert_mixed_precision`` (bisects the graph and keeps in float
   whatever breaks the tolerance), then re-check. What was done is recorded.
"""
from __future__ import annotations

import contextlib
import io
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import MissingDependencyError, ParityError
from . import guard
from .graph import float_tensor_outputs, load, onnx_mod, run_model, session, with_outputs

FP16_MAX = 65504.0
EXTRA_BLOCK_OPS = ("Range", "Resize", "Upsample", "NonMaxSuppression", "TopK", "CumSum",
                   "RandomUniformLike", "RandomNormalLike")
SQUARE_OPS = ("LayerNormalization", "ReduceMean", "Pow", "ReduceSumSquare", "ReduceL2",
              "InstanceNormalization", "GroupNormalization")
PARITY_COSINE_MIN = 0.999


def _occ():
    try:
        from onnxconverter_common import auto_mixed_precision, float16
    except ImportError as e:
        raise MissingDependencyError("onnxconverter-common", "export", "FP16 conversion") from e
    return float16, auto_mixed_precision


def overflow_nodes(model, x: np.ndarray) -> dict[str, list[str]]:
    """Nodes that overflow FP16 on ``x``: {"overflow": [...], "square_overflow": [...]}."""
    produced = float_tensor_outputs(model)
    names = list(produced)
    graph_inputs = {i.name for i in model.graph.input}
    sess = session(with_outputs(model, names).SerializeToString())
    outs = [o.name for o in sess.get_outputs()]
    amax: dict[str, float] = {}
    in_name = sess.get_inputs()[0].name
    for i in range(0, len(x), 2):
        feeds = {in_name: x[i:i + 2]}
        for n, v in zip(outs, sess.run(None, feeds)):
            if v is not None and v.dtype == np.float32 and v.size:
                amax[n] = max(amax.get(n, 0.0), float(np.nanmax(np.abs(v))))
        for gi in graph_inputs:
            if gi in feeds:
                amax[gi] = max(amax.get(gi, 0.0), float(np.abs(feeds[gi]).max()))
    over, sq = [], []
    for n in model.graph.node:
        if any(amax.get(o, 0.0) > FP16_MAX / 2 for o in n.output) or \
                any(amax.get(i, 0.0) > FP16_MAX / 2 for i in n.input):
            over.append(n.name)
        elif n.op_type in SQUARE_OPS and any(amax.get(i, 0.0) > 256.0 for i in n.input[:1]):
            sq.append(n.name)
    return {"overflow": over, "square_overflow": sq}


def fix_casts(m16) -> list[str]:
    """Make Cast-to-float nodes agree with the FP16 graph around them.

    onnxconverter-common turns every float tensor's value_info into float16 but leaves
    ``Cast(to=FLOAT)`` nodes (shape arithmetic such as ``sqrt(head_dim)`` in attention) alone, so
    ORT refuses to load the model ("Type (tensor(float16)) of output arg ... does not match").
    Where the Cast's output is now declared float16, cast to float16 instead.
    """
    onnx = onnx_mod()
    F, H = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    vi = {v.name: v for v in list(m16.graph.value_info) + list(m16.graph.output)}
    fixed = []
    for n in m16.graph.node:
        if n.op_type != "Cast":
            continue
        v = vi.get(n.output[0])
        if v is None or v.type.tensor_type.elem_type != H:
            continue
        for a in n.attribute:
            if a.name == "to" and a.i == F:
                a.i = H
                fixed.append(n.name)
    return fixed


_PROBE = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
s.run(None, {s.get_inputs()[0].name: x})
"""


def probe(path: str | Path, x: np.ndarray, *, timeout: float = 600) -> str | None:
    """Load and run ``path`` with ONNX Runtime (default optimizations) in a child process.

    None when it works, else what went wrong. A child process because some FP16 graphs crash
    ONNX Runtime's graph optimizer with a segmentation fault (CLIP ViT-B/32 with FP16
    LayerNormalization, onnxruntime 1.32 CPU), which would take the caller down with it.
    """
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        npy = Path(d) / "x.npy"
        np.save(npy, x)
        try:
            r = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(npy)],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"loading/running took longer than {timeout:.0f} s"
    if r.returncode == 0:
        return None
    if r.returncode < 0:
        return f"onnxruntime crashed (signal {-r.returncode}) loading/running the FP16 graph"
    tail = (r.stderr or "").strip().splitlines()[-1:] or [""]
    return f"onnxruntime failed (exit {r.returncode}): {tail[0][:300]}"


def _parity(ref: np.ndarray, out: np.ndarray, fkind: str, budget_kind: str,
            max_drop: float) -> tuple[bool, dict]:
    fid = guard.fidelity(ref, out, fkind)
    finite = bool(np.isfinite(out).all())
    ok = finite and fid["cosine_min"] >= PARITY_COSINE_MIN and guard.within(fid, budget_kind, max_drop)
    fid["finite"] = finite
    return ok, fid


def convert_fp16(fp32_path: str | Path, out_path: str | Path, *, holdout: np.ndarray,
                 ref: np.ndarray | None = None, output_kind: str = "logits",
                 budget_kind: str | None = None, max_drop: float | None = None,
                 progress: Callable[[str], None] | None = None,
                 float_ops: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], np.ndarray]:
    """Write an FP16 version of ``fp32_path`` to ``out_path``; return the manifest info.

    ``float_ops``: op types the recipe keeps in float from the first try (the recipe's
    ``fp16_keep_float_ops``; CLIP: LayerNormalization, whose FP16 form crashes ONNX Runtime 1.32's
    CPU graph optimizer, which otherwise costs a crashed probe and a second conversion).

    Raises ParityError when neither plain FP16 nor the mixed-precision fallback keeps parity.
    """
    onnx = onnx_mod()
    float16, amp = _occ()
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    fkind = "classifier" if output_kind == "logits" else "embedding"
    bkind = budget_kind or fkind
    budget = guard.DEFAULT_MAX_DROP[bkind] if max_drop is None else float(max_drop)
    model = load(fp32_path)
    if ref is None:
        ref = run_model(fp32_path, holdout)
    say("FP16: scanning activations for FP16 overflow")
    scan_x = holdout[:4]
    over = overflow_nodes(model, scan_x)
    node_block = sorted(set(over["overflow"]) | set(over["square_overflow"]))
    op_block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(EXTRA_BLOCK_OPS))
    say(f"FP16: converting ({len(node_block)} nodes kept in float for overflow)")
    attempts = []
    extra_ops: list[str] = []
    first = sorted(set(float_ops))
    tries = [first] + ([] if "LayerNormalization" in first else [first + ["LayerNormalization"]])
    for extra_ops in tries:
        blk = sorted(set(op_block) | set(extra_ops))
        with warnings.catch_warnings():  # "float32 number 1e-8 will be truncated": expected
            warnings.simplefilter("ignore")
            m16 = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blk,
                                                   node_block_list=node_block)
        casts = fix_casts(m16)
        onnx.save(m16, str(out_path))
        problem = probe(out_path, holdout[:1])
        attempts.append({"extra_block_ops": extra_ops, "error": problem})
        if problem is None:
            break
        say(f"FP16: {problem}" + ("; retrying with LayerNormalization kept in float"
                                  if extra_ops is not tries[-1] else ""))
    op_block = blk
    info: dict[str, Any] = {"method": "onnxconverter-common float16", "keep_io_types": True,
                            "op_block_list": op_block, "node_block_list": node_block,
                            "overflow_scan": {**over, "images": int(len(scan_x))},
                            "load_attempts": attempts,
                            "fallback": None, "casts_fixed": len(casts)}
    if attempts[-1]["error"] is not None:
        ok, fid, err, out = False, None, attempts[-1]["error"], None
    else:
        try:
            out = run_model(out_path, holdout)
            ok, fid = _parity(ref, out, fkind, bkind, budget)
            err = None
        except Exception as e:  # noqa: BLE001 - a graph ORT cannot run: fall back
            ok, fid, err = False, None, f"{type(e).__name__}: {str(e)[:300]}"
            out = None
    info["plain_fp16"] = {"parity_ok": ok, "fidelity": fid, "error": err}
    crashed = err is not None and "crashed" in err
    if not ok and crashed:
        info["fallback"] = {"method": "auto_mixed_precision", "skipped": "onnxruntime crashes "
                            "on this graph; mixed-precision search would run it in-process"}
    if not ok and not crashed:
        say("FP16: plain FP16 breaks parity; trying automatic mixed precision")
        name = model.graph.input[0].name
        feed = {name: holdout[:2]}
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints every bisection step
                mixed = amp.auto_convert_mixed_precision(model, feed, rtol=0.01, atol=0.001,
                                                         keep_io_types=True)
            fix_casts(mixed)
            onnx.save(mixed, str(out_path))
            problem = probe(out_path, holdout[:1])
            if problem:
                raise RuntimeError(problem)
            out = run_model(out_path, holdout)
            ok, fid = _parity(ref, out, fkind, bkind, budget)
            info["fallback"] = {"method": "auto_mixed_precision", "parity_ok": ok,
                                "rtol": 0.01, "atol": 0.001}
        except Exception as e:  # noqa: BLE001
            info["fallback"] = {"method": "auto_mixed_precision", "parity_ok": False,
                                "error": f"{type(e).__name__}: {str(e)[:300]}"}
    if not ok:
        raise ParityError(
            f"FP16 conversion breaks parity with FP32 and the mixed-precision fallback did "
            f"not fix it (plain: {info['plain_fp16']}; fallback: {info['fallback']}). "
            f"Use FP32 or INT8 for this model.")
    m = load(out_path)
    n_fp16_init = sum(1 for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    info.update({"parity": {**fid, "images": int(len(holdout)), "reference": "fp32",
                            "cosine_min_required": PARITY_COSINE_MIN},
                 "fidelity": {**fid, "images": int(len(holdout)), "reference": "fp32"},
                 "fp16_initializers": n_fp16_init,
                 "budget": {"kind": bkind, "max_drop": budget},
                 "seconds": round(time.perf_counter() - t0, 2)})
    return info, out  # the record for the manifest, and the FP16 outputs on the hold-out
