"""Engine cache directories (TensorRT engines + timing cache, OpenVINO model cache).

One directory per (engine, model file hash, engine version, device), under
``$EDGEINFER_CACHE`` or ``~/.cache/edgeinfer``. A new engine version or a changed model gets a
new directory, so a stale engine is never loaded: it is rebuilt.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def cache_root() -> Path:
    """``$EDGEINFER_CACHE`` or ``~/.cache/edgeinfer`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("EDGEINFER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgeinfer"


def sha256_file(path: str | os.PathLike, *, memo: bool = True) -> str:
    """sha256 of a file: the one implementation (artifacts, engine caches, tuning keys).

    ``memo``: reuse the digest of the same (path, size, mtime) in this process, so repeated
    loads don't re-hash a large model. An integrity check passes ``memo=False``: file systems
    stamp mtimes coarsely, so a same-size rewrite within one tick would keep its old digest.
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if not memo or key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


model_sha256 = sha256_file  # the name the engines use for the engine-cache key


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def engine_cache_dir(*, engine: str, model_sha: str, engine_version: str, device: str,
                     root: str | os.PathLike | None = None, create: bool = True) -> Path:
    """``<root>/<engine>/<sha[:16]>-<engine_version>-<device>`` (pure apart from mkdir)."""
    base = Path(root) if root is not None else cache_root()
    d = base / _slug(engine) / f"{model_sha[:16]}-{_slug(engine_version)}-{_slug(device)}"
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d
