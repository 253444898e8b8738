"""edgeinfer-run (C++, OpenVINO C++ API) against the Python runtime serving the same artifact.

For each model (random weights, exported with an INT8 file calibrated on the photos) and precision:

- fidelity on the photos, same engine (OpenVINO CPU) and precision: cosine of the raw outputs
  (logits / unnormalised embeddings), top-1 agreement (classifiers: arg-max class; the CLIP image
  tower: each photo's nearest other photo), and the preprocessing difference (max |native - python|
  of the input tensors);
- process start to first result (a fresh process classifying one photo; cold: empty engine cache,
  warm: the OpenVINO model cache filled by a previous run), median of --repeats;
- per-image latency (one photo at a time, decode + preprocess + inference, in process) and the
  wall time for all photos;
- peak RSS of a fresh process classifying all photos (ru_maxrss from wait4).

Once per run: the decoder difference of JPEG DCT-domain (draft) decoding vs a full decode on
5x-upscaled photos (identical between native and Python; this is what draft decoding costs).

    .venv/bin/python benchmarks/native_vs_python.py --photos ../shared/data/photos \
        [--models mobilevit_s,mobilenetv3_large_100,resnet50,clip_vit_b32] [--artifacts DIR] [--repeats 5]

Writes benchmarks/results/native_vs_python.{md,json}. The load average is recorded with every
measurement: numbers taken on a loaded machine are noisy, rerun on a quiet one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["mobilevit_s", "mobilenetv3_large_100", "resnet50", "clip_vit_b32"]
PY = sys.executable


# ----------------------------------------------------------------------------- helpers
def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def native_binary(build_dir: Path | None = None) -> Path:
    sys.path.insert(0, str(REPO))
    from edgeinfer.cli.native_build import build_native

    return build_native(build_dir=build_dir or REPO / "build")


def ensure_artifact(name: str, root: Path, *, photos: Path) -> Path:
    """root/name with fp32 and int8 files (random weights), exported when missing."""
    out = Path(root) / name
    m = out / "manifest.json"
    if m.is_file() and {"fp32", "int8"} <= set(json.loads(m.read_text()).get("files", {})):
        return out
    cmd = [str(Path(PY).parent / "edgeinfer"), "export", "--model", name, "--weights", "random", "--int8",
           "--calib", str(photos), "--images", str(photos), "--out", str(out)]
    if name.startswith("clip"):
        cmd += ["--label-sets", ""]  # the image tower is what is compared; no text embeddings needed
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"export of {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    print(f"exported {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def run_native_json(binary: Path, art: Path, images: list, *args, env=None) -> tuple[dict, list[dict]]:
    proc = subprocess.run([str(binary), str(art), *map(str, images), "--json", *args], capture_output=True,
                          text=True, env=env)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"edgeinfer-run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    return rows[0], rows[1:]


def _nn_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of photos whose nearest other photo (cosine) is the same under both embeddings."""
    def nn(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)
    return float((nn(a) == nn(b)).mean())


def compare_fidelity(binary: Path, art: Path, photos: list, *, precision: str) -> dict:
    """Native vs Python runtime on OpenVINO CPU, same precision: output cosine, top-1 agreement,
    preprocessing difference."""
    import edgeinfer
    from edgeinfer.runtime.artifact import read_manifest
    from edgeinfer.runtime.preprocess import preprocess_image

    with tempfile.TemporaryDirectory() as dump:
        _, rows = run_native_json(binary, art, photos, "--raw", "--precision", precision, "--dump-input", dump)
        nat = np.array([r["output"] for r in rows], np.float32)
        spec = read_manifest(art)["preprocess"]
        pre_diff = max(float(np.abs(np.load(Path(dump) / f"{i}.npy") - preprocess_image(p, spec)).max())
                       for i, p in enumerate(photos))
    with edgeinfer.load(art, provider="openvino", precision=precision) as m:
        ref = np.stack(m.embed_raw(photos)).astype(np.float32)
        kind = m.output_kind
    cos = (nat * ref).sum(1) / np.linalg.norm(nat, axis=1) / np.linalg.norm(ref, axis=1)
    top1 = float((nat.argmax(1) == ref.argmax(1)).mean()) if kind == "logits" else _nn_agreement(nat, ref)
    return {"precision": precision, "images": len(photos), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min()), "top1_agreement": top1,
            "top1_kind": "arg-max class" if kind == "logits" else "nearest other photo",
            "max_abs_output_diff": float(np.abs(nat - ref).max()), "preprocess_max_abs_diff": pre_diff}


