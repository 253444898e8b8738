"""Labelled classification metrics, numpy only (no scikit-learn at runtime).

Definitions follow scikit-learn's so the numbers can be cross-checked there:

- top-k accuracy: the true class is among the k highest scores;
- macro precision / recall / F1: the unweighted mean over classes, where the class set is the
  union of the true and predicted classes (sklearn's ``labels=None``) and 0/0 counts as 0
  (sklearn's ``zero_division=0``);
- MCC: the multiclass Matthews correlation coefficient (Gorodkin's R_K, sklearn's formula);
- confusion matrix: rows = true class, columns = predicted class, over the classes present;
- ROC / PR curves and their areas per class, one-vs-rest (sklearn's ``roc_curve`` with
  ``drop_intermediate=False``, ``auc``, ``precision_recall_curve``, ``average_precision_score``);
- macro one-vs-rest ROC AUC / average precision: the mean over the classes that occur in the
  sample (a class with no positive has no ROC curve; sklearn's ``roc_auc_score(multi_class="ovr")``
  raises there, so the test compares with its per-class binary scores averaged over those classes).
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


def _binary_counts(y_true, score):
    """Cumulative (false positives, true positives, thresholds) at each distinct score, highest
    first (ties form one step, as in sklearn's ``_binary_clf_curve``)."""
    y = np.asarray(y_true).astype(bool)
    sc = np.asarray(score, np.float64)
    order = np.argsort(-sc, kind="mergesort")
    sc, y = sc[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(sc)), len(sc) - 1]   # last index of each distinct score
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    return fps, tps, sc[last]


def roc_curve(y_true, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of a binary problem; starts at (0, 0) with threshold +inf.
    NaN rates when the sample has no positive (or no negative)."""
    fps, tps, thr = _binary_counts(y_true, score)
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thr = np.r_[np.inf, thr]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thr


def auc(x, y) -> float:
    """Area under a curve by the trapezoidal rule (x monotonic)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return float("nan")
    return float(abs(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0)))


def roc_auc(y_true, score) -> float:
    """Binary ROC AUC; NaN when the sample has only one class."""
    y = np.asarray(y_true).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, score)
    return auc(fpr, tpr)


def precision_recall_curve(y_true, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), recall decreasing, ending at (1, 0) like sklearn's."""
    fps, tps, thr = _binary_counts(y_true, score)
    ps = tps + fps
    precision = _safe_div(tps, ps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(y_true, score) -> float:
    """Binary average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (sklearn's
    definition, no interpolation); NaN without positives."""
    y = np.asarray(y_true).astype(bool)
    if not y.any():
        return float("nan")
    p, r, _ = precision_recall_curve(y, score)
    return float(-np.sum(np.diff(r) * p[:-1]))


def per_class_curves(probs, targets, *, classes: Sequence[int] | None = None) -> dict:
    """One-vs-rest ROC and PR areas per class index (only classes that occur in ``targets``
    have them; the others get None). ``probs`` [N, C] are per-class scores."""
    s = _as_scores(probs)
    t = np.asarray(targets).astype(np.int64)
    classes = range(s.shape[1]) if classes is None else classes
    out = {}
    for c in classes:
        y = t == c
        if not y.any() or y.all():
            out[int(c)] = None
            continue
        out[int(c)] = {"roc_auc": roc_auc(y, s[:, c]), "average_precision": average_precision(y, s[:, c]),
                       "support": int(y.sum())}
    return out


def macro_roc_auc(probs, targets) -> float:
    """Macro one-vs-rest ROC AUC over the classes present in ``targets`` (NaN if none has both
    positives and negatives)."""
    vals = [v["roc_auc"] for v in per_class_curves(probs, targets).values() if v]
    return float(np.mean(vals)) if vals else float("nan")


def macro_average_precision(probs, targets) -> float:
    vals = [v["average_precision"] for v in per_class_curves(probs, targets).values() if v]
    return float(np.mean(vals)) if vals else float("nan")


def classification_metrics(scores, targets, *, class_names: Sequence[str] | None = None,
                           with_confusion: bool = True, ks: Sequence[int] = (1, 5),
                           with_curves: bool = False) -> dict:
    """All labelled metrics for one model output: scores [N, C] against integer targets [N].

    Returns ``top{k}`` for every k in ``ks`` (capped at C), precision, recall, f1 (macro), mcc,
    n, and the confusion matrix over the classes present (``confusion``: {"labels": [...],
    "matrix": [[...]]}). ``with_curves``: also the macro one-vs-rest ``roc_auc`` and
    ``average_precision`` (scores should then be probabilities or any monotonic per-class score).
    """
    s = _as_scores(scores)
    t = np.asarray(targets).astype(np.int64)
    pred = s.argmax(axis=1)
    out = {"n": int(len(t))}
    for k in ks:
        out[f"top{int(k)}"] = topk_accuracy(s, t, min(int(k), s.shape[1]))
    out.update(precision_recall_f1(t, pred))
    out["mcc"] = matthews_corrcoef(t, pred)
    if with_curves:
        out["roc_auc"] = macro_roc_auc(s, t)
        out["average_precision"] = macro_average_precision(s, t)
    if with_confusion:
        cm, lab = confusion_matrix(t, pred)
        names = [class_names[i] if class_names is not None and 0 <= i < len(class_names) else str(i)
                 for i in lab.tolist()]
        out["confusion"] = {"labels": lab.tolist(), "names": names, "matrix": cm.tolist()}
    return out
