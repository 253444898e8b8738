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
#: the engines' mode for scans: a scan is throughput work (whole batches, decode threads beside
#: inference). THROUGHPUT = single-threaded streams a batch is split across, no spinning pool
#: threads competing with the decode threads. Measured on the 2-core Zen 3, 48 12 MP photos,
#: classifier + CLIP (benchmarks/results/indexing.md): THROUGHPUT beat LATENCY for ONNX Runtime
#: (1.1x in the scan; inference CPU-s per photo 0.161 vs 0.220) and for OpenVINO (1.2x).
SCAN_PERFORMANCE_HINT = "THROUGHPUT"


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
                      threads: int | None = None, batch_size: int | None = None,
                      performance_hint: str | None = None) -> "LibraryModel":
        """Load an artifact for scanning. ``performance_hint`` (None: ``SCAN_PERFORMANCE_HINT``)
        goes to the engine: THROUGHPUT splits each scan batch across single-threaded CPU
        streams (OpenVINO streams / ONNX Runtime sessions run concurrently)."""
        import edgeinfer

        kw = {} if batch_size is None else {"batch_size": batch_size}
        return cls(edgeinfer.load(artifact_dir, provider=provider, precision=precision, threads=threads,
                                  performance_hint=performance_hint or SCAN_PERFORMANCE_HINT, **kw),
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


@dataclass
class Prepared:
    """One photo read and decoded once, with each model's input ready: what the decode stage
    hands to the inference stage. ``inputs`` maps model sha256 -> CHW float32, or the message
    of that model's preprocessing failure."""
    sha256: str | None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    signature: np.ndarray | None = None
    inputs: dict[str, np.ndarray | str] = field(default_factory=dict)


def _spec_key(spec: dict) -> tuple:
    return tuple((k, repr(spec.get(k))) for k in ("input_size", "resize_size", "interpolation",
                                                   "mean", "std", "channel_order"))


def prepare_record(rec: PhotoRecord, models: Sequence[LibraryModel], draft: int) -> Prepared:
    """Read + hash + decode one photo (JPEG draft at ``draft``), its signature, and the input of
    every model it still needs (models with the same preprocessing share one array). Runs in the
    decode threads: all of it releases the GIL for the most part (hashlib, Pillow, numpy)."""
    from ..runtime.preprocess import preprocess_batch

    img, digest, err = _decode(rec, draft)
    out = Prepared(digest, err)
    if img is None:
        return out
    ext = img.info.get("edgeinfer_extent")
    out.width, out.height = (int(ext[0]), int(ext[1])) if ext else img.size
    out.signature = signature(img)
    made: dict[tuple, np.ndarray | str] = {}
    for m in models:
        if m.sha256 not in rec.models:
            continue
        key = _spec_key(m.spec)
        if key not in made:
            # the runtime's own preprocessing of a decoded image (what Model.classify does)
            batch, errors = preprocess_batch([img], m.spec, workers=0, draft=m.model.draft)
            made[key] = str(errors[0]) if errors[0] is not None else batch[0]
        out.inputs[m.sha256] = made[key]
    return out


def prepare_records(records: Sequence[PhotoRecord], models: Sequence[LibraryModel], *,
                    decode_workers: int | None = None) -> list[Prepared]:
    """``prepare_record`` for each record; in the runtime's decode pool (``decode_workers``
    None), in that many threads, or inline (0 or 1)."""
    draft = draft_for(models)
    if len(records) > 1 and (decode_workers is None or decode_workers > 1):
        from concurrent.futures import ThreadPoolExecutor

        from ..runtime.preprocess import _pool

        if decode_workers is None:
            return list(_pool().map(lambda r: prepare_record(r, models, draft), records))
        with ThreadPoolExecutor(max_workers=decode_workers) as ex:
            return list(ex.map(lambda r: prepare_record(r, models, draft), records))
    return [prepare_record(r, models, draft) for r in records]


def infer_records(models: Sequence[LibraryModel], records: Sequence[PhotoRecord],
                  prepared: Sequence[Prepared], *, top_k: int = DEFAULT_TOP_K) -> list[PhotoResult]:
    """Run every model on the prepared inputs of the photos that need it -> PhotoResults.

    Per model, the batch's inputs go to the engine in one call (``Model.infer``), which on a
    THROUGHPUT-hinted CPU session is split across its streams; a model whose batch policy is
    larger than 1 (GPU engines) gets chunks of its own batch size. An exception from an engine
    fails the whole batch (the caller's transaction is not written; the Ray engine retries
    photo by photo)."""
    results = []
    for rec, p in zip(records, prepared):
        results.append(PhotoResult(rec.path, rec.size, rec.mtime, p.sha256, width=p.width,
                                   height=p.height, signature=p.signature, error=p.error))
    for m in models:
        good = []
        for i, p in enumerate(prepared):
            x = p.inputs.get(m.sha256) if p.error is None else None
            if isinstance(x, str):   # the decoded image failed in this model's preprocessing
                results[i].outputs[m.sha256] = {"error": x}
            elif x is not None:
                good.append(i)
        if not good:
            continue
        step = m.model.batch_size if m.model.batch_size > 1 else len(good)
        for s0 in range(0, len(good), step):
            idx = good[s0:s0 + step]
            raw = m.model.infer(np.stack([prepared[i].inputs[m.sha256] for i in idx]))
            for i, r in zip(idx, m.model.postprocess(raw, top_k=top_k)):
                if m.kind == "classifier":
                    results[i].outputs[m.sha256] = {"tags": [(lab, float(sc)) for lab, sc in r]}
                else:
                    results[i].outputs[m.sha256] = {"embedding": np.asarray(r, np.float32)}
    return results


def process_batch(models: Sequence[LibraryModel], records: Sequence[PhotoRecord], *,
                  top_k: int = DEFAULT_TOP_K, decode_workers: int | None = None) -> list[PhotoResult]:
    """Decode each photo once, run the models it still needs, return the results (no store I/O).
    The unit of work of every scan engine."""
    if not records:
        return []
    prepared = prepare_records(records, models, decode_workers=decode_workers)
    return infer_records(models, records, prepared, top_k=top_k)


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
         engine_options: dict | None = None, decode_workers: int | None = None) -> ScanStats:
    """Scan ``roots`` into ``store`` with ``models``; returns the counts. Incremental: see the
    module docstring. ``cancel``: stop after the batch in progress (which is committed).
    ``decode_workers``: decode threads of the local engine (None: one per core)."""
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
               cancel=cancel, stats=stats, decode_workers=decode_workers)
    else:
        raise ScanError(f"unknown engine {engine!r}; valid engines: local, ray")
    from .categories import tag_scanned  # user categories (issue 14) tag what the scan stored

    tag_scanned(store, [m.sha256 for m in models])
    stats.elapsed_s = time.perf_counter() - stats.started
    return stats


