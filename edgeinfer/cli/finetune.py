"""`edgeinfer finetune --model NAME --data SPEC --strategy head|partial|full`: train a new head
(or more) on your classes; optionally export the result straight to an artifact."""
from __future__ import annotations

import shlex


def add_parser(p) -> None:
    p.add_argument("--model", required=True, metavar="NAME",
                   help="recipe (see `edgeinfer models`; simple_cnn for small inputs), timm:<name> "
                        "or torchvision:<name>")
    p.add_argument("--weights", default="pretrained", metavar="pretrained|random|PATH",
                   help="initial weights (default pretrained; random = train from scratch; PATH = "
                        "a state dict / .safetensors, e.g. an earlier fine-tune's weights.safetensors)")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="ImageFolder DIR/<class>/<image>, CIFAR-10 batches, Fashion-MNIST idx "
                        "files, or a CSV pixel table (label + pixel columns)")
    p.add_argument("--strategy", default="head", choices=("head", "partial", "full"),
                   help="head: new classifier only (backbone features cached); partial: last "
                        "--unfreeze blocks + head; full: everything (default head)")
    p.add_argument("--unfreeze", type=int, default=1, metavar="N",
                   help="blocks trained by --strategy partial, counted from the end (default 1)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--normalization", choices=("imagenet", "half"), default=None,
                   help="input mean/std: imagenet or half (0.5/0.5); default: the recipe's")
    v = p.add_mutually_exclusive_group()
    v.add_argument("--val-split", type=float, default=0.2, metavar="F",
                   help="fraction of each class held out for validation (default 0.2; 0 = none)")
    v.add_argument("--val-data", default=None, metavar="SPEC",
                   help="a separate validation set with the same classes (all of --data trains)")
    v.add_argument("--folds", type=int, default=None, metavar="K",
                   help="K-fold cross-validation: every fold's curves and mean ± std of each metric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA when PyTorch sees a GPU, else CPU")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="PyTorch CPU threads (default: one per core)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/<model>-<strategy>)")
    e = p.add_argument_group("export")
    e.add_argument("--export", action="store_true",
                   help="also export DIR/artifact with the new labels (FP32)")
    e.add_argument("--int8", action="store_true", help="with --export: INT8 file, calibrated on "
                   "training images; labelled accuracy of each precision on the validation split")
    e.add_argument("--fp16", action="store_true", help="with --export: FP16 file too")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _command(args, out: str) -> str:
    """The command line that reproduces this run (every option spelled out, for the report)."""
    parts = ["edgeinfer", "finetune", "--model", args.model, "--weights", args.weights, "--data",
             args.data, "--strategy", args.strategy]
    if args.strategy == "partial":
        parts += ["--unfreeze", str(args.unfreeze)]
    parts += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
              "--weight-decay", str(args.weight_decay)]
    if args.normalization:
        parts += ["--normalization", args.normalization]
    if args.folds:
        parts += ["--folds", str(args.folds)]
    elif args.val_data:
        parts += ["--val-data", args.val_data]
    else:
        parts += ["--val-split", str(args.val_split)]
    parts += ["--seed", str(args.seed), "--device", args.device, "--out", out]
    parts += ["--threads", str(args.threads)] if args.threads else []
    parts += [f for f, on in (("--export", args.export), ("--int8", args.int8), ("--fp16", args.fp16)) if on]
    return " ".join(shlex.quote(str(p)) for p in parts)


def run(args) -> int:
    import re

    from rich.console import Console

    from edgeinfer.train import finetune

    err = Console(stderr=True)
    safe = re.sub(r"[^\w.\-]+", "_", args.model)
    out = args.out or f"runs/{safe}-{args.strategy}"
    say = None if args.quiet else (lambda m: err.print(f"[dim]·[/] {m}", highlight=False))
    r = finetune(args.model, data=args.data, out=out, weights=args.weights, strategy=args.strategy,
                 unfreeze=args.unfreeze, epochs=args.epochs, batch_size=args.batch_size,
                 lr=args.lr, weight_decay=args.weight_decay, normalization=args.normalization,
                 val_split=None if args.folds else (args.val_split or None),
                 val_data=args.val_data, folds=args.folds,
                 seed=args.seed, device=args.device, export=args.export, int8=args.int8,
                 fp16=args.fp16, threads=args.threads, progress=say, show_bars=not args.quiet,
                 command=_command(args, out))
    con = Console()
    s = r.get("summary") or {}
    if r["data"].get("folds"):
        con.print(f"{r['data']['folds']}-fold cross-validation (mean ± std):")
        for k, v in s.items():
            if isinstance(v, dict) and v.get("mean") is not None:
                con.print(f"  {k:18s} {v['mean']:.4f} ± {v['std']:.4f}")
    elif s:
        con.print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in s.items() if v is not None))
    ex = r.get("export")
    if ex and ex.get("labelled_val"):
        for p, m in ex["labelled_val"]["precisions"].items():
            con.print(f"  {p}: accuracy {m['accuracy']:.4f} ({m.get('drop_points_vs_fp32', 0):+.2f} "
                      f"points vs FP32) on {ex['labelled_val']['images']} validation images")
    con.print(f"wrote {out}/ (weights.safetensors, labels.txt, train_report.json/html, curves.png"
              + (", artifact/" if ex else "") + ")")
    return 0
