"""Accuracy vs latency vs memory across engines and precisions (``edgeinfer bench``).

``run_bench`` (runner) measures; ``report`` writes results.json / results.csv / pareto.png /
report.html; ``worker`` is the fresh-subprocess measurement of cold start and peak memory;
``timing`` the warm-up + time-budget latency loop; ``fingerprint`` the machine record.
Torch-free: the PyTorch eager baseline runs in its own process (``edgeinfer.cli.bench``).
"""
from __future__ import annotations

__all__ = ["run_bench"]


def run_bench(artifact_dir, **kw) -> dict:
    """See ``edgeinfer.bench.runner.run_bench``."""
    from .runner import run_bench as _run

    return _run(artifact_dir, **kw)
