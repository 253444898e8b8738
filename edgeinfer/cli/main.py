"""`edgeinfer` command line: one module per verb, each with ``add_parser`` and ``run``.

The CLI is thin: it parses arguments and calls the library's public functions.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# verb -> module under edgeinfer.cli
VERBS = {
    "models": "Recipes you can export",
    "export": "Export a model to an ONNX artifact (FP32, optionally FP16/INT8)",
    "quantize": "Add INT8/FP16 files to an existing artifact",
    "providers": "List execution engines and whether they are usable here",
    "classify": "Classify images with an artifact",
    "bench": "Benchmark accuracy vs latency vs memory across engines and precisions",
}


def build_parser() -> argparse.ArgumentParser:
    from edgeinfer import __version__

    p = argparse.ArgumentParser(prog="edgeinfer", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    for verb, help_ in VERBS.items():
        try:
            mod = importlib.import_module(f"edgeinfer.cli.{verb}")
        except ModuleNotFoundError as e:
            if e.name != f"edgeinfer.cli.{verb}":
                raise
            continue
        sp = sub.add_parser(verb, help=help_, description=help_)
        mod.add_parser(sp)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    from edgeinfer.errors import EdgeInferError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except EdgeInferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left behind.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
