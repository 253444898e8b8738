#!/usr/bin/env python
"""Peer comparison: edgeinfer's chosen configuration vs what a user gets from the tools directly.

In ONE process on this machine, per model (mobilevit_s, mobilenetv3_large_100, resnet50 and the
CLIP ViT-B/32 image encoder by default):

- edgeinfer   ``edgeinfer.load(artifact, provider="auto", precision="auto")`` (after ``--tune``
              ran ``edgeinfer bench`` so that auto uses this machine's measurement);
- ORT FP32    ``onnxruntime.InferenceSession(model.fp32.onnx)`` with default session options;
- ORT INT8    ``onnxruntime.quantization.quantize_static`` with its defaults (QDQ, QInt8/QInt8,
              MinMax, per-tensor), calibrated on the same photos, default session;
- OV FP32     ``openvino.Core().compile_model(model.fp32.onnx, "CPU")`` with default config
              (on CPUs with bf16/AMX OpenVINO's default inference precision is *not* f32);
- OV+NNCF INT8 ``nncf.quantize(core.read_model(fp32), nncf.Dataset(photos))`` default preset;
- PyTorch eager the same weights (random with the manifest's seed, or the same file).

Latency: same warm-up + time-budget loop as ``edgeinfer bench`` (median of >= 20 runs) on one
preprocessed photo batch. Fidelity: top-1 agreement / top-5 overlap / cosine vs ORT FP32 on
``--eval`` photos. Writes ``benchmarks/results/peers.md`` (+ ``peers.json``) with the command.

Usage (the lead's one command)::

    python benchmarks/peers.py --photos ../shared/data/photos --models mobilevit_s,resnet50

Artifacts are taken from ``--artifacts DIR/<model>`` and exported there when missing
(``edgeinfer export --model X --weights random --int8 --fp16 --calib PHOTOS --out DIR/X``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["mobilevit_s", "mobilenetv3_large_100", "resnet50", "clip_vit_b32"]
CONFIGS = ["edgeinfer", "ort_fp32", "ort_int8", "ov_fp32", "ov_nncf_int8", "torch"]
TITLES = {"edgeinfer": "edgeinfer (chosen)", "ort_fp32": "ONNX Runtime FP32 (defaults)",
          "ort_int8": "ONNX Runtime quantize_static (defaults)", "ov_fp32": "OpenVINO FP32 (defaults)",
          "ov_nncf_int8": "OpenVINO + NNCF INT8 (defaults)", "torch": "PyTorch eager"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ inputs
def photo_batches(artifact, photos: list[Path], n_eval: int, n_calib: int):
    from edgeinfer.runtime.preprocess import preprocess_image

    spec = artifact.preprocess
    x = np.stack([preprocess_image(p, spec) for p in photos[:max(n_eval, n_calib)]]).astype(np.float32)
    return x[:n_eval], x[:n_calib]


def ensure_artifact(model: str, root: Path, photos: Path, *, calib_size: int | None):
    from edgeinfer.runtime.artifact import Artifact

    d = root / model
    if (d / "manifest.json").exists():
        a = Artifact(d)
        if "fp16" in a.precisions() and (model.startswith("clip") or (d / "no-int8").exists()):
            # CLIP: an INT8 export of both towers costs tens of minutes on 2 cores; elsewhere a
            # `no-int8` file says INT8 failed its accuracy guard at export. Compare what the
            # artifact has (edgeinfer's pick is among its files) rather than re-export
            return a
        if "int8" in a.precisions():
            if "fp16" not in a.precisions():  # artifacts made before FP16 was part of the run
                from edgeinfer.quantize import quantize_artifact

                log(f"{model}: adding the fp16 file")
                quantize_artifact(d, fp16=True, calib=photos, calib_size=calib_size)
                a = Artifact(d)
            return a
    log(f"{model}: exporting (random weights, int8 + fp16 calibrated on {photos}) -> {d}")
    from edgeinfer.export.pipeline import export_model

    # CLIP: only the cifar10 label set (the 80-template ImageNet set costs ~40 min on 2 cores
    # and the image tower, which is what is compared here, does not depend on it).
    extra = {"label_sets": ["cifar10"]} if model.startswith("clip") else {}
    export_model(model, weights="random", out=d, int8=True, fp16=True, calib=photos,
                 calib_size=calib_size, images=photos, force=True, **extra)
    return Artifact(d)


def tune(artifact, photos: Path, budget: float) -> dict:
    """``edgeinfer bench`` (cpu+openvino, every precision) so that auto uses this machine's numbers."""
    from edgeinfer.bench import run_bench

    log(f"{artifact.name}: edgeinfer bench to tune auto (provider=all, precision=all)")
    res = run_bench(artifact.dir, providers="all", precisions="all", batches=(1,), images=photos,
                    budget_s=budget, memory=False, torch_baseline=False, max_images=50,
                    out=artifact.dir / "bench")
    return res["tuning"]["entry"] or {}


