#!/usr/bin/env python
"""Run ``edgeinfer bench`` twice on one artifact and compare the medians (target: within 10%).

    python benchmarks/stability.py /tmp/edgeinfer-peers/mobilevit_s --provider cpu,openvino \
        --precision fp32,int8 --images ../shared/data/photos
"""
from __future__ import annotations

import argparse
import sys
import tempfile


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--provider", default="cpu,openvino")
    ap.add_argument("--precision", default="all")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--images", default=None)
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--tolerance", type=float, default=0.10)
    args = ap.parse_args(argv)

    from edgeinfer.bench import run_bench

    runs = []
    for i in range(2):
        with tempfile.TemporaryDirectory() as out:
            res = run_bench(args.artifact, providers=args.provider, precisions=args.precision,
                            batches=args.batch, images=args.images, budget_s=args.budget, memory=False,
                            torch_baseline=False, write_tuning_file=False, out=out, max_images=20)
        runs.append({(r["provider"], r["precision"], r["batch"]): r["latency_median_ms"]
                     for r in res["rows"] if r["status"] == "ok"})
    worst = 0.0
    print("| engine | precision | batch | run 1 median ms | run 2 median ms | difference |")
    print("|---|---|---:|---:|---:|---:|")
    for k in runs[0]:
        a, b = runs[0][k], runs[1].get(k)
        if b is None:
            continue
        d = abs(a - b) / min(a, b)
        worst = max(worst, d)
        print(f"| {k[0]} | {k[1]} | {k[2]} | {a:.2f} | {b:.2f} | {d:.1%} |")
    ok = worst <= args.tolerance
    print(f"\nworst difference {worst:.1%}: {'within' if ok else 'OUTSIDE'} {args.tolerance:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
