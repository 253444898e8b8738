"""CLIP text tower rows for `edgeinfer bench`: latency per prompt batch and fidelity to FP32.

Kept apart from the image rows on purpose: the text tower runs once per label list (its
embeddings are cached), so it must not compete with the image tower for the tuned pick.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..evaluate.fidelity import cosine_per_row
from . import timing

# Realistic label prompts, varied in length (fidelity is measured on these).
FIDELITY_PROMPTS = [f"a photo of a {w}." for w in (
    "dog", "cat", "beach at sunset", "birthday cake with candles", "receipt from a grocery store",
    "mountain lake in autumn", "handwritten document", "red sports car", "plate of sushi",
    "child playing football in the park", "snowy street at night", "bird on a branch",
    "screenshot of a phone", "wedding ceremony", "passport page", "city skyline")]


def text_tower_rows(artifact, providers: Sequence[str], *, batches: Sequence[int] = (1, 16),
                    threads: int | None = None, budget_s: float = timing.BUDGET_S,
                    progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per available engine x text precision x prompt batch size."""
    from ..runtime.zero_shot import text_feeds

    files = artifact.files("text")
    if not files:
        return []
    from .. import backends
    from ..runtime.selection import engine_options, select

    fid_feeds = text_feeds(artifact, len(FIDELITY_PROMPTS), texts=FIDELITY_PROMPTS)
    ref = None
    rows: list[dict] = []
    outputs: dict[tuple[str, str], np.ndarray] = {}   # fidelity outputs per configuration
    for prov in providers:
        for prec in [p for p in ("fp32", "fp16", "int8") if p in files]:
            row = {"tower": "text", "provider": prov, "precision": prec, "status": "ok"}
            try:
                # the options Model.tower_session would use for this tower on this engine
                sel = select(prov, artifact=artifact, precision=artifact.precisions()[0])
                opts = engine_options(sel, artifact, tower="text", precision=prec, threads=threads,
                                      batch_size=max(batches))
                with backends.create_session(artifact.path(prec, "text"), provider=sel.provider,
                                             options=opts) as s:
                    outputs[(prov, prec)] = out = s.run_feeds(fid_feeds)[0]
                    if prec == "fp32" and ref is None:
                        ref = out
                    for b in batches:
                        feeds = text_feeds(artifact, int(b))
                        if progress:
                            progress(f"text tower {prov}/{prec} batch {b}")
                        lat = timing.measure(lambda: s.run_feeds(feeds), budget_s=budget_s)
                        rows.append({**row, "batch": int(b), "latency_median_ms": lat["median_ms"],
                                     "latency_p90_ms": lat["p90_ms"], "runs": lat["runs"],
                                     "prompts_per_s": 1000.0 * int(b) / lat["median_ms"]})
            except Exception as e:  # noqa: BLE001 - an engine failing shows in its rows only
                rows.append({**row, "status": "error", "batch": None,
                             "error": f"{type(e).__name__}: {str(e)[:300]}"})
    for r in rows:
        out = outputs.get((r["provider"], r["precision"]))
        if r["status"] == "ok" and out is not None and ref is not None:
            c = cosine_per_row(ref, out)
            r["cosine_mean"], r["cosine_min"] = float(c.mean()), float(c.min())
    return rows
