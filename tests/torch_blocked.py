"""The one torch-blocked import check: import modules in a fresh interpreter where torch, timm
and open_clip cannot be imported, and fail if any of them (or ``edgeinfer.export``) was needed
or loaded."""
from __future__ import annotations

import subprocess
import sys

BLOCKED = ("torch", "torchvision", "timm", "open_clip")

_CHILD = r"""
import importlib, sys
blocked = {blocked!r}
forbidden = blocked + {forbidden!r}

class Block:
    # a finder that refuses the heavy libraries: importing one raises ImportError
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{{name}} is blocked in this check")
        return None

sys.meta_path.insert(0, Block())
for m in {modules!r}:
    importlib.import_module(m)
loaded = sorted(m for m in sys.modules
                if any(m == f or m.startswith(f + ".") for f in forbidden))
if loaded:
    raise SystemExit(f"importing {modules!r} loaded {{loaded}}")
"""


def assert_imports_without_torch(*modules: str, forbidden: tuple[str, ...] = ("edgeinfer.export",)) -> None:
    """Raise AssertionError naming what went wrong when ``modules`` need or load torch & co."""
    code = _CHILD.format(blocked=BLOCKED, forbidden=tuple(forbidden), modules=list(modules))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, (r.stderr or r.stdout).strip().splitlines()[-1]
