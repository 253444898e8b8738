"""Parity: does the ONNX file compute what the torch module computes?

Both run on the same preprocessed batch (``edgeinfer.runtime.preprocess`` with the manifest's
``preprocess`` section, i.e. exactly what the runtime will feed the model): real images from a
folder (up to ``MAX_IMAGES``; undecodable files are skipped and counted) or, when no folder is
given, deterministic generated images. ONNX runs on ONNX Runtime CPU in batches whose sizes differ
from the export example's, which also proves the batch axis is dynamic.

Tolerance: cosine similarity >= ``COSINE_MIN`` for every image, and a max-abs difference within
``RTOL * max|reference| + ATOL`` (relative to the output scale, so logits of any magnitude and
unnormalised embeddings are judged alike).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ImageError, InvalidOptionError, ParityError
from ..evaluate.synthetic import generated_images, synthetic_image  # noqa: F401 - one generator

COSINE_MIN = 0.9999
RTOL = 1e-3
ATOL = 1e-5
MAX_IMAGES = 32
N_GENERATED = 16
BATCH = 8


# ---------------------------------------------------------------- images
def parity_batch(spec: dict, images: str | os.PathLike | None = None, *,
                 max_images: int = MAX_IMAGES) -> tuple[np.ndarray, dict]:
    """(NCHW float32 batch, info) from ``images`` (a folder) or generated images.

    info: {"source": "photos"|"generated", "images": n, "skipped": k, "folder": str|None}.
    """
    from ..runtime.preprocess import list_images, preprocess_image

    if images is None:
        batch = np.stack([preprocess_image(im, spec) for im in generated_images()])
        return batch, {"source": "generated", "images": len(batch), "skipped": 0, "folder": None}
    folder = Path(images)
    if not folder.is_dir():
        raise InvalidOptionError(f"--images {folder}: not a directory. Give a folder of images "
                                 f"(flat or ImageFolder), or leave it out to use generated images.")
    paths = list_images(folder)
    if not paths:
        raise ImageError(f"--images {folder}: no image files (.jpg/.png/...) found.")
    # spread the picks over the folder (sorted by class in ImageFolder / synset naming)
    step = max(1, math.ceil(len(paths) / max_images))
    picks = paths[::step]
    rest = [p for p in paths if p not in set(picks)]
    arrays, skipped, bad = [], 0, []
    for p in picks + rest:
        if len(arrays) >= max_images:
            break
        try:
            arrays.append(preprocess_image(p, spec))
        except ImageError as e:
            skipped += 1
            bad.append(f"{p.name}: {e}")
    if not arrays:
        raise ImageError(f"--images {folder}: none of the {skipped} images could be decoded "
                         f"(first: {bad[0] if bad else '?'}).")
    return np.stack(arrays), {"source": "photos", "images": len(arrays), "skipped": skipped,
                              "folder": str(folder.absolute())}


# ---------------------------------------------------------------- running both sides
def torch_outputs(module: Any, batch: np.ndarray, *, batch_size: int = BATCH) -> np.ndarray:
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(0, len(batch), batch_size):
            y = module(torch.from_numpy(np.ascontiguousarray(batch[i:i + batch_size])))
            if isinstance(y, (tuple, list)):
                y = y[0]
            outs.append(y.float().cpu().numpy())
    return np.concatenate(outs)


def onnx_outputs(path: str | os.PathLike, batch: np.ndarray, *, batch_size: int = BATCH,
                 threads: int | None = None) -> np.ndarray:
    """ONNX Runtime CPU outputs (first output) in batches of ``batch_size`` (and a remainder)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = []
    for i in range(0, len(batch), batch_size):
        outs.append(sess.run(None, {name: np.ascontiguousarray(batch[i:i + batch_size])})[0])
    return np.concatenate(outs).astype(np.float32)