PY_FIRST = """
import sys, json
import edgeinfer
m = edgeinfer.load(sys.argv[1], provider="openvino", precision=sys.argv[2])
r = m.embed_raw([sys.argv[3]])[0]
print(json.dumps({"first": len(r)}), flush=True)
"""

PY_ALL = """
import sys, time, json
import edgeinfer
m = edgeinfer.load(sys.argv[1], provider="openvino", precision=sys.argv[2])
photos = sys.argv[3:]
m.embed_raw(photos[:1])
per = []
for p in photos:
    t = time.perf_counter(); m.embed_raw([p]); per.append((time.perf_counter() - t) * 1000)
t = time.perf_counter(); m.embed_raw(photos); wall = time.perf_counter() - t
print(json.dumps({"per_image_ms": per, "wall_s": wall}), flush=True)
"""


def time_to_first_line(cmd: list[str], env: dict) -> tuple[float, int]:
    """Seconds from process start to its first stdout line; and its ru_maxrss (KB; inflated by this
    process's own RSS, see run_measured, so not reported)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = p.stdout.readline()
    dt = time.perf_counter() - t0
    p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if not line or os.waitstatus_to_exitcode(status) not in (0, 3):
        raise RuntimeError(f"{cmd[0]} failed")
    return dt, ru.ru_maxrss


def run_measured(cmd: list[str], env: dict) -> tuple[str, int]:
    """(stdout, peak RSS in KB) of a command. The RSS comes from GNU time, which forks the command
    from its own small process: a child forked from this (large) Python process would report at
    least this process's RSS as its ru_maxrss (Linux carries the pre-exec high-water mark over)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "EDGEINFER_MAXRSS_KB=%M", *cmd], capture_output=True, text=True,
                          env=env)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    kb = [line.split("=", 1)[1] for line in proc.stderr.splitlines() if line.startswith("EDGEINFER_MAXRSS_KB=")]
    return proc.stdout, int(kb[-1])


def start_to_first_result(binary: Path, art: Path, photo: Path, precision: str, repeats: int) -> dict:
    out = {}
    for who in ("native", "python"):
        cold, warm = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "EDGEINFER_CACHE": cache}
                if who == "native":
                    # --json: the first line is the header; the result is the second line
                    cmd = [str(binary), str(art), str(photo), "--precision", precision]
                else:
                    cmd = [PY, "-c", PY_FIRST, str(art), precision, str(photo)]
                cold.append(time_to_first_line(cmd, env)[0])
                warm.append(time_to_first_line(cmd, env)[0])
        out[who] = {"cold_cache_s": statistics.median(cold), "warm_cache_s": statistics.median(warm),
                    "runs": repeats, "load": load()}
    return out


def latency_and_rss(binary: Path, art: Path, photos: list, precision: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "EDGEINFER_CACHE": cache}
        subprocess.run([str(binary), str(art), str(photos[0]), "--precision", precision], env=env,
                       capture_output=True)  # fill the model cache: both sides then start warm
        # native: one photo at a time is what its per-image fields measure (decode+preprocess+infer)
        t0 = time.perf_counter()
        out, rss = run_measured([str(binary), str(art), *map(str, photos), "--json", "--precision", precision], env)
        native_wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in out.splitlines()[1:]]
        nat_ms = [r["ms"]["decode"] + r["ms"]["preprocess"] + r["ms"]["infer"] for r in rows]
        nat_infer = [r["ms"]["infer"] for r in rows]
        native = {"per_image_ms_median": statistics.median(nat_ms),
                  "per_image_ms_p90": float(np.percentile(nat_ms, 90)),
                  "infer_ms_median": statistics.median(nat_infer),
                  "all_photos_process_wall_s": native_wall, "peak_rss_mb": rss / 1024, "load": load()}
        t0 = time.perf_counter()
        out, rss = run_measured([PY, "-c", PY_ALL, str(art), precision, *map(str, photos)], env)
        res = json.loads(out.strip().splitlines()[-1])
        python = {"per_image_ms_median": statistics.median(res["per_image_ms"]),
                  "per_image_ms_p90": float(np.percentile(res["per_image_ms"], 90)),
                  "all_photos_in_process_wall_s": res["wall_s"],
                  "process_wall_s_incl_twice_over_photos": time.perf_counter() - t0,
                  "peak_rss_mb": rss / 1024, "load": load()}
    return {"native": native, "python": python}


