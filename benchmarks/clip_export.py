#!/usr/bin/env python
"""Where the time of a CLIP export goes, and what the label-set encoder does about it.

CLIP ViT-B/32 (open_clip, random weights, seed 0: the speed and the agreement with open_clip do
not depend on the weights' values). Stages (``--stages``, default all):

- ``prompts``: the label-set prompts: count, duplicates, token lengths, and the token positions
  the text transformer processes when padded to 77 / trimmed / with the shared template prefix
  computed once;
- ``engines``: prompts/s of the ways to encode them on the same sample of ImageNet prompts
  (open_clip's padded-to-77 ``encode_text`` as ``build_zero_shot_classifier`` runs it; the
  previous exporter path: ``text.fp32.onnx`` in ONNX Runtime, trimmed, batch 256; the trimmed
  tower in torch and in OpenVINO; the shared-prefix encoder), each extrapolated to the full
  ImageNet + CIFAR-10 sets;
- ``labelsets``: the shared-prefix encoder over the full ImageNet (80 templates) and CIFAR-10 (18)
  sets, timed, and the class embeddings compared with open_clip's ``build_zero_shot_classifier``
  on all CIFAR-10 classes and ``--reference-classes`` ImageNet classes (its padded-to-77 path is
  ~14 prompts/s here, so not all 1000);
- ``export``: the default export end to end in a subprocess, ``edgeinfer export --model
  clip_vit_b32 --weights random --int8 --fp16`` (image tower FP32 + INT8 + FP16, text tower,
  ImageNet + CIFAR-10 label sets), wall time and the manifest's stage times;
- ``runtime``: on that artifact (or a quick cifar10-only one): custom labels, 10 labels x 1
  template, first call on a fresh Model (text session created), a new list on a warm Model, and
  the cached repeat; ``Model.embed_text`` of one prompt at batch 1 (p50/p90 of 50 calls).

Every stage records ``os.getloadavg()`` before and after: numbers taken on a busy machine are
slower than on a quiet one. Writes ``<out>.md`` and ``<out>.json``.

    .venv/bin/python benchmarks/clip_export.py                       # everything (~15 min)
    .venv/bin/python benchmarks/clip_export.py --stages engines,runtime
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STAGES = ("prompts", "engines", "labelsets", "export", "runtime")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


class Ctx:
    """The model, tokenizer, text tower ONNX and prompts the stages share (built once)."""

    def __init__(self, work: Path):
        import torch

        from edgeinfer.catalog import get_recipe
        from edgeinfer.export.clip import add_text_tower, build_clip
        from edgeinfer.runtime.tokenizer import ClipTokenizer
        from edgeinfer.runtime.zero_shot import label_set_spec

        self.torch = torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.built = build_clip(get_recipe("clip_vit_b32"), weights="random", seed=0)
        self.clip = self.built.extra["clip_model"]
        self.dir = work / "text"
        self.dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        add_text_tower(self.built, self.dir, {}, label_sets=[])
        self.tower_export_s = time.perf_counter() - t0
        self.onnx = self.dir / "text.fp32.onnx"
        self.tok = ClipTokenizer(self.dir / "tokenizer_bpe.txt.gz")
        self.sets = {n: label_set_spec(n) for n in ("imagenet", "cifar10")}

    def prompts(self, name: str, n_labels: int | None = None, n_templates: int | None = None
                ) -> tuple[list[str], list[str], np.ndarray]:
        labels, _, templates = self.sets[name]
        labels = labels[:n_labels] if n_labels else labels
        templates = templates[:n_templates] if n_templates else templates
        return labels, templates, self.tok.encode([t.format(c) for c in labels for t in templates])


def stage_prompts(ctx: Ctx) -> dict:
    out = {}
    for name in ("imagenet", "cifar10"):
        labels, templates, ids = ctx.prompts(name)
        lengths = ids.argmax(1) + 1
        shared = 0
        for j in range(len(templates)):
            g = np.unique(ids[j::len(templates)], axis=0)
            gl = g.argmax(1) + 1
            p = 0
            while p < gl.min() - 1 and (g[:, p] == g[0, p]).all():
                p += 1
            shared += p + int((gl - p).sum())
        out[name] = {"labels": len(labels), "templates": len(templates), "prompts": len(ids),
                     "unique_prompts": int(len(np.unique(ids, axis=0))),
                     "tokens_mean": round(float(lengths.mean()), 2), "tokens_max": int(lengths.max()),
                     "positions_padded_77": int(ids.shape[0] * ids.shape[1]),
                     "positions_trimmed": int(lengths.sum()),
                     "positions_shared_prefix": int(shared)}
    return out


def _rate(fn, n: int) -> dict:
    """Wall time, and the process's CPU time: on a machine shared with other jobs the wall time
    is inflated by waiting for a core, the CPU time much less; ``cpu_prompts_per_s`` is the rate
    the CPU time implies with all cores free (an estimate: contention still costs cache)."""
    l0 = load()
    t0, c0 = time.perf_counter(), time.process_time()
    feats = fn()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    cores = os.cpu_count() or 1
    return {"prompts": n, "seconds": round(dt, 2), "prompts_per_s": round(n / dt, 1),
            "cpu_seconds": round(cpu, 2), "cpu_prompts_per_s": round(n * cores / max(cpu, 1e-9), 1),
            "load_before": l0, "load_after": load()}, feats


def stage_engines(ctx: Ctx, sample_templates: int, padded_prompts: int) -> dict:
    import onnxruntime as ort

    from edgeinfer.evaluate.fidelity import cosine_per_row
    from edgeinfer.export.clip import SharedPrefixEncoder, text_tower, torch_text_runner
    from edgeinfer.runtime.zero_shot import encode_token_ids

    torch = ctx.torch
    # all 1000 labels in a few templates: the shared-prefix encoder's groups are one template
    # over all labels, so a sample of labels would understate it
    labels, templates, ids = ctx.prompts("imagenet", None, sample_templates)
    total = sum(len(s[0]) * len(s[2]) for s in ctx.sets.values())
    rows: dict[str, dict] = {}

    def full77(b):
        with torch.inference_mode():
            return ctx.clip.encode_text(torch.from_numpy(b), normalize=False).numpy()

    n77 = min(padded_prompts, len(ids))
    rows["open_clip encode_text, padded to 77 (build_zero_shot_classifier), torch, batch 256"], _ = _rate(
        lambda: np.concatenate([full77(ids[i:i + 256]) for i in range(0, n77, 256)]), n77)
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(str(ctx.onnx), so, providers=["CPUExecutionProvider"])
    rows["text.fp32.onnx, onnxruntime CPU, trimmed, batch 256 (previous exporter)"], ref = _rate(
        lambda: encode_token_ids(lambda b: sess.run(None, {"input_ids": b})[0], ids,
                                 variable_length=True, batch_size=256), len(ids))
    module, _ = text_tower(ctx.clip)
    run = torch_text_runner(module)
    rows["causal tower, torch CPU, trimmed, batch 256"], got = _rate(
        lambda: encode_token_ids(run, ids, variable_length=True, batch_size=256), len(ids))
    rows["causal tower, torch CPU, trimmed, batch 256"]["cosine_min_vs_onnx"] = float(cosine_per_row(got, ref).min())
    try:
        import openvino as ov

        cm = ov.Core().compile_model(str(ctx.onnx), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        req = cm.create_infer_request()
        key = "text.fp32.onnx, OpenVINO CPU f32, trimmed, batch 256"
        rows[key], got = _rate(lambda: encode_token_ids(lambda b: req.infer({0: b})[0].copy(), ids,
                                                        variable_length=True, batch_size=256), len(ids))
        rows[key]["cosine_min_vs_onnx"] = float(cosine_per_row(got, ref).min())
    except ImportError:
        pass
    enc = SharedPrefixEncoder(ctx.clip)
    groups = [ctx.tok.encode([t.format(c) for c in labels]) for t in templates]
    key = "shared-prefix encoder, torch CPU (this exporter)"

    def shared():
        f = np.stack([enc.encode_group(g) for g in groups], axis=1)
        return f.reshape(len(labels) * len(templates), -1)

    rows[key], got = _rate(shared, len(ids))
    rows[key]["cosine_min_vs_onnx"] = float(cosine_per_row(got, ref).min())
    for r in rows.values():
        r["extrapolated_minutes_imagenet_cifar10"] = round(total / r["prompts_per_s"] / 60, 1)
        r["cpu_extrapolated_minutes_imagenet_cifar10"] = round(total / r["cpu_prompts_per_s"] / 60, 1)
    return {"sample": f"ImageNet, 1000 classes x the first {sample_templates} templates ({len(ids)} prompts; "
                      f"padded-77 row: the first {n77})", "threads": torch.get_num_threads(),
            "full_prompts": total, "rows": rows}


def stage_labelsets(ctx: Ctx, reference_classes: int, labelset_classes: int | None) -> dict:
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from edgeinfer.evaluate.fidelity import cosine_per_row
    from edgeinfer.export.clip import SharedPrefixEncoder, label_set_embeddings

    torch = ctx.torch
    enc = SharedPrefixEncoder(ctx.clip)
    lines: list[str] = []
    out: dict = {"sets": {}}
    for name in ("imagenet", "cifar10"):
        labels, _, templates = ctx.sets[name]
        labels = labels[:labelset_classes] if labelset_classes else labels
        l0 = load()
        t0, c0 = time.perf_counter(), time.process_time()
        emb = label_set_embeddings(lambda g, report=None: enc.encode_group(g, report=report), ctx.tok,
                                   labels, templates, progress=lines.append)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n_ref = len(labels) if name == "cifar10" else min(reference_classes, len(labels))
        t1 = time.perf_counter()
        with torch.inference_mode():
            w = build_zero_shot_classifier(ctx.clip, ctx.built.extra["tokenizer"], labels[:n_ref],
                                           templates, num_classes_per_batch=None).T.numpy()
        cos = cosine_per_row(emb[:n_ref], w)
        out["sets"][name] = {"labels": len(labels), "templates": len(templates),
                             "prompts": len(labels) * len(templates), "seconds": round(dt, 2),
                             "prompts_per_s": round(len(labels) * len(templates) / dt, 1),
                             "cpu_seconds": round(cpu, 2),
                             "cpu_estimate_seconds": round(cpu / (os.cpu_count() or 1), 1),
                             "load_before": l0, "load_after": load(),
                             "reference_classes": n_ref,
                             "reference_seconds": round(time.perf_counter() - t1, 2),
                             "cosine_min_vs_build_zero_shot_classifier": float(cos.min()),
                             "cosine_mean": float(cos.mean())}
    out["progress_lines"] = lines
    return out


def stage_export(work: Path) -> dict:
    out_dir = work / "clip_vit_b32"
    cmd = [str(REPO / ".venv/bin/edgeinfer"), "export", "--model", "clip_vit_b32", "--weights",
           "random", "--int8", "--fp16", "--out", str(out_dir)]
    import resource

    l0 = load()
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    res = {"command": shlex.join(cmd), "returncode": p.returncode, "seconds": round(dt, 1),
           "cpu_seconds": round(cpu, 1), "load_before": l0, "load_after": load(),
           "stderr_tail": p.stderr[-3000:]}
    if p.returncode == 0:
        m = json.loads((out_dir / "manifest.json").read_text())
        res["manifest_export"] = m.get("export")
        t = m.get("text", {})
        res["text"] = {k: t.get(k) for k in ("tower_seconds", "label_sets_seconds", "export_seconds",
                                             "label_sets_wait_seconds", "label_sets_process")}
        res["quantization_rejected"] = m.get("quantization_rejected")
        res["label_sets"] = {n: {k: s.get(k) for k in ("computed_with", "check", "seconds", "templates")}
                             for n, s in t.get("label_sets", {}).items()}
        res["files"] = sorted(m.get("files", {})) + [f"text/{p}" for p in t.get("files", {})]
        res["artifact"] = str(out_dir)
    return res


def stage_runtime(work: Path, artifact: Path | None, precision: str = "auto") -> dict:
    if artifact is None:
        from edgeinfer.export.pipeline import export_model

        artifact = export_model("clip_vit_b32", weights="random", out=work / "clip_cifar",
                                label_sets=["cifar10"])
    code = r"""
