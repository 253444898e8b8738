"""edgeinfer: export image models to ONNX (FP32/FP16/INT8), run them on the fastest engine here, and measure accuracy vs latency vs memory.

Start with `edgeinfer models`, then `edgeinfer export --model NAME`, `edgeinfer bench ARTIFACT`
and `edgeinfer classify ARTIFACT PHOTO...`; `edgeinfer serve ARTIFACT...` runs the photo service.
"""
# One module per verb under edgeinfer.cli, each with ``add_parser`` and ``run``; the CLI only
# parses arguments and calls the library's public functions.
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
    "compare": "Compare models side by side on a labelled data set",
    "inspect": "Per-layer op types, shapes, parameters and MACs of an artifact",
    "finetune": "Fine-tune a model on your classes (head / partial / full)",
    "categories": "Few-shot user categories from a few example photos (build / tag / report)",
    "index": "Index photo folders into a library (local or Ray Data)",
    "serve": "Run the photo service (HTTP API + web page)",
    "native-build": "Build the native runner edgeinfer-run (C++, OpenVINO)",
}


def build_parser() -> argparse.ArgumentParser:
    from edgeinfer import __version__

    p = argparse.ArgumentParser(prog="edgeinfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    for verb, help_ in VERBS.items():
        try:
            modname = "edgeinfer.cli." + verb.replace("-", "_")
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            continue
        # "resolve": a verb may define its own --verbose (same dest) over the common one
        sp = sub.add_parser(verb, help=help_, description=help_, conflict_handler="resolve")
        sp.add_argument("-v", "--verbose", action="store_true",
                        help="show progress details and the libraries' own warnings and logs")
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
    from edgeinfer.cli.output import quiet_libraries

    quiet_libraries(verbose=getattr(args, "verbose", False))
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
