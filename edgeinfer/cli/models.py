"""`edgeinfer models`: list the registered recipes."""
from __future__ import annotations

import json


def add_parser(p) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from edgeinfer.export.recipes import list_recipes

    recipes = list_recipes()
    if args.json:
        print(json.dumps([{"name": r.name, "family": r.family, "source": r.source,
                           "source_name": r.source_name, "kind": r.kind,
                           "input_size": r.input_size, "description": r.description}
                          for r in recipes], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="edgeinfer models (also: timm:<name>, torchvision:<name>)")
    for col in ("name", "family", "source", "input", "description"):
        t.add_column(col)
    for r in recipes:
        t.add_row(r.name, r.family, f"{r.source}:{r.source_name}",
                  "x".join(map(str, r.input_size[1:])) if r.input_size else "?", r.description)
    Console().print(t)
    return 0
