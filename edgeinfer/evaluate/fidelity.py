"""Fidelity of a model's outputs to a reference (usually the FP32 model on the same inputs).

Always available, and the only honest accuracy measure for randomly initialised weights:

- top-1 agreement: the fraction of rows whose argmax is the same;
- top-5 overlap: the mean size of the intersection of the two top-5 sets, divided by 5;
- cosine similarity of the raw output vectors per row (mean and min);
- max absolute difference.

For embedding outputs (CLIP) the arg-max based numbers are meaningless; ``fidelity`` then
reports them as None (``kind="embedding"``).
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidOptionError
from .metrics import topk_predictions


def cosine_per_row(a, b, eps: float = 1e-12) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, eps)
    # two all-zero rows are identical
    cos[(na < eps) & (nb < eps)] = 1.0
    return cos


def top1_agreement(reference, candidate) -> float:
    r = np.asarray(reference)
    c = np.asarray(candidate)
    return float((r.argmax(axis=1) == c.argmax(axis=1)).mean())


def topk_overlap(reference, candidate, k: int = 5) -> float:
    r = np.asarray(reference)
    k = min(k, r.shape[1])
    tr = topk_predictions(r, k)
    tc = topk_predictions(candidate, k)
    inter = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(tr, tc)]
    return float(np.mean(inter) / k)


def fidelity(reference, candidate, *, kind: str = "logits") -> dict:
    """Fidelity numbers of ``candidate`` outputs against ``reference`` outputs (same rows)."""
    r = np.asarray(reference, np.float32)
    c = np.asarray(candidate, np.float32)
    if r.shape != c.shape:
        raise InvalidOptionError(f"reference and candidate outputs differ in shape: "
                                 f"{r.shape} vs {c.shape}")
    if len(r) == 0:
        raise InvalidOptionError("no outputs to compare (0 rows)")
    if r.ndim == 1:
        r, c = r[None], c[None]
    cos = cosine_per_row(r, c)
    out = {
        "n": int(len(r)),
        "kind": kind,
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_diff": float(np.abs(r - c).max()),
        "top1_agreement": None,
        "top5_overlap": None,
    }
    if kind == "logits" and r.ndim == 2 and r.shape[1] > 1:
        out["top1_agreement"] = top1_agreement(r, c)
        out["top5_overlap"] = topk_overlap(r, c, 5)
    return out


def passes(fid: dict | None, *, cosine_mean_min: float = 0.99, top1_agreement_min: float = 0.95) -> bool:
    """Whether a fidelity result meets the guard (used to choose what ``auto`` may pick)."""
    if not fid:
        return False
    if fid.get("cosine_mean") is None or fid["cosine_mean"] < cosine_mean_min:
        return False
    agree = fid.get("top1_agreement")
    return agree is None or agree >= top1_agreement_min
