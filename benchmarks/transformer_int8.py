#!/usr/bin/env python
"""INT8 vs FP32 on OpenVINO CPU per model: does NNCF INT8 keep fidelity, and is it faster here?

Issue 17: NNCF's INT8 of mobilevit_s gave all-zero outputs on OpenVINO CPU. Two OpenVINO CPU
defects were found (see ``edgeinfer/quantize/openvino.py``: ``concat_fed_nodes``):

1. an INT8 Convolution fed by an INT8 Concat of two quantized branches computes wrong values
   (MobileViT's fusion Conv); edgeinfer's NNCF call now leaves those consumers in float;
2. with a dynamic batch dimension the quantized MobileViT graph still returns zeros, while the same
   file compiled with a static batch-1 shape does not (cf. openvinotoolkit/openvino#19134,
   quantized graphs with LayerNorm and dynamic shapes on CPU).

Per artifact, in ONE process: the FP32 file on OpenVINO (f32, static batch 1) and INT8 variants
quantized by ``edgeinfer.quantize.openvino.nncf_quantize_onnx`` (NNCF on the ONNX graph, MIXED
preset, TRANSFORMER model type where the recipe says so, Concat consumers in float) and, with
``--variants raw``, without the ignored scope (the file that failed). Each INT8 file is compiled
twice: dynamic batch (what ``edgeinfer.load`` compiles by default) and static batch 1. Fidelity:
cosine of the logits/embeddings vs the FP32 file on OpenVINO, on hold-out photos that were not
calibrated on. Latency: batch 1, static shapes, interleaved rounds, medians.

Quantized files are cached in ``--work`` so the timed run (under ``flock /tmp/bench.lock``)
only compiles and measures:

    nice -n 19 python benchmarks/transformer_int8.py --artifacts A,B --quantize-only
    flock /tmp/bench.lock python benchmarks/transformer_int8.py --artifacts A,B
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _results import command_line, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class _Calib:  # what nncf_quantize_onnx reads from a CalibrationSet
    def __init__(self, calib):
        self.calib = calib


def photos_for(art, photos_dir: Path, n_calib: int, n_hold: int):
    from edgeinfer.runtime.preprocess import preprocess_image

    photos = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    x = np.stack([preprocess_image(p, art.preprocess) for p in photos]).astype(np.float32)
    hold_start = max(n_calib, len(x) - n_hold)  # hold-out photos come after the calibration ones
    return x[:n_calib], x[hold_start:hold_start + n_hold]


def quantize(art, variant: str, calib, work: Path) -> tuple[Path, dict]:
    from edgeinfer.quantize import openvino as qov

    out = work / f"{art.name}.{variant}.int8.onnx"
    meta = out.with_suffix(".json")
    if out.exists() and meta.exists():
        return out, json.loads(meta.read_text())
    mine = work / f"{art.name}.edgeinfer.int8.json"
    if variant == "raw" and mine.exists() and not json.loads(mine.read_text()).get("ignored_concat_consumers"):
        return mine.with_suffix(".onnx"), json.loads(mine.read_text())  # nothing ignored: the same file
    transformer = bool((art.manifest.get("recipe") or {}).get("quantize", {}).get("transformer")) or \
        any(k in art.name for k in ("vit", "clip"))
    t0 = time.perf_counter()
    if variant == "edgeinfer":
        info = qov.nncf_quantize_onnx(art.path("fp32"), out, _Calib(calib), transformer=transformer)
    else:  # "raw": the same call without the ignored scope (the file that gave all-zero logits)
        orig = qov.concat_fed_nodes
        qov.concat_fed_nodes = lambda _m: []
        try:
            info = qov.nncf_quantize_onnx(art.path("fp32"), out, _Calib(calib), transformer=transformer)
        finally:
            qov.concat_fed_nodes = orig
    info["seconds"] = round(time.perf_counter() - t0, 1)
    meta.write_text(json.dumps(info))
    return out, info


def compiled(path: Path, *, static: bool, shape):
    import openvino as ov

    core = ov.Core()
    m = core.read_model(str(path))
    if static:
        m.reshape({m.inputs[0].get_any_name(): [1, *shape]})
    c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    req = c.create_infer_request()
    return lambda x: np.array(req.infer({0: x})[c.outputs[0]], np.float32, copy=True)


def cosine(a, b):
    c = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(c.mean()), float(c.min())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", required=True, help="comma-separated artifact dirs")
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--calib", type=int, default=32, help="calibration photos (the first N)")
    ap.add_argument("--holdout", type=int, default=24, help="hold-out photos (the last N)")
    ap.add_argument("--variants", default="edgeinfer", help="edgeinfer[,raw]")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--work", default="/tmp/edgeinfer-int8-ov")
    ap.add_argument("--quantize-only", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "transformer_int8.md"))
    ap.add_argument("--note", action="append", default=[], help="a finding printed under the table")
    ap.add_argument("--append", action="store_true",
                    help="keep the other models' rows already in the output's .json")
    args = ap.parse_args(argv)
    from edgeinfer.bench.fingerprint import machine_fingerprint
    from edgeinfer.runtime.artifact import Artifact

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    results = []
    for d in [Path(p) for p in args.artifacts.split(",") if p]:
        art = Artifact(d)
        calib, hold = photos_for(art, Path(args.photos), args.calib, args.holdout)
        shape = list(hold.shape[1:])
        files: dict[str, tuple[Path, dict]] = {}
        for v in [v for v in args.variants.split(",") if v]:
            path, info = quantize(art, v, calib, work)
            if all(path != p for p, _ in files.values()):  # "raw" is the same file where nothing is ignored
                files[v] = (path, info)
        if args.quantize_only:
            continue
        ref_fn = compiled(art.path("fp32"), static=True, shape=shape)
        ref = np.concatenate([ref_fn(hold[i:i + 1]) for i in range(len(hold))])
        rows = {"FP32 (f32)": {"fn": ref_fn, "cos": (1.0, 1.0), "absmax_dynamic": None}}
        for v, (path, info) in files.items():
            dyn = compiled(path, static=False, shape=shape)
            dyn_out = np.concatenate([dyn(hold[i:i + 8]) for i in range(0, len(hold), 8)])
            st = compiled(path, static=True, shape=shape)
            st_out = np.concatenate([st(hold[i:i + 1]) for i in range(len(hold))])
            rows[f"INT8 {v}"] = {"fn": st, "cos": cosine(ref, st_out), "cos_dynamic": cosine(ref, dyn_out),
                                 "absmax_dynamic": float(np.abs(dyn_out).max()),
                                 "absmax_static": float(np.abs(st_out).max()), "info": info}
        one = hold[:1]
        for r in rows.values():
            for _ in range(3):
                r["fn"](one)
            r["ts"] = []
        for _ in range(args.rounds):
            for r in rows.values():
                t0 = time.perf_counter()
                r["fn"](one)
                r["ts"].append(time.perf_counter() - t0)
        for r in rows.values():
            r["median_ms"] = statistics.median(r.pop("ts")) * 1000
            r.pop("fn")
        results.append({"model": art.name, "random_weights": art.random_weights, "rows": rows})
    if args.quantize_only:
        return 0
    load1 = os.getloadavg()
    for r in results:
        r["command"], r["loadavg"] = command_line(__file__, argv), [load0, load1]
    out_json = Path(args.out).with_suffix(".json")
    if args.append and out_json.exists():
        old = json.loads(out_json.read_text()).get("results", [])
        results = [r for r in old if r["model"] not in {n["model"] for n in results}] + results
    fp = machine_fingerprint()
    cmd = command_line(__file__, argv)
    L = ["# INT8 vs FP32 on OpenVINO CPU (NNCF), per model", "",
         f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} on {fp['cpu']['model']} "
         f"({fp['cpu']['cores']} cores, INT8 tier {fp['cpu']['int8_tier']}: AVX2, no VNNI, no BF16); "
         f"openvino {fp['libraries'].get('openvino', '?')}, nncf {fp['libraries'].get('nncf', '?')}. "
         f"Calibration: the first {args.calib} shared photos; fidelity on the last {args.holdout} "
         f"(not calibrated on), cosine vs the FP32 file on OpenVINO (f32). Latency: batch 1, static "
         f"shape, {args.rounds} interleaved rounds, median.", "",
         "Commands, with the load average (1/5/15 min) before and after each:", "", "```",
         *[f"{c}    # load {tuple(round(v, 2) for v in la[0])} -> {tuple(round(v, 2) for v in la[1])}"
           for c, la in dict((r["command"], r["loadavg"]) for r in results).items()], "```", "",
         "| model | variant | cosine mean (static b1) | cosine min | dynamic-batch output absmax | "
         "dynamic cosine mean | median ms | vs FP32 | quantize s | float (ignored) nodes |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for res in results:
        base = res["rows"]["FP32 (f32)"]["median_ms"]
        for k, r in res["rows"].items():
            info = r.get("info") or {}
            ign = info.get("ignored_concat_consumers")
            amax = "" if r["absmax_dynamic"] is None else f"{r['absmax_dynamic']:.4g}"
            dcos = f"{r['cos_dynamic'][0]:.5f}" if "cos_dynamic" in r else ""
            L.append(f"| {res['model']}{' (random weights)' if res['random_weights'] else ''} | {k} | "
                     f"{r['cos'][0]:.5f} | {r['cos'][1]:.5f} | {amax} | {dcos} | "
                     f"{r['median_ms']:.2f} | {r['median_ms'] / base:.2f}x | {info.get('seconds', '')} | "
                     f"{'' if ign is None else (', '.join(ign) or 'none')} |")
    L += [""] + [f"- {n}" for n in args.note] + [""]
    write_results(args.out, L, {"command": cmd, "loadavg_before": load0, "loadavg_after": load1,
                                "machine": fp, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
