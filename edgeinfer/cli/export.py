"""`edgeinfer export --model NAME`: build a verified ONNX artifact directory."""
from __future__ import annotations

import json
import sys
import time


def add_parser(p) -> None:
    p.add_argument("--model", required=True, metavar="NAME",
                   help="recipe name (see `edgeinfer models`), timm:<name> or torchvision:<name>")
    p.add_argument("--weights", default="pretrained", metavar="pretrained|random|PATH",
                   help="pretrained (library cache; default), random (seeded, labelled random) or a "
                        "state dict / .safetensors file")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default 0)")
    p.add_argument("--out", default=None, metavar="DIR", help="artifact directory (default artifacts/<model>)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing artifact at --out, with its bench/ results and "
                        "tuning.json (refused without it)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="images for the parity check (up to 32 are used; default: generated images)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: the recipe's, at least 18; < 18 uses the legacy exporter)")
    p.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"),
                   help="ONNX exporter: auto (torch.export-based, falling back to TorchScript), "
                        "dynamo or torchscript")
    c = p.add_argument_group("CLIP")
    c.add_argument("--label-sets", default=None, metavar="SETS",
                   help="label sets whose text embeddings go into the artifact, comma-separated "
                        "(default: the recipe's, imagenet,cifar10; '' for none)")
    c.add_argument("--templates", default=None, metavar="SET=TEMPLATES",
                   help="prompt-template set per label set, e.g. imagenet=simple_imagenet (7 "
                        "templates instead of OpenAI's 80: ~10x faster export on a CPU)")
    q = p.add_argument_group("quantization (same as `edgeinfer quantize`)")
    q.add_argument("--int8", action="store_true", help="also write an INT8 file (calibrated, accuracy-guarded)")
    q.add_argument("--fp16", action="store_true", help="also write an FP16 file")
    q.add_argument("--calib", default=None, metavar="DIR", help="calibration images for --int8")
    q.add_argument("--calib-size", type=int, default=None, metavar="N", help="calibration images to use")
    q.add_argument("--target", default="auto", choices=("auto", "cpu", "openvino", "tensorrt"),
                   help="engine the INT8 file is tuned for (default auto: this machine)")
    q.add_argument("--max-drop", type=float, default=None, metavar="X",
                   help="accuracy budget for INT8 (fidelity drop vs FP32)")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")


