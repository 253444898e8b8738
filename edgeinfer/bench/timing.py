"""Latency measurement: warm-up, then a time budget with a minimum run count:
never one run; report median and p90/p99."""
from __future__ import annotations

import gc
import time
from typing import Callable

import numpy as np

#: defaults: enough runs for a stable median on a busy laptop without taking minutes
WARMUP_RUNS = 3
WARMUP_S = 0.3
MIN_RUNS = 20
BUDGET_S = 3.0
MAX_RUNS = 5000


def measure(fn: Callable[[], object], *, warmup_runs: int = WARMUP_RUNS, warmup_s: float = WARMUP_S,
            min_runs: int = MIN_RUNS, budget_s: float = BUDGET_S, max_runs: int = MAX_RUNS) -> dict:
    """Time ``fn()``: at least ``warmup_runs`` and ``warmup_s`` seconds of warm-up, then runs until
    both ``min_runs`` and ``budget_s`` are reached (or ``max_runs``). Milliseconds."""
    return summarize(measure_raw(fn, warmup_runs=warmup_runs, warmup_s=warmup_s, min_runs=min_runs,
                                 budget_s=budget_s, max_runs=max_runs))


def measure_raw(fn: Callable[[], object], *, warmup_runs: int = WARMUP_RUNS, warmup_s: float = WARMUP_S,
                min_runs: int = MIN_RUNS, budget_s: float = BUDGET_S, max_runs: int = MAX_RUNS) -> list[float]:
    """Like ``measure`` but returns the individual run times (ms)."""
    t_end = time.perf_counter() + warmup_s
    n = 0
    while n < warmup_runs or time.perf_counter() < t_end:
        fn()
        n += 1
        if n >= 10 * max(warmup_runs, 1) and time.perf_counter() >= t_end:
            break
    # a very slow configuration (PyTorch eager on a busy laptop) gets fewer runs, never < 5,
    # so one row cannot take minutes: at most ~10x the budget
    per_run = (time.perf_counter() - (t_end - warmup_s)) / max(n, 1)
    if per_run * min_runs > 10 * max(budget_s, 0.1):
        min_runs = max(min(5, min_runs), int(10 * max(budget_s, 0.1) / per_run))
    times: list[float] = []
    gc_was = gc.isenabled()
    gc.disable()  # a GC pause inside a timed run is noise, not the engine
    try:
        start = time.perf_counter()
        while len(times) < max_runs:
            t0 = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - t0) / 1e6)
            if len(times) >= min_runs and time.perf_counter() - start >= budget_s:
                break
    finally:
        if gc_was:
            gc.enable()
    return times


def summarize(times_ms) -> dict:
    t = np.asarray(times_ms, dtype=np.float64)
    if len(t) == 0:
        return {"runs": 0}
    q1, q3 = np.percentile(t, [25, 75])
    return {
        "runs": int(len(t)),
        "median_ms": float(np.median(t)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "iqr_ms": float(q3 - q1),
        "total_s": float(t.sum() / 1000.0),
    }
