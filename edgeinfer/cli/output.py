"""What every verb shares for output: ``--json`` and ``--verbose``, the console, quiet libraries.

A verb adds ``--json`` with ``add_json_flag`` and prints with ``print_json``; human output goes
through ``console()``, whose tables wrap (never truncate) at the terminal width, 80 columns
when it is not a terminal. ``quiet_libraries`` keeps third-party chatter (open_clip's root-logger
warnings, library warnings with their source lines, ONNX Runtime / OpenVINO log lines) out of
normal output; ``--verbose`` shows it.
"""
from __future__ import annotations

import json
import sys
from typing import Any


def add_json_flag(p) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout (for scripts); progress goes to stderr")


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def console(*, stderr: bool = False):
    """A rich console: the terminal's width, or 80 columns when output is a file or a pipe, so
    that logs read the same as the terminal."""
    from rich.console import Console

    con = Console(stderr=stderr)
    return con if con.is_terminal else Console(stderr=stderr, width=80)


def _short_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # one line: what and whose, without the source line of the library that warned
    print(f"warning: {message}", file=file or sys.stderr)


def quiet_libraries(*, verbose: bool = False) -> None:
    """Hide third-party noise unless ``verbose``; edgeinfer's own warnings stay, one line each."""
    import logging
    import warnings

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    # open_clip, timm, torch and nncf log warnings to their loggers (some to the root logger)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("nncf", "torch", "timm", "open_clip", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.showwarning = _short_warning
    warnings.filterwarnings("ignore")  # third-party DeprecationWarning/UserWarning floods
    warnings.filterwarnings("default", module=r"edgeinfer(\..*)?$")
