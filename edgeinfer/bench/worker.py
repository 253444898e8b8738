"""Fresh-process measurements of one configuration: cold start and peak memory (a process that
already ran other engines would report their memory too).

Run as ``python -m edgeinfer.bench.worker SPEC.json``; prints one JSON line. The child imports
only what the runtime needs, opens the configuration as ``edgeinfer.load`` does (selection +
engine options from ``edgeinfer.runtime.selection``; cold start, with an empty or a warm engine
cache), runs a few batches, and reports its peak RSS and, on NVIDIA GPUs, the GPU memory it holds.
``main`` and ``run_in_subprocess`` are shared with the PyTorch baseline worker.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from typing import Callable

RESULT_PREFIX = "EDGEINFER_WORKER_RESULT "


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB).

    Linux: VmHWM from /proc/self/status. Not ``ru_maxrss``: Linux carries the parent's peak
    across fork + exec into it, so a child of a big process would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


def gpu_memory_mb(pid: int | None = None) -> float | None:
    """GPU memory used by ``pid`` (this process by default) per nvidia-smi, or None."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    pid = os.getpid() if pid is None else pid
    try:
        r = subprocess.run([exe, "--query-compute-apps=pid,used_memory",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in r.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            try:
                return float(parts[1])
            except ValueError:
                return None
    return 0.0


def run_spec(spec: dict) -> dict:
    """Cold start + a few batches of one configuration, opened exactly as ``edgeinfer.load``
    opens it (``runtime.selection``: same engine options, TensorRT profile and cache key)."""
    import numpy as np

    out: dict = {"baseline_rss_mb": None}
    t_imp = time.perf_counter()
    from ..backends import create_session
    from ..runtime.artifact import Artifact
    from ..runtime.selection import engine_options, select

    out["import_s"] = time.perf_counter() - t_imp
    out["baseline_rss_mb"] = current_rss_mb()
    art = Artifact(spec["artifact"])
    t0 = time.perf_counter()
    sel = select(spec["provider"], artifact=art, precision=spec["precision"])
    opts = engine_options(sel, art, threads=spec.get("threads"), batch_size=int(spec["batch"]),
                          cache_dir=spec.get("cache_dir"))
    sess = create_session(art.path(sel.precision, verify=False), provider=sel.provider, options=opts)
    out["create_s"] = time.perf_counter() - t0
    out["load_seconds"] = float(getattr(sess, "load_seconds", 0.0) or 0.0)
    out["cache_hit"] = getattr(sess, "cache_hit", None)
    out["device"] = getattr(sess, "device", "")
    c, h, w = art.preprocess["input_size"]
    x = np.random.default_rng(0).standard_normal((int(spec["batch"]), c, h, w)).astype(np.float32)
    t1 = time.perf_counter()
    sess.run(x)
    out["first_run_s"] = time.perf_counter() - t1
    for _ in range(max(0, int(spec.get("runs", 3)) - 1)):
        sess.run(x)
    out["gpu_mem_mb"] = gpu_memory_mb() if spec["provider"] in ("cuda", "tensorrt") else None
    out["peak_rss_mb"] = peak_rss_mb()
    sess.close()
    return out


def worker_main(argv, run: Callable[[dict], dict]) -> int:
    """Read the spec file named in ``argv``, run ``run(spec)``, print its result as one line
    (an exception becomes ``{"ok": False, "error": ...}`` for the parent's row)."""
    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        res = {"ok": True, **run(spec)}
    except BaseException as e:  # reported to the parent as the row's error
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "peak_rss_mb": peak_rss_mb()}
    print(RESULT_PREFIX + json.dumps(res), flush=True)
    return 0


def main(argv=None) -> int:
    return worker_main(sys.argv[1:] if argv is None else argv, run_spec)


def run_in_subprocess(spec: dict, *, timeout: float = 600, module: str = "edgeinfer.bench.worker",
                      env: dict | None = None) -> dict:
    """Run ``module`` in a fresh interpreter with ``spec``; its result dict (or an error dict)."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        path = f.name
    try:
        r = subprocess.run([sys.executable, "-m", module, path], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"measurement subprocess timed out after {timeout:.0f}s"}
    finally:
        os.unlink(path)
    for line in reversed(r.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
    return {"ok": False, "error": f"measurement subprocess exited with {r.returncode}: "
                                  + " | ".join(tail)}


if __name__ == "__main__":
    sys.exit(main())
