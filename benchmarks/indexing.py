#!/usr/bin/env python
"""Library indexing throughput (issue 17): photos/s of `edgeinfer.library.run_scan` on 12 MP JPEGs
with one classifier + the CLIP image tower, against the loops people write and against the bounds
this machine sets. One run measures, on the same photos:

- (a) naive: PIL open + full decode, torchvision Resize/CenterCrop/Normalize per model, PyTorch
  eager (same architectures, same random weights), one photo at a time (in a fresh subprocess, so
  torch's thread pool does not share the process with the engines);
- (b) Immich-style: PIL full decode once per photo, numpy resize/crop/normalise per model, ONNX
  Runtime FP32 with its default session options, batch 1, one photo at a time;
- decode only on all cores: the scan's decode (read + sha256 + JPEG draft decode) and a full PIL
  decode, in one thread per core: the rate decode alone allows;
- per-photo CPU-seconds (``time.process_time``, all threads of the process) of the scan's decode
  stage (read, sha256, draft decode, signature, each model's resize/crop/normalise; one thread) and
  of inference (both models, the scan's batch, each engine and mode): the decode+inference bound
  = cores / (decode CPU-s + inference CPU-s) photos/s -- the rate if every core did only useful work;
- run_scan per engine (ONNX Runtime, OpenVINO) and mode (LATENCY threads / THROUGHPUT streams),
  plus the re-scan with nothing changed.

The 12 MP copies come from pipeline_12mp.make_12mp (4032x3024, quality 90, sensor-like grain; a
smooth upscale would decode faster than a real photo). Writes results/indexing.md + .json with the
command, the machine and the load average.

    python benchmarks/indexing.py --classifier ARTIFACT --clip ARTIFACT --n 48 [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _results import command_line, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load3() -> tuple:
    return tuple(round(x, 2) for x in os.getloadavg())


# ------------------------------------------------------------------ (a) naive torch loop
def naive_torch(cls_dir: str, clip_dir: str, paths: list[str]) -> dict:
    """Runs in a fresh subprocess (``--naive-torch``): photos/s, one photo at a time."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from edgeinfer.catalog import get_recipe
    from edgeinfer.export.torch_models import build_model
    from edgeinfer.runtime.artifact import Artifact

    mods = []
    for d in (cls_dir, clip_dir):
        art = Artifact(d)
        w = art.manifest.get("weights", {})
        weights = "random" if w.get("origin") == "random" else w.get("path") or "pretrained"
        mod = build_model(get_recipe(art.name), weights=weights, seed=int(w.get("seed", 0) or 0)).module.eval()
        spec = art.preprocess
        interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}.get(
            spec.get("interpolation"), T.InterpolationMode.BILINEAR)
        tf = T.Compose([T.Resize(spec["resize_size"], interpolation=interp), T.CenterCrop(spec["input_size"][1:]),
                        T.ToTensor(), T.Normalize(spec["mean"], spec["std"])])
        mods.append((mod, tf, art.manifest.get("output", {}).get("kind", "logits")))

    def one(p):
        with torch.inference_mode():
            img = Image.open(p).convert("RGB")
            out = []
            for mod, tf, kind in mods:
                y = mod(tf(img).unsqueeze(0))
                out.append(y.softmax(-1).topk(5) if kind == "logits" else torch.nn.functional.normalize(y, dim=-1))
            return out

    one(paths[0])  # warm-up (first-call allocations)
    c0, t0 = time.process_time(), time.perf_counter()
    for p in paths:
        one(p)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"photos": len(paths), "seconds": dt, "photos_per_s": len(paths) / dt, "cpu_s_per_photo": cpu / len(paths),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def run_naive_subprocess(cls_dir, clip_dir, paths) -> dict:
    spec = json.dumps({"cls": str(cls_dir), "clip": str(clip_dir), "paths": [str(p) for p in paths]})
    r = subprocess.run([sys.executable, __file__, "--naive-torch", spec], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ (b) Immich-style loop
def immich_style(cls_dir: str, clip_dir: str, paths: list[str]) -> dict:
    import onnxruntime as ort
    from PIL import Image

    from edgeinfer.runtime.artifact import Artifact

    interp = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
    runs = []
    for d in (cls_dir, clip_dir):
        art = Artifact(d)
        # what a service does by hand: default session options, CPU EP, the FP32 file
        sess = ort.InferenceSession(str(art.path("fp32")), providers=["CPUExecutionProvider"])
        runs.append((sess, sess.get_inputs()[0].name, art.preprocess))

    def prep(img, spec):
        short, (_, th, tw) = int(spec["resize_size"]), spec["input_size"]
        w, h = img.size
        nw, nh = (short, max(1, round(short * h / w))) if w <= h else (max(1, round(short * w / h)), short)
        r = img.resize((nw, nh), interp.get(spec.get("interpolation"), Image.BILINEAR))
        x0, y0 = (nw - tw) // 2, (nh - th) // 2
        a = np.asarray(r.crop((x0, y0, x0 + tw, y0 + th)), np.float32) / 255.0
        a = (a - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
        return a.transpose(2, 0, 1)[None].astype(np.float32)

    def one(p):
        img = Image.open(p).convert("RGB")  # full decode, once per photo
        return [s.run(None, {name: prep(img, spec)})[0] for s, name, spec in runs]

    one(paths[0])
    c0, t0 = time.process_time(), time.perf_counter()
    for p in paths:
        one(p)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"photos": len(paths), "seconds": dt, "photos_per_s": len(paths) / dt, "cpu_s_per_photo": cpu / len(paths),
            "onnxruntime": ort.__version__}


# ------------------------------------------------------------------ decode only, all cores
def decode_only(paths: list[str], models, workers: int) -> dict:
    from PIL import Image

    from edgeinfer.library.scan import PhotoRecord, _decode, draft_for

    draft = draft_for(models)
    recs = [PhotoRecord(p, 0, 0.0) for p in paths]

    def full(p):
        with Image.open(p) as im:
            return im.convert("RGB").size

    out = {"draft_size": draft, "workers": workers}
    for name, fn in (("draft", lambda r: _decode(r, draft)[0].size), ("full", lambda r: full(r.path))):
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(fn, recs[:workers]))  # warm the threads
            t0 = time.perf_counter()
            list(ex.map(fn, recs))
            dt = time.perf_counter() - t0
        c0 = time.process_time()
        for r in recs[: max(4, len(recs) // 4)]:  # single-threaded CPU cost per photo
            fn(r)
        cpu = (time.process_time() - c0) / max(4, len(recs) // 4)
        out[name] = {"photos_per_s": len(recs) / dt, "cpu_s_per_photo": cpu}
    return out


def decode_stage_cpu(paths: list[str], models) -> float:
    """CPU-s per photo of the scan's decode stage (prepare_record), one thread."""
    from edgeinfer.library.scan import PhotoRecord, draft_for, prepare_record

    draft = draft_for(models)
    recs = [PhotoRecord(p, 0, 0.0, models=[m.sha256 for m in models]) for p in paths]
    prepare_record(recs[0], models, draft)
    best = float("inf")
    for _ in range(2):  # the lesser of two passes (see inference_cpu)
        c0 = time.process_time()
        for r in recs:
            prepare_record(r, models, draft)
        best = min(best, (time.process_time() - c0) / len(recs))
    return best


def inference_cpu(models, batches: list[list[np.ndarray]], rounds: int = 3) -> dict:
    """CPU-s and wall-s per photo of both models' inference on the scan's batches (no decode).
    The least CPU of ``rounds`` passes is the bound's figure: other jobs on the machine only ever
    add CPU time (cache and memory-bandwidth contention), so the least is the closest to the
    engine's own cost and gives the highest (strictest) bound."""
    n = sum(len(b[0]) for b in batches)
    for m, x in zip(models, batches[0]):
        m.model.infer(x)  # warm-up (first-call allocations, OpenVINO request creation)
    cpus, walls = [], []
    for _ in range(rounds):
        c0, t0 = time.process_time(), time.perf_counter()
        for b in batches:
            for m, x in zip(models, b):
                m.model.infer(x)
        cpus.append((time.process_time() - c0) / n)
        walls.append((time.perf_counter() - t0) / n)
    return {"cpu_s_per_photo": min(cpus), "cpu_s_per_photo_rounds": cpus,
            "wall_s_per_photo": min(walls), "wall_s_per_photo_rounds": walls}


# ------------------------------------------------------------------ run_scan
def scan_once(folder: Path, db: Path, models, batch_size: int) -> dict:
    from edgeinfer.library import Store, run_scan

    for f in db.parent.glob(db.name + "*"):
        f.unlink()
    with Store(db) as store:
        c0 = time.process_time()
        s1 = run_scan(store, folder, models, batch_size=batch_size)
        cpu = time.process_time() - c0
        s2 = run_scan(store, folder, models, batch_size=batch_size)
        counts = store.counts()
    t = s1.elapsed_s - s1.plan_s
    return {"seconds": s1.elapsed_s, "photos_per_s": s1.done / s1.elapsed_s, "done": s1.done, "failed": s1.failed,
            "cpu_s_per_photo": cpu / max(1, s1.done), "cpu_utilisation": cpu / (s1.elapsed_s * (os.cpu_count() or 1)),
            "rescan_s": s2.elapsed_s, "rescan_skipped": s2.skipped, "stored": counts, "process_s": t}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--engines", default="cpu,openvino", help="providers to measure (comma-separated)")
    ap.add_argument("--hints", default="LATENCY,THROUGHPUT")
    ap.add_argument("--naive-n", type=int, default=24,
                    help="photos for the slow loops (a) and (b): their rate is per photo (keeps a run < 5 min)")
    ap.add_argument("--rounds", type=int, default=3, help="scans per configuration (median reported)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--workdir", default=None, help="where the 12 MP copies go (default: a temp dir)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "indexing.md"))
    args = ap.parse_args(argv)

    from pipeline_12mp import make_12mp

    from edgeinfer.backends.ort import physical_cores
    from edgeinfer.bench.fingerprint import machine_fingerprint
    from edgeinfer.library import LibraryModel
    from edgeinfer.library.scan import (
        SCAN_PERFORMANCE_HINT,
        PhotoRecord,
        draft_for,
        prepare_record,
    )
    from edgeinfer.runtime.artifact import Artifact
    from edgeinfer.runtime.selection import select

    cores = physical_cores()
    load = {"start": load3()}
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="edgeinfer-indexing-"))
    folder = work / "photos12mp"
    folder.mkdir(parents=True, exist_ok=True)
    src = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.n]
    have = sorted(folder.glob("*.jpg"))
    paths = have[:args.n] if len(have) >= len(src) else make_12mp(src, folder)
    paths = [str(p) for p in paths]
    if len(have) > len(paths):  # the scans read a folder: one holding exactly these photos (hard links)
        folder = work / f"scan{len(paths)}"
        folder.mkdir(exist_ok=True)
        for p in paths:
            if not (folder / Path(p).name).exists():
                os.link(p, folder / Path(p).name)
    mb = sum(os.path.getsize(p) for p in paths) / 2**20
    for p in paths:  # page cache: every line reads the files from memory
        Path(p).read_bytes()
    print(f"{len(paths)} photos at 12 MP ({mb:.0f} MB, {mb / len(paths):.1f} MB each) in {folder}", flush=True)
    res: dict = {"photos": len(paths), "mb": round(mb, 1), "batch_size": args.batch_size, "cores": cores,
                 "classifier": args.classifier, "clip": args.clip}

    # (a) and (b): the loops people write
    if not args.skip_naive:
        res["naive_torch"] = run_naive_subprocess(args.classifier, args.clip, paths[:args.naive_n])
        print("naive torch:", res["naive_torch"], flush=True)
        load["after_naive"] = load3()
    res["immich_style"] = immich_style(args.classifier, args.clip, paths[:args.naive_n])
    print("immich-style:", res["immich_style"], flush=True)
    load["after_immich"] = load3()

    # what `edgeinfer index` picks with provider auto
    auto = select("auto", artifact=Artifact(args.clip))
    res["auto"] = {"provider": auto.provider, "precision": auto.precision, "reason": auto.reason,
                   "scan_hint": SCAN_PERFORMANCE_HINT}

    engines, rows = [e for e in args.engines.split(",") if e], {}
    ref_models = [LibraryModel.from_artifact(a, provider="cpu", precision="fp32") for a in (args.classifier, args.clip)]
    res["decode_only"] = decode_only(paths, ref_models, cores)
    res["decode_stage_cpu_s_per_photo"] = decode_stage_cpu(paths[: max(8, len(paths) // 3)], ref_models)
    print("decode only:", res["decode_only"], "stage CPU", res["decode_stage_cpu_s_per_photo"], flush=True)
    # the scan's batches, preprocessed once, for the inference-only measurements
    draft = draft_for(ref_models)
    k = min(len(paths), 2 * args.batch_size)
    prepped = [prepare_record(PhotoRecord(p, 0, 0.0, models=[m.sha256 for m in ref_models]), ref_models, draft)
               for p in paths[:k]]
    batches = [[np.stack([pp.inputs[m.sha256] for pp in prepped[s:s + args.batch_size]]) for m in ref_models]
               for s in range(0, k, args.batch_size)]
    outs_ref = [m.model.infer(b) for m, b in zip(ref_models, batches[0])]
    for m in ref_models:
        m.close()
    load["after_decode"] = load3()

    loaded = {}
    for prov in engines:
        for hint in [h for h in args.hints.split(",") if h]:
            key = f"{prov}/{hint}"
            try:
                ms = [LibraryModel.from_artifact(a, provider=prov, precision="fp32", performance_hint=hint)
                      for a in (args.classifier, args.clip)]
            except Exception as e:  # noqa: BLE001 -- an engine missing here is a row that says so
                rows[key] = {"error": str(e)}
                continue
            loaded[key] = ms
            inf = inference_cpu(ms, batches)
            outs = [m.model.infer(b) for m, b in zip(ms, batches[0])]
            inf["max_abs_diff_vs_ort_latency"] = float(max(np.abs(o - r).max() for o, r in zip(outs, outs_ref)))
            inf["session"] = ms[1].model.session.describe()
            rows[key] = {"inference": inf, "scans": []}
            print(key, f"inference CPU {inf['cpu_s_per_photo'] * 1000:.1f} ms/photo", flush=True)
    load["after_inference"] = load3()
    # the scans, interleaved round by round so that a change of load hits every configuration
    for r in range(args.rounds):
        for key, ms in loaded.items():
            rows[key]["scans"].append(scan_once(folder, work / f"lib-{key.replace('/', '-')}.db", ms,
                                                args.batch_size))
            print(key, f"round {r}: {rows[key]['scans'][-1]['photos_per_s']:.2f} photos/s", flush=True)
        load[f"after_round_{r}"] = load3()
    for key, ms in loaded.items():
        for m in ms:
            m.close()
        v = rows[key]
        v["scan"] = sorted(v["scans"], key=lambda x: x["photos_per_s"])[len(v["scans"]) // 2]  # the median run
        v["scan_photos_per_s_all"] = [round(x["photos_per_s"], 3) for x in v["scans"]]
        v["bound_photos_per_s"] = cores / (res["decode_stage_cpu_s_per_photo"] + v["inference"]["cpu_s_per_photo"])
        v["pct_of_bound"] = 100 * v["scan"]["photos_per_s"] / v["bound_photos_per_s"]
    res["configs"] = rows
    load["end"] = load3()
    res["loadavg"] = load
    fp = machine_fingerprint()
    res["machine"] = fp
    cmd = command_line(__file__, argv)
    res["command"] = cmd
    md = report(res, args, fp, cmd)
    write_results(args.out, md, res)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(res: dict, args, fp: dict, cmd: str) -> list[str]:
    cpu = fp.get("cpu", {})
    rows = {k: v for k, v in res["configs"].items() if "scan" in v}
    auto_key = f"{res['auto']['provider']}/{res['auto']['scan_hint']}"
    best_key = max(rows, key=lambda k: rows[k]["scan"]["photos_per_s"]) if rows else None
    head = rows.get(auto_key) or (rows[best_key] if best_key else None)
    nv = res.get("naive_torch", {}).get("photos_per_s")
    im = res["immich_style"]["photos_per_s"]
    L = [f"# Library indexing: 12 MP photos, {Path(args.classifier).name} + {Path(args.clip).name} image tower", "",
         f"{res['photos']} shared photos as grainy 12 MP JPEGs ({res['mb']:.0f} MB, "
         f"{res['mb'] / res['photos']:.1f} MB each; benchmarks/pipeline_12mp.make_12mp), random weights (speed does "
         f"not depend on them), FP32 everywhere, scan batch {res['batch_size']}. Machine: {cpu.get('model', '?')}, "
         f"{res['cores']} cores, ISA {', '.join(k for k, v in (cpu.get('isa') or {}).items() if v is True) or '?'}. "
         f"One process (the naive loop in a fresh subprocess), files in the page cache.", "",
         f"**Load average** (1/5/15 min) at start {res['loadavg']['start']}, at the end {res['loadavg']['end']} "
         f"(each stage in the .json).", "", "```", cmd, "```", "",
         "| line | photos/s | CPU-s per photo |", "|---|---:|---:|"]
    if nv:
        L.append(f"| (a) naive: PIL full decode + torchvision + PyTorch eager, one photo at a time "
                 f"({res['naive_torch']['torch_threads']} torch threads; {res['naive_torch']['photos']} photos) | {nv:.2f} | "
                 f"{res['naive_torch']['cpu_s_per_photo']:.3f} |")
    L.append(f"| (b) Immich-style: PIL full decode + ONNX Runtime FP32 defaults, batch 1, one photo at a time "
             f"({res['immich_style']['photos']} photos) | "
             f"{im:.2f} | {res['immich_style']['cpu_s_per_photo']:.3f} |")
    d = res["decode_only"]
    L.append(f"| decode only, {d['workers']} threads: the scan's draft decode (read + sha256 + JPEG draft to "
             f">= {d['draft_size']} px) | {d['draft']['photos_per_s']:.2f} | {d['draft']['cpu_s_per_photo']:.3f} |")
    L.append(f"| decode only, {d['workers']} threads: full PIL decode | {d['full']['photos_per_s']:.2f} | "
             f"{d['full']['cpu_s_per_photo']:.3f} |")
    for k, v in rows.items():
        s = v["scan"]
        L.append(f"| `run_scan`, {k} (median of {len(v['scans'])}: "
                 f"{', '.join(f'{x:.2f}' for x in v['scan_photos_per_s_all'])}) | **{s['photos_per_s']:.2f}** | "
                 f"{s['cpu_s_per_photo']:.3f} |")
    L += ["", "Per engine and mode: inference alone (both models, the scan's batches, no decode), the bound, "
          "and the scan against it.", "",
          "| engine/mode | inference CPU-s / photo | inference wall-s / photo | bound photos/s | scan photos/s | "
          "% of bound | scan CPU use | max abs diff vs ORT latency |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, v in res["configs"].items():
        if "error" in v:
            L.append(f"| {k} | {v['error'][:80]} | | | | | | |")
            continue
        i, s = v["inference"], v["scan"]
        L.append(f"| {k} | {i['cpu_s_per_photo']:.3f} | {i['wall_s_per_photo']:.3f} | {v['bound_photos_per_s']:.2f} | "
                 f"{s['photos_per_s']:.2f} | {v['pct_of_bound']:.0f}% | {100 * s['cpu_utilisation']:.0f}% | "
                 f"{i['max_abs_diff_vs_ort_latency']:.1e} |")
    dc = res["decode_stage_cpu_s_per_photo"]
    L += ["", f"**Decode+inference bound** = cores / (decode-stage CPU-s + inference CPU-s) per photo, where the "
          f"decode stage is what the scan does per photo before inference (read, sha256, JPEG draft decode, "
          f"perceptual signature, each model's resize/crop/normalise), measured on one thread: {dc:.3f} CPU-s; "
          f"inference is both models on the scan's batches with that engine/mode, measured alone "
          f"(`time.process_time` over all threads, so an engine's spinning threads count against it). Each is the "
          f"least of several passes (other jobs only add CPU time), so the bound is the highest one measured. It "
          f"is the rate if both cores did nothing but that work.", ""]
    if head:
        key = auto_key if auto_key in rows else best_key
        s = head["scan"]["photos_per_s"]
        L += [f"## Goals (the scan as `edgeinfer index` runs it: {key}; `{res['auto']['reason']}`)", "",
              "| goal | measured | reached |", "|---|---:|---|"]
        if nv:
            L.append(f"| >= 10x (a) naive torch | {s / nv:.1f}x | {'yes' if s / nv >= 10 else 'no'} |")
        L.append(f"| >= 3x (b) Immich-style | {s / im:.1f}x | {'yes' if s / im >= 3 else 'no'} |")
        L.append(f"| >= 85% of the decode+inference bound | {head['pct_of_bound']:.0f}% | "
                 f"{'yes' if head['pct_of_bound'] >= 85 else 'no'} |")
        L.append(f"| decode-only bound (draft, all cores) | scan at {100 * s / d['draft']['photos_per_s']:.0f}% of it | - |")
        ceiling = res["cores"] / head["inference"]["cpu_s_per_photo"]
        L += ["", f"Inference alone caps any pipeline with these FP32 models on this engine at cores / inference "
              f"CPU-s = {ceiling:.2f} photos/s" + (f" = {ceiling / nv:.1f}x the naive loop, even with free decoding"
                                                   if nv else "") + "."]
        rs = head["scan"]
        L += ["", f"Re-scan with nothing changed: {rs['rescan_s'] * 1000:.0f} ms ({rs['rescan_skipped']} unchanged, "
              f"{100 * rs['rescan_s'] / rs['seconds']:.2f}% of the first scan). Stored: {rs['stored']}.", ""]
    return L


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--naive-torch":
        spec = json.loads(sys.argv[2])
        print(json.dumps(naive_torch(spec["cls"], spec["clip"], spec["paths"])))
        sys.exit(0)
    sys.exit(main())
