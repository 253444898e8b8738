"""The artifact directory: the contract between export and runtime (DESIGN.md).

Layout::

    <dir>/manifest.json
    <dir>/model.fp32.onnx          image tower / classifier, one file per precision
    <dir>/model.int8.onnx ...
    <dir>/text.fp32.onnx ...       CLIP text tower (manifest["text"]["files"])

The manifest is plain JSON (see ``new_manifest`` for the keys). All writes are atomic: files are
written under a temporary name in the same directory and renamed into place, and a new artifact is
built in a staging directory that replaces the target only once everything succeeded, so a failed
or interrupted export leaves no half-written artifact.

An artifact directory is untrusted input (it may come from anywhere, and a service loads it):
``read_manifest`` validates the whole manifest once against one schema (``validate_manifest``),
so every bad manifest is one ``ArtifactError`` naming the field, and nothing downstream allocates
from an unchecked number. Every file the manifest names must be a regular file inside the
directory (no ``..``, absolute paths, symlink escapes or devices), and every file the runtime
reads is checked against its sha256 before use. A staging directory (an export in progress, or
the leftovers of a killed one) carries a marker and a reserved name, and is never loadable.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from ..errors import ArtifactError, InvalidOptionError

MANIFEST_NAME = "manifest.json"
FORMAT = "edgeinfer-artifact"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
TOWERS = ("image", "text")
MODEL_KINDS = ("classifier", "clip")
OUTPUT_KINDS = ("logits", "embedding")
WEIGHT_ORIGINS = ("pretrained", "file", "random")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
TOKENIZER_TYPES = ("clip_bpe",)

#: marker file inside a staging directory: ``load`` refuses any directory that has it
STAGING_MARKER = ".edgeinfer-staging"
#: names the pipeline gives its staging / replaced directories (``.NAME.staging-XXX``,
#: ``.NAME.old-PID``): refused by name too, so a kill between removing the marker and the final
#: rename still leaves nothing loadable
_STAGING_NAME = re.compile(r"^\..+\.(staging|old)-[^/]+$")

# Bounds: generous for every real model, small enough that no number in a manifest can make the
# runtime allocate gigabytes (an input_size of 60000 or a resize_size of 1e6 did).
MAX_MANIFEST_BYTES = 32 << 20
MAX_INPUT_SIDE = 2048
MAX_RESIZE_SIZE = 4096
MAX_OUTPUT_DIM = 1 << 20
MAX_LABEL_CHARS = 1000
MAX_CONTEXT_LENGTH = 4096
MAX_NAME_CHARS = 255
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: str | os.PathLike) -> str:
    # the one implementation lives with the engine caches; here it checks integrity: no memo
    from ..backends.cache import sha256_file as _sha256_file

    return _sha256_file(path, memo=False)


def onnx_file_name(precision: str, tower: str = "image") -> str:
    if precision not in PRECISIONS:
        raise InvalidOptionError.choice("precision", precision, PRECISIONS)
    return f"{'model' if tower == 'image' else tower}.{precision}.onnx"


# ---------------------------------------------------------------- ONNX external data
# An ONNX file may keep tensors in other files (TensorProto.external_data: key "location"). ONNX
# Runtime opens those relative to the model, so a crafted model could make it read any file;
# find every location without needing the onnx package (the runtime is onnx-free): the protobuf
# encoding of StringStringEntryProto{key: "location", value: ...} is this byte string, then a
# varint length and the value.
_LOCATION_KEY = b"\x0a\x08location\x12"


def _scan_locations(buf: bytes, found: set[str]) -> int:
    """Add the locations in ``buf``; return how many trailing bytes may hold a cut-off one."""
    i = 0
    while True:
        j = buf.find(_LOCATION_KEY, i)
        if j < 0:
            return min(len(buf), len(_LOCATION_KEY) + 4 + 4096)
        k = j + len(_LOCATION_KEY)
        n, shift = 0, 0
        while k < len(buf) and shift < 35:
            b = buf[k]
            n |= (b & 0x7F) << shift
            k += 1
            shift += 7
            if not b & 0x80:
                break
        else:
            return len(buf) - j
        if k + n > len(buf):
            return len(buf) - j
        found.add(buf[k:k + n].decode("utf-8", "replace"))
        i = k + n


def hash_and_scan(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[str, list[str]]:
    """(sha256, external-data locations) of an ONNX file, in one read."""
    h = hashlib.sha256()
    found: set[str] = set()
    tail = b""
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            buf = tail + b
            keep = _scan_locations(buf, found)
            tail = buf[len(buf) - keep:] if keep else b""
    return h.hexdigest(), sorted(found)


def external_data_locations(path: str | os.PathLike) -> list[str]:
    return hash_and_scan(path)[1]


# ---------------------------------------------------------------- atomic writes
_UMASK: int | None = None


def usual_mode(*, directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give (umask applied). mkstemp/mkdtemp create
    0600/0700 entries, which other users and services could not read."""
    global _UMASK
    if _UMASK is None:  # os.umask can only be read by setting it; do it once
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return (0o777 if directory else 0o666) & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, usual_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def temp_path_in(directory: str | os.PathLike, name: str) -> Iterator[Path]:
    """A temporary file path in ``directory`` (same file system, so the final rename is atomic).

    The caller writes to it and then moves it into place with ``os.replace``; if the block raises,
    the temporary file is removed.
    """
    directory = Path(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path``'s parent if needed and check we can write there; clear error otherwise."""
    path = Path(path).absolute()
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create output directory {parent}: {e.strerror}. "
                            f"Choose another location with --out DIR.") from e
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ArtifactError(f"output location {path} is not writable. Choose another with --out DIR.")
    return path


