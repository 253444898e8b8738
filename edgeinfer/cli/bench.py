"""`edgeinfer bench`: accuracy vs latency vs memory across engines and precisions."""
from __future__ import annotations

from .output import add_json_flag, console, print_json


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
    add_json_flag(p)


def run(args) -> int:
    from edgeinfer.bench import run_bench
    from edgeinfer.bench.report import console_table, observations

    # with --json, stdout carries only the JSON: everything for people goes to stderr
    con = console(stderr=args.json)
    verbose = getattr(args, "verbose", False)
    with con.status("starting", spinner="dots") as status:
        def progress(msg: str) -> None:
            status.update(f"[bold]{msg}")
            if verbose:
                con.log(msg)

        res = run_bench(args.artifact, providers=args.provider, precisions=args.precision,
                        batches=args.batch, threads=args.threads, images=args.images,
                        labels=args.labels, out=args.out, pipeline=args.pipeline, progress=progress,
                        budget_s=args.budget, max_images=args.max_images, memory=not args.no_memory,
                        torch_baseline=not args.no_torch, write_tuning_file=not args.no_tuning,
                        rounds=args.rounds)
    con.print(console_table(res))
    for n in observations(res):
        con.print(f"• {n}")
    if res.get("pipeline"):
        for p in res["pipeline"]:
            if p["status"] == "ok":
                con.print(f"pipeline {p['provider']}/{p['precision']}: {p['images_per_s']:.1f} images/s "
                             f"end to end ({p['preprocess_images_per_s']:.1f} images/s decode+preprocess)")
            else:
                con.print(f"pipeline {p['provider']}/{p['precision']}: [red]{p['error']}")
    for r in res.get("text_tower") or []:
        if r["status"] == "ok":
            con.print(f"text tower {r['provider']}/{r['precision']} batch {r['batch']}: "
                         f"{r['latency_median_ms']:.2f} ms ({r['prompts_per_s']:.1f} prompts/s), "
                         f"cosine min {r.get('cosine_min', float('nan')):.5f}")
        else:
            con.print(f"text tower {r['provider']}/{r['precision']}: [red]{r['error']}")
    t = (res.get("tuning") or {}).get("entry")
    if t:
        con.print(f"measured pick: [bold]{t['provider']}/{t['precision']}[/bold] "
                     f"({t['latency_ms']:.2f} ms)" + (f" -> {res['tuning']['file']}" if res['tuning'].get('file') else ""))
    files = res.get("files", {})
    if files:
        con.print(f"report: {files.get('html')}\nresults: {files.get('json')}, {files.get('csv')}, "
                     f"{files.get('png')}")
    if args.json:
        print_json(res)
    return 0 if any(r["status"] == "ok" for r in res["rows"]) else 1