# ------------------------------------------------------------------ runners: each returns fn(batch)->out
def run_edgeinfer(artifact, threads):
    import edgeinfer

    m = edgeinfer.load(artifact.dir, provider="auto", precision="auto", threads=threads)
    info = {"provider": m.provider, "precision": m.precision, "reason": str(m.selection)}
    return m.infer, m.close, info


def run_ort_fp32(artifact, calib, tmp):
    import onnxruntime as ort

    s = ort.InferenceSession(str(artifact.path("fp32")), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return (lambda x: s.run(None, {name: x})[0]), (lambda: None), {"session": "default SessionOptions"}


def run_ort_int8(artifact, calib, tmp):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    fp32 = str(artifact.path("fp32"))
    name = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    out = Path(tmp) / f"{artifact.name}.ort_int8.onnx"
    t0 = time.perf_counter()
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs one warning per LayerNorm bias
    try:
        quantize_static(fp32, str(out), Reader())
    finally:
        root.setLevel(level)
    qs = time.perf_counter() - t0
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return ((lambda x: s.run(None, {name: x})[0]), (lambda: None),
            {"quantize_s": round(qs, 1), "calib_images": len(calib),
             "settings": "quantize_static defaults: QDQ, QInt8 act/weight, MinMax, per-tensor"})


def run_ov_fp32(artifact, calib, tmp):
    import openvino as ov

    core = ov.Core()
    c = core.compile_model(str(artifact.path("fp32")), "CPU")
    req = c.create_infer_request()
    try:
        prec = str(c.get_property("INFERENCE_PRECISION_HINT"))
    except Exception:
        prec = "?"

    def f(x):
        return req.infer({0: x})[c.outputs[0]]

    return f, (lambda: None), {"inference_precision": prec}


def run_ov_nncf(artifact, calib, tmp):
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(artifact.path("fp32")))
    t0 = time.perf_counter()
    q = nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]))
    qs = time.perf_counter() - t0
    c = core.compile_model(q, "CPU")
    req = c.create_infer_request()

    def f(x):
        return req.infer({0: x})[c.outputs[0]]

    return f, (lambda: None), {"quantize_s": round(qs, 1), "calib_images": len(calib),
                               "settings": "nncf.quantize defaults (preset PERFORMANCE, subset 300)"}


