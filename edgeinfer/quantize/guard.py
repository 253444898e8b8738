"""Accuracy guard: fidelity to FP32 on held-out images, budget check, node sensitivity ranking.

Budget (``max_drop``): classifiers -> points of top-1 agreement with FP32 lost (default 1.0,
i.e. at least 99% of held-out images keep FP32's top-1); embedding models -> loss of mean cosine
similarity to FP32 (default 0.01, i.e. cosine >= 0.99).

Sensitivity: the quantized model is run on a few calibration images with every quantized
activation exposed before and after its QuantizeLinear/DequantizeLinear pair; a node's score is
the relative error its own inputs get from INT8. Nodes are kept in float worst-first until the
budget is met.
"""
from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_MAX_DROP = {"classifier": 1.0, "embedding": 0.01}


def _fid_fallback(ref: np.ndarray, out: np.ndarray, kind: str) -> dict:
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    out = out.reshape(len(out), -1).astype(np.float64)
    num = (ref * out).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    d = {"n": int(len(ref)), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
         "max_abs_diff": float(np.abs(ref - out).max()) if ref.size else 0.0}
    if kind == "classifier" and ref.shape[1] > 1:
        t1r, t1o = ref.argmax(1), out.argmax(1)
        d["top1_agreement"] = float((t1r == t1o).mean())
        k = min(5, ref.shape[1])
        tr = np.argsort(-ref, 1)[:, :k]
        to = np.argsort(-out, 1)[:, :k]
        d["top5_overlap"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(tr, to)]))
    else:
        d["top1_agreement"] = None
        d["top5_overlap"] = None
    return d


def fidelity(ref: np.ndarray, out: np.ndarray, kind: str = "classifier") -> dict:
    """Top-1 agreement, top-5 overlap, cosine mean/min, max abs diff of ``out`` vs ``ref``.

    One definition for bench and quantize: edgeinfer.evaluate.fidelity (ours is the fallback).
    """
    try:
        from ..evaluate.fidelity import fidelity as ev_fidelity
    except ImportError:  # pragma: no cover - evaluate ships with the package
        return _fid_fallback(ref, out, kind)
    d = ev_fidelity(ref, out, kind="logits" if kind == "classifier" else "embedding")
    d.pop("kind", None)
    return d


def labelled_accuracy(logits: np.ndarray, labels: list[int | None]) -> float | None:
    idx = [i for i, y in enumerate(labels) if y is not None]
    if not idx:
        return None
    pred = logits[idx].argmax(1)
    return float((pred == np.asarray([labels[i] for i in idx])).mean())


def budget_kind(output_kind: str) -> str:
    return "classifier" if output_kind == "logits" else "embedding"


def drop(fid: dict, kind: str) -> float:
    """How much was lost, in the budget's unit."""
    if kind == "classifier" and fid.get("top1_agreement") is not None:
        return round((1.0 - fid["top1_agreement"]) * 100.0, 4)
    return round(1.0 - fid["cosine_mean"], 6)


def within(fid: dict, kind: str, max_drop: float) -> bool:
    return drop(fid, kind) <= max_drop + 1e-9


def budget_text(kind: str, max_drop: float) -> str:
    if kind == "classifier":
        return f"top-1 agreement with FP32 >= {100 - max_drop:.2f}% (max drop {max_drop} points)"
    return f"mean cosine to FP32 >= {1 - max_drop:.4f} (max drop {max_drop})"


