"""`edgeinfer providers`: every engine and device, usable or not, and why."""
from __future__ import annotations

from .output import add_json_flag, console, print_json


def add_parser(p) -> None:
    add_json_flag(p)


def run(args) -> int:
    from edgeinfer.backends.providers import detect
    from edgeinfer.errors import EdgeInferError
    from edgeinfer.runtime.selection import select

    statuses = detect()
    try:
        auto = select("auto", statuses=statuses)
        auto_d = auto.to_dict()
    except EdgeInferError as e:  # nothing usable: still print the engines
        auto, auto_d = None, {"error": str(e)}
    if args.json:
        print_json({"providers": [s.to_dict() for s in statuses], "auto": auto_d})
        return 0
    from rich.markup import escape
    from rich.padding import Padding

    con = console()

    def indented(text: str, level: int = 1):
        return Padding(text, (0, 0, 0, 4 * level))

    # stacked, not a five-column table: the reasons are sentences and need the width
    for s in statuses:
        state = "[green]available[/]" if s.available else "[red]not available[/]"
        engine = escape(f"{s.engine} {s.version or ''}".strip())
        con.print(f"[bold]{s.name}[/]: {state} [dim]({engine})[/]")
        for d in s.device_status or []:
            why = d.reason if (d.reason and s.available) else s.reason
            con.print(indented(f"{escape(d.device)}: {'usable' if d.available else 'not usable'}"
                               f" [dim]- {escape(why)}[/]"))
        if not s.available:
            con.print(indented(f"to enable: {escape(s.install)}"))
    if auto is not None:
        con.print(f"auto picks [bold]{auto.provider}[/] on {escape(auto.device)}: "
                  f"{escape(auto.reason.split('; precision:')[0].removeprefix('provider: '))}")
    else:
        con.print(f"auto: {escape(auto_d['error'])}")
    return 0