# ---------------------------------------------------------------- staging
# Staging directories this process is building: only their builder may read them (quantize runs
# on the stage during an export); for everyone else a staging directory does not load.
_BUILDING: set[str] = set()
_BUILDING_LOCK = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_owner(d: Path) -> int | None:
    """The pid that created staging dir ``d`` (from its marker, or the ``.old-PID`` name)."""
    m = re.search(r"\.old-(\d+)$", d.name)
    if m:
        return int(m.group(1))
    with contextlib.suppress(OSError, ValueError):
        return int((d / STAGING_MARKER).read_text().split()[0])
    return None


def remove_stale_staging(final_dir: str | os.PathLike) -> list[Path]:
    """Delete leftovers of interrupted exports of ``final_dir`` (``.NAME.staging-*`` and
    ``.NAME.old-*`` next to it) whose process is gone. Returns what was removed."""
    final_dir = Path(final_dir).absolute()
    removed = []
    if not final_dir.parent.is_dir():
        return removed
    prefixes = (f".{final_dir.name}.staging-", f".{final_dir.name}.old-")
    for p in final_dir.parent.iterdir():
        if not p.name.startswith(prefixes) or p.is_symlink() or not p.is_dir():
            continue
        owner = _staging_owner(p)
        if owner is not None and owner != os.getpid() and _pid_alive(owner):
            continue  # another export of the same target is running right now
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def staged_directory(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a staging place, then swap it into ``final_dir`` atomically.

    On any exception (KeyboardInterrupt included) the staging directory is deleted and
    ``final_dir`` is left exactly as it was. The staging directory holds ``STAGING_MARKER`` (and
    has a reserved name) until the swap, so a SIGKILL at any moment leaves nothing loadable next
    to ``final_dir``; the next export of the same target removes such leftovers.
    """
    final_dir = check_writable_dir(final_dir)
    remove_stale_staging(final_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.staging-", dir=final_dir.parent))
    (stage / STAGING_MARKER).write_text(f"{os.getpid()} {final_dir}\n")
    os.chmod(stage, usual_mode(directory=True))
    key = str(stage.resolve())
    with _BUILDING_LOCK:
        _BUILDING.add(key)
    try:
        yield stage
        (stage / STAGING_MARKER).unlink()
        if final_dir.exists() and not final_dir.is_symlink() and final_dir.is_dir() \
                and _exchange(stage, final_dir):
            shutil.rmtree(stage, ignore_errors=True)  # now holds the previous artifact
        else:
            old = None
            if final_dir.exists() or final_dir.is_symlink():
                old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
                os.replace(final_dir, old)
            os.replace(stage, final_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        with _BUILDING_LOCK:
            _BUILDING.discard(key)


def is_staging_dir(d: str | os.PathLike) -> bool:
    d = Path(d)
    return (d / STAGING_MARKER).exists() or bool(_STAGING_NAME.match(d.name))


# ---------------------------------------------------------------- manifest
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def new_manifest(*, name: str, source: str, source_name: str, family: str, kind: str,
                 weights: dict, preprocess: dict, output: dict, labels: list[str] | None,
                 opset: int, recipe: dict | None = None) -> dict:
    """A manifest with no files yet. Keys:

    - model: name, source (timm/torchvision/open_clip), source_name, family, kind
      (``classifier`` or ``clip``)
    - weights: origin (``pretrained`` | ``file`` | ``random``) plus tag / path+sha256 / seed
    - preprocess: input_size [C,H,W], resize_size (shorter side before the crop), crop
      ("center"), interpolation, mean, std, channel_order ("RGB"), layout ("NCHW")
    - output: kind (``logits`` | ``embedding``), dim
    - labels: class names, or None
    - files: precision -> file entry (see ``file_entry``)
    - text: CLIP only: text tower files, tokenizer, label sets (added by the CLIP exporter)
    """
    from .. import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _now(),
        "edgeinfer_version": __version__,
        "model": {"name": name, "source": source, "source_name": source_name,
                  "family": family, "kind": kind},
        "weights": weights,
        "preprocess": preprocess,
        "output": output,
        "labels": labels,
        "opset": opset,
        "recipe": recipe or {},
        "files": {},
    }


def file_entry(path: str | os.PathLike, *, precision: str, inputs: list[dict] | None = None,
               outputs: list[dict] | None = None, **extra: Any) -> dict:
    """Manifest entry for one ONNX file. ``extra`` holds e.g. parity / quantization / fidelity.

    ONNX external-data files next to it are recorded with their sha256 (``external_data``), so
    the runtime verifies every byte it reads."""
    path = Path(path)
    digest, locations = hash_and_scan(path)
    entry = {"file": path.name, "precision": precision, "sha256": digest,
             "size_bytes": path.stat().st_size, "created": _now()}
    if locations:
        entry["external_data"] = [{"file": loc, "sha256": sha256_file(path.parent / loc)}
                                  for loc in locations]
    if inputs is not None:
        entry["inputs"] = inputs
    if outputs is not None:
        entry["outputs"] = outputs
    entry.update(extra)
    return entry


# ---------------------------------------------------------------- schema
class _Schema:
    """Checks one manifest; every failure is an ArtifactError naming the field (dotted path)
    and what was expected."""

    def __init__(self, where: Path, root: Path | None):
        self.where, self.root = where, root

    def fail(self, field: str, expected: str, value: Any = ...) -> None:
        got = "" if value is ... else f" (got {_short(value)})"
        raise ArtifactError(f"{self.where}: invalid manifest field '{field}': expected "
                            f"{expected}{got}. Re-export the model with `edgeinfer export`.")

    def dict_(self, v: Any, field: str, *, optional: bool = False) -> dict:
        if v is None and optional:
            return {}
        if not isinstance(v, dict):
            self.fail(field, "an object", v)
        return v

    def str_(self, v: Any, field: str, *, choices: tuple[str, ...] | None = None,
             max_len: int = MAX_NAME_CHARS, optional: bool = False) -> str | None:
        if v is None and optional:
            return None
        if choices is not None and v not in choices:
            self.fail(field, "one of " + ", ".join(repr(c) for c in choices), v)
        if not isinstance(v, str) or not v or len(v) > max_len:
            self.fail(field, f"a non-empty string of at most {max_len} characters", v)
        return v

    def int_(self, v: Any, field: str, lo: int, hi: int, *, optional: bool = False) -> int | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(field, f"an integer in [{lo}, {hi}]", v)
        return v

    def num(self, v: Any, field: str, *, lo: float = -math.inf, hi: float = math.inf,
            lo_open: bool = False, optional: bool = False) -> float | None:
        if v is None and optional:
            return None
        ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
              and (v > lo if lo_open else v >= lo) and v <= hi)
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
            self.fail(field, f"a finite number in {rng}", v)
        return float(v)

    def sha(self, v: Any, field: str) -> str:
        if not isinstance(v, str) or not _HEX64.match(v):
            self.fail(field, "a sha256 hex digest (64 lowercase hex digits)", v)
        return v

    def str_list(self, v: Any, field: str, *, n: int | None = None, min_n: int = 0,
                 max_len: int = MAX_LABEL_CHARS) -> list[str]:
        if not isinstance(v, list):
            self.fail(field, "a list of strings", v)
        if n is not None and len(v) != n:
            self.fail(field, f"{n} entries", f"{len(v)} entries")
        if len(v) < min_n:
            self.fail(field, f"at least {min_n} entries", f"{len(v)} entries")
        for i, s in enumerate(v):
            if not isinstance(s, str) or len(s) > max_len:
                self.fail(f"{field}[{i}]", f"a string of at most {max_len} characters", s)
        return v

    def file(self, v: Any, field: str, *, must_exist: bool = True) -> Path | None:
        """A file the manifest names: relative, inside the artifact after following symlinks,
        a regular file (not a device, FIFO or directory). ``must_exist=False`` (validation at
        load): a missing file passes here and is reported when it is used, so a manifest can
        still be read and repaired."""
        if not isinstance(v, str) or not v or "\x00" in v or len(v) > 4096:
            self.fail(field, "a file name relative to the artifact directory", v)
        if os.path.isabs(v) or "\\" in v or any(part == ".." for part in v.split("/")):
            self.fail(field, "a file name inside the artifact directory (no absolute path, no '..')", v)
        if self.root is None:
            return None
        root = self.root.resolve()
        p = self.root / v
        if not os.path.lexists(p):
            if not must_exist:
                return None
            raise ArtifactError(f"{p} is listed in the manifest ('{field}') but missing; "
                                f"re-export the model or re-run `edgeinfer quantize`.")
        try:
            real = p.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            self.fail(field, "a file inside the artifact directory (not a symlink loop)", v)
        if real != root and root not in real.parents:
            self.fail(field, "a file inside the artifact directory (a symlink may not point "
                             "outside it)", v)
        try:
            st = os.stat(real)
        except OSError:
            if not must_exist:
                return None
            raise ArtifactError(f"{p} is listed in the manifest ('{field}') but missing (a "
                                f"dangling link); re-export the model.") from None
        if not stat.S_ISREG(st.st_mode):
            self.fail(field, "a regular file (not a directory, device or pipe)", v)
        return real


def _short(v: Any) -> str:
    try:
        s = json.dumps(v)
    except (TypeError, ValueError, RecursionError):
        s = type(v).__name__
    return s if len(s) <= 80 else s[:77] + "..."


def _check_file_entry(s: _Schema, e: Any, field: str, precision: str, seen: dict) -> None:
    e = s.dict_(e, field)
    s.str_(e.get("precision"), f"{field}.precision", choices=(precision,))
    s.sha(e.get("sha256"), f"{field}.sha256")
    s.file(e.get("file"), f"{field}.file", must_exist=False)
    other = seen.setdefault(e["file"], field)
    if other != field:
        s.fail(f"{field}.file", f"a file not already used by {other}", e["file"])
    if "size_bytes" in e:
        s.int_(e["size_bytes"], f"{field}.size_bytes", 0, 1 << 50)
    for io_key in ("inputs", "outputs"):
        if io_key in e and e[io_key] is not None:
            if not isinstance(e[io_key], list):
                s.fail(f"{field}.{io_key}", "a list of objects", e[io_key])
            for i, spec in enumerate(e[io_key]):
                spec = s.dict_(spec, f"{field}.{io_key}[{i}]")
                if "name" in spec:
                    s.str_(spec["name"], f"{field}.{io_key}[{i}].name")
    ext = e.get("external_data")
    if ext is not None:
        if not isinstance(ext, list):
            s.fail(f"{field}.external_data", "a list of {file, sha256} objects", ext)
        for i, x in enumerate(ext):
            x = s.dict_(x, f"{field}.external_data[{i}]")
            s.file(x.get("file"), f"{field}.external_data[{i}].file", must_exist=False)
            s.sha(x.get("sha256"), f"{field}.external_data[{i}].sha256")


def _check_files(s: _Schema, files: Any, field: str, seen: dict) -> None:
    files = s.dict_(files, field)
    for prec, e in files.items():
        if prec not in PRECISIONS:
            s.fail(f"{field}.{prec}", "precision keys " + ", ".join(PRECISIONS), prec)
        _check_file_entry(s, e, f"{field}.{prec}", prec, seen)


def validate_manifest(m: Any, *, where: str | os.PathLike = MANIFEST_NAME,
                      root: str | os.PathLike | None = None) -> dict:
    """Check a manifest against the schema; returns it unchanged or raises one ArtifactError.

    ``root``: the artifact directory; when given, every file the manifest names is checked to
    be a regular file inside it (sha256 digests are checked when a file is read, see
    ``Artifact.path`` / ``Artifact.data_file``)."""
    s = _Schema(Path(where), Path(root) if root is not None else None)
    s.dict_(m, "(top level)")
    if m.get("format") != FORMAT:
        s.fail("format", repr(FORMAT) + " (not an edgeinfer manifest)", m.get("format"))
    fv = m.get("format_version")
    if isinstance(fv, int) and not isinstance(fv, bool) and fv > FORMAT_VERSION:
        raise ArtifactError(f"{where} has format_version {fv}, newer than this edgeinfer "
                            f"understands ({FORMAT_VERSION}); upgrade edgeinfer.")
    s.int_(fv, "format_version", 1, FORMAT_VERSION)

    model = s.dict_(m.get("model"), "model")
    s.str_(model.get("name"), "model.name")
    kind = model.get("kind", "classifier")
    s.str_(kind, "model.kind", choices=MODEL_KINDS)
    for k in ("source", "source_name", "family"):
        s.str_(model.get(k), f"model.{k}", optional=True, max_len=4096)

    w = s.dict_(m.get("weights"), "weights", optional=True)
    if "origin" in w:  # pretrained | file | random today; other tools may add kinds
        s.str_(w["origin"], "weights.origin")

    pp = s.dict_(m.get("preprocess"), "preprocess")
    size = pp.get("input_size")
    if not isinstance(size, list) or len(size) != 3:
        s.fail("preprocess.input_size", "[3, H, W]", size)
    s.int_(size[0], "preprocess.input_size[0]", 3, 3)
    s.int_(size[1], "preprocess.input_size[1]", 1, MAX_INPUT_SIDE)
    s.int_(size[2], "preprocess.input_size[2]", 1, MAX_INPUT_SIDE)
    s.int_(pp.get("resize_size"), "preprocess.resize_size", 1, MAX_RESIZE_SIZE)
    s.str_(pp.get("crop", "center"), "preprocess.crop", choices=("center",))
    s.num(pp.get("crop_pct"), "preprocess.crop_pct", lo=0.0, hi=4.0, lo_open=True, optional=True)
    s.str_(pp.get("interpolation", "bilinear"), "preprocess.interpolation", choices=INTERPOLATIONS)
    for k in ("mean", "std"):
        v = pp.get(k)
        if not isinstance(v, list) or len(v) != 3:
            s.fail(f"preprocess.{k}", "a list of 3 numbers", v)
        for i, x in enumerate(v):
            if k == "std":  # std 0 divides by zero: NaN scores for every image
                s.num(x, f"preprocess.std[{i}]", lo=1e-6, hi=1e6)
            else:
                s.num(x, f"preprocess.mean[{i}]", lo=-1e6, hi=1e6)
    s.str_(pp.get("channel_order", "RGB"), "preprocess.channel_order", choices=("RGB",))
    s.str_(pp.get("layout", "NCHW"), "preprocess.layout", choices=("NCHW",))

    out = s.dict_(m.get("output"), "output")
    okind = out.get("kind", "logits")
    s.str_(okind, "output.kind", choices=OUTPUT_KINDS)
    dim = s.int_(out.get("dim"), "output.dim", 1, MAX_OUTPUT_DIM)
    if kind == "clip" and okind != "embedding":
        s.fail("output.kind", "'embedding' for a CLIP model", okind)
    labels = m.get("labels")
    if labels is not None:
        # a label list of the wrong length silently turned every label into class_<i>
        s.str_list(labels, "labels", n=dim if okind == "logits" else None)
    if "opset" in m and m["opset"] is not None:
        s.int_(m["opset"], "opset", 1, 1000)

    seen: dict[str, str] = {}
    _check_files(s, m.get("files", {}), "files", seen)

    text = m.get("text")
    if text is not None:
        text = s.dict_(text, "text")
        _check_files(s, text.get("files", {}), "text.files", seen)
        s.int_(text.get("context_length"), "text.context_length", 1, MAX_CONTEXT_LENGTH,
               optional=True)
        tok = text.get("tokenizer")
        if tok is not None:
            tok = s.dict_(tok, "text.tokenizer")
            s.str_(tok.get("type", "clip_bpe"), "text.tokenizer.type", choices=TOKENIZER_TYPES)
            s.file(tok.get("file"), "text.tokenizer.file", must_exist=False)
            s.sha(tok.get("sha256"), "text.tokenizer.sha256")
            s.int_(tok.get("context_length"), "text.tokenizer.context_length", 1,
                   MAX_CONTEXT_LENGTH, optional=True)
            for k in ("sot_token_id", "eot_token_id", "vocab_size"):
                s.int_(tok.get(k), f"text.tokenizer.{k}", 0, 1 << 24, optional=True)
        sets = s.dict_(text.get("label_sets"), "text.label_sets", optional=True)
        for name, spec in sets.items():
            f = f"text.label_sets.{name}"
            s.str_(name, f"{f} (name)")
            spec = s.dict_(spec, f)
            s.file(spec.get("file"), f"{f}.file", must_exist=False)
            s.sha(spec.get("sha256"), f"{f}.sha256")
            s.str_list(spec.get("labels"), f"{f}.labels", min_n=1)
        dflt = text.get("default_label_set")
        if dflt is not None and dflt not in sets:
            s.fail("text.default_label_set", "one of text.label_sets (" + ", ".join(sets) + ")", dflt)
        if text.get("templates") is not None:
            s.str_list(text["templates"], "text.templates")
        s.num(text.get("logit_scale"), "text.logit_scale", lo=0.0, hi=1e6, lo_open=True,
              optional=True)
        s.num(text.get("logit_bias"), "text.logit_bias", lo=-1e6, hi=1e6, optional=True)
        s.int_(text.get("embedding_dim"), "text.embedding_dim", 1, MAX_OUTPUT_DIM, optional=True)
        if "variable_length" in text and not isinstance(text["variable_length"], bool):
            s.fail("text.variable_length", "true or false", text["variable_length"])
    return m


def _regular_file(p: Path, what: str) -> os.stat_result:
    st = os.stat(p)
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{p} ({what}) is not a regular file; re-export the model.")
    return st


def read_manifest(artifact_dir: str | os.PathLike) -> dict:
    """The validated manifest of an artifact directory (ArtifactError for anything else)."""
    d = Path(artifact_dir)
    if not d.exists():
        raise ArtifactError(f"artifact directory {d} does not exist. Create one with "
                            f"`edgeinfer export --model NAME --out {d}`.")
    if not d.is_dir():
        raise ArtifactError(f"{d} is not a directory; an artifact is a directory with {MANIFEST_NAME}.")
    if is_staging_dir(d):
        with _BUILDING_LOCK:
            building = str(d.resolve()) in _BUILDING
        if not building:
            raise ArtifactError(f"{d} is the staging directory of an unfinished (or interrupted) "
                                f"export, not an artifact; it is never loadable. The next export "
                                f"to the same --out removes it.")
    mpath = d / MANIFEST_NAME
    if not os.path.lexists(mpath):
        raise ArtifactError(f"{d} has no {MANIFEST_NAME}: not an edgeinfer artifact (or an "
                            f"interrupted export). Re-export with `edgeinfer export`.")
    try:
        try:
            real = mpath.resolve()
        except RuntimeError:  # a symlink loop
            raise ArtifactError(f"{mpath} is a symlink loop; re-export the model.") from None
        if d.resolve() not in real.parents:
            raise ArtifactError(f"{mpath} points outside the artifact directory; refusing it.")
        st = _regular_file(real, MANIFEST_NAME)
        if st.st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{mpath} is {st.st_size} bytes, more than a manifest can be "
                                f"({MAX_MANIFEST_BYTES}); re-export the model.")
        with open(real, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        m = json.loads(raw.decode("utf-8"))
    except ArtifactError:
        raise
    except (OSError, ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else \
            (e.strerror if isinstance(e, OSError) and e.strerror else str(e)[:200])
        raise ArtifactError(f"{mpath} is unreadable or not valid JSON ({reason}); re-export "
                            f"the model.") from None
    return validate_manifest(m, where=mpath, root=d)


def write_manifest(artifact_dir: str | os.PathLike, manifest: dict) -> None:
    atomic_write_json(Path(artifact_dir) / MANIFEST_NAME, manifest)


class Artifact:
    """A loaded artifact directory: validated manifest + verified access to its files."""

    def __init__(self, artifact_dir: str | os.PathLike, manifest: dict | None = None):
        self.dir = Path(artifact_dir)
        if manifest is None:
            manifest = read_manifest(self.dir)
        else:
            validate_manifest(manifest, where=self.dir / MANIFEST_NAME, root=self.dir)
        self.manifest = manifest
        self._verified: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, artifact_dir: str | os.PathLike) -> "Artifact":
        return cls(artifact_dir)

    # convenience views
    @property
    def name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def kind(self) -> str:
        return self.manifest["model"].get("kind", "classifier")

    @property
    def preprocess(self) -> dict:
        return self.manifest["preprocess"]

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.get("labels")

    @property
    def weights_origin(self) -> str:
        return (self.manifest.get("weights") or {}).get("origin", "unknown")

    @property
    def random_weights(self) -> bool:
        return self.weights_origin == "random"

    def files(self, tower: str = "image") -> dict:
        if tower == "image":
            return self.manifest.get("files") or {}
        return (self.manifest.get(tower) or {}).get("files") or {}

    def precisions(self, tower: str = "image") -> list[str]:
        return [p for p in PRECISIONS if p in self.files(tower)]

    def entry(self, precision: str, tower: str = "image") -> dict:
        files = self.files(tower)
        if precision not in PRECISIONS:
            raise InvalidOptionError.choice("precision", precision, PRECISIONS)
        if precision not in files:
            have = ", ".join(files) or "none"
            hint = (f"create it with `edgeinfer quantize {self.dir} --{precision}`"
                    if precision != "fp32" else "re-export the model")
            raise ArtifactError(f"artifact {self.dir} has no {precision} {tower} file "
                                f"(it has: {have}); {hint}.")
        return files[precision]

    def data_file(self, rel: str, sha256: str | None, *, field: str, verify: bool = True) -> Path:
        """A file the manifest names (``field``), contained in the artifact, regular, and (once
        per Artifact) matching ``sha256``."""
        s = _Schema(self.dir / MANIFEST_NAME, self.dir)
        p = s.file(rel, field)
        assert p is not None
        key = f"{rel}:{sha256}"
        if verify and key not in self._verified:
            if sha256 is None:
                raise ArtifactError(f"{self.dir / rel} ('{field}') has no sha256 in the manifest; "
                                    f"re-export the model.")
            if sha256_file(p) != sha256:
                raise ArtifactError(f"{self.dir / rel} does not match its sha256 in the manifest "
                                    f"(file is corrupt or was modified); re-export the model.")
            with self._lock:
                self._verified.add(key)
        return p

    def path(self, precision: str, tower: str = "image", *, verify: bool = True) -> Path:
        """Path of the ONNX file for ``precision``; checks it (and every external-data file it
        uses) is inside the artifact and matches its sha256."""
        e = self.entry(precision, tower)
        field = f"{'files' if tower == 'image' else tower + '.files'}.{precision}"
        s = _Schema(self.dir / MANIFEST_NAME, self.dir)
        p = s.file(e.get("file"), f"{field}.file")
        assert p is not None
        key = f"{tower}/{precision}"
        if verify and key not in self._verified:
            digest, locations = hash_and_scan(p)
            if digest != e["sha256"]:
                raise ArtifactError(f"{self.dir / e['file']} does not match its sha256 in the "
                                    f"manifest (file is corrupt or was modified); re-export the model.")
            # ONNX Runtime would open these itself: each must be recorded (contained, hashed)
            listed = {x["file"]: x["sha256"] for x in e.get("external_data") or []}
            for loc in locations:
                if loc not in listed:
                    raise ArtifactError(f"{self.dir / e['file']} uses external data {loc!r} that the "
                                        f"manifest does not record with its sha256 ('{field}."
                                        f"external_data'); refusing to load it. Re-export the model.")
                self.data_file(loc, listed[loc], field=f"{field}.external_data")
            with self._lock:
                self._verified.add(key)
        return self.dir / e["file"]

    def add_file(self, src: str | os.PathLike, *, precision: str, tower: str = "image",
                 **extra: Any) -> dict:
        """Move ``src`` (ideally a temp file inside this dir) into place as the ``precision``
        file and record it in the manifest; both steps are atomic renames."""
        name = onnx_file_name(precision, tower)
        dst = self.dir / name
        entry = file_entry(src, precision=precision, **extra)
        entry["file"] = name
        if entry.get("external_data"):
            raise ArtifactError(f"{src} keeps tensors in external data files; add_file moves "
                                f"single-file ONNX models only.")
        os.chmod(src, usual_mode())
        os.replace(src, dst)
        m = read_manifest(self.dir)
        files = m.setdefault("files", {}) if tower == "image" else \
            m.setdefault(tower, {}).setdefault("files", {})
        files[precision] = entry
        write_manifest(self.dir, m)
        self.manifest = m
        self._verified.discard(f"{tower}/{precision}")
        return entry
