"""Peak memory of a process that serves one model (``compare``'s memory column).

Run as ``python -m edgeinfer.evaluate.serve_worker SPEC.json`` in a fresh interpreter: it loads
the artifact with ``edgeinfer.load`` on the engine and precision the comparison used, classifies
the given images (paths, or arrays in an .npy file) the way ``compare`` does, and prints one JSON
line with its peak RSS (VmHWM: the high-water mark of the whole process, interpreter included).
"""
from __future__ import annotations

import json
import sys

from ..bench.worker import RESULT_PREFIX, current_rss_mb, peak_rss_mb


def run_spec(spec: dict) -> dict:
    import numpy as np

    from ..runtime.model import load

    base = current_rss_mb()
    items = list(spec.get("paths") or [])
    if spec.get("arrays"):
        items += list(np.load(spec["arrays"]))
    m = load(spec["artifact"], provider=spec["provider"], precision=spec["precision"])
    try:
        for _ in range(max(1, int(spec.get("repeat", 2)))):
            if m.artifact.kind == "clip":
                m.zero_shot(items, spec.get("labels") or None, top_k=1)
            else:
                m.embed_raw(items)
    finally:
        m.close()
    return {"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": base, "images": len(items)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        res = {"ok": True, **run_spec(spec)}
    except BaseException as e:  # reported to the parent as the model's memory error
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "peak_rss_mb": peak_rss_mb()}
    print(RESULT_PREFIX + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
