"""The library scan on Ray Data (``edgeinfer index --engine ray``; ``pip install 'edgeinfer[ray]'``).

Ray Data's batch-inference pattern, nothing home-made: the driver plans the scan exactly as the
local engine does (``plan_scan``: unchanged photos never reach the cluster), turns the photos to
do into a dataset of small rows (path, size, mtime, known sha256, models still to run), and runs
``map_batches`` with :class:`Predictor` over an actor pool. Each actor loads the artifacts ONCE
and calls the very same pure ``process_batch`` the local engine calls (decode once, every model),
then returns plain columns. The driver streams the result batches back with ``iter_batches`` and
writes each with ``Store.write_results`` (one transaction per batch), so ``edgeinfer serve
--library PATH`` serves them and a later local scan sees them as up to date.

Failures: a photo that cannot be read is a result with an error, never a task failure. If
``process_batch`` raises for a whole batch (a model error), the actor retries photo by photo and
records the error on the photos that raise. A worker process that dies is restarted by Ray and
its batch retried (Ray Data's actor pools retry tasks of restarted actors); every photo of the
plan is accounted for at the end (a photo the cluster never returned is recorded as failed with
that reason, not lost silently).

Artifacts reach the workers by path (shared storage: the default) or, with ``ship_artifacts``,
through Ray's object store: the driver reads the artifact files once, ``ray.put``s them, and each
actor writes them to a private temp folder (checked again by the runtime's sha256 checks).

Why the rows carry no pixels: photos are read by the workers from shared storage (a library is a
folder on a NAS or an object-store mount), and only tags/embeddings travel back; shipping JPEG
bytes through the driver would make the driver the bottleneck.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import EdgeInferError
from .scan import PhotoRecord, ScanPlan, ScanStats, process_batch
from .store import PhotoResult, Store

log = logging.getLogger("edgeinfer.library")


class RayEngineError(EdgeInferError):
    """The Ray engine cannot run (Ray missing, cluster unreachable, artifacts not reachable)."""


def _import_ray():
    try:
        import ray  # noqa: PLC0415
        import ray.data  # noqa: F401,PLC0415
    except ImportError as e:
        raise RayEngineError("the ray engine needs Ray Data: pip install 'edgeinfer[ray]' "
                             "(or use --engine local)") from e
    return ray


# ------------------------------------------------------------------ rows <-> records/results
def _records_to_rows(records: Sequence[PhotoRecord]) -> list[dict]:
    return [{"path": r.path, "size": int(r.size), "mtime": float(r.mtime), "sha256": r.sha256 or "",
             "models": ",".join(r.models)} for r in records]


def _rows_to_records(batch: dict) -> list[PhotoRecord]:
    out = []
    for path, size, mtime, sha, models in zip(batch["path"], batch["size"], batch["mtime"],
                                              batch["sha256"], batch["models"]):
        out.append(PhotoRecord(str(path), int(size), float(mtime), str(sha) or None,
                               models=[m for m in str(models).split(",") if m]))
    return out


def _results_to_columns(results: Sequence[PhotoResult]) -> dict:
    """Plain columns (str/int/float/bytes) that Arrow carries without pickling anything.
    ``outputs`` is JSON; embeddings are lists of float32 values (exact after the round trip)."""
    def outputs_json(r: PhotoResult) -> str:
        d = {}
        for sha, out in r.outputs.items():
            if "embedding" in out:
                d[sha] = {"embedding": np.asarray(out["embedding"], np.float32).tolist()}
            elif "tags" in out:
                d[sha] = {"tags": [[str(lab), float(s)] for lab, s in out["tags"]]}
            else:
                d[sha] = {"error": str(out.get("error", "failed"))}
        return json.dumps(d)

    return {
        "path": np.array([r.path for r in results], dtype=object),
        "size": np.array([int(r.size) for r in results], dtype=np.int64),
        "mtime": np.array([float(r.mtime) for r in results], dtype=np.float64),
        "sha256": np.array([r.sha256 or "" for r in results], dtype=object),
        "width": np.array([int(r.width or -1) for r in results], dtype=np.int64),
        "height": np.array([int(r.height or -1) for r in results], dtype=np.int64),
        "signature": np.array([b"" if r.signature is None else np.asarray(r.signature, np.float32).tobytes()
                               for r in results], dtype=object),
        "error": np.array([r.error or "" for r in results], dtype=object),
        "outputs": np.array([outputs_json(r) for r in results], dtype=object),
        "pid": np.array([os.getpid()] * len(results), dtype=np.int64),
    }


def _columns_to_results(batch: dict) -> list[PhotoResult]:
    out = []
    for i in range(len(batch["path"])):
        outputs = {}
        for sha, o in json.loads(batch["outputs"][i]).items():
            if "embedding" in o:
                outputs[sha] = {"embedding": np.asarray(o["embedding"], np.float32)}
            elif "tags" in o:
                outputs[sha] = {"tags": [(lab, float(s)) for lab, s in o["tags"]]}
            else:
                outputs[sha] = {"error": o.get("error")}
        sig = batch["signature"][i]
        w, h = int(batch["width"][i]), int(batch["height"][i])
        out.append(PhotoResult(
            path=str(batch["path"][i]), size=int(batch["size"][i]), mtime=float(batch["mtime"][i]),
            sha256=str(batch["sha256"][i]) or None, width=None if w < 0 else w, height=None if h < 0 else h,
            signature=np.frombuffer(sig, np.float32).copy() if sig else None,
            error=str(batch["error"][i]) or None, outputs=outputs))
    return out


# ------------------------------------------------------------------ the actor
class Predictor:
    """Ray Data callable class: loads the artifacts once per actor, then maps batches of rows to
    batches of results with the local engine's ``process_batch``."""

    def __init__(self, *, artifacts: Sequence[str], expected: Sequence[str],
                 picks: Sequence[tuple[str, str]] | None = None, threads: int | None = None,
                 top_k: int = 5, shipped=None):
        from .scan import LibraryModel

        self._tmp = None
        dirs = list(artifacts)
        if shipped is not None:
            # object-store copy: {artifact index: {relative path: bytes}}
            import ray  # noqa: PLC0415

            files = ray.get(shipped) if isinstance(shipped, ray.ObjectRef) else shipped
            self._tmp = tempfile.mkdtemp(prefix="edgeinfer-ray-")
            dirs = []
            for i, tree in sorted(files.items()):
                root = Path(self._tmp, f"a{i}")
                for rel, data in tree.items():
                    p = (root / rel).resolve()
                    if root.resolve() not in p.parents:
                        raise RayEngineError(f"shipped artifact file {rel!r} leaves its folder")
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(data)
                dirs.append(str(root))
        # the driver's picks (engine, precision) per model, so every worker runs what the driver
        # registered; the sha256 check below proves it
        picks = list(picks or [("auto", "auto")] * len(dirs))
        self.models = [LibraryModel.from_artifact(d, provider=pv, precision=pr, threads=threads)
                       for d, (pv, pr) in zip(dirs, picks)]
        got = [m.sha256 for m in self.models]
        if list(got) != list(expected):
            raise RayEngineError(
                f"a worker loaded different model files than the driver (sha256 {got} vs {list(expected)}): "
                "the artifacts on the shared path differ on this node; use --ship-artifacts")
        self.top_k = int(top_k)

    def process(self, records: Sequence[PhotoRecord]) -> list[PhotoResult]:
        try:
            return process_batch(self.models, records, top_k=self.top_k)
        except Exception:  # noqa: BLE001 - one bad photo must not fail the batch: retry one by one
            results = []
            for rec in records:
                try:
                    results.extend(process_batch(self.models, [rec], top_k=self.top_k))
                except Exception as e:  # noqa: BLE001
                    results.append(PhotoResult(rec.path, rec.size, rec.mtime, rec.sha256,
                                               error=f"{type(e).__name__}: {e}"))
            return results

    def __call__(self, batch: dict) -> dict:
        return _results_to_columns(self.process(_rows_to_records(batch)))

    def __del__(self):
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _read_artifact_tree(artifact_dir: str) -> dict[str, bytes]:
    root = Path(artifact_dir).resolve()
    tree = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in ("bench",) or p.is_symlink() or not p.is_file():
            continue  # bench results are not needed to run; links are not shipped
        tree[str(rel)] = p.read_bytes()
    return tree


