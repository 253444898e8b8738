"""`edgeinfer models`: the model recipes you can export, by family."""
from __future__ import annotations

from .output import add_json_flag, console, print_json


def add_parser(p) -> None:
    add_json_flag(p)


def run(args) -> int:
    from edgeinfer.catalog import list_recipes

    recipes = list_recipes()
    if args.json:
        print_json([{"name": r.name, "family": r.family, "source": r.source,
                     "source_name": r.source_name, "kind": r.kind,
                     "input_size": r.input_size, "description": r.description}
                    for r in recipes])
        return 0
    from rich.markup import escape
    from rich.table import Table

    con = console()
    # names are what the user types: never cut them; the description wraps instead
    t = Table(box=None, show_header=True, header_style="bold", pad_edge=False,
              title="Models for `edgeinfer export --model NAME`", title_justify="left")
    t.add_column("name", no_wrap=True, style="bold")
    t.add_column("input", no_wrap=True)
    t.add_column("description", overflow="fold", ratio=1)
    family = None
    for r in recipes:
        if r.family != family:
            family = r.family
            t.add_row(f"[dim]{escape(family)}[/]", "", "")
        size = "x".join(map(str, r.input_size[1:])) if r.input_size else "?"
        t.add_row(f"  {escape(r.name)}", size,
                  f"{escape(r.description)} [dim]({escape(r.source)}:{escape(r.source_name)})[/]")
    con.print(t)
    con.print("Any other timm or torchvision classifier: --model timm:NAME or torchvision:NAME")
    return 0
