"""`edgeinfer bench`: accuracy vs latency vs memory across engines and precisions.

Also the PyTorch eager baseline worker (``python -m edgeinfer.cli.bench SPEC.json``): the bench
package is torch-free, so the baseline row is measured here, in its own process.
"""
from __future__ import annotations

import json
import sys
import time


def add_parser(p) -> None:
    p.add_argument("artifact", metavar="ARTIFACT_DIR", help="artifact directory (edgeinfer export)")
    p.add_argument("--provider", default="auto",
                   help="auto (the auto pick + ONNX Runtime CPU), all (every available engine), or "
                        "a comma list of cpu,cuda,tensorrt,openvino (default: auto)")
    p.add_argument("--precision", default="all",
                   help="all (every file in the artifact) or a comma list of fp32,fp16,int8")
    p.add_argument("--batch", default="1", help="comma list of batch sizes (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="photos for accuracy/fidelity (files named <synset>_<label>.JPEG count as "
                        "labelled); default: generated images, fidelity only")
    p.add_argument("--labels", default=None, metavar="PATH",
                   help="labelled data for top-1/top-5/F1/MCC: an ImageFolder (DIR/<class>/<image>), "
                        "CIFAR-10 python batches, Fashion-MNIST idx files, or a CSV pixel table "
                        "(label + pixel columns)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: ARTIFACT_DIR/bench)")
    p.add_argument("--pipeline", action="store_true",
                   help="also measure decode + preprocess + infer throughput over the photo files")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="timed seconds per configuration (default 3; at least 20 runs)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved latency rounds over all configurations (default 3)")
    p.add_argument("--max-images", type=int, default=100, help="images used for accuracy (default 100)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the fresh-subprocess cold start / peak RSS measurements")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager baseline row")
    p.add_argument("--no-tuning", action="store_true",
                   help="do not write ARTIFACT_DIR/tuning.json (the measured pick for provider=auto)")
    p.add_argument("--json", action="store_true", help="print results.json to stdout at the end")


def run(args) -> int:
    from rich.console import Console

    from edgeinfer.bench import run_bench
    from edgeinfer.bench.report import console_table, observations

    console = Console(stderr=args.json)
    if not console.is_terminal:  # logs / CI: don't squeeze the table into 80 columns
        console = Console(stderr=args.json, width=150)
    with console.status("starting", spinner="dots") as status:
        def progress(msg: str) -> None:
            status.update(f"[bold]{msg}")
            console.log(msg)

        res = run_bench(args.artifact, providers=args.provider, precisions=args.precision,
                        batches=args.batch, threads=args.threads, images=args.images,
                        labels=args.labels, out=args.out, pipeline=args.pipeline, progress=progress,
                        budget_s=args.budget, max_images=args.max_images, memory=not args.no_memory,
                        torch_baseline=not args.no_torch, write_tuning_file=not args.no_tuning,
                        rounds=args.rounds)
    console.print(console_table(res))
    for n in observations(res):
        console.print(f"• {n}")
    if res.get("pipeline"):
        for p in res["pipeline"]:
            if p["status"] == "ok":
                console.print(f"pipeline {p['provider']}/{p['precision']}: {p['images_per_s']:.1f} images/s "
                              f"end to end ({p['preprocess_images_per_s']:.1f} images/s decode+preprocess)")
            else:
                console.print(f"pipeline {p['provider']}/{p['precision']}: [red]{p['error']}")
    for r in res.get("text_tower") or []:
        if r["status"] == "ok":
            console.print(f"text tower {r['provider']}/{r['precision']} batch {r['batch']}: "
                          f"{r['latency_median_ms']:.2f} ms ({r['prompts_per_s']:.1f} prompts/s), "
                          f"cosine min {r.get('cosine_min', float('nan')):.5f}")
        else:
            console.print(f"text tower {r['provider']}/{r['precision']}: [red]{r['error']}")
    t = (res.get("tuning") or {}).get("entry")
    if t:
        console.print(f"measured pick: [bold]{t['provider']}/{t['precision']}[/bold] "
                      f"({t['latency_ms']:.2f} ms)" + (f" -> {res['tuning']['file']}" if res['tuning'].get('file') else ""))
    files = res.get("files", {})
    if files:
        console.print(f"report: {files.get('html')}\nresults: {files.get('json')}, {files.get('csv')}, "
                      f"{files.get('png')}")
    if args.json:
        print(json.dumps(res, default=str, indent=2))
    return 0 if any(r["status"] == "ok" for r in res["rows"]) else 1


# ------------------------------------------------------------------ PyTorch eager baseline worker
def _torch_worker(spec: dict) -> dict:
    import numpy as np
    import torch

    from edgeinfer.bench import timing
    from edgeinfer.bench.worker import peak_rss_mb
    from edgeinfer.export.recipes import get_recipe
    from edgeinfer.export.torch_models import build_model
    from edgeinfer.runtime.artifact import Artifact

    art = Artifact.open(spec["artifact"])
    w = art.manifest.get("weights", {})
    origin = w.get("origin", "random")
    if origin == "random":
        weights, seed = "random", int(w.get("seed", 0) or 0)
    elif origin == "file":
        weights, seed = w.get("path"), int(w.get("seed", 0) or 0)
    else:
        weights, seed = "pretrained", 0
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    t0 = time.perf_counter()
    built = build_model(get_recipe(art.manifest["model"]["name"]), weights=weights, seed=seed)
    module = built.module.eval()
    build_s = time.perf_counter() - t0
    params_mb = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    x = np.load(spec["eval_npy"])
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), 8):
            outs.append(module(torch.from_numpy(x[i:i + 8])).float().numpy())
        np.save(spec["out_npy"], np.concatenate(outs))
        lat = {}
        for b in spec["batches"]:
            xb = x[:b] if len(x) >= b else np.concatenate([x] * (b // len(x) + 1))[:b]
            tb = torch.from_numpy(np.ascontiguousarray(xb))
            lat[str(b)] = timing.measure(lambda: module(tb), budget_s=spec.get("budget_s") or timing.BUDGET_S)
    return {"build_s": build_s, "params_mb": params_mb, "latency": lat, "device": "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "weights": weights,
            "peak_rss_mb": peak_rss_mb()}


def _worker_main(argv) -> int:
    from edgeinfer.bench.worker import RESULT_PREFIX, peak_rss_mb

    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        res = {"ok": True, **_torch_worker(spec)}
    except BaseException as e:  # reported as the baseline row's error
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "peak_rss_mb": peak_rss_mb()}
    print(RESULT_PREFIX + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
