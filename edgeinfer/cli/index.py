"""`edgeinfer index DIR [DIR ...] --library PATH`: the library scan without a server."""
from __future__ import annotations

import json


def add_parser(p) -> None:
    p.add_argument("folders", metavar="DIR", nargs="+", help="photo folders to index (recursively)")
    p.add_argument("--library", default=None,
                   help="library store file (default ~/.local/share/edgeinfer/library.db)")
    p.add_argument("--model", action="append", default=[], metavar="ARTIFACT",
                   help="artifact to run (repeatable; default: the artifacts this library was "
                        "indexed with before)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (this process, default) or ray (Ray Data, for a cluster)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --engine ray: a running cluster (ray start --head); default: a local Ray")
    p.add_argument("--workers", type=int, default=None,
                   help="with --engine ray: actors in the pool (default: the cluster's CPUs)")
    p.add_argument("--ship-artifacts", action="store_true",
                   help="with --engine ray: send the artifacts through Ray's object store instead of "
                        "reading them from the same path on every node")
    p.add_argument("--batch-size", type=int, default=16, help="photos per batch and store transaction")
    p.add_argument("--top-k", type=int, default=5, help="tags stored per photo and classifier")
    p.add_argument("--provider", default="auto", help="auto | cpu | cuda | tensorrt | openvino")
    p.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | int8")
    p.add_argument("--threads", type=int, default=None, help="inference threads")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")


def run(args) -> int:
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from edgeinfer.errors import InvalidOptionError
    from edgeinfer.library import LibraryModel, Store, run_scan
    from edgeinfer.library.store import default_library_path

    lib = Path(args.library) if args.library else default_library_path()
    with Store(lib) as store:
        artifacts = list(args.model)
        if not artifacts:
            artifacts = [m["artifact"] for m in store.models() if m.get("artifact")]
            artifacts = [a for a in dict.fromkeys(artifacts) if Path(a, "manifest.json").exists()]
        if not artifacts:
            raise InvalidOptionError(f"no models: give --model ARTIFACT (the library {lib} has none "
                                     f"recorded yet)")
        models = [LibraryModel.from_artifact(a, provider=args.provider, precision=args.precision,
                                             threads=args.threads) for a in artifacts]
        try:
            with Progress(TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[rate]:.1f} photos/s, {task.fields[failed]} unreadable"),
                          TimeRemainingColumn(), disable=args.json) as bar:
                task = bar.add_task("scan", total=None, rate=0.0, failed=0)

                def progress(s):
                    bar.update(task, total=s.total, completed=s.done, rate=s.photos_per_s, failed=s.failed)

                stats = run_scan(store, args.folders, models, batch_size=args.batch_size, top_k=args.top_k,
                             progress=progress, engine=args.engine,
                             engine_options=_engine_options(args))
        finally:
            for m in models:
                m.close()
        d = stats.to_dict()
        counts = store.counts()
    if args.json:
        print(json.dumps({"library": str(lib), **d, "library_photos": counts["photos"]}))
    else:
        print(f"{d['done']} photos indexed ({d['failed']} unreadable), {d['skipped']} unchanged, "
              f"{d['deleted']} removed in {d['elapsed_s']:.1f} s; the library {lib} holds "
              f"{counts['photos']} photos with models: {', '.join(m.name for m in models)}")
    return 0


def _engine_options(args) -> dict | None:
    if args.engine != "ray":
        if args.ray_address or args.workers or args.ship_artifacts:
            from edgeinfer.errors import InvalidOptionError

            raise InvalidOptionError("--ray-address, --workers and --ship-artifacts need --engine ray")
        return None
    return {"address": args.ray_address, "workers": args.workers, "ship_artifacts": args.ship_artifacts,
            "threads": args.threads}
