"""`edgeinfer quantize ARTIFACT_DIR --int8|--fp16 ...`: add INT8/FP16 files to an artifact."""
from __future__ import annotations

import json
import warnings


def add_quantize_options(p) -> None:
    """Options shared with `edgeinfer export` (--int8/--fp16/--calib/...)."""
    p.add_argument("--int8", action="store_true", help="add model.int8.onnx (static PTQ, QDQ)")
    p.add_argument("--fp16", action="store_true", help="add model.fp16.onnx")
    p.add_argument("--calib", metavar="DIR", default=None,
                   help="calibration images (flat folder or ImageFolder); default: a few "
                        "scikit-image sample photos (your own photos calibrate better)")
    p.add_argument("--calib-size", type=int, default=None, metavar="N",
                   help="number of calibration images (default 64; part of the folder is "
                        "held out to check accuracy)")
    p.add_argument("--target", default="auto", choices=("auto", "cpu", "openvino", "tensorrt"),
                   help="engine the INT8 file is tuned for (auto: ONNX Runtime on this CPU)")
    p.add_argument("--max-drop", type=float, default=None, metavar="X",
                   help="accuracy budget: points of top-1 agreement with FP32 for classifiers "
                        "(default 1), cosine for embedding / random-weight models (default 0.01)")


def add_parser(p) -> None:
    p.add_argument("artifact", metavar="ARTIFACT_DIR", help="artifact directory (from `edgeinfer export`)")
    add_quantize_options(p)
    p.add_argument("--json", action="store_true", help="print the new manifest entries as JSON")


def _row(prec: str, e: dict) -> list[str]:
    fid = e.get("fidelity") or {}
    q = e.get("quantization") or e.get("conversion") or {}
    s = q.get("settings") or {}
    kept = q.get("kept_in_float_count")
    if kept is None and "node_block_list" in q:
        kept = len(q["node_block_list"])
    lab = e.get("labelled")

    def f(x, n=4):
        return "-" if x is None else f"{x:.{n}f}"

    agree = fid.get("top1_agreement")
    return [prec, e["file"], f"{e['size_bytes'] / 1e6:.1f} MB",
            s.get("scheme", q.get("method", "")) + (f" ({s['target']})" if s.get("target") else ""),
            f(fid.get("cosine_mean")), f(fid.get("cosine_min")),
            "-" if agree is None else f"{agree * 100:.1f}%",
            "-" if lab is None else f"{lab['fp32_top1'] * 100:.1f}% -> {lab['top1'] * 100:.1f}%",
            "-" if kept is None else str(kept)]


def run(args) -> int:
    from rich.console import Console

    from edgeinfer.quantize import quantize_artifact

    err = Console(stderr=True)
    if not (args.int8 or args.fp16):
        err.print("error: say what to add: --int8 and/or --fp16")
        return 2

    def progress(msg: str) -> None:  # stderr, so --json output stays clean
        err.print(f"[dim]{msg}[/dim]")

    def show(message, category, *a, **k):
        err.print(f"[yellow]warning:[/yellow] {message}")

    old = warnings.showwarning
    warnings.showwarning = show
    try:
        res = quantize_artifact(args.artifact, int8=args.int8, fp16=args.fp16, calib=args.calib,
                                calib_size=args.calib_size, target=args.target,
                                max_drop=args.max_drop, progress=progress)
    finally:
        warnings.showwarning = old
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    print_summary(res, Console())
    return 0


def print_summary(res: dict, console) -> None:
    from rich.table import Table

    t = Table(title="quantized files (fidelity to FP32 on held-out images)")
    for c in ("precision", "file", "size", "settings", "cos mean", "cos min", "top-1 agree",
              "labelled top-1", "kept float"):
        t.add_column(c)
    for prec, e in res.items():
        t.add_row(*_row(prec, e))
    console.print(t)
    for prec, e in res.items():
        q = e.get("quantization") or {}
        if q.get("settings"):
            console.print(f"{prec}: {q['settings']['scheme']} because {q['settings']['reason']}")
        if q.get("choice"):
            console.print(f"{prec}: {q['choice']}")
        if q.get("budget_metric_reason"):
            budget = (q.get("budget") or {}).get("text")  # the OpenVINO/NNCF path records no budget text
            console.print(f"{prec}: guard budget: {budget + ' ' if budget else ''}"
                          f"({q['budget_metric_reason']})")