import json, sys, time, numpy as np
import edgeinfer
art = sys.argv[1]
labels = ["cat", "dog", "beach", "receipt", "mountain", "car", "pizza", "document", "flower", "baby"]
other = ["tree", "boat", "city", "snow", "bird", "horse", "cake", "screenshot", "forest", "child"]
prec = sys.argv[2]
t0 = time.perf_counter(); m = edgeinfer.load(art, precision=prec); t_load = time.perf_counter() - t0
def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0
cold, cold_cpu = timed(lambda: m.text.label_embeddings(labels))
warm, warm_cpu = timed(lambda: m.text.label_embeddings(other))
cached, _ = timed(lambda: m.text.label_embeddings(other))
m2 = edgeinfer.load(art, precision=prec)
t_warm, t_warm_cpu = timed(m2.text.warm)
after_warm, after_warm_cpu = timed(lambda: m2.text.label_embeddings(labels))
lat, cpu = [], []
for i in range(50):
    w, c = timed(lambda: m.embed_text("a dog on the beach %d" % i)); lat.append(w); cpu.append(c)
print("RESULT " + json.dumps({"load_s": t_load, "custom_10x1_first_call_s": cold,
      "custom_10x1_new_list_warm_s": warm, "custom_10x1_cached_s": cached,
      "text_warm_s": t_warm, "custom_10x1_after_warm_s": after_warm,
      "embed_text_b1_p50_ms": 1000 * float(np.percentile(lat, 50)),
      "embed_text_b1_p90_ms": 1000 * float(np.percentile(lat, 90)),
      "cpu_s": {"first_call": cold_cpu, "new_list_warm": warm_cpu, "warm": t_warm_cpu,
                "after_warm": after_warm_cpu, "embed_text_b1_p50": float(np.percentile(cpu, 50))},
      "provider": m.provider,
      "precision": m.precision, "requested_precision": prec, "text_tower": m.text_reason,
      "torch_loaded": "torch" in sys.modules}))
