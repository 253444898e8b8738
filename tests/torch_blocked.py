"""The one torch-blocked import check: import modules in a fresh interpreter where torch, timm
and open_clip cannot be imported, and fail if any of them (or ``edgeinfer.export``) was needed
or loaded."""
from __future__ import annotations

import subprocess
import sys

BLOCKED = ("torch", "torchvision", "timm", "open_clip")

_PROLOGUE = r"""
import importlib, sys
_blocked = {blocked!r}

class _Block:
    # a finder that refuses the heavy libraries: importing one raises ImportError
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _blocked:
            raise ImportError(f"{{name}} is blocked in this check")
        return None

sys.meta_path.insert(0, _Block())
"""
_EPILOGUE = r"""
_forbidden = _blocked + {forbidden!r}
_loaded = sorted(m for m in sys.modules
                 if any(m == f or m.startswith(f + ".") for f in _forbidden))
if _loaded:
    raise SystemExit(f"loaded {{_loaded}}")
"""


def run_without_torch(code: str, *, forbidden: tuple[str, ...] = ("edgeinfer.export",),
                      env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where torch & co cannot be imported; AssertionError
    (with the child's last error line) when it fails or loaded a forbidden module."""
    src = (_PROLOGUE.format(blocked=BLOCKED) + code + "\n"
           + _EPILOGUE.format(forbidden=tuple(forbidden)))
    r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, env=env,
                       timeout=timeout)
    assert r.returncode == 0, (r.stderr or r.stdout or "failed").strip().splitlines()[-1]
    return r


def assert_imports_without_torch(*modules: str, forbidden: tuple[str, ...] = ("edgeinfer.export",)) -> None:
    """Raise AssertionError naming what went wrong when ``modules`` need or load torch & co."""
    run_without_torch("\n".join(f"importlib.import_module({m!r})" for m in modules),
                      forbidden=forbidden)
