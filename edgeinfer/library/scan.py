"""Incremental scan: list -> skip unchanged -> decode once -> every model -> one transaction per batch.

The scan is split so that any engine can do the middle part:

- ``plan_scan(store, roots, models)`` (cheap, local): list the photo files, compare with the store
  by (size, mtime), then by content sha256 for files whose (size, mtime) changed, and say per
  photo which models still have to run; photos that disappeared are listed for deletion.
- ``process_batch(models, records)`` (pure: no store access): decode each photo ONCE (JPEG draft
  decoding at the largest scale any model needs), run every model that the photo still needs on
  the decoded images, and return ``PhotoResult``s. The local engine calls it in-process; the Ray
  engine (``edgeinfer/library/ray_engine.py``) calls the same function in its workers with
  models created by ``LibraryModel.from_artifact``.
- ``Store.write_results(results)``: one transaction per batch.

``run_scan(store, roots, models, ...)`` runs the three with the local engine and reports progress.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import EdgeInferError, ImageError
from .store import PhotoResult, Store

log = logging.getLogger("edgeinfer.library")

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".heic"}
DEFAULT_BATCH = 16
DEFAULT_TOP_K = 5


class ScanError(EdgeInferError):
    """A scan cannot start (missing folder, path outside the library roots...)."""


# ------------------------------------------------------------------ models
class LibraryModel:
    """A runtime Model as the library uses it: its identity (sha256 of the ONNX file that runs),
    name and kind (classifier -> tags, clip -> image embedding)."""

    def __init__(self, model, *, artifact_dir: str | os.PathLike | None = None, name: str | None = None):
        self.model = model
        self.artifact_dir = str(artifact_dir or model.artifact.dir)
        self.name = name or model.artifact.name
        self.kind = "clip" if model.artifact.kind == "clip" else (
            "classifier" if model.output_kind == "logits" else "embedding")
        self.sha256 = model.artifact.entry(model.precision).get("sha256")
        if not self.sha256:
            raise EdgeInferError(f"artifact {self.artifact_dir} records no sha256 for its "
                                 f"{model.precision} file; re-export it")
        self.spec = model.artifact.preprocess
        self.dim = (model.artifact.manifest.get("output") or {}).get("dim")

    @classmethod
    def from_artifact(cls, artifact_dir, *, provider: str = "auto", precision: str = "auto",
                      threads: int | None = None, batch_size: int | None = None) -> "LibraryModel":
        import edgeinfer

        kw = {} if batch_size is None else {"batch_size": batch_size}
        return cls(edgeinfer.load(artifact_dir, provider=provider, precision=precision, threads=threads, **kw),
                   artifact_dir=artifact_dir)

    def register(self, store: Store) -> None:
        store.register_model(sha256=self.sha256, name=self.name, kind=self.kind,
                             precision=self.model.precision, artifact=self.artifact_dir, dim=self.dim,
                             weights=self.model.artifact.weights_origin)

    def close(self) -> None:
        self.model.close()


# ------------------------------------------------------------------ plan
@dataclass
class PhotoRecord:
    """One photo the scan must (re)process, and for which models."""
    path: str
    size: int
    mtime: float
    sha256: str | None = None              # filled by the planner when it had to hash
    photo_id: int | None = None
    models: list[str] = field(default_factory=list)  # model sha256s still to run


@dataclass
class ScanPlan:
    todo: list[PhotoRecord]
    deleted: list[int]
    unchanged: int
    touched: list[tuple[int, int, float]]  # same content, new (size, mtime)
    listed: int


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def list_photos(root: str | os.PathLike) -> list[tuple[str, int, float]]:
    """(path, size, mtime) of the image files under ``root``. Symlinks are not followed: a link
    could lead out of the library root (and into loops)."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith(".") or Path(fn).suffix.lower() not in IMAGE_EXTS:
                continue
            p = os.path.join(dirpath, fn)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if not os.path.isfile(p) or os.path.islink(p):
                continue
            out.append((os.path.abspath(p), st.st_size, st.st_mtime))
    return out