"""
    l0 = load()
    p = subprocess.run([sys.executable, "-c", code, str(artifact), precision], capture_output=True,
                       text=True,
                       cwd=str(REPO))
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": p.stderr[-2000:]}
    res = json.loads(line[7:])
    res.update({"artifact": str(artifact), "load_before": l0, "load_after": load()})
    return res


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    md = ["# CLIP ViT-B/32 export: where the time goes\n",
          f"Command: `{results['command']}`  ",
          f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
          f"torch {results['machine']['torch']}, onnxruntime {results['machine']['onnxruntime']}.  ",
          f"Load average (1/5/15 min) at start {results['load_start']}, at end {results['load_end']}: "
          f"a busy shared machine makes every number slower than on a quiet one.\n"]
    if "prompts" in results:
        md += ["## The prompts\n", "| set | labels x templates | prompts | unique | tokens mean / max "
               "| positions padded to 77 | trimmed | shared prefix once |", "|---|---|---|---|---|---|---|---|"]
        for n, r in results["prompts"].items():
            md.append(f"| {n} | {r['labels']} x {r['templates']} | {r['prompts']:,} | {r['unique_prompts']:,} "
                      f"| {r['tokens_mean']} / {r['tokens_max']} | {r['positions_padded_77']:,} "
                      f"| {r['positions_trimmed']:,} | {r['positions_shared_prefix']:,} |")
        md.append("")
    if "engines" in results:
        e = results["engines"]
        md += [f"## Engines on one sample ({e['sample']}; {e['threads']} torch threads)\n",
               "| how | prompts/s (wall) | prompts/s from CPU time | cosine min vs text.fp32.onnx "
               f"| all {e['full_prompts']:,} prompts, wall / CPU-time estimate | load before -> after |",
               "|---|---|---|---|---|---|"]
        for k, r in e["rows"].items():
            c = r.get("cosine_min_vs_onnx")
            md.append(f"| {k} | {r['prompts_per_s']:,} | {r['cpu_prompts_per_s']:,} "
                      f"| {'-' if c is None else f'{c:.7f}'} "
                      f"| {r['extrapolated_minutes_imagenet_cifar10']} / "
                      f"{r['cpu_extrapolated_minutes_imagenet_cifar10']} min | {r['load_before'][0]} -> "
                      f"{r['load_after'][0]} |")
        md.append("")
    if "labelsets" in results:
        md += ["## Label sets with the shared-prefix encoder (measured, not extrapolated)\n",
               "| set | prompts | seconds (wall) | CPU seconds / cores | prompts/s (wall) | cosine min "
               "(mean) vs open_clip build_zero_shot_classifier | classes compared | load before -> after |",
               "|---|---|---|---|---|---|---|---|"]
        for n, r in results["labelsets"]["sets"].items():
            md.append(f"| {n} | {r['prompts']:,} | {r['seconds']} | {r['cpu_estimate_seconds']} "
                      f"| {r['prompts_per_s']:,} "
                      f"| {r['cosine_min_vs_build_zero_shot_classifier']:.7f} ({r['cosine_mean']:.7f}) "
                      f"| {r['reference_classes']} | {r['load_before'][0]} -> {r['load_after'][0]} |")
        md.append("")
    if "export" in results:
        r = results["export"]
        md += ["## The default export end to end\n", f"`{r['command']}`: exit {r['returncode']}, "
               f"**{r['seconds']} s** wall, {r.get('cpu_seconds')} CPU-s (load "
               f"{r['load_before'][0]} -> {r['load_after'][0]}).  ",
               f"Not written (accuracy guard): {json.dumps(r.get('quantization_rejected'))}.  ",
               f"Stages (manifest): {json.dumps(r.get('manifest_export'))}; text: "
               f"{json.dumps(r.get('text'))}.  ", f"Files: {', '.join(r.get('files', []))}.\n"]
    if "runtime" in results:
        r = results["runtime"]
        if "error" in r:
            md += ["## Runtime\n", f"failed: {r['error']}\n"]
        else:
            md += [f"## Runtime (torch-free process, edgeinfer.load defaults: provider auto, precision {r.get('requested_precision', 'fp32')}"
                   f"; text tower: {r.get('text_tower') or 'as the image tower'})\n",
                   "| what | time |", "|---|---|",
                   f"| custom labels 10 x 1 template, first call (text session created) | {r['custom_10x1_first_call_s']:.3f} s |",
                   f"| another 10-label list, warm Model | {r['custom_10x1_new_list_warm_s']:.3f} s |",
                   f"| the same list again (cached) | {1000 * r['custom_10x1_cached_s']:.3f} ms |",
                   f"| `Model.text.warm()` at service start (tokenizer + text session + one prompt) | {r['text_warm_s']:.3f} s |",
                   f"| custom labels 10 x 1, first call after warm() | {r['custom_10x1_after_warm_s']:.3f} s |",
                   f"| `Model.embed_text` one prompt, batch 1, p50 / p90 of 50 | {r['embed_text_b1_p50_ms']:.1f} / {r['embed_text_b1_p90_ms']:.1f} ms |",
                   f"\nProcess CPU seconds (all threads) of the same calls, less sensitive to a busy "
                   f"machine than the wall times: {json.dumps({k: round(v, 3) for k, v in r['cpu_s'].items()})}.  ",
                   f"(load {r['load_before'][0]} -> {r['load_after'][0]}; torch loaded: {r['torch_loaded']})\n"]
    if results.get("notes"):
        md += ["## Notes\n"] + [f"- {n}" for n in results["notes"]] + [""]
    out.with_suffix(".md").write_text("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--sample-templates", type=int, default=3,
                    help="ImageNet templates (x all 1000 classes) in the engines sample")
    ap.add_argument("--padded-prompts", type=int, default=256, help="prompts for the slow padded-77 row")
    ap.add_argument("--reference-classes", type=int, default=10,
                    help="ImageNet classes compared with build_zero_shot_classifier")
    ap.add_argument("--labelset-classes", type=int, default=None,
                    help="encode only the first N classes of each set in the labelsets stage "
                         "(default all; the export stage always does all)")
    ap.add_argument("--artifact", default=None, help="CLIP artifact for the runtime stage")
    ap.add_argument("--runtime-precision", default="auto",
                    help="precision the runtime stage loads with (auto: as the service does)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/clip_export"))
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes section")
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        ap.error(f"unknown stage(s) {bad}; choose from {STAGES}")
    import onnxruntime
    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="clip_export_bench_"))
    results: dict = {"command": shlex.join([".venv/bin/python", "benchmarks/clip_export.py", *sys.argv[1:]]),
                     "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                                 "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
                     "load_start": load(), "weights": "random (seed 0)", "notes": list(args.note)}
    ctx = Ctx(work) if {"prompts", "engines", "labelsets"} & set(stages) else None
    if ctx is not None:
        results["text_tower_export_seconds"] = round(ctx.tower_export_s, 1)
    if "prompts" in stages:
        results["prompts"] = stage_prompts(ctx)
    if "engines" in stages:
        results["engines"] = stage_engines(ctx, args.sample_templates, args.padded_prompts)
        write({**results, "load_end": load()}, Path(args.out))
    if "labelsets" in stages:
        results["labelsets"] = stage_labelsets(ctx, args.reference_classes, args.labelset_classes)
        write({**results, "load_end": load()}, Path(args.out))
    artifact = Path(args.artifact) if args.artifact else None
    if "export" in stages:
        results["export"] = stage_export(work)
        if results["export"].get("artifact"):
            artifact = Path(results["export"]["artifact"])
        write({**results, "load_end": load()}, Path(args.out))
    if "runtime" in stages:
        results["runtime"] = stage_runtime(work, artifact, args.runtime_precision)
    results["load_end"] = load()
    write(results, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
