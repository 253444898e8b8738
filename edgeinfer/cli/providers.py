"""`edgeinfer providers`: every engine and device, available or not, and why."""
from __future__ import annotations

import json


def add_parser(p) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from edgeinfer.backends.providers import detect, select

    statuses = detect()
    try:
        auto = select("auto", statuses=statuses)
        auto_d = auto.to_dict()
    except Exception as e:  # nothing usable: still print the table
        auto, auto_d = None, {"error": str(e)}
    if args.json:
        print(json.dumps({"providers": [s.to_dict() for s in statuses], "auto": auto_d}, indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="edgeinfer providers")
    for col in ("provider", "engine", "device", "available", "reason"):
        t.add_column(col, overflow="fold")
    for s in statuses:
        engine = escape(f"{s.engine} {s.version or ''}".strip())
        rows = s.device_status or []
        if not rows:
            t.add_row(s.name, engine, "-", "[green]yes[/]" if s.available else "[red]no[/]",
                      escape(s.reason))
        for d in rows:
            why = d.reason if (d.reason and s.available) else s.reason
            t.add_row(s.name, engine, escape(d.device),
                      "[green]yes[/]" if d.available else "[red]no[/]", escape(why))
    con = Console()
    con.print(t)
    missing = [s for s in statuses if not s.available]
    for s in missing:
        con.print(f"to enable {s.name}: {escape(s.install)}")
    if auto is not None:
        con.print(f"auto picks: [bold]{auto.provider}[/] on {escape(auto.device)}: "
                  f"{escape(auto.reason.split('; precision:')[0].removeprefix('provider: '))}")
    else:
        con.print(f"auto: {escape(auto_d['error'])}")
    return 0