def run_torch(artifact, threads):
    import torch

    from edgeinfer.export.recipes import get_recipe
    from edgeinfer.export.torch_models import build_model

    w = artifact.manifest.get("weights", {})
    origin = w.get("origin")
    weights = "random" if origin == "random" else (w.get("path") if origin == "file" else "pretrained")
    built = build_model(get_recipe(artifact.name), weights=weights, seed=int(w.get("seed", 0) or 0))
    mod = built.module.eval()

    def f(x):
        with torch.inference_mode():
            return mod(torch.from_numpy(x)).float().numpy()

    return f, (lambda: None), {"torch": torch.__version__, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------ one model
def bench_model(artifact, x_eval, calib, *, batch: int, budget: float, threads, configs, tmp) -> dict:
    from edgeinfer.bench import timing
    from edgeinfer.evaluate.fidelity import fidelity

    kind = artifact.manifest.get("output", {}).get("kind", "logits")
    xb = np.ascontiguousarray(np.concatenate([x_eval] * (batch // len(x_eval) + 1))[:batch])
    rows, ref = {}, None
    order = ["ort_fp32"] + [c for c in configs if c != "ort_fp32"]   # reference first
    for cfg in order:
        log(f"{artifact.name}: {TITLES[cfg]}")
        row = {"config": cfg, "title": TITLES[cfg]}
        try:
            if cfg == "edgeinfer":
                fn, close, info = run_edgeinfer(artifact, threads)
            elif cfg == "torch":
                fn, close, info = run_torch(artifact, threads)
            else:
                fn, close, info = globals()[f"run_{cfg if cfg != 'ov_nncf_int8' else 'ov_nncf'}"](
                    artifact, calib, tmp)
            row.update(info)
            # copy: OpenVINO returns views of the request's output tensor, reused by the next call
            out = np.concatenate([np.array(fn(np.ascontiguousarray(x_eval[i:i + 8])), np.float32, copy=True)
                                  for i in range(0, len(x_eval), 8)])
            row["output_absmax"] = float(np.abs(out).max())
            if cfg == "ort_fp32":
                ref = out
            if ref is not None:
                row["fidelity"] = fidelity(ref, out, kind=kind)
            lat = timing.measure(lambda: fn(xb), budget_s=budget)
            row["latency"] = lat
            close()
        except Exception as e:  # a peer failing is a result, not the end of the run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log(f"  failed: {row['error']}")
        rows[cfg] = row
        gc.collect()
    return {"model": artifact.name, "kind": kind, "batch": batch, "random_weights": artifact.random_weights,
            "eval_images": len(x_eval), "calib_images": len(calib), "rows": rows}


# ------------------------------------------------------------------ markdown
def _f(v, nd=2, pct=False):
    if v is None:
        return "–"
    return f"{v * 100:.{nd}f}%" if pct else f"{v:.{nd}f}"


def to_markdown(all_res: list[dict], meta: dict) -> str:
    L = ["# edgeinfer vs peers", "",
         f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores, INT8 tier "
         f"{meta['int8_tier']}); onnxruntime {meta['libs'].get('onnxruntime', '?')}, openvino "
         f"{meta['libs'].get('openvino', '?')}, nncf {meta['libs'].get('nncf', '?')}, torch "
         f"{meta['libs'].get('torch', '?')}. One process, same photos, batch {meta['batch']}, "
         f"median of >= 20 timed runs over >= {meta['budget']} s after warm-up.", "",
         "Command(s):", "", "```", meta["command"], "```", "",
         "Ratio = peer median latency / edgeinfer median latency (> 1: edgeinfer is faster). "
         "Fidelity is against ONNX Runtime FP32 on the same photos: top-1 agreement and top-5 overlap "
         "for classifiers, cosine of the outputs for all. Weights are RANDOM (seeded) unless noted, "
         "so fidelity, not labelled accuracy, is the meaningful accuracy measure.", ""]
    if meta.get("noisy"):
        L += [f"> **Note:** {meta['noisy']}", ""]
    L += summary(all_res)
    for res in all_res:
        rows = res["rows"]
        ei = rows.get("edgeinfer", {})
        base = (ei.get("latency") or {}).get("median_ms")
        L += [f"## {res['model']}" + (" (random weights)" if res["random_weights"] else ""), ""]
        if len(meta["command"].splitlines()) > 1 and res.get("command"):
            L += [f"Measured by `{res['command']}`.", ""]
        if res.get("loadavg_start"):
            L += [f"Load average (1/5/15 min) at start {tuple(res['loadavg_start'])}, at end "
                  f"{tuple(res['loadavg_end'])}; files in the artifact: "
                  f"{', '.join(res.get('precisions_in_artifact') or [])}.", ""]
        if ei.get("provider"):
            L += [f"edgeinfer chose **{ei['provider']}/{ei['precision']}** — {ei.get('reason', '')}", ""]
        L += ["| configuration | median ms | p90 ms | ratio vs edgeinfer | top-1 agree | top-5 overlap "
              "| cosine mean | cosine min | notes |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for cfg in CONFIGS:
            r = rows.get(cfg)
            if r is None:
                continue
            if "error" in r:
                L.append(f"| {r['title']} | – | – | – | – | – | – | – | failed: {r['error']} |")
                continue
            lat, fd = r["latency"], r.get("fidelity") or {}
            ratio = lat["median_ms"] / base if base else None
            note = []
            if r.get("inference_precision"):
                note.append(f"inference precision {r['inference_precision']}")
            if r.get("output_absmax") == 0.0:
                note.append("**outputs are all zero** (degenerate quantization)")
            if r.get("quantize_s") is not None:
                note.append(f"quantized in {r['quantize_s']} s on {r.get('calib_images')} photos")
            L.append(f"| {r['title']} | {lat['median_ms']:.2f} | {lat['p90_ms']:.2f} | "
                     f"{_f(ratio) + 'x' if ratio else '–'} | {_f(fd.get('top1_agreement'), 1, True)} | "
                     f"{_f(fd.get('top5_overlap'), 1, True)} | {_f(fd.get('cosine_mean'), 5)} | "
                     f"{_f(fd.get('cosine_min'), 5)} | {'; '.join(note)} |")
        L += [""] + [f"- {n}" for n in findings(res)] + [""]
    return "\n".join(L) + "\n"


def summary(all_res: list[dict], *, min_cos: float = 0.99) -> list[str]:
    """Issue 17's table: edgeinfer's pick / the fastest peer whose cosine to FP32 is >= min_cos."""
    L = [f"Summary: ratio = edgeinfer's median / the fastest peer with cosine mean >= {min_cos} "
         "(goal <= 0.8 with edgeinfer's own cosine >= 0.999).", "",
         "| model | edgeinfer pick | edgeinfer ms | edgeinfer cosine | fastest acceptable peer | peer ms "
         "| ratio |", "|---|---|---:|---:|---|---:|---:|"]
    for res in all_res:
        rows = res["rows"]
        ei = rows.get("edgeinfer", {})
        if "latency" not in ei:
            continue
        peers = [(r["latency"]["median_ms"], r["title"]) for c, r in rows.items()
                 if c != "edgeinfer" and "latency" in r
                 and ((r.get("fidelity") or {}).get("cosine_mean") or 0.0) >= min_cos]
        ms, title = min(peers) if peers else (None, "–")
        eim = ei["latency"]["median_ms"]
        L.append(f"| {res['model']} | {ei.get('provider')}/{ei.get('precision')} | {eim:.2f} | "
                 f"{_f((ei.get('fidelity') or {}).get('cosine_mean'), 5)} | {title} | {_f(ms)} | "
                 f"{_f(eim / ms) if ms else '–'} |")
    return L + [""]


def why(cfg: str, r: dict, ei: dict, model: str = "") -> str:
    """The known reason, where there is one."""
    prec = str(r.get("inference_precision", "")).lower()
    if cfg == "ov_fp32" and ("bf16" in prec or "bfloat16" in prec or "f16" in prec):
        return (" Why: OpenVINO's default runs FP32 models in bf16 on this CPU (it has bf16/AMX "
                "units); edgeinfer runs FP32 files in f32 on purpose (no silent precision change) "
                "and reaches lower precision only through its guarded INT8/FP16 files.")
    if ei.get("precision") == "int8" and cfg in ("ort_fp32", "ov_fp32"):
        return (" Why: INT8 does not pay off for this model on this CPU by this run's numbers; the "
                "tuning run that made edgeinfer pick INT8 measured otherwise, so the two runs disagree "
                "(noise) or the INT8 graph's float islands (kept for accuracy) cost more than they save.")
    if cfg in ("ort_fp32", "ov_fp32") and ei.get("precision") == "fp32" and \
            (cfg == "ov_fp32") != (ei.get("provider") == "openvino"):
        return (" Why: the tuning run (`edgeinfer bench`, a few seconds per configuration) measured "
                f"{ei.get('provider')}/fp32 faster than the other engine's FP32; this run measured the "
                "opposite, so the two engines are within this machine's run-to-run noise for this model "
                "(re-run the bench with a larger --budget on a quiet machine).")
    if cfg == "ort_fp32" and ei.get("provider") == "cpu":
        return (" Why: same engine and file; the difference is edgeinfer's session settings "
                "(threads = physical cores, sequential executor) vs ORT's defaults, or noise.")
    transformer = any(k in model for k in ("vit", "clip", "mobilevit"))
    if cfg in ("ort_int8", "ov_nncf_int8") and transformer:
        return (" Why: the peer quantizes more of the graph (no float islands for LayerNorm/Softmax/"
                "GELU/residual adds), which is faster but is exactly what edgeinfer's accuracy guard "
                "keeps in float.")
    if cfg == "ov_nncf_int8":
        return (" Why: NNCF places quantizers the way OpenVINO's CPU kernels fuse them; edgeinfer's INT8 "
                "file is an ONNX QDQ graph from its ORT-based quantizer (target=auto), which OpenVINO "
                "runs with less fusion. Exporting with `--target openvino` lets the quantizer compare "
                "NNCF on OpenVINO.")
    if cfg == "ort_int8":
        return (" Why: quantize_static's defaults (per-tensor S8S8 QDQ) quantize every Conv/MatMul; "
                "edgeinfer's guard keeps sensitive nodes in float.")
    return ""


def findings(res: dict) -> list[str]:
    """Where edgeinfer is not the fastest at equal (or better) fidelity, say so."""
    rows = res["rows"]
    ei = rows.get("edgeinfer", {})
    if "latency" not in ei:
        return ["edgeinfer's configuration failed; see the table."]
    eim = ei["latency"]["median_ms"]
    ecos = (ei.get("fidelity") or {}).get("cosine_mean") or 1.0
    out = []
    for cfg, r in rows.items():
        if cfg == "edgeinfer" or "latency" not in r:
            continue
        m = r["latency"]["median_ms"]
        cos = (r.get("fidelity") or {}).get("cosine_mean") or 0.0
        if m < eim * 0.97:
            eq = cos >= ecos - 1e-3
            better = cos >= ecos
            out.append(f"{r['title']} is faster than edgeinfer ({m:.2f} vs {eim:.2f} ms, "
                       f"{eim / m:.2f}x) with {'equal or better' if better else ('comparable' if eq else 'LOWER')} "
                       f"fidelity (cosine mean {cos:.5f} vs {ecos:.5f}"
                       + (", within 0.001)." if eq and not better else ").")
                       + ("" if eq else " Not a like-for-like win: it buys speed with accuracy.")
                       + why(cfg, r, ei, res["model"]))
    if not out:
        out.append("edgeinfer's configuration is the fastest here (within 3%).")
    return out


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--artifacts", default=str(Path(tempfile.gettempdir()) / "edgeinfer-peers"),
                    help="folder of artifacts (<dir>/<model>); missing ones are exported there")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--budget", type=float, default=5.0, help="timed seconds per configuration")
    ap.add_argument("--eval", type=int, default=50, help="photos for fidelity")
    ap.add_argument("--calib", type=int, default=100, help="photos for the peers' INT8 calibration")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-tune", action="store_true", help="don't run edgeinfer bench first")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peers.md"))
    ap.add_argument("--note", default=None, help="a note printed above the tables (e.g. machine was busy)")
    ap.add_argument("--append", action="store_true",
                    help="keep the other models' results already in the output's .json (each model's "
                         "section says which command measured it)")
    ap.add_argument("--render-only", action="store_true",
                    help="re-write the markdown from the output's .json without measuring")
    args = ap.parse_args(argv)

    from edgeinfer.bench.fingerprint import machine_fingerprint

    if args.render_only:
        data = json.loads(Path(args.out).with_suffix(".json").read_text())
        md = to_markdown(data["results"], data["meta"]) + f"\nTotal run time: {data['meta']['total_s']} s.\n"
        Path(args.out).write_text(md)
        print(md)
        return 0

    photos_dir = Path(args.photos)
    photos = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        ap.error(f"no photos in {photos_dir}")
    configs = [c for c in args.configs.split(",") if c]
    root = Path(args.artifacts)
    root.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for model in [m for m in args.models.split(",") if m]:
            t0 = time.perf_counter()
            art = ensure_artifact(model, root, photos_dir, calib_size=args.calib)
            load0 = os.getloadavg()
            if not args.no_tune and "edgeinfer" in configs:
                tune(art, photos_dir, budget=min(args.budget, 3.0))
            x_eval, calib = photo_batches(art, photos, args.eval, args.calib)
            res = bench_model(art, x_eval, calib, batch=args.batch, budget=args.budget,
                              threads=args.threads, configs=configs, tmp=tmp)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            res["loadavg_start"], res["loadavg_end"] = [round(v, 2) for v in load0], \
                [round(v, 2) for v in os.getloadavg()]
            res["precisions_in_artifact"] = art.precisions()
            results.append(res)
            log(f"{model}: done in {res['seconds']} s")
    cmd = "python " + " ".join(shlex.quote(a) for a in
                               [os.path.relpath(__file__, os.getcwd()), *(argv or sys.argv[1:])])
    for r in results:
        r["command"] = cmd
    out = Path(args.out)
    if args.append and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text()).get("results", [])
        new_names = {r["model"] for r in results}
        results = [r for r in old if r["model"] not in new_names] + results
        order = {m: i for i, m in enumerate(DEFAULT_MODELS)}
        results.sort(key=lambda r: order.get(r["model"], 99))
    fp = machine_fingerprint()
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": fp["cpu"]["model"], "cores": fp["cpu"]["cores"], "int8_tier": fp["cpu"]["int8_tier"],
            "libs": fp["libraries"], "batch": args.batch, "budget": args.budget,
            "command": "\n".join(dict.fromkeys(r.get("command", cmd) for r in results)),
            "noisy": args.note, "total_s": round(time.perf_counter() - t_all, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    md = to_markdown(results, meta) + f"\nTotal run time: {meta['total_s']} s.\n"
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "machine": fp, "results": results},
                                                   indent=1, default=str))
    print(md)
    log(f"wrote {out} and {out.with_suffix('.json')} in {meta['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
