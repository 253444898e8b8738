"""`edgeinfer inspect`: per-layer op types, output shapes, parameters and MACs of an artifact
(library: ``edgeinfer.evaluate.layers``)."""
from __future__ import annotations


def add_parser(p) -> None:
    p.add_argument("artifact", metavar="ARTIFACT_DIR", help="artifact directory")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                   help="file to inspect: counts always come from the FP32 graph; for fp16/int8 "
                        "the nodes that stayed in float are listed (default fp32)")
    p.add_argument("--nodes", action="store_true", help="one row per ONNX node instead of per layer")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")


def _h(n: int) -> str:
    for s, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= d:
            return f"{n / d:.2f}{s}"
    return str(n)


def run(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from edgeinfer.evaluate.layers import inspect_artifact

    r = inspect_artifact(args.artifact, precision=args.precision)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    console = Console(width=80) if not Console().is_terminal else Console()
    t = Table(title=f"{r['model']} ({r['weights']} weights), input {r['input_size']}, per "
                    f"{'node' if args.nodes else 'layer'}", pad_edge=False)
    t.add_column("layer" if not args.nodes else "node", overflow="fold")
    t.add_column("ops", overflow="fold")
    t.add_column("output", no_wrap=True)
    t.add_column("params", justify="right", no_wrap=True)
    t.add_column("MACs", justify="right", no_wrap=True)
    rows = r["nodes"] if args.nodes else r["layers"]
    for x in rows:
        ops = x["op"] if args.nodes else "+".join(x["ops"])
        shape = "x".join(str(v) for v in (x["output_shape"] or [])[1:]) or "-"
        t.add_row(x["name"] if args.nodes else x["module"], ops, shape, _h(x["params"]), _h(x["macs"]))
    tot = r["totals"]
    t.add_section()
    t.add_row("total", f"{tot['nodes']} nodes", "", _h(tot["params"]), _h(tot["macs"]))
    console.print(t)
    console.print(f"counted on the FP32 graph at batch 1 with {r['counter']}; "
                  f"{r['precision']} file {r['file']}: {r['size_bytes'] / 2**20:.1f} MB")
    if "float_nodes" in r:
        fl = r["float_nodes"]
        if not fl:
            console.print(f"{r['precision']}: every compute node runs in {r['precision']}")
        else:
            ops = ", ".join(f"{k} x{v}" for k, v in r["float_by_op"].items())
            console.print(f"{r['precision']}: {len(fl)} compute nodes stayed in float32 ({ops}):")
            for f in fl[:40]:
                console.print(f"  {f['module']}: {f['op']} ({f['name']})")
            if len(fl) > 40:
                console.print(f"  ... {len(fl) - 40} more (--json lists all)")
    return 0
