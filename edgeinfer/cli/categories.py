"""`edgeinfer categories build|tag|report`: few-shot user categories on an embedding artifact
(CLIP) from a few example photos each, without the service (the service has /v1/categories)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build a categories file from example photos")
    b.add_argument("artifact", help="embedding artifact (CLIP) directory")
    b.add_argument("--category", action="append", required=True, metavar="NAME=PATH[,PATH...]",
                   help="a category and its example photos (files or folders; at least 3 photos); repeat")
    b.add_argument("--negatives", default=None, metavar="DIR",
                   help="photos of none of the categories: calibrates the 'none of these' threshold "
                        "and gives the false-positive rate")
    b.add_argument("--out", required=True, metavar="FILE", help="categories file to write (JSON)")
    b.add_argument("--precision", default="auto")
    b.add_argument("--provider", default="auto")
    t = sub.add_parser("tag", help="tag photos with the categories of a file")
    t.add_argument("file", help="categories file")
    t.add_argument("artifact", help="the embedding artifact the file was built with")
    t.add_argument("images", nargs="+", help="photos or folders")
    t.add_argument("--precision", default="auto")
    t.add_argument("--provider", default="auto")
    t.add_argument("--json", action="store_true")
    r = sub.add_parser("report", help="leave-one-out accuracy and false-positive rate of a file")
    r.add_argument("file")


def _photos(spec: str) -> list[Path]:
    from edgeinfer.runtime.preprocess import list_images

    out: list[Path] = []
    for part in spec.split(","):
        p = Path(part.strip()).expanduser()
        out += list_images(p) if p.is_dir() else [p]
    return out


def run(args) -> int:
    import edgeinfer
    from edgeinfer.categories import CategorySet
    from edgeinfer.errors import InvalidOptionError

    if args.action == "report":
        print(json.dumps(CategorySet.load(args.file).evaluate(), indent=2))
        return 0
    m = edgeinfer.load(args.artifact, precision=args.precision, provider=args.provider)
    if args.action == "build":
        examples = {}
        for item in args.category:
            name, sep, spec = item.partition("=")
            if not sep or not name.strip() or not spec.strip():
                raise InvalidOptionError(f"--category {item!r}: expected NAME=PATH[,PATH...]")
            examples[name.strip()] = _photos(spec)
        neg = _photos(args.negatives) if args.negatives else None
        cs = CategorySet.from_model(m, examples, negatives=neg)
        cs.save(args.out)
        rep = cs.evaluate()
        for c in cs.categories.values():
            print(f"{c.name}: {len(c.examples)} examples, threshold {c.threshold:.4f}"
                  + ("" if c.calibrated else " (uncalibrated: give --negatives)"))
        fpr = rep["false_positive_rate"]
        print(f"leave-one-out accuracy {rep['loo_accuracy']:.1%}; false-positive rate "
              + (f"{fpr:.1%} on {rep['negatives']} negatives" if fpr is not None else "not measured (no --negatives)"))
        if m.artifact.random_weights:
            print("note: the artifact has RANDOM weights; these numbers only check the pipeline",
                  file=sys.stderr)
        print(f"wrote {args.out}")
        return 0
    cs = CategorySet.load(args.file, model=m)
    paths = [p for spec in args.images for p in _photos(spec)]
    res = cs.tag(m, paths)
    if args.json:
        print(json.dumps([{"image": str(p), "categories": [{"name": n, "score": s} for n, s in r]}
                          if isinstance(r, list) else {"image": str(p), "error": r.error}
                          for p, r in zip(paths, res)], indent=2))
        return 0
    for p, r in zip(paths, res):
        if not isinstance(r, list):
            print(f"{p}: error: {r.error}")
        else:
            print(f"{p}: " + (", ".join(f"{n} ({s:.3f})" for n, s in r) or "none of these"))
    return 0