class _Steps:
    """Progress callback for the pipeline: a spinner on the current step, a tick and its time
    when it ends (on stderr, so stdout stays clean for --json)."""

    def __init__(self, console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.status = None
        self.current: str | None = None
        self.t0 = 0.0
        # a callable giving a line about work running beside the steps (CLIP label sets)
        self.background = None

    def __enter__(self):
        if not self.quiet:
            self.status = self.console.status("starting", spinner="dots")
            self.status.__enter__()
        return self

    def _finish(self, ok: bool = True) -> None:
        if self.current is not None and not self.quiet:
            from rich.markup import escape

            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            self.console.print(f"{mark} {escape(self.current)} [dim]({time.perf_counter() - self.t0:.1f} s)[/]")
            if self.background is not None and not self.current.startswith(("encoded ", "label sets ")):
                self.console.print(f"  [dim]{escape(self.background())}[/]")
        self.current = None

    def __call__(self, msg: str) -> None:
        self._finish()
        if msg.startswith("wrote "):
            return
        self.current, self.t0 = msg, time.perf_counter()
        if self.status is not None:
            from rich.markup import escape

            self.status.update(escape(msg))

    def __exit__(self, et, ev, tb):
        self._finish(ok=et is None)
        if self.status is not None:
            self.status.__exit__(et, ev, tb)
        return False


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def summary(out, manifest: dict) -> dict:
    files = {}
    for tower, fs in (("image", manifest.get("files", {})),
                      ("text", (manifest.get("text") or {}).get("files", {}))):
        for prec, e in fs.items():
            files[f"{tower}/{prec}" if tower != "image" else prec] = {
                k: e.get(k) for k in ("file", "size_bytes", "sha256", "parity", "fidelity", "export")
                if e.get(k) is not None}
    return {"artifact": str(out), "model": manifest["model"], "weights": manifest["weights"],
            "random_weights": manifest["weights"].get("origin") == "random",
            "opset": manifest.get("opset"), "output": manifest.get("output"), "files": files,
            "export": manifest.get("export", {}), "warnings": manifest.get("warnings", [])}


def _quality(e: dict) -> str:
    par = e.get("parity") or {}
    if "cosine_min" in par:
        top1 = par.get("top1_agreement")
        extra = f", top-1 agree {top1:.0%}" if isinstance(top1, (int, float)) else ""
        if "texts" in par:  # CLIP text tower: parity on tokenized prompts
            n, src = par["texts"], "prompts"
        else:
            n = par.get("images", "?")
            src = {"photos": "photos", "generated": "generated images"}.get(par.get("source"), "images")
        return (f"cos min {par['cosine_min']:.7f}, max|Δ| {par.get('max_abs_diff', float('nan')):.2g}"
                f"{extra} ({n} {src})")
    fid = e.get("fidelity") or {}
    if fid:
        bits = [f"{k} {v:.4f}" for k, v in fid.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:3]
        return ", ".join(bits) or "-"
    return "-"


def print_summary(console, s: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    w = s["weights"]
    origin = w.get("origin")
    if origin == "random":
        wtxt = f"[bold red]RANDOM WEIGHTS[/] (seed {w.get('seed')}): predictions are meaningless"
    elif origin == "file":
        wtxt = f"file {escape(str(w.get('path')))} (sha256 {str(w.get('sha256'))[:12]}…)"
    else:
        wtxt = f"pretrained {escape(str(w.get('tag') or ''))}"
    t = Table(title=f"{escape(s['model']['name'])} → {escape(s['artifact'])}", title_justify="left")
    for col in ("file", "size", "parity / fidelity"):
        t.add_column(col)
    for key, e in s["files"].items():
        t.add_row(escape(e.get("file", key)), _mb(e.get("size_bytes")), escape(_quality(e)))
    console.print(t)
    ex = s.get("export", {})
    console.print(f"weights: {wtxt}")
    console.print(f"opset {s.get('opset')}, output {s['output'].get('kind')} [{s['output'].get('dim')}]; "
                  f"time: build {ex.get('build_seconds', '?')} s, onnx {ex.get('onnx_seconds', '?')} s, "
                  f"parity {ex.get('parity_seconds', '?')} s"
                  + (f", text tower {ex['text_seconds']} s" if "text_seconds" in ex else "")
                  + f", total {ex.get('total_seconds', '?')} s")
    for wmsg in s.get("warnings", []):
        if not wmsg.startswith("RANDOM WEIGHTS"):
            console.print(f"[yellow]warning:[/] {escape(wmsg)}")


def _label_sets(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _templates(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    from edgeinfer.errors import InvalidOptionError

    out = {}
    for item in text.split(","):
        k, sep, v = item.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise InvalidOptionError(f"--templates item {item!r}: expected LABEL_SET=TEMPLATE_SET, "
                                     f"e.g. imagenet=simple_imagenet")
        out[k.strip()] = v.strip()
    return out


def run(args) -> int:
    from rich.console import Console

    from edgeinfer.export.pipeline import export_model
    from edgeinfer.runtime.artifact import read_manifest

    err = Console(stderr=True)
    with _Steps(err, quiet=args.json) as steps:
        out = export_model(args.model, weights=args.weights, out=args.out, images=args.images,
                           opset=args.opset, seed=args.seed, int8=args.int8, fp16=args.fp16,
                           calib=args.calib, calib_size=args.calib_size, target=args.target,
                           max_drop=args.max_drop, progress=steps, exporter=args.exporter,
                           label_sets=_label_sets(args.label_sets),
                           templates=_templates(args.templates), force=args.force)
    s = summary(out, read_manifest(out))
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(Console(), s)
    return 0
