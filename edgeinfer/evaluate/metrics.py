"""Labelled classification metrics, numpy only (no scikit-learn at runtime).

Definitions follow scikit-learn's so the numbers can be cross-checked there:

- top-k accuracy: the true class is among the k highest scores;
- macro precision / recall / F1: the unweighted mean over classes, where the class set is the
  union of the true and predicted classes (sklearn's ``labels=None``) and 0/0 counts as 0
  (sklearn's ``zero_division=0``);
- MCC: the multiclass Matthews correlation coefficient (Gorodkin's R_K, sklearn's formula);
- confusion matrix: rows = true class, columns = predicted class, over the classes present.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InvalidOptionError


def _as_scores(scores) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2:
        raise InvalidOptionError(f"scores must be a 2-D array [N, classes], got shape {s.shape}")
    return s


def topk_predictions(scores, k: int = 5) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first ([N, k])."""
    s = _as_scores(scores)
    k = min(int(k), s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def topk_accuracy(scores, targets, k: int = 1) -> float:
    """Fraction of rows whose true class is among the ``k`` highest scores."""
    s = _as_scores(scores)
    t = np.asarray(targets).astype(np.int64)
    if len(t) != len(s):
        raise InvalidOptionError(f"{len(s)} score rows but {len(t)} targets")
    if len(t) == 0:
        return float("nan")
    top = topk_predictions(s, k)
    return float((top == t[:, None]).any(axis=1).mean())


def confusion_matrix(y_true, y_pred, labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, labels): counts with rows = true class, columns = predicted class."""
    yt = np.asarray(y_true).astype(np.int64)
    yp = np.asarray(y_pred).astype(np.int64)
    lab = np.unique(np.concatenate([yt, yp])) if labels is None else np.asarray(labels, np.int64)
    index = {int(c): i for i, c in enumerate(lab)}
    n = len(lab)
    cm = np.zeros((n, n), dtype=np.int64)
    for a, b in zip(yt, yp):
        i, j = index.get(int(a)), index.get(int(b))
        if i is not None and j is not None:
            cm[i, j] += 1
    return cm, lab


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def precision_recall_f1(y_true, y_pred) -> dict:
    """Macro-averaged precision, recall and F1 (sklearn ``average='macro'``, zero_division=0)."""
    cm, _ = confusion_matrix(y_true, y_pred)
    tp = np.diag(cm).astype(np.float64)
    pred = cm.sum(axis=0).astype(np.float64)
    true = cm.sum(axis=1).astype(np.float64)
    p = _safe_div(tp, pred)
    r = _safe_div(tp, true)
    f1 = _safe_div(2 * p * r, p + r)
    if len(tp) == 0:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    return {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f1.mean())}


def matthews_corrcoef(y_true, y_pred) -> float:
    """Multiclass MCC (sklearn's formula); 0.0 when undefined."""
    cm, _ = confusion_matrix(y_true, y_pred)
    cm = cm.astype(np.float64)
    t = cm.sum(axis=1)
    p = cm.sum(axis=0)
    c = np.trace(cm)
    s = cm.sum()
    cov_ytyp = c * s - t @ p
    cov_ypyp = s * s - p @ p
    cov_ytyt = s * s - t @ t
    den = cov_ytyt * cov_ypyp
    if den == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(den))


def classification_metrics(scores, targets, *, class_names: Sequence[str] | None = None,
                           with_confusion: bool = True) -> dict:
    """All labelled metrics for one model output: scores [N, C] against integer targets [N].

    Returns top1, top5, precision, recall, f1 (macro), mcc, n, and the confusion matrix over
    the classes present (``confusion``: {"labels": [...], "matrix": [[...]]}).
    """
    s = _as_scores(scores)
    t = np.asarray(targets).astype(np.int64)
    pred = s.argmax(axis=1)
    out = {"n": int(len(t)), "top1": topk_accuracy(s, t, 1),
           "top5": topk_accuracy(s, t, min(5, s.shape[1]))}
    out.update(precision_recall_f1(t, pred))
    out["mcc"] = matthews_corrcoef(t, pred)
    if with_confusion:
        cm, lab = confusion_matrix(t, pred)
        names = [class_names[i] if class_names is not None and 0 <= i < len(class_names) else str(i)
                 for i in lab.tolist()]
        out["confusion"] = {"labels": lab.tolist(), "names": names, "matrix": cm.tolist()}
    return out
