"""Background scan jobs for the service: one worker thread runs queued scans one at a time
(two scans of one store would only contend for the same CPU and the same write lock).

A job's live counters are kept in memory and saved to the ``jobs`` table at each batch, so
``GET /v1/library/jobs/{id}`` still answers after a restart (a job that was running when the
process died reads ``interrupted``; its committed batches stay, a re-scan does the rest)."""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Callable

from .scan import ScanStats, run_scan
from .store import Store

log = logging.getLogger("edgeinfer.library")


class JobRunner:
    def __init__(self, store: Store, models: Callable[[], list], *, batch_size: int = 16, top_k: int = 5,
                 release: Callable[[list], None] | None = None):
        # models(): the LibraryModels for one scan; release(models) when the scan is over
        self.store, self._models, self._release = store, models, release
        self.batch_size, self.top_k = batch_size, top_k
        self._jobs: dict[str, dict] = {}
        self._stats: dict[str, ScanStats] = {}
        self._q: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="edgeinfer-scan", daemon=True)
        self._thread.start()

    def submit(self, path: str) -> str:
        """Queue a scan of ``path``; a scan of the same path that has not started yet (or is
        running) is returned instead of queueing a second one (bounded: one per path)."""
        with self._lock:
            for j in self._jobs.values():
                if j["path"] == str(path) and j["state"] in ("queued", "running"):
                    return j["id"]
        jid = uuid.uuid4().hex[:12]
        job = {"id": jid, "kind": "scan", "path": str(path), "state": "queued", "done": 0, "total": 0,
               "failed": 0, "skipped": 0, "deleted": 0, "started_at": None, "finished_at": None,
               "error": None}
        with self._lock:
            self._jobs[jid] = job
        self.store.save_job(job)
        self._q.put(jid)
        return jid

    def get(self, jid: str) -> dict | None:
        with self._lock:
            job = dict(self._jobs[jid]) if jid in self._jobs else None
            st = self._stats.get(jid)
        if job is None:
            job = self.store.job(jid)
            if job is None:
                return None
        out = {"id": job["id"], "state": job["state"], "path": job["path"], "done": job["done"],
               "total": job["total"], "failed": job["failed"], "skipped": job["skipped"],
               "deleted": job["deleted"], "photos_per_s": 0.0, "eta_s": None, "error": job.get("error")}
        if st is not None:
            d = st.to_dict()
            out.update({k: d[k] for k in ("done", "total", "failed", "skipped", "deleted", "photos_per_s")})
            out["eta_s"] = d["eta_s"] if job["state"] == "running" else (0.0 if job["state"] == "done" else None)
            out["elapsed_s"] = d["elapsed_s"]
        return out

    def _loop(self) -> None:
        while True:
            jid = self._q.get()
            if jid is None or self._cancel.is_set():
                if jid is not None:
                    self._finish(jid, "cancelled", None)
                if jid is None:
                    return
                continue
            self._run(jid)

    def _update(self, jid: str, **kw) -> dict:
        with self._lock:
            job = self._jobs[jid]
            job.update(kw)
            return dict(job)

    def _run(self, jid: str) -> None:
        job = self._update(jid, state="running", started_at=time.time())
        self.store.save_job(job)
        stats = ScanStats()
        with self._lock:
            self._stats[jid] = stats

        def progress(s: ScanStats):
            j = self._update(jid, done=s.done, total=s.total, failed=s.failed, skipped=s.skipped,
                             deleted=s.deleted)
            self.store.save_job(j)

        models = None
        try:
            models = self._models()
            run_scan(self.store, job["path"], models, batch_size=self.batch_size, top_k=self.top_k,
                     progress=progress, cancel=self._cancel, stats=stats)
        except Exception as e:  # noqa: BLE001 -- a failed job is reported, not raised into the void
            log.exception("scan job %s failed", jid)
            self._finish(jid, "failed", f"{type(e).__name__}: {e}")
            return
        finally:
            if models is not None and self._release is not None:
                self._release(models)
        self._finish(jid, "cancelled" if self._cancel.is_set() and stats.done < stats.total else "done", None)

    def _finish(self, jid: str, state: str, error: str | None) -> None:
        j = self._update(jid, state=state, finished_at=time.time(), error=error)
        try:
            self.store.save_job(j)
        except Exception:  # noqa: BLE001 -- the store may already be closing
            pass

    def wait(self, jid: str, timeout: float = 60.0) -> dict | None:
        t = time.monotonic() + timeout
        while time.monotonic() < t:
            j = self.get(jid)
            if j is None or j["state"] in ("done", "failed", "cancelled", "interrupted"):
                return j
            time.sleep(0.05)
        return self.get(jid)

    def close(self) -> None:
        """Stop: the batch in progress finishes and is committed; queued jobs are cancelled."""
        self._cancel.set()
        self._q.put(None)
        self._thread.join(timeout=120)