def plan_scan(store: Store, roots: Sequence[str | os.PathLike], models: Sequence[LibraryModel]) -> ScanPlan:
    wanted = [m.sha256 for m in models]
    todo, touched, deleted = [], [], []
    unchanged = listed = 0
    done = store.done_models()
    for root in roots:
        root = os.path.abspath(root)
        known = store.photo_index(under=root)
        seen = set()
        for path, size, mtime in list_photos(root):
            listed += 1
            seen.add(path)
            row = known.get(path)
            if row is None:
                todo.append(PhotoRecord(path, size, mtime, models=list(wanted)))
                continue
            pid = row["id"]
            if row["size"] == size and row["mtime"] == mtime:
                if row["error"]:
                    unchanged += 1  # unreadable and unchanged: do not retry on every scan
                    continue
                missing = [s for s in wanted if s not in done.get(pid, ())]
                if missing:
                    todo.append(PhotoRecord(path, size, mtime, row["sha256"], pid, missing))
                else:
                    unchanged += 1
                continue
            # (size, mtime) changed: the content decides (a copy/touch keeps everything)
            try:
                digest = sha256_of(path)
            except OSError:
                continue
            if digest == row["sha256"] and not row["error"]:
                touched.append((pid, size, mtime))
                missing = [s for s in wanted if s not in done.get(pid, ())]
                if missing:
                    todo.append(PhotoRecord(path, size, mtime, digest, pid, missing))
                else:
                    unchanged += 1
            else:
                todo.append(PhotoRecord(path, size, mtime, digest, pid, list(wanted)))
        deleted.extend(r["id"] for p, r in known.items() if p not in seen)
    return ScanPlan(todo, deleted, unchanged, touched, listed)


# ------------------------------------------------------------------ process (pure)
SIGNATURE_SIZE = 32
SIGNATURE_KEEP = 8


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


_DCT = _dct_matrix(SIGNATURE_SIZE)


def signature(img) -> np.ndarray:
    """A perceptual signature for near-duplicates: the lowest 8x8 DCT coefficients (minus DC) of
    the 32x32 grayscale image, L2-normalised. Re-encoding, resizing and small crops move it
    little; different scenes point elsewhere (pHash's features, kept as floats so the cosine
    gives a graded similarity)."""
    from PIL import Image

    g = np.asarray(img.convert("L").resize((SIGNATURE_SIZE, SIGNATURE_SIZE), Image.BILINEAR),
                   np.float32)
    d = _DCT @ g @ _DCT.T
    v = d[:SIGNATURE_KEEP, :SIGNATURE_KEEP].reshape(-1)[1:]
    return (v / max(float(np.linalg.norm(v)), 1e-6)).astype(np.float32)


def clean_error(msg: str, name: str) -> str:
    """The runtime's message about in-memory bytes, with the file's name instead of a repr."""
    import re

    msg = re.sub(r"<(\d+ )?bytes(: \d+)?>", lambda m: name, msg, count=1)
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "(not an image)", msg)