#: batches decoded ahead of the one being inferred (memory: ~1.4 MB per photo for two 224-256 px
#: models, so 3 batches of 16 stay under 100 MB)
PREFETCH_BATCHES = 2


def _local(store, todo, models, *, batch_size, top_k, progress, cancel, stats,
           decode_workers=None) -> None:
    """Two stages that overlap: ``decode_workers`` threads (default: one per core) read, hash,
    decode and preprocess photos one at a time, up to ``PREFETCH_BATCHES`` batches ahead; this
    thread runs each batch through every model's engine and commits it (one transaction).
    Per-photo tasks keep every decode thread busy (a per-batch task left threads idle at the end
    of each batch), and the engines' CPU streams run beside them."""
    from concurrent.futures import ThreadPoolExecutor

    from ..backends.ort import physical_cores

    batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    if not batches:
        return
    draft = draft_for(models)
    workers = int(decode_workers) if decode_workers else physical_cores()
    ex = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="edgeinfer-scan-decode")
    pending: dict[int, list] = {}

    def submit(j: int) -> None:
        if j < len(batches):
            pending[j] = [ex.submit(prepare_record, r, models, draft) for r in batches[j]]

    try:
        for j in range(PREFETCH_BATCHES + 1):
            submit(j)
        for i, batch in enumerate(batches):
            if cancel is not None and cancel.is_set():
                break
            prepared = [f.result() for f in pending.pop(i)]
            submit(i + PREFETCH_BATCHES + 1)
            results = infer_records(models, batch, prepared, top_k=top_k)
            store.write_results(results)
            stats.done += len(batch)
            stats.failed += sum(1 for r in results if r.error)
            if progress:
                progress(stats)
    finally:
        # a cancelled or failed scan does not decode the rest of the folder first
        ex.shutdown(wait=True, cancel_futures=True)


def under_roots(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> Path | None:
    """The resolved ``path`` when it lies under one of ``roots`` (both resolved, so a symlink
    or '..' cannot lead out), else None."""
    p = Path(path).resolve()
    for r in roots:
        r = Path(r).resolve()
        if p == r or r in p.parents:
            return p
    return None
