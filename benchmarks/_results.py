"""What every benchmark script writes the same way: the command line that reproduces it, and
its results as ``OUT.md`` (people) + ``OUT.json`` (scripts). Imported by the scripts in this
folder (``python benchmarks/NAME.py`` puts the folder on sys.path)."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path


def command_line(script: str, argv: list[str] | None = None) -> str:
    """``python benchmarks/NAME.py ARGS`` as it was run (paths relative to the current folder)."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(script), *(argv or sys.argv[1:])])


def write_results(out: str | os.PathLike, lines: list[str], payload: dict) -> Path:
    """``lines`` -> OUT (markdown), ``payload`` -> OUT with a .json suffix; prints the markdown."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    print("\n".join(lines))
    return out
