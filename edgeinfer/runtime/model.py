"""The embeddable API: ``edgeinfer.load(artifact_dir) -> Model`` (torch-free).

``Model.classify`` / ``embed`` / ``zero_shot`` take one image or a list of images (paths,
bytes, PIL images, HxWxC uint8 arrays, or an NHWC uint8 array). One image gives one result; a
list gives a list (a ``Results`` list that also carries ``.selection``: which engine and
precision produced it, and why). A bad image gives a ``Failure`` item in its place (falsy, with
``.error``) while the rest of the batch completes.

Concurrency: a ``Model`` may be shared by several threads. ONNX Runtime sessions are
thread-safe for ``run``; the OpenVINO session keeps a pool of infer requests; preprocessing
holds no shared state. Images are decoded in a thread pool and, for inputs larger than one
batch, the next batch is decoded while the current one runs.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import EdgeInferError, ImageError, InvalidOptionError, ModelClosedError
from .artifact import Artifact
from .numeric import l2_normalize, softmax  # noqa: F401 - re-exported (serve, evaluate)

# the batch policy is part of the selection (runtime/selection.py); re-exported for callers
from .selection import DEFAULT_CPU_BATCH_SIZE, default_batch_size  # noqa: E402,F401
from .selection import DEFAULT_GPU_BATCH_SIZE as DEFAULT_BATCH_SIZE  # noqa: E402,F401

DECODE_CHUNK = 8             # images decoded together (in parallel) whatever the inference batch


@dataclass(frozen=True)
class Failure:
    """The result for an input that could not be processed (falsy)."""
    source: str
    error: str

    def __bool__(self) -> bool:
        return False

    def to_dict(self) -> dict:
        return {"source": self.source, "error": self.error}


class Results(list):
    """A list of per-image results that also records how they were produced."""
    selection: Any = None

    def __init__(self, items: Iterable = (), selection: Any = None):
        super().__init__(items)
        self.selection = selection


def _source_name(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<bytes: {len(src)}>"
    if isinstance(src, np.ndarray):
        return f"<array {src.shape} {src.dtype}>"
    fn = getattr(src, "filename", None)
    return str(fn) if fn else f"<{type(src).__name__}>"


def _is_single(images: Any) -> bool:
    from PIL import Image

    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return False


def top_k(probs: np.ndarray, k: int, labels: Sequence[str] | None) -> list[tuple[str, float]]:
    k = max(1, min(int(k), probs.shape[-1]))
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    name = (lambda i: labels[i]) if labels is not None and len(labels) == probs.shape[-1] \
        else (lambda i: f"class_{i}")
    return [(name(int(i)), float(probs[i])) for i in idx]


class Model:
    """A loaded artifact on one engine. Create with ``edgeinfer.load``."""

    def __init__(self, artifact: Artifact, session, selection, *, batch_size: int | None = None,
                 decode_workers: int | None = None, draft: bool = True,
                 engine_kw: dict | None = None):
        if batch_size is None:
            batch_size = getattr(selection, "batch_size", None) or \
                default_batch_size(selection.provider, selection.device)
        if int(batch_size) < 1:
            raise InvalidOptionError(f"batch_size must be >= 1 (got {batch_size})")
        self.artifact = artifact
        self.session = session
        self.selection = selection
        self.batch_size = int(batch_size)
        self.decode_workers = decode_workers
        self.draft = draft
        self._engine_kw = dict(engine_kw or {})   # load's engine options, for the other towers
        self._towers: dict[str, Any] = {}
        self.text_reason: str | None = None   # why the text tower runs where it runs (on first use)
        self._lock = threading.Lock()
        # close() while other threads classify: calls in flight are counted, close() waits
        # for them to leave, then releases the sessions; new calls see _closed
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._closed = False
        self._local = threading.local()
        self._text: Any = None   # runtime.zero_shot.TextEncoder of a CLIP artifact, on first use

    # ----------------------------------------------------------- what was chosen
    @property
    def provider(self) -> str:
        return self.selection.provider

    @property
    def precision(self) -> str:
        return self.selection.precision

    @property
    def device(self) -> str:
        return self.selection.device

    @property
    def reason(self) -> str:
        return self.selection.reason

    @property
    def labels(self) -> list[str] | None:
        return self.artifact.labels

    @property
    def output_kind(self) -> str:
        return self.artifact.manifest.get("output", {}).get("kind", "logits")

    @property
    def spec(self) -> dict:
        return self.artifact.preprocess

    def describe(self) -> dict:
        return {"model": self.artifact.name, "artifact": str(self.artifact.dir),
                "weights": self.artifact.weights_origin, **self.selection.to_dict(),
                "session": self.session.describe() if self.session is not None else None}

    def __repr__(self) -> str:
        return (f"Model({self.artifact.name!r}, provider={self.provider!r}, device={self.device!r}, "
                f"precision={self.precision!r})")

    # ----------------------------------------------------------- life cycle
    def close(self) -> None:
        """Release the engine sessions. Safe while other threads are inside classify / embed /
        zero_shot / infer: new calls raise ``ModelClosedError`` at once, calls in flight finish
        (close waits for them), then the sessions are closed. Calling it again does nothing."""
        if getattr(self._local, "depth", 0):
            raise EdgeInferError("Model.close() called from inside a call on the same Model "
                                 "(it would wait for itself); close it after the call returns")
        with self._lock:
            self._closed = True
            while self._active:
                self._idle.wait()
            sessions = [self.session, *self._towers.values()]
            self.session = None
            self._towers.clear()
        for s in sessions:
            if s is not None:
                s.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def _use(self):
        """Count one call in flight (re-entrant per thread: zero_shot calls embed_raw)."""
        depth = getattr(self._local, "depth", 0)
        with self._lock:
            if self.session is None or (self._closed and not depth):
                raise ModelClosedError(f"this Model ({self.artifact.name}) is closed; load the "
                                       f"artifact again with edgeinfer.load")
            self._active += 1
        self._local.depth = depth + 1
        try:
            yield self.session
        finally:
            self._local.depth = depth
            with self._lock:
                self._active -= 1
                if not self._active:
                    self._idle.notify_all()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _session(self):
        s = self.session
        if s is None:
            raise ModelClosedError(f"this Model ({self.artifact.name}) is closed; load the "
                                   f"artifact again with edgeinfer.load")
        return s

    def tower_session(self, tower: str = "text"):
        """A session for another tower of the artifact (CLIP text tower), created on first use
        with the same provider and options; the same precision when the tower has it, else fp32."""
        with self._lock:
            if tower in self._towers:
                return self._towers[tower]
            if self.session is None:
                raise ModelClosedError(f"this Model ({self.artifact.name}) is closed; load the "
                                       f"artifact again with edgeinfer.load")
            from ..backends import create_session
            from .selection import engine_options

            have = self.artifact.precisions(tower)
            if not have:
                raise EdgeInferError(f"artifact {self.artifact.dir} has no {tower} tower")
            prec = self.precision if self.precision in have else ("fp32" if "fp32" in have else have[0])
            sel, provider = self.selection, self.provider
            if tower == "text" and "precision: requested" not in sel.reason:
                # a search query is one short prompt at batch 1: the text tower's best engine and
                # precision are picked for that (selection.text_tower_pick), unless the caller
                # asked for a precision
                from .selection import text_tower_pick

                provider, prec, self.text_reason = text_tower_pick(sel, self.artifact)
                if provider != sel.provider:
                    sel = replace(sel, provider=provider, device="CPU", threads=None)
            path = self.artifact.path(prec, tower)
            opts = engine_options(sel, self.artifact, tower=tower, precision=prec,
                                  batch_size=self.batch_size, **self._engine_kw)
            s = create_session(path, provider=provider, options=opts)
            self._towers[tower] = s
            return s

    # ----------------------------------------------------------- raw paths
    def preprocess(self, images: Any) -> np.ndarray:
        """Images -> NCHW float32 (raises ImageError for a bad image)."""
        from .preprocess import preprocess_batch

        items = [images] if _is_single(images) else list(images)
        batch, errors = preprocess_batch(items, self.spec, workers=self.decode_workers, draft=self.draft)
        for e in errors:
            if e is not None:
                raise e
        return batch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw model output for an NCHW float32 batch (no pre/post-processing)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        with self._use() as session:
            return session.run(batch)

    def _forward(self, items: list) -> list:
        """Per input: its raw output row (np.ndarray) or a Failure."""
        with self._use() as session:
            return self._forward_on(session, items)

    def _forward_on(self, session, items: list) -> list:
        from .preprocess import preprocess_batch

        out: list = [None] * len(items)
        step = max(self.batch_size, DECODE_CHUNK)
        chunks = [list(range(s, min(s + step, len(items)))) for s in range(0, len(items), step)]

        def prep(idx):
            return preprocess_batch([items[i] for i in idx], self.spec, workers=self.decode_workers,
                                    draft=self.draft)

        ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeinfer-prefetch") \
            if len(chunks) > 1 else None
        try:
            fut = ex.submit(prep, chunks[0]) if ex else None
            for ci, idx in enumerate(chunks):
                batch, errors = fut.result() if ex else prep(idx)
                if ex and ci + 1 < len(chunks):
                    fut = ex.submit(prep, chunks[ci + 1])  # decode the next batch meanwhile
                good = [i for i, e in zip(idx, errors) if e is None]
                for i, e in zip(idx, errors):
                    if e is not None:
                        out[i] = Failure(_source_name(items[i]), str(e))
                for s0 in range(0, len(good), self.batch_size):
                    y = session.run(batch[s0:s0 + self.batch_size])
                    for row, i in enumerate(good[s0:s0 + self.batch_size]):
                        out[i] = y[row]
        finally:
            if ex:
                ex.shutdown(wait=True)
        return out

    # ----------------------------------------------------------- tasks
    def classify(self, images: Any, top_k: int = 5):
        """Per image: [(label, probability), ...] best first (softmax over the logits).

        For a CLIP artifact this is zero-shot classification over its default label set.
        """
        if int(top_k) < 1:
            raise InvalidOptionError(f"top_k must be >= 1 (got {top_k})")
        if self.output_kind == "embedding":
            if self.artifact.kind == "clip":
                return self.zero_shot(images, None, top_k=top_k)
            raise EdgeInferError(f"{self.artifact.name} outputs embeddings, not class logits; "
                                 f"use Model.embed")
        single = _is_single(images)
        items = [images] if single else list(images)
        labels = self.labels
        res = Results([r if isinstance(r, Failure) else _topk_row(r, top_k, labels)
                       for r in self._forward(items)], self.selection)
        return res[0] if single else res

    def embed(self, images: Any):
        """Per image: an L2-normalised float32 embedding (embedding models, e.g. CLIP)."""
        if self.output_kind != "embedding":
            raise EdgeInferError(f"{self.artifact.name} outputs {self.output_kind}, not embeddings; "
                                 f"use Model.classify (or export an embedding model such as CLIP)")
        single = _is_single(images)
        items = [images] if single else list(images)
        res = Results([r if isinstance(r, Failure) else l2_normalize(r)
                       for r in self._forward(items)], self.selection)
        return res[0] if single else res

    @property
    def text(self):
        """The CLIP text side (``runtime.zero_shot.TextEncoder``): label sets, custom-label
        embeddings (cached), free-text embeddings; made on first use."""
        if self.artifact.kind != "clip":
            raise EdgeInferError(f"zero-shot and text embeddings need a CLIP artifact; "
                                 f"{self.artifact.name} is a {self.artifact.kind} (use Model.classify)")
        with self._lock:
            if self._text is None:
                from .zero_shot import TextEncoder

                self._text = TextEncoder(self.artifact, lambda: self.tower_session("text"))
            return self._text

    def zero_shot(self, images: Any, labels: Sequence[str] | str | None = None, top_k: int = 3, *,
                  templates: Sequence[str] | None = None):
        """CLIP zero-shot: per image [(label, probability), ...] over ``labels`` (a list, or a
        comma-separated string, or a stored label-set name; None: the artifact's default label
        set). ``templates``: prompt templates for custom labels (default "a photo of a {}.")."""
        if int(top_k) < 1:
            raise InvalidOptionError(f"top_k must be >= 1 (got {top_k})")
        text = self.text
        single = _is_single(images)
        with self._use():  # the text tower session stays open until the call returns
            names, emb = text.resolve(labels, templates=templates)
            rows = self._forward([images] if single else list(images))
        probs = text.probabilities(rows, emb)
        res = Results([r if isinstance(r, Failure) else _topk_probs(p, int(top_k), names)
                       for r, p in zip(rows, probs)], self.selection)
        return res[0] if single else res

    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """CLIP text embeddings of ``texts`` as written (no prompt template), L2-normalised
        float32: ``[D]`` for one string, ``[N, D]`` for a list. A dot product with ``embed``'s
        image embeddings ranks images for a text query (search)."""
        text = self.text
        with self._use():
            return text.embed(texts)

    def embed_raw(self, images: Any) -> list:
        """Per image: the raw (unnormalised) output row or a Failure (for zero_shot/bench)."""
        return self._forward([images] if _is_single(images) else list(images))

    def postprocess(self, rows: Iterable[np.ndarray], *, top_k: int = 5) -> list:
        """Raw output rows (``infer``) -> what ``classify`` (logits: top-k labels) or ``embed``
        (embeddings: L2-normalised) returns for them. For callers that preprocess and batch
        themselves (the library scan) and must give the same results as those two."""
        if self.output_kind == "embedding":
            return [l2_normalize(r) for r in rows]
        labels = self.labels
        return [_topk_row(r, int(top_k), labels) for r in rows]


def _topk_row(logits: np.ndarray, k: int, labels) -> list[tuple[str, float]]:
    return top_k(softmax(logits), k, labels)


def _topk_probs(probs: np.ndarray, k: int, labels) -> list[tuple[str, float]]:
    return top_k(probs, k, labels)   # for methods whose top_k argument hides the function


# ----------------------------------------------------------------------- load
_LOAD_OPTIONS = ("batch_size", "device", "performance_hint", "cache_dir", "decode_workers",
                 "draft", "verify", "session_extra")


def load(artifact_dir: str | os.PathLike | Artifact, *, precision: str = "auto",
         provider: str = "auto", threads: int | None = None, **options: Any) -> Model:
    """Load an artifact for inference on the best (or the requested) engine.

    provider: ``auto`` | ``cpu`` | ``cuda`` | ``tensorrt`` | ``openvino`` (``openvino:GPU`` etc.
    picks the OpenVINO device). precision: ``auto`` | ``fp32`` | ``fp16`` | ``int8``.
    threads: CPU threads for inference (None: physical cores, or the tuned value).
    Options: batch_size (1 on CPU engines, 16 on GPUs), device (OpenVINO device or GPU index), performance_hint
    (OpenVINO LATENCY | THROUGHPUT), cache_dir (engine caches; default $EDGEINFER_CACHE or
    ~/.cache/edgeinfer), decode_workers (image decode threads), draft (JPEG draft decoding,
    True), verify (check the file's sha256, True), session_extra (more engine options by name,
    e.g. ``{"batch1_static": True}``; see ``edgeinfer.backends.SessionOptions``).
    """
    from ..backends import create_session
    from .selection import engine_options, select

    unknown = sorted(set(options) - set(_LOAD_OPTIONS))
    if unknown:
        raise InvalidOptionError(f"unknown option(s) {', '.join(unknown)}; valid options: "
                                 f"precision, provider, threads, {', '.join(_LOAD_OPTIONS)}")
    art = artifact_dir if isinstance(artifact_dir, Artifact) else Artifact(Path(artifact_dir))
    sel = select(provider, artifact=art, precision=precision, device=options.get("device"))
    batch_size = options.get("batch_size")
    if batch_size is not None:
        if int(batch_size) < 1:
            raise InvalidOptionError(f"batch_size must be >= 1 (got {batch_size})")
        sel = replace(sel, batch_size=int(batch_size))
    engine_kw = {"threads": threads, "cache_dir": options.get("cache_dir"),
                 "performance_hint": options.get("performance_hint"),
                 "overrides": options.get("session_extra")}
    opts = engine_options(sel, art, **engine_kw)
    path = art.path(sel.precision, verify=options.get("verify", True))
    session = create_session(path, provider=sel.provider, options=opts)
    return Model(art, session, sel, batch_size=sel.batch_size,
                 decode_workers=options.get("decode_workers"), draft=options.get("draft", True),
                 engine_kw=engine_kw)


__all__ = ["Failure", "Model", "Results", "load", "ImageError"]