def _decode(rec: PhotoRecord, draft: int):
    """-> (PIL image or None, sha256, error)."""
    from ..runtime.preprocess import load_image

    try:
        with open(rec.path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, rec.sha256, f"cannot read {rec.path}: {e.strerror or e}"
    digest = rec.sha256 or hashlib.sha256(data).hexdigest()
    try:
        return load_image(data, draft_size=draft), digest, None
    except ImageError as e:
        return None, digest, clean_error(str(e), rec.path)


def draft_for(models: Sequence[LibraryModel]) -> int:
    """One decode scale that serves every model (the largest one's JPEG draft size)."""
    from ..runtime.preprocess import DRAFT_SAFETY

    return max(int(int(m.spec["resize_size"]) * DRAFT_SAFETY) for m in models) if models else 512


def decode_records(records: Sequence[PhotoRecord], draft: int, *, decode_workers: int | None = None) -> list:
    """Per record: (PIL image or None, content sha256, error) -- the photo read and decoded once."""
    from ..runtime.preprocess import _pool

    if decode_workers is None and len(records) > 1:
        return list(_pool().map(lambda r: _decode(r, draft), records))
    return [_decode(r, draft) for r in records]


def infer_records(models: Sequence[LibraryModel], records: Sequence[PhotoRecord], decoded: list, *,
                  top_k: int = DEFAULT_TOP_K) -> list[PhotoResult]:
    """Run every model a photo still needs on its decoded image -> PhotoResults."""
    from ..runtime.model import Failure

    results = []
    for rec, (img, digest, err) in zip(records, decoded):
        res = PhotoResult(rec.path, rec.size, rec.mtime, digest, error=err)
        if img is not None:
            ext = img.info.get("edgeinfer_extent")
            res.width, res.height = (int(ext[0]), int(ext[1])) if ext else img.size
            res.signature = signature(img)
        results.append(res)
    for m in models:
        idx = [i for i, (rec, d) in enumerate(zip(records, decoded)) if d[0] is not None and m.sha256 in rec.models]
        if not idx:
            continue
        imgs = [decoded[i][0] for i in idx]
        out = m.model.classify(imgs, top_k=top_k) if m.kind == "classifier" else m.model.embed(imgs)
        for i, r in zip(idx, out):
            if isinstance(r, Failure):  # the decoded image failed in this model's preprocessing
                results[i].outputs[m.sha256] = {"error": r.error}
            elif m.kind == "classifier":
                results[i].outputs[m.sha256] = {"tags": [(lab, float(s)) for lab, s in r]}
            else:
                results[i].outputs[m.sha256] = {"embedding": np.asarray(r, np.float32)}
    return results


def process_batch(models: Sequence[LibraryModel], records: Sequence[PhotoRecord], *,
                  top_k: int = DEFAULT_TOP_K, decode_workers: int | None = None) -> list[PhotoResult]:
    """Decode each photo once, run the models it still needs, return the results (no store I/O).
    The unit of work of every scan engine."""
    if not records:
        return []
    decoded = decode_records(records, draft_for(models), decode_workers=decode_workers)
    return infer_records(models, records, decoded, top_k=top_k)


# ------------------------------------------------------------------ the local engine
@dataclass
class ScanStats:
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    deleted: int = 0
    listed: int = 0
    started: float = field(default_factory=time.perf_counter)
    plan_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def photos_per_s(self) -> float:
        # a finished scan keeps its rate (elapsed_s is frozen at the end), a running one updates
        t = (self.elapsed_s or (time.perf_counter() - self.started)) - self.plan_s
        return self.done / t if t > 0 and self.done else 0.0

    @property
    def eta_s(self) -> float | None:
        r = self.photos_per_s
        return (self.total - self.done) / r if r > 0 else None

    def to_dict(self) -> dict:
        eta = self.eta_s
        return {"done": self.done, "total": self.total, "failed": self.failed, "skipped": self.skipped,
                "deleted": self.deleted, "listed": self.listed,
                "photos_per_s": round(self.photos_per_s, 2), "eta_s": None if eta is None else round(eta, 1),
                "elapsed_s": round(self.elapsed_s or (time.perf_counter() - self.started), 3)}


def run_scan(store: Store, roots: Sequence[str | os.PathLike] | str | os.PathLike,
         models: Sequence[LibraryModel], *, batch_size: int = DEFAULT_BATCH, top_k: int = DEFAULT_TOP_K,
         progress: Callable[[ScanStats], None] | None = None, cancel: threading.Event | None = None,
         engine: str = "local", stats: ScanStats | None = None,
         engine_options: dict | None = None) -> ScanStats:
    """Scan ``roots`` into ``store`` with ``models``; returns the counts. Incremental: see the
    module docstring. ``cancel``: stop after the batch in progress (which is committed)."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    for r in roots:
        if not Path(r).is_dir():
            raise ScanError(f"{r} is not a folder; give the folder that holds your photos")
    if int(batch_size) < 1:
        raise ScanError(f"batch_size must be >= 1 (got {batch_size})")
    stats = stats or ScanStats()
    for m in models:
        m.register(store)
    # an artifact that changed (same model name, new sha256) replaces the old one's outputs
    store.drop_stale_models([m.sha256 for m in models])
    plan = plan_scan(store, roots, models)
    stats.total, stats.skipped, stats.listed = len(plan.todo), plan.unchanged, plan.listed
    stats.plan_s = time.perf_counter() - stats.started
    store.touch(plan.touched)
    stats.deleted = store.delete_photos(plan.deleted)
    if progress:
        progress(stats)
    if engine == "ray":
        try:
            from . import ray_engine  # noqa: PLC0415
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.ray_engine":
                raise
            raise ScanError("the ray engine is not available in this version; use engine='local'") from e
        ray_engine.run(store, plan, models, batch_size=batch_size, top_k=top_k, progress=progress,
                       cancel=cancel, stats=stats, **(engine_options or {}))
    elif engine == "local":
        _local(store, plan.todo, models, batch_size=int(batch_size), top_k=top_k, progress=progress,
               cancel=cancel, stats=stats)
    else:
        raise ScanError(f"unknown engine {engine!r}; valid engines: local, ray")
    from .categories import tag_scanned  # user categories (issue 14) tag what the scan stored

    tag_scanned(store, [m.sha256 for m in models])
    stats.elapsed_s = time.perf_counter() - stats.started
    return stats


def _local(store, todo, models, *, batch_size, top_k, progress, cancel, stats) -> None:
    """process_batch, with the next batch read and decoded while the models run on this one
    (decoding releases the GIL; on 12 MP photos it is a large part of the work)."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    if not batches:
        return
    draft = draft_for(models)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeinfer-scan-decode") as ex:
        fut = ex.submit(decode_records, batches[0], draft)
        for i, batch in enumerate(batches):
            if cancel is not None and cancel.is_set():
                break
            decoded = fut.result()
            if i + 1 < len(batches):
                fut = ex.submit(decode_records, batches[i + 1], draft)
            results = infer_records(models, batch, decoded, top_k=top_k)
            store.write_results(results)
            stats.done += len(batch)
            stats.failed += sum(1 for r in results if r.error)
            if progress:
                progress(stats)


def under_roots(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> Path | None:
    """The resolved ``path`` when it lies under one of ``roots`` (both resolved, so a symlink
    or '..' cannot lead out), else None."""
    p = Path(path).resolve()
    for r in roots:
        r = Path(r).resolve()
        if p == r or r in p.parents:
            return p
    return None