# ------------------------------------------------------------------ the driver
def ensure_ray(*, address: str | None = None, num_cpus: int | None = None):
    """Connect to ``address`` (a running cluster: ``ray start --head``), or start a local Ray
    bound to the loopback interface when none is running in this process."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), _node_ip_address="127.0.0.1", **kw)
    except Exception as e:  # noqa: BLE001 - ray raises many types (ConnectionError, RuntimeError...)
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RayEngineError(f"cannot start or reach {where}: {e}; check `ray status` "
                             f"(or use --engine local)") from e
    return ray


def run(store: Store, plan: ScanPlan, models, *, batch_size: int = 16, top_k: int = 5,
        progress: Callable[[ScanStats], None] | None = None, cancel: threading.Event | None = None,
        stats: ScanStats | None = None, address: str | None = None, workers: int | None = None,
        ship_artifacts: bool = False, threads: int | None = None,
        predictor_cls: type = Predictor) -> ScanStats:
    """Process ``plan.todo`` on Ray Data and write the results into ``store`` as they stream back.

    ``models`` are the driver's ``LibraryModel``s (their sha256 is the identity the workers must
    reproduce). ``workers``: actors in the pool (default: the cluster's CPUs). ``predictor_cls``:
    the callable class (a subclass may add behaviour; tests use one that dies on purpose)."""
    stats = stats or ScanStats()
    todo = list(plan.todo)
    if not todo:
        return stats
    ray = ensure_ray(address=address, num_cpus=workers)
    from ray.data import DataContext  # noqa: PLC0415

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False   # the driver shows its own bar (photos done / total, photos/s)
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    n_workers = int(workers or max(1, int(ray.cluster_resources().get("CPU", 1))))
    # each actor gets an equal share of a node's cores for its engine threads (ORT/OpenVINO)
    per_actor_threads = threads or max(1, (os.cpu_count() or 1) // n_workers)
    artifacts = [m.artifact_dir for m in models]
    shipped = None
    if ship_artifacts:
        shipped = ray.put({i: _read_artifact_tree(a) for i, a in enumerate(artifacts)})
    ctor = dict(artifacts=artifacts, expected=[m.sha256 for m in models],
                picks=[(m.model.provider, m.model.precision) for m in models],
                threads=per_actor_threads, top_k=top_k, shipped=shipped)

    rows = _records_to_rows(todo)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // int(batch_size))))
    out = ds.map_batches(predictor_cls, batch_size=int(batch_size), batch_format="numpy",
                         fn_constructor_kwargs=ctor, concurrency=n_workers, num_cpus=1)
    # (Ray Data restarts a dead actor and retries its task without limit by default: that is
    # what keeps a killed worker from losing photos; tests/test_library_ray.py kills one)
    pending = {r.path: r for r in todo}
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        results = [r for r in _columns_to_results(batch) if r.path in pending]
        if not results:
            continue  # a retried batch whose first copy already arrived
        store.write_results(results)
        for r in results:
            pending.pop(r.path, None)
        stats.done += len(results)
        stats.failed += sum(1 for r in results if r.error)
        if progress:
            progress(stats)
        if cancel is not None and cancel.is_set():
            break
    if pending and not (cancel is not None and cancel.is_set()):
        # never lose a photo silently: what the cluster did not return is recorded as failed
        lost = [PhotoResult(r.path, r.size, r.mtime, r.sha256,
                            error="the Ray job never returned this photo (its worker failed repeatedly)")
                for r in pending.values()]
        store.write_results(lost)
        stats.done += len(lost)
        stats.failed += len(lost)
        if progress:
            progress(stats)
    return stats