def rss_one_photo(binary: Path, art: Path, photo: Path, precision: str) -> dict:
    """Peak RSS (MB) of a fresh process that loads the artifact and classifies one photo (warm cache)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "EDGEINFER_CACHE": cache}
        native_cmd = [str(binary), str(art), str(photo), "--precision", precision]
        py_cmd = [PY, "-c", PY_FIRST, str(art), precision, str(photo)]
        run_measured(native_cmd, env)  # fill the model cache
        return {"native_mb": run_measured(native_cmd, env)[1] / 1024, "python_mb": run_measured(py_cmd, env)[1] / 1024,
                "load": load()}


def decoder_difference(binary: Path, photos: list, tmp: Path) -> dict:
    """Draft (DCT-scaled) vs full JPEG decode, after the model's resize/crop, on 5x-upscaled photos,
    and native vs Python on the same files (both modes)."""
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from test_runtime_helpers import tiny_artifact

    from edgeinfer.runtime.artifact import read_manifest, write_manifest
    from edgeinfer.runtime.preprocess import preprocess_image

    big = []
    for p in photos:
        im = Image.open(p).convert("RGB")
        f = tmp / p.name
        im.resize((im.width * 5, im.height * 5), Image.BICUBIC).save(f, "JPEG", quality=92)
        big.append(f)
    art = tiny_artifact(tmp / "unit", size=224)
    m = read_manifest(art)
    m["preprocess"].update(resize_size=256, mean=[0, 0, 0], std=[1, 1, 1])
    write_manifest(art, m)
    spec = m["preprocess"]
    res = {}
    arrays = {}
    for mode, flag in (("draft", []), ("full", ["--no-draft"])):
        d = tmp / mode
        d.mkdir()
        t0 = time.perf_counter()
        run_native_json(binary, art, big, "--preprocess-only", "--dump-input", str(d), *flag)
        native_s = time.perf_counter() - t0
        a = [np.load(d / f"{i}.npy") for i in range(len(big))]
        t0 = time.perf_counter()
        ref = [preprocess_image(p, spec, draft=mode == "draft") for p in big]
        python_s = time.perf_counter() - t0
        arrays[mode] = a
        res[f"native_vs_python_max_abs_{mode}"] = max(float(np.abs(x - y).max()) for x, y in zip(a, ref)) * 255
        res[f"native_decode_preprocess_s_{mode}"] = native_s
        res[f"python_decode_preprocess_s_{mode}"] = python_s
    diff = [float(np.abs(x - y).mean()) * 255 for x, y in zip(arrays["draft"], arrays["full"])]
    res.update(images=len(big), size=f"{Image.open(big[0]).size[0]}x{Image.open(big[0]).size[1]} (first)",
               draft_vs_full_mean_abs_levels=float(np.mean(diff)), draft_vs_full_max_image_mean_abs=max(diff),
               draft_vs_full_max_abs_levels=max(float(np.abs(x - y).max()) for x, y in
                                                zip(arrays["draft"], arrays["full"])) * 255,
               load=load())
    return res


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    import openvino
    import PIL

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "openvino": openvino.__version__.split("-")[0], "pillow": PIL.__version__,
            "platform": platform.platform()}


# ----------------------------------------------------------------------------- report
def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "native_vs_python.json").write_text(json.dumps(results, indent=2) + "\n")
    r = results
    lines = [
        "# edgeinfer-run (C++) vs the Python runtime, same artifact, OpenVINO CPU",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores; OpenVINO {r['machine']['openvino']}, "
        f"Pillow {r['machine']['pillow']}, Python {r['machine']['python']}.  ",
        f"Load average (1/5/15 min) at start {r['load_start']}, at end {r['load_end']}"
        + (" - a loaded, shared machine: timings are noisy; rerun on a quiet one." if r["load_start"][0] > 1.5 else "."),
        "",
        "Weights are random (`--weights random`), so fidelity is agreement with the Python runtime on the same "
        "engine and precision, not accuracy.",
        "",
        "## Fidelity on the photos (native vs Python, same engine and precision)",
        "",
        "| model | precision | photos | mean cosine | min cosine | top-1 agreement | max abs output diff | preprocessing max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, mr in r["models"].items():
        for f in mr["fidelity"]:
            lines.append(f"| {name} | {f['precision']} | {f['images']} | {f['mean_cosine']:.7f} | {f['min_cosine']:.7f} | "
                         f"{f['top1_agreement']:.3f} ({f['top1_kind']}) | {f['max_abs_output_diff']:.3g} | "
                         f"{f['preprocess_max_abs_diff']:.3g} |")
    lines += ["", "## Start-up, latency, memory", "",
              "Start to first result: a fresh process classifying one photo (median of "
              "the runs shown); cold = empty OpenVINO model cache, warm = cache filled. Per-image: one photo "
              "at a time, decode + preprocess + inference in process (median / p90). Peak RSS: a fresh process "
              "over all photos.", "",
              "| model | precision | side | runs | start->first cold (s) | start->first warm (s) | per-image median (ms) | per-image p90 (ms) | peak RSS (MB) | load |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, mr in r["models"].items():
        for prec, t in mr.get("timing", {}).items():
            for side in ("native", "python"):
                s, lt = t["start"][side], t["latency"][side]
                lines.append(f"| {name} | {prec} | {side} | {s['runs']} | {s['cold_cache_s']:.2f} | {s['warm_cache_s']:.2f} | "
                             f"{lt['per_image_ms_median']:.1f} | {lt['per_image_ms_p90']:.1f} | "
                             f"{'n/a' if lt['peak_rss_mb'] is None else format(lt['peak_rss_mb'], '.0f')} | "
                             f"{lt['load'][0]} |")
    rss = [(n, p, v) for n, mr in r["models"].items() for p, v in mr.get("rss_one_photo", {}).items()]
    if rss:
        lines += ["", "Peak RSS of a fresh process that loads the artifact and classifies one photo (warm engine "
                  "cache; GNU time %M):", "", "| model | precision | native (MB) | python (MB) | load |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {p} | {v['native_mb']:.0f} | {v['python_mb']:.0f} | {v['load'][0]} |" for n, p, v in rss]
    lines += ["", "Per model: the command and the load average when it was measured:", ""]
    lines += [f"- {name}: `{mr.get('command', r['command'])}` (load {mr.get('load_start', r['load_start'])})"
              + (f"; RSS: `{mr['rss_command']}`" if "rss_command" in mr else "")
              for name, mr in r["models"].items()]
    d = r.get("decoder")
    if d:
        lines += ["", "## Decoder differences", "",
                  f"{d['images']} photos upscaled 5x ({d['size']}), resized to 256 and cropped to 224 (values in 8-bit levels):",
                  "",
                  f"- native vs Python, draft decoding: max |diff| {d['native_vs_python_max_abs_draft']:.3g}; "
                  f"full decoding: {d['native_vs_python_max_abs_full']:.3g} (bit-identical: same libjpeg DCT scaling, "
                  "PIL's resampling and pass order re-implemented).",
                  f"- JPEG DCT-domain draft decoding vs full decode (both sides do the same): mean |diff| "
                  f"{d['draft_vs_full_mean_abs_levels']:.3f} levels (worst image {d['draft_vs_full_max_image_mean_abs']:.3f}), "
                  f"max {d['draft_vs_full_max_abs_levels']:.0f} levels.",
                  f"- decode + preprocess time for these {d['images']} photos: native {d['native_decode_preprocess_s_draft']:.2f} s "
                  f"(draft) / {d['native_decode_preprocess_s_full']:.2f} s (full, process start included); Python "
                  f"{d['python_decode_preprocess_s_draft']:.2f} s / {d['python_decode_preprocess_s_full']:.2f} s "
                  f"(in process). Load {d['load']}."]
    (out / "native_vs_python.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--timing-models", default="mobilevit_s,resnet50",
                    help="models whose start-up / latency / RSS are measured ('' for none; 'all')")
    ap.add_argument("--artifacts", default=str(REPO / "artifacts" / "native-bench"),
                    help="where the random-weight artifacts are exported (reused when present)")
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--decoder", action="store_true", help="re-measure the decoder differences")
    ap.add_argument("--rss-only", action="store_true",
                    help="only the one-photo peak RSS of --models (no fidelity, no timing)")
    ap.add_argument("--fresh", action="store_true",
                    help="drop the models of an earlier results file (default: keep those not re-run)")
    args = ap.parse_args(argv)

    photos_dir = Path(args.photos)
    photos = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    binary = native_binary(Path(args.build_dir))
    models = [m for m in args.models.split(",") if m]
    timing = models if args.timing_models == "all" else [m for m in args.timing_models.split(",") if m]
    import shlex

    results = {"command": "python benchmarks/native_vs_python.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "machine": machine(), "load_start": load(), "repeats": args.repeats, "photos": len(photos),
               "binary": str(binary), "models": {}}
    previous = Path(args.out) / "native_vs_python.json"
    if previous.is_file() and (args.rss_only or not args.fresh):
        # runs per model (the machine is shared and slow): keep the other models' results, each with
        # the command and load average it was measured with
        old = json.loads(previous.read_text())
        results["models"] = {k: v for k, v in old.get("models", {}).items()
                             if k not in models or args.rss_only}
        if "decoder" in old:
            results["decoder"] = old["decoder"]
    if args.rss_only:
        for name in models:
            art = ensure_artifact(name, Path(args.artifacts), photos=photos_dir)
            mr = results["models"].setdefault(name, {"artifact": str(art), "fidelity": [], "timing": {}})
            mr["rss_one_photo"] = {p: rss_one_photo(binary, art, photos[0], p) for p in args.precisions.split(",")}
            mr["rss_command"] = results["command"]
            print(name, mr["rss_one_photo"], file=sys.stderr)
        results["load_end"] = load()
        write_report(results, Path(args.out))
        return 0
    for name in models:
        art = ensure_artifact(name, Path(args.artifacts), photos=photos_dir)
        mr = {"artifact": str(art), "command": results["command"], "load_start": load(), "fidelity": [],
              "timing": {}}
        if previous.is_file() and not args.fresh:
            for key in ("rss_one_photo", "rss_command"):
                if key in old.get("models", {}).get(name, {}):
                    mr[key] = old["models"][name][key]
        for prec in args.precisions.split(","):
            mr["fidelity"].append(compare_fidelity(binary, art, photos, precision=prec))
            print(name, mr["fidelity"][-1], file=sys.stderr)
            if name in timing:
                mr["timing"][prec] = {"start": start_to_first_result(binary, art, photos[0], prec, args.repeats),
                                      "latency": latency_and_rss(binary, art, photos, prec)}
                print(name, prec, mr["timing"][prec], file=sys.stderr)
        results["models"][name] = mr
        write_report({**results, "load_end": load()}, Path(args.out))  # partial results survive a crash
    if args.decoder or "decoder" not in results:
        with tempfile.TemporaryDirectory() as tmp:
            results["decoder"] = decoder_difference(binary, photos[:8], Path(tmp))
    results["load_end"] = load()
    write_report(results, Path(args.out))
    print(f"wrote {args.out}/native_vs_python.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
