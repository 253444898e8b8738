"""Models as the service holds them: lazy load, idle unload, and request coalescing.

Each served model owns one batcher thread. Requests put their preprocessed NCHW arrays on the
model's queue; the thread takes the first, then whatever else is waiting (up to ``max_batch``
images, waiting at most ``batch_wait_ms`` for more), runs ONE engine call and hands each request
its rows. With ``batch_wait_ms=0`` nothing waits: only requests that are already queued are
coalesced, which costs no latency. ``max_batch`` defaults to the runtime's batch size for the
engine (1 on CPU engines: no coalescing, 16 on GPUs): on the 2-core CPU, coalescing 16 clients'
mobilevit_xxs requests into batches of ~8 gave the same throughput (3.9 vs 3.8 req/s) for 85%
more RSS (347 vs 187 MB), benchmarks/results/service_coalescing.md; for CLIP ViT-B/32 it gave
+39% throughput for +19% RSS (service_load*.md), so CLIP-heavy servers may pass --max-batch 8.

Inference itself is the runtime's (``Model.infer`` and the runtime's post-processing helpers);
the service only decides when and with what batch it runs.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("edgeinfer.serve")


class ServedModel:
    def __init__(self, artifact_dir: str | Path, *, name: str | None = None, provider: str = "auto",
                 precision: str = "auto", threads: int | None = None, max_batch: int | None = None,
                 batch_wait_ms: float = 0.0, metrics=None):
        from ..runtime.artifact import Artifact

        self.artifact_dir = Path(artifact_dir)
        self.artifact = Artifact(self.artifact_dir)
        self.name = name or self.artifact.name
        self.kind = "clip" if self.artifact.kind == "clip" else (
            "classifier" if self.artifact.manifest.get("output", {}).get("kind", "logits") == "logits"
            else "embedding")
        self.provider_req, self.precision_req, self.threads = provider, precision, threads
        # None: the runtime's batch size for the engine it picked (1 on CPU engines, 16 on GPUs)
        self.max_batch_opt = None if max_batch is None else int(max_batch)
        self.batch_wait = float(batch_wait_ms) / 1000.0
        self.metrics = metrics
        self._model = None
        self._lock = threading.Lock()
        self._inflight = 0
        self._pins = 0                 # scans holding the Model object: never unload under them
        self.last_used = time.monotonic()
        self.load_seconds: float | None = None
        self.loads = 0
        self.unloads = 0
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"edgeinfer-batch-{self.name}", daemon=True)
        self._thread.start()
        self._selection = None

    # ------------------------------------------------------------ life cycle
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self):
        """The runtime Model, loaded now if it is not (first use, or after an idle unload)."""
        m = self._model
        if m is not None:
            self.last_used = time.monotonic()
            return m
        with self._lock:
            if self._model is None:
                import edgeinfer

                t = time.perf_counter()
                self._model = edgeinfer.load(self.artifact_dir, provider=self.provider_req,
                                             precision=self.precision_req, threads=self.threads)
                self.load_seconds = time.perf_counter() - t
                self.loads += 1
                self._selection = self._model.selection
                log.info("loaded %s on %s/%s in %.2f s%s", self.name, self._model.provider,
                         self._model.precision, self.load_seconds,
                         " (reload after idle unload)" if self.loads > 1 else "")
                if self.metrics:
                    self.metrics.loaded.labels(self.name).set(1)
                    self.metrics.load_seconds.labels(self.name).set(self.load_seconds)
            self.last_used = time.monotonic()
            return self._model

    def unload_if_idle(self, idle_s: float) -> bool:
        with self._lock:
            if (self._model is None or self._inflight or self._pins or not self._q.empty()
                    or time.monotonic() - self.last_used < idle_s):
                return False
            self._model.close()
            self._model = None
            self.unloads += 1
            log.info("unloaded %s after %.0f s idle", self.name, idle_s)
            if self.metrics:
                self.metrics.loaded.labels(self.name).set(0)
            return True

    def pin(self):
        """The loaded Model, kept loaded until ``unpin`` (a library scan uses it directly)."""
        with self._lock:
            self._pins += 1
        try:
            return self.model()
        except BaseException:
            self.unpin()
            raise

    def unpin(self) -> None:
        with self._lock:
            self._pins = max(0, self._pins - 1)
        self.last_used = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._q.put(None)
        self._thread.join(timeout=30)
        with self._lock:
            if self._model is not None:
                self._model.close()
                self._model = None

    @property
    def max_batch(self) -> int:
        if self.max_batch_opt is not None:
            return self.max_batch_opt
        m = self._model
        return int(getattr(m, "batch_size", 1) or 1) if m is not None else 1

    # ------------------------------------------------------------ identity
    @property
    def selection(self):
        return self._selection

    @property
    def provider(self) -> str | None:
        return self._selection.provider if self._selection else None

    @property
    def precision(self) -> str | None:
        return self._selection.precision if self._selection else None

    @property
    def sha256(self) -> str | None:
        """The identity of the ONNX file that runs (known once loaded)."""
        if self._selection is None:
            return None
        return self.artifact.entry(self._selection.precision).get("sha256")

    @property
    def labels(self) -> list[str] | None:
        return self.artifact.labels

    def spec(self) -> dict:
        return self.artifact.preprocess

    def describe(self) -> dict:
        a = self.artifact
        files = a.files()
        acc = {}
        for prec, entry in files.items():
            fig = {k: entry[k] for k in ("parity", "fidelity", "labelled") if entry.get(k)}
            if fig:
                acc[prec] = fig
        text = a.manifest.get("text") or {}
        n_labels = len(a.labels or []) if self.kind != "clip" else \
            {k: len(v.get("labels", [])) for k, v in (text.get("label_sets") or {}).items()}
        return {"name": self.name, "kind": self.kind, "provider": self.provider,
                "precision": self.precision, "loaded": self.loaded, "artifact": str(self.artifact_dir),
                "sha256": self.sha256, "labels": n_labels,
                "label_sets": list((text.get("label_sets") or {}).keys()),
                "weights": "random" if a.random_weights else a.weights_origin,
                "precisions": list(files), "accuracy_vs_fp32": acc,
                "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
                "loads": self.loads, "unloads": self.unloads, "max_batch": self.max_batch,
                "input_size": a.preprocess.get("input_size")}

    # ------------------------------------------------------------ coalesced inference
    def infer(self, batch: np.ndarray) -> Future:
        """Queue an NCHW batch; the Future resolves to its output rows."""
        fut: Future = Future()
        self._q.put((np.ascontiguousarray(batch, np.float32), fut))
        return fut

    def _loop(self) -> None:
        while not self._stop.is_set():
            first = self._q.get()
            if first is None:
                break
            items = [first]
            rows = len(first[0])
            deadline = time.monotonic() + self.batch_wait
            while rows < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                items.append(nxt)
                rows += len(nxt[0])
            self._run(items)

    def _run(self, items: list[tuple[np.ndarray, Future]]) -> None:
        with self._lock:
            self._inflight += 1
        try:
            model = self.model()
            cat = items[0][0] if len(items) == 1 else np.concatenate([a for a, _ in items])
            t = time.perf_counter()
            y = model.infer(cat)
            if self.metrics:
                self.metrics.stage.labels(self.name, "infer").observe(time.perf_counter() - t)
                self.metrics.batch.labels(self.name).observe(len(cat))
            s = 0
            for a, fut in items:
                fut.set_result(y[s:s + len(a)])
                s += len(a)
        except BaseException as e:  # noqa: BLE001 -- every waiting request must hear about it
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(e)
        finally:
            with self._lock:
                self._inflight -= 1
            self.last_used = time.monotonic()


def unique_names(artifacts: list[str]) -> list[str]:
    """Model names for the URL/JSON: the artifact's name, suffixed when two artifacts share one."""
    from ..runtime.artifact import Artifact

    names = [Artifact(Path(a)).name for a in artifacts]
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}-{seen[n]}")
    return out


def any_of(models: dict[str, ServedModel], kind: str) -> list[ServedModel]:
    return [m for m in models.values() if m.kind == kind]


def describe_all(models: dict[str, Any]) -> list[dict]:
    return [m.describe() for m in models.values()]
