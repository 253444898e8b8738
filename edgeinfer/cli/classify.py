"""`edgeinfer classify ARTIFACT_DIR IMAGE...`: top-k labels per image (or CLIP zero-shot with --labels)."""
from __future__ import annotations

import json
import sys

#: exit status when at least one image could not be classified (the others are still printed);
#: 0 = every image classified, 1 = an error before any result (bad artifact, option, ...)
EXIT_IMAGES_FAILED = 3

EPILOG = (f"exit status: 0 every image was classified; {EXIT_IMAGES_FAILED} one or more images "
          f"failed (their errors go to stderr, or to \"error\" with --json; the other results are "
          f"printed); 1 nothing could be classified because of an error (artifact, options); "
          f"2 usage error.")


def add_parser(p) -> None:
    p.epilog = EPILOG
    p.add_argument("artifact", metavar="ARTIFACT_DIR", help="artifact directory (from `edgeinfer export`)")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (or folders of images)")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default 5; 3 for --labels)")
    p.add_argument("--provider", default="auto",
                   help="auto | cpu | cuda | tensorrt | openvino (openvino:GPU etc. for a device)")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | int8")
    p.add_argument("--threads", type=int, default=None, help="CPU inference threads (default: physical cores)")
    p.add_argument("--batch-size", type=int, default=16, help="images per inference batch")
    p.add_argument("--labels", default=None,
                   help='CLIP zero-shot over these labels: "a cat, a dog, a car"')
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _expand(paths: list[str]) -> list[str]:
    from pathlib import Path

    from edgeinfer.runtime.preprocess import list_images

    out = []
    for p in paths:
        out.extend(str(x) for x in list_images(p)) if Path(p).is_dir() else out.append(p)
    return out


def run(args) -> int:
    import edgeinfer
    from edgeinfer.errors import InvalidOptionError
    from edgeinfer.runtime.model import Failure

    if args.top_k < 1:
        raise InvalidOptionError(f"--top-k must be >= 1 (got {args.top_k})")
    images = _expand(args.images)
    if not images:
        print("error: no images given (folders were empty)", file=sys.stderr)
        return 1
    with edgeinfer.load(args.artifact, provider=args.provider, precision=args.precision,
                        threads=args.threads, batch_size=args.batch_size) as model:
        if args.labels is not None:
            labels = [s.strip() for s in args.labels.split(",") if s.strip()]
            results = model.zero_shot(images, labels, top_k=args.top_k)
        else:
            results = model.classify(images, top_k=args.top_k)
        sel = model.selection
        describe = model.describe()
    failed = sum(isinstance(r, Failure) for r in results)
    if args.json:
        out = {"artifact": args.artifact, "model": describe["model"], "weights": describe["weights"],
               "selection": sel.to_dict(), "results": []}
        for img, r in zip(images, results):
            if isinstance(r, Failure):
                out["results"].append({"image": img, "error": r.error})
            else:
                out["results"].append({"image": img, "top": [{"label": l, "probability": p} for l, p in r]})
        print(json.dumps(out, indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape

        con = Console()
        err = Console(stderr=True)
        note = " (random weights: labels are meaningless)" if describe["weights"] == "random" else ""
        # one header line: engine, precision and why in brief; the whole reason under --verbose
        reason = sel.reason if getattr(args, "verbose", False) else (
            "measured fastest here (tuning.json)" if getattr(sel, "tuned", False)
            else "default pick, not measured here (-v says why)")
        con.print(f"[dim]{escape(describe['model'])} on {sel.provider}/{escape(sel.device)}/{sel.precision}: "
                  f"{escape(reason)}{note}[/]")
        for img, r in zip(images, results):
            if isinstance(r, Failure):
                err.print(f"[red]error[/] {escape(img)}: {escape(r.error)}")
                continue
            con.print(f"[bold]{escape(img)}[/]")
            for label, p in r:
                con.print(f"  {p:7.2%}  {escape(label)}")
    if failed:
        print(f"{failed} of {len(images)} image(s) failed", file=sys.stderr)
    return EXIT_IMAGES_FAILED if failed else 0