# ---------------------------------------------------------------- comparison
def compare_outputs(reference: np.ndarray, actual: np.ndarray, *, kind: str = "logits") -> dict:
    """Parity metrics of ``actual`` against ``reference`` (both [N, ...])."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    act = np.asarray(actual, np.float64).reshape(len(actual), -1)
    if ref.shape != act.shape:
        raise ParityError(f"output shapes differ: reference {reference.shape} vs ONNX {actual.shape}")
    if not np.all(np.isfinite(act)):
        raise ParityError("the ONNX model produced NaN/inf outputs")
    nr, na = np.linalg.norm(ref, axis=1), np.linalg.norm(act, axis=1)
    both_zero = (nr == 0) & (na == 0)
    cos = np.where(both_zero, 1.0, (ref * act).sum(1) / np.maximum(nr * na, 1e-30))
    diff = np.abs(ref - act)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    top1 = None
    if kind == "logits" and ref.shape[1] > 1:
        top1 = float(np.mean(ref.argmax(1) == act.argmax(1)))
    return {"images": int(len(ref)), "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "output_scale": scale, "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "top1_agreement": top1}


def check_tolerance(metrics: dict, *, cosine_min: float = COSINE_MIN, rtol: float = RTOL,
                    atol: float = ATOL, what: str = "ONNX FP32") -> dict:
    """Add the tolerance to ``metrics``; raise ParityError when outside it."""
    bound = rtol * metrics["output_scale"] + atol
    metrics["tolerance"] = {"cosine_min": cosine_min, "max_abs_diff": bound,
                            "rtol": rtol, "atol": atol}
    problems = []
    if metrics["cosine_min"] < cosine_min:
        problems.append(f"cosine similarity {metrics['cosine_min']:.6f} < {cosine_min}")
    if metrics["max_abs_diff"] > bound:
        problems.append(f"max abs diff {metrics['max_abs_diff']:.3g} > {bound:.3g} "
                        f"({rtol:g} x output scale {metrics['output_scale']:.3g} + {atol:g})")
    if problems:
        raise ParityError(f"{what} does not match PyTorch on {metrics['images']} images: "
                          + "; ".join(problems) + ". Nothing was written.")
    return metrics


def check_parity(module: Any, onnx_path: str | os.PathLike, spec: dict, *,
                 images: str | os.PathLike | None = None, kind: str = "logits",
                 batch: np.ndarray | None = None, batch_info: dict | None = None,
                 reference: np.ndarray | None = None) -> dict:
    """Run torch and ONNX Runtime on the same preprocessed images; the manifest's parity entry.

    Raises ParityError when out of tolerance. ``batch``/``reference`` can be passed to reuse them
    (e.g. when re-checking an unsimplified fallback graph).
    """
    if batch is None:
        batch, batch_info = parity_batch(spec, images)
    batch_info = batch_info or {"source": "given", "images": len(batch), "skipped": 0}
    ref = torch_outputs(module, batch) if reference is None else reference
    out = onnx_outputs(onnx_path, batch)
    metrics = compare_outputs(ref, out, kind=kind)
    result = {"images": metrics["images"], "source": batch_info["source"],
              "skipped_images": batch_info.get("skipped", 0),
              **{k: metrics[k] for k in ("max_abs_diff", "mean_abs_diff", "output_scale",
                                         "cosine_min", "cosine_mean", "top1_agreement")},
              "reference": "torch", "runtime": "onnxruntime-cpu"}
    check_tolerance(result)
    return result


def parity_inputs(module: Any, spec: dict, images: str | os.PathLike | None
                  ) -> tuple[np.ndarray, dict, np.ndarray]:
    """(batch, info, torch reference outputs): computed once, reused for fallbacks."""
    batch, info = parity_batch(spec, images)
    return batch, info, torch_outputs(module, batch)


__all__: Sequence[str] = ("check_parity", "compare_outputs", "check_tolerance", "parity_batch",
                          "parity_inputs", "generated_images", "torch_outputs", "onnx_outputs",
                          "COSINE_MIN")
