"""`edgeinfer compare`: models side by side on one labelled data set (library:
``edgeinfer.evaluate.compare``; outputs: ``edgeinfer.evaluate.compare_report``)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def add_parser(p) -> None:
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT_DIR",
                   help="artifact directories; DIR@int8 / DIR@fp16 / DIR@fp32 pins one precision "
                        "(the same model at two precisions side by side)")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="labelled data: an ImageFolder (DIR/<class>/<image>), a folder of "
                        "<synset>_<name> photos, CIFAR-10 python batches, Fashion-MNIST idx files, "
                        "or a CSV pixel table (label,pixel1,...)")
    p.add_argument("--n", type=int, default=200, help="images drawn from the data set (default 200; "
                                                       "0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument("--provider", default="auto", help="engine for every model (default auto)")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | int8 (default auto)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default compare-out)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-RSS measurement (one fresh process per model)")
    p.add_argument("--json", action="store_true", help="print results.json to stdout at the end")


def run(args) -> int:
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from edgeinfer.evaluate.compare import compare
    from edgeinfer.evaluate.compare_report import console_tables, public, write_all

    console = Console(stderr=args.json, width=80)
    out = Path(args.out or "compare-out")
    command = "edgeinfer compare " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 2 and sys.argv[1] == "compare" else None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as prog:
        tasks: dict[int, int] = {}

        def progress(name, mi, models, done, total):
            if mi not in tasks:
                tasks[mi] = prog.add_task(f"[{mi + 1}/{models}] {name[:28]}", total=max(total, 1))
            prog.update(tasks[mi], completed=done)

        res = compare(args.artifacts, args.data, n=args.n or None, seed=args.seed,
                      provider=args.provider, precision=args.precision,
                      measure_memory=not args.no_memory, progress=progress, command=command)
    files = write_all(res, out)
    d = res["data"]
    console.print(f"{d['n']} of {d['size']} images ({d['source']}, seed {d['seed']}), "
                  f"{len(d['classes'])} classes")
    for t in console_tables(res):
        console.print(t)
    for m in res["models"]:
        if m.get("status") != "ok":
            console.print(f"[yellow]{m['name']}[/]: {m.get('reason', m.get('status'))}")
    if res.get("random_weights"):
        console.print("* [bold red]RANDOM WEIGHTS[/] in " + ", ".join(
            m["name"] for m in res["models"] if m.get("random_weights")) +
            ": their accuracy is chance level by construction")
    console.print(f"report: {files['html']}")
    if args.json:
        print(json.dumps(public(res), indent=2, default=str))
    return 0 if any(m.get("status") == "ok" for m in res["models"]) else 1