def rank_by_input_error(float_model, quant_path, x: np.ndarray, candidates: list[str], *,
                     batch: int = 4) -> list[tuple[str, float]]:
    """Candidates (node names) ranked by the INT8 error at their own inputs, worst first.

    For every quantized node, each activation input goes float X -> QuantizeLinear ->
    DequantizeLinear -> node. The relative error ||X - DQ(Q(X))|| / ||X|| on calibration images is
    the error that quantizing this node's inputs introduces, independent of what happened
    upstream (accumulated-error differences mislead once errors compound). A tensor with a few
    outlier values (a wide range and a small typical magnitude) scores high. Keeping the node in
    float removes exactly these QDQ pairs for it.
    """
    from .graph import onnx_mod, session, with_outputs

    onnx = onnx_mod()
    qm = onnx.load(str(quant_path))
    producer = {o: n for n in qm.graph.node for o in n.output}
    inits = {i.name for i in qm.graph.initializer}
    by_name = {n.name: n for n in qm.graph.node}
    pairs: dict[str, list[tuple[str, str]]] = {}
    for name in candidates:
        n = by_name.get(name)
        if n is None:
            continue
        for i in n.input:
            dq = producer.get(i)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
                continue
            pairs.setdefault(name, []).append((q.input[0], i))
    names = sorted({t for ps in pairs.values() for pr in ps for t in pr})
    if not names:
        return []
    qs = session(with_outputs(qm, names).SerializeToString())
    in_name = qs.get_inputs()[0].name
    outs = [o.name for o in qs.get_outputs()]
    num: dict[tuple[str, str], float] = {}
    den: dict[tuple[str, str], float] = {}
    allpairs = sorted({pr for ps in pairs.values() for pr in ps})
    for b in range(0, len(x), batch):
        r = dict(zip(outs, qs.run(None, {in_name: x[b:b + batch]})))
        for xf, xq in allpairs:
            a, c = r.get(xf), r.get(xq)
            if a is None or c is None or a.shape != c.shape:
                continue
            a = a.astype(np.float64)
            num[(xf, xq)] = num.get((xf, xq), 0.0) + float(((a - c) ** 2).sum())
            den[(xf, xq)] = den.get((xf, xq), 0.0) + float((a ** 2).sum())
    scores = []
    for name, ps in pairs.items():
        errs = [(num[p] / den[p]) ** 0.5 for p in ps if den.get(p, 0.0) > 0]
        if errs:
            scores.append((name, max(errs)))
    scores.sort(key=lambda s: -s[1])
    return scores


def rank_by_added_error(float_model, quant_path, x: np.ndarray, candidates: list[str], *,
                     batch: int = 4) -> list[tuple[str, float]]:
    """Candidates ranked by the error each adds, worst first.

    The float and the QDQ model run on calibration images with every activation exposed; a
    node's score is the relative error of its output minus the largest relative error already on
    its inputs. Measured on random-weight MobileNetV3 this ordering needs far fewer nodes in float
    than ranking by input error alone (the error there is spread over many layers).
    """
    from .graph import float_tensor_outputs, onnx_mod, session, with_outputs

    onnx = onnx_mod()
    produced = float_tensor_outputs(float_model)           # tensor -> node
    qm = onnx.load(str(quant_path))
    q_tensors = {o for n in qm.graph.node for o in n.output}
    names = [t for t in produced if t in q_tensors]
    fs = session(with_outputs(float_model, names).SerializeToString())
    qs = session(with_outputs(qm, names).SerializeToString())
    in_name = fs.get_inputs()[0].name
    f_out = [o.name for o in fs.get_outputs()]
    q_out = [o.name for o in qs.get_outputs()]
    err_num: dict[str, float] = {t: 0.0 for t in names}
    err_den: dict[str, float] = {t: 0.0 for t in names}
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        fr = dict(zip(f_out, fs.run(None, {in_name: xb})))
        qr = dict(zip(q_out, qs.run(None, {in_name: xb})))
        for t in names:
            a, b = fr.get(t), qr.get(t)
            if a is None or b is None or a.shape != b.shape:
                continue
            a = a.astype(np.float64)
            err_num[t] += float(((a - b) ** 2).sum())
            err_den[t] += float((a ** 2).sum())
    rel = {t: (err_num[t] / err_den[t]) ** 0.5 if err_den[t] > 0 else 0.0 for t in names}
    by_node = {n.name: n for n in float_model.graph.node}
    consumers: dict[str, list] = {}
    for n in float_model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def seen_as(t: str) -> str | None:
        # The quantizer folds Relu/Clip into the preceding node and renames its output to the
        # activation's output: follow such single-consumer chains to the name the QDQ model has.
        for _ in range(4):
            if t in rel:
                return t
            c = consumers.get(t, [])
            if len(c) != 1 or c[0].op_type not in ("Relu", "Clip", "Identity"):
                return None
            t = c[0].output[0]
        return t if t in rel else None

    scores = []
    for name in candidates:
        n = by_node.get(name)
        if n is None:
            continue
        outs = [rel[t] for t in (seen_as(o) for o in n.output) if t]
        if not outs:
            continue
        ins = [rel[i] for i in n.input if i in rel]
        scores.append((name, max(outs) - (max(ins) if ins else 0.0)))
    scores.sort(key=lambda s: -s[1])
    return scores


def summarize_guard(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.items() if k != "fid"} | {"drop": s.get("drop")} for s in steps]
