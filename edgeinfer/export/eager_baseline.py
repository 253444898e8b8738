"""The PyTorch eager baseline of ``edgeinfer bench``, on the torch side of the package.

Run as ``python -m edgeinfer.export.eager_baseline SPEC.json`` by the (torch-free) bench: it
rebuilds the artifact's model with the same weights (the manifest's origin and seed), runs the
bench's preprocessed images through it for fidelity, and times it in as many rounds as the bench
times the engines, so the "x times faster than PyTorch" figure comes with its spread.
"""
from __future__ import annotations

import sys
import time


def _weights(manifest: dict) -> tuple[str, int]:
    w = manifest.get("weights", {})
    origin = w.get("origin", "random")
    if origin == "random":
        return "random", int(w.get("seed", 0) or 0)
    if origin == "file":
        return w.get("path"), int(w.get("seed", 0) or 0)
    return "pretrained", 0


def measure_eager(spec: dict) -> dict:
    import numpy as np
    import torch

    from ..bench import timing
    from ..bench.worker import peak_rss_mb
    from ..catalog import get_recipe
    from ..runtime.artifact import Artifact
    from .torch_models import build_model

    art = Artifact.open(spec["artifact"])
    weights, seed = _weights(art.manifest)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    t0 = time.perf_counter()
    module = build_model(get_recipe(art.manifest["model"]["name"]), weights=weights,
                         seed=seed).module.eval()
    build_s = time.perf_counter() - t0
    params_mb = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    x = np.load(spec["eval_npy"])
    rounds = max(1, int(spec.get("rounds", 1)))
    budget = spec.get("budget_s") or timing.BUDGET_S
    latency = {}
    with torch.inference_mode():
        np.save(spec["out_npy"], np.concatenate([module(torch.from_numpy(x[i:i + 8])).float().numpy()
                                                 for i in range(0, len(x), 8)]))
        for b in spec["batches"]:
            xb = x[:b] if len(x) >= b else np.concatenate([x] * (b // len(x) + 1))[:b]
            tb = torch.from_numpy(np.ascontiguousarray(xb))
            per_round = [timing.measure_raw(lambda: module(tb), budget_s=budget / rounds,
                                            min_runs=-(-timing.MIN_RUNS // rounds))
                         for _ in range(rounds)]
            lat = timing.summarize([t for r in per_round for t in r])
            lat["round_medians_ms"] = [float(np.median(r)) for r in per_round]
            latency[str(b)] = lat
    return {"build_s": build_s, "params_mb": params_mb, "latency": latency, "device": "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "weights": weights,
            "peak_rss_mb": peak_rss_mb()}


if __name__ == "__main__":
    from ..bench.worker import worker_main

    sys.exit(worker_main(sys.argv[1:], measure_eager))
