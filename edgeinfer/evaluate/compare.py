"""Models side by side on one labelled data set (``edgeinfer compare``).

The same seeded N images go to every model. Each model is loaded with ``edgeinfer.load`` (the
same engine selection as everywhere else) and run image by image, so the time per image is what
a caller waits for one photo: decode + preprocess + inference (+ zero-shot head). One untimed
image first warms the engine (and computes a CLIP model's text embeddings).

How a model's outputs become scores over the data set's K classes:

- a classifier: its classes are matched to the data set's by name (``dataset_spec``); a model
  that lacks any of them is reported as not covering the data set and is not scored (a zero
  would be a lie); its time (on the first ``TIMING_ONLY_IMAGES``), size and memory are still
  measured. Its logits are restricted to the K matched classes and soft-maxed, so every
  model answers the same K-way question (``top1_all_classes`` keeps the arg-max over all of the
  model's own classes, for models with more classes than the data set);
- a CLIP artifact: zero-shot over the data set's class names (``"a photo of a {}."``).

Metrics come from ``evaluate.metrics`` (cross-checked against scikit-learn in the tests). Costs:
params and MACs of the FP32 graph (``evaluate.layers``), the size on disk of the file that ran,
and the peak RSS of a fresh process that loads the model and classifies a few of the images
(``evaluate.serve_worker``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import EdgeInferError, InvalidOptionError
from ..runtime.model import softmax
from . import metrics
from .dataset_spec import DataSet, match_classes, open_dataset

KS = (1, 3, 5)
MEMORY_IMAGES = 8   # images the memory-measuring process classifies (decode buffers included)
TIMING_ONLY_IMAGES = 50  # a model that is not scored is only timed: 50 images give its p90


def split_precision(spec) -> tuple[Path, str | None]:
    """``DIR`` or ``DIR@fp32|fp16|int8`` (one artifact at several precisions in one comparison)."""
    from ..runtime.artifact import PRECISIONS

    s = str(spec)
    head, sep, tail = s.rpartition("@")
    if sep and tail in PRECISIONS and not Path(s).exists():
        return Path(head), tail
    return Path(s), None


def _file_size(art, precision: str, tower: str = "image") -> int | None:
    try:
        e = art.entry(precision, tower)
    except EdgeInferError:
        return None
    p = art.dir / e["file"]
    return int(p.stat().st_size) if p.exists() else None


def _peak_rss(art_dir: Path, sel, ds: DataSet, labels: list[str] | None) -> dict:
    """Peak RSS of a fresh process serving the model (``serve_worker``)."""
    import tempfile

    from ..bench.worker import run_in_subprocess

    items = ds.items[:MEMORY_IMAGES]
    spec = {"artifact": str(art_dir), "provider": sel.provider if sel.provider != "openvino" or
            not sel.device else f"openvino:{sel.device}", "precision": sel.precision,
            "labels": labels, "paths": [], "arrays": None}
    if items and not isinstance(items[0], (str, Path)):
        # in-memory images (CIFAR-10, CSV...) travel as one .npy in the temp dir, not the user's
        fd, arr = tempfile.mkstemp(prefix="edgeinfer-compare-", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.stack(items))
        spec["arrays"] = arr
    else:
        spec["paths"] = [str(p) for p in items]
    try:
        r = run_in_subprocess(spec, module="edgeinfer.evaluate.serve_worker", timeout=900)
    finally:
        if spec["arrays"]:
            Path(spec["arrays"]).unlink(missing_ok=True)
    return r


def evaluate_model(artifact_dir, ds: DataSet, *, provider: str = "auto", precision: str = "auto",
                   measure_memory: bool = True, progress: Callable[[int, int], None] | None = None) -> dict:
    """One model on one (sampled) data set: metrics, per-image scores and predictions, costs."""
    from ..runtime.artifact import Artifact
    from ..runtime.model import Failure, load

    art_dir = Path(artifact_dir)
    art = Artifact(art_dir)
    row: dict = {"artifact": str(art_dir), "name": art.name, "kind": art.kind,
                 "weights": art.weights_origin, "random_weights": art.random_weights,
                 "n": len(ds), "status": "ok"}
    if art.kind == "clip":
        mode, mapping, missing = "zero-shot", list(range(len(ds.classes))), []
    elif art.manifest.get("output", {}).get("kind", "logits") != "logits":
        row.update(status="not-a-classifier", reason=f"{art.name} outputs embeddings and is not "
                   f"a CLIP artifact: it has no classes to score")
        return row
    else:
        mode = "classifier"
        mapping, missing = match_classes(ds, art.labels)
        if missing:
            ex = ", ".join(repr(c) for c in (art.labels or [])[:4])
            row.update(status="classes-not-covered", missing_classes=missing,
                       reason=f"{len(missing)} of the data set's {len(ds.classes)} classes are not "
                              f"among {art.name}'s {len(art.labels or [])} classes (missing: "
                              f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}; "
                              f"the model has e.g. {ex or 'no labels'}); not scored, costs "
                              f"measured")
            mode = "timing-only"  # its time, size and memory still belong in the comparison
    row["mode"] = mode
    model = load(art_dir, provider=provider, precision=precision)
    sel = model.selection
    row.update(provider=sel.provider, precision=sel.precision, device=sel.device,
               selection_reason=sel.reason)
    labels = list(ds.display) if mode == "zero-shot" else None
    cols = np.asarray([-1 if c is None else c for c in mapping], dtype=np.int64)

    def scores_of(item) -> np.ndarray | Failure:
        if mode == "zero-shot":
            # the public API (the text embeddings of the labels are cached by the model)
            r = model.zero_shot([item], labels, top_k=len(labels))[0]
            if isinstance(r, Failure):
                return r
            got = dict(r)
            return np.asarray([got[x.strip()] for x in labels], np.float64)
        r = model.embed_raw([item])[0]
        return r

    K = len(ds.classes)
    probs = np.full((len(ds), K), np.nan)
    all_top1: list[int | None] = [None] * len(ds)
    times: list[float] = []
    failures: list[dict] = []
    try:
        if len(ds):
            scores_of(ds.items[0])  # warm-up: engine first run, CLIP text embeddings
        for i, item in enumerate(ds.items):
            t0 = time.perf_counter()
            r = scores_of(item)
            if mode == "timing-only":
                times.append((time.perf_counter() - t0) * 1000.0)
                if progress:
                    progress(i + 1, len(ds))
                if len(times) >= TIMING_ONLY_IMAGES:
                    if progress:
                        progress(len(ds), len(ds))
                    break
                continue
            if isinstance(r, np.ndarray) and mode == "classifier":
                full = np.asarray(r, np.float64).reshape(-1)
                p = softmax(np.asarray(full[cols], np.float64))
                all_top1[i] = int(full.argmax())
            else:
                p = r
            times.append((time.perf_counter() - t0) * 1000.0)
            if isinstance(p, Failure):
                failures.append({"item": ds.ids[i], "error": p.error})
            else:
                probs[i] = p
            if progress:
                progress(i + 1, len(ds))
    finally:
        model.close()
    ok = ~np.isnan(probs).any(axis=1)
    t = np.asarray(ds.targets, np.int64)
    row["n_scored"] = int(ok.sum())
    row["failures"] = failures
    if mode == "timing-only":
        row["n_scored"] = 0
    elif ok.any():
        met = metrics.classification_metrics(probs[ok], t[ok], class_names=list(ds.display), ks=KS,
                                       with_curves=True)
        # "precision" of a row is the file's precision (fp32/int8); the metric is macro_precision
        row.update({k: met[k] for k in ("top1", "top3", "top5", "mcc", "roc_auc", "average_precision")})
        row.update(macro_precision=met["precision"], macro_recall=met["recall"], macro_f1=met["f1"])
        cm, _ = metrics.confusion_matrix(t[ok], probs[ok].argmax(axis=1), labels=list(range(K)))
        row["confusion"] = cm.tolist()
        row["per_class"] = {ds.display[c]: v for c, v in
                            metrics.per_class_curves(probs[ok], t[ok]).items()}
        if mode == "classifier" and len(art.labels or []) > K:
            hits = [all_top1[i] == mapping[t[i]] for i in np.flatnonzero(ok)]
            row["top1_all_classes"] = float(np.mean(hits))
    else:
        row["status"] = "failed"
        row["reason"] = "no image could be scored" + (f": {failures[0]['error']}" if failures else "")
    tm = np.asarray(times, np.float64)
    if len(tm):
        row.update(time_mean_ms=float(tm.mean()), time_median_ms=float(np.median(tm)),
                   time_p90_ms=float(np.percentile(tm, 90)),
                   images_per_s=float(1000.0 / tm.mean()) if tm.mean() > 0 else None)
    from .layers import model_size_counts

    row.update(model_size_counts(art_dir))
    row["size_bytes"] = _file_size(art, sel.precision)
    if art.kind == "clip":
        row["text_size_bytes"] = _file_size(art, sel.precision, "text") or \
            _file_size(art, "fp32", "text")
    if measure_memory:
        mem = _peak_rss(art_dir, sel, ds, labels)
        row["peak_rss_mb"] = mem.get("peak_rss_mb") if mem.get("ok") else None
        if not mem.get("ok"):
            row["memory_error"] = mem.get("error")
    row["_probs"] = probs  # removed before JSON; the report and scores.npz use it
    return row


def compare(artifacts: Sequence, data, *, n: int | None = 200, seed: int = 0,
            provider: str = "auto", precision: str = "auto", measure_memory: bool = True,
            progress: Callable[[str, int, int, int, int], None] | None = None,
            command: str | None = None) -> dict:
    """Evaluate every artifact on the same ``n`` images of ``data`` (any ``open_dataset`` spec).

    An artifact may be given as ``DIR@int8`` (or ``@fp16`` / ``@fp32``) to pin its precision, so
    one model at two precisions can sit side by side; otherwise ``precision`` applies to all.

    ``progress(name, model_index, models, done, total)`` is called after each image. Returns the
    results dict that ``compare_report.write_all`` writes out.
    """
    from .. import __version__

    if not artifacts:
        raise InvalidOptionError("give at least one artifact directory to compare")
    full = open_dataset(data)
    ds = full.sample(n, seed=seed)
    models = []
    for mi, spec in enumerate(artifacts):
        a, prec = split_precision(spec)
        name = Path(a).name + (f"@{prec}" if prec else "")

        def cb(done, total, _n=name, _i=mi):
            if progress:
                progress(_n, _i, len(artifacts), done, total)

        try:
            models.append(evaluate_model(a, ds, provider=provider, precision=prec or precision,
                                         measure_memory=measure_memory, progress=cb))
        except EdgeInferError as e:
            models.append({"artifact": str(a), "name": name, "status": "error", "reason": str(e)})
        if progress:
            progress(name, mi, len(artifacts), len(ds), len(ds))
    from ..bench.fingerprint import machine_fingerprint

    present = ds.present()
    return {
        "kind": "edgeinfer-compare", "edgeinfer_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "data": {"spec": str(data), "source": full.source, "size": len(full), "n": len(ds),
                 "seed": seed, "classes": list(ds.display), "class_keys": list(ds.classes),
                 "classes_in_sample": [ds.display[c] for c in present],
                 "support": [int(ds.targets.count(c)) for c in range(len(ds.classes))]},
        "items": list(ds.ids), "targets": list(ds.targets),
        "requested": {"provider": provider, "precision": precision},
        "random_weights": any(m.get("random_weights") for m in models),
        "models": models,
        "machine": machine_fingerprint(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "metric_notes": [
            "scores are restricted to the data set's classes and soft-maxed (CLIP: zero-shot over "
            "the class names); top1_all_classes is the arg-max over all of a model's own classes",
            "precision, recall, F1: macro over the classes present in the sample or predicted "
            "(zero_division=0); ROC AUC and average precision: macro one-vs-rest over the "
            "classes present in the sample",
            "time per image: decode + preprocess + inference, one image at a time, after one "
            "warm-up image; params and MACs: FP32 graph at batch 1 (onnx-tool, element-wise ops "
            "included); peak RSS: a fresh process that loads the model and classifies "
            f"{MEMORY_IMAGES} images",
        ],
    }
