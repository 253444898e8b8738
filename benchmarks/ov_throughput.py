#!/usr/bin/env python
"""Throughput mode for the library scan: OpenVINO LATENCY vs THROUGHPUT (streams), and ONNX Runtime,
on a scan-sized batch, measured in ONE process, interleaved (issue 17, item 4).

Per artifact, on a batch of ``--batch`` preprocessed photos (the scan's batch, default 16):

- ov LATENCY     one compiled model, one request, all threads on the whole batch (what the scan runs);
- ov THROUGHPUT  the THROUGHPUT hint (the plugin picks NUM_STREAMS); the batch is split into one chunk
                 per stream and the chunks run in parallel threads (the session's request pool makes
                 concurrent calls safe) - what the scan would have to do for streams to pay;
- ort            ONNX Runtime CPU session, whole batch in one call (edgeinfer's session settings).

Reports images/s per configuration and the ratio to ov LATENCY. Writes
``benchmarks/results/ov_throughput.md`` + ``.json`` with the command and ``os.getloadavg()``.

    python benchmarks/ov_throughput.py --artifacts /tmp/perf/mobilevit_s --photos ../shared/data/photos
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from _results import command_line, write_results

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one_artifact(d: Path, photos: list[Path], *, batch: int, rounds: int, precision: str, cache: str) -> dict:
    from edgeinfer.backends import SessionOptions, create_session
    from edgeinfer.runtime.artifact import Artifact
    from edgeinfer.runtime.preprocess import preprocess_image

    art = Artifact(d)
    prec = precision if precision in art.precisions() else "fp32"
    path = art.path(prec)
    xs = np.stack([preprocess_image(p, art.preprocess) for p in photos[:batch]]).astype(np.float32)
    while len(xs) < batch:
        xs = np.concatenate([xs, xs])[:batch]
    lat = create_session(path, provider="openvino", precision=prec,
                         options=SessionOptions(cache_dir=cache, performance_hint="LATENCY"))
    thr = create_session(path, provider="openvino", precision=prec,
                         options=SessionOptions(cache_dir=cache, performance_hint="THROUGHPUT"))
    comp = (thr._dynamic or thr._static).compiled
    streams = int(comp.get_property("NUM_STREAMS"))
    nreq = max(1, int(comp.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    pool = ThreadPoolExecutor(max_workers=nreq)
    chunks = np.array_split(xs, nreq)

    def run_thr():
        return np.concatenate(list(pool.map(thr.run, chunks)))

    ort = create_session(path, provider="cpu", precision=prec)
    cfgs = {"ov LATENCY (one call, whole batch)": lambda: lat.run(xs),
            f"ov THROUGHPUT ({streams} streams, {nreq} parallel chunks)": run_thr,
            "onnxruntime CPU (one call, whole batch)": lambda: ort.run(xs)}
    ref = lat.run(xs)
    rows = {}
    for k, fn in cfgs.items():
        out = fn()
        cos = float(np.mean(np.sum(out * ref, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)))
        fn()
        rows[k] = {"fn": fn, "ts": [], "cosine_vs_latency": cos}
    for _ in range(rounds):
        for r in rows.values():
            t0 = time.perf_counter()
            r["fn"]()
            r["ts"].append(time.perf_counter() - t0)
    base = statistics.median(next(iter(rows.values()))["ts"])
    for r in rows.values():
        m = statistics.median(r["ts"])
        r.update(median_ms=m * 1000, images_per_s=batch / m, speedup_vs_latency=base / m)
        del r["fn"], r["ts"]
    pool.shutdown()
    for s in (lat, thr, ort):
        s.close()
    return {"model": art.name, "precision": prec, "batch": batch, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", required=True, help="comma-separated artifact dirs")
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ov_throughput.md"))
    args = ap.parse_args(argv)
    from edgeinfer.bench.fingerprint import machine_fingerprint

    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ovthr-") as tmp:
        res = [one_artifact(Path(d), photos, batch=args.batch, rounds=args.rounds, precision=args.precision,
                            cache=tmp) for d in args.artifacts.split(",") if d]
    load1 = os.getloadavg()
    fp = machine_fingerprint()
    cmd = command_line(__file__, argv)
    L = ["# Library-scan batch: OpenVINO LATENCY vs THROUGHPUT streams vs ONNX Runtime", "",
         f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} on {fp['cpu']['model']} "
         f"({fp['cpu']['cores']} cores, INT8 tier {fp['cpu']['int8_tier']}). One process, {args.rounds} interleaved "
         f"rounds, batch {args.batch} of real photos (preprocessed), medians. Inference only (no decode).", "",
         f"**Load average** before {tuple(round(v, 2) for v in load0)}, after {tuple(round(v, 2) for v in load1)}: "
         "the machine was shared with other jobs; compare the ratios, not the absolute numbers.", "",
         "```", cmd, "```", ""]
    for r in res:
        L += [f"## {r['model']} ({r['precision']})", "",
              "| configuration | median ms / batch | images/s | vs ov LATENCY | cosine vs ov LATENCY |",
              "|---|---:|---:|---:|---:|"]
        for k, v in r["rows"].items():
            L.append(f"| {k} | {v['median_ms']:.1f} | {v['images_per_s']:.2f} | {v['speedup_vs_latency']:.2f}x | "
                     f"{v['cosine_vs_latency']:.5f} |")
        L.append("")
    write_results(args.out, L, {"command": cmd, "loadavg_before": load0, "loadavg_after": load1,
                                "machine": fp, "results": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
