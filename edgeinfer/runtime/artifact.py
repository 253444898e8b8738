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
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import ArtifactError, InvalidOptionError

MANIFEST_NAME = "manifest.json"
FORMAT = "edgeinfer-artifact"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
TOWERS = ("image", "text")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def onnx_file_name(precision: str, tower: str = "image") -> str:
    if precision not in PRECISIONS:
        raise InvalidOptionError.choice("precision", precision, PRECISIONS)
    return f"{'model' if tower == 'image' else tower}.{precision}.onnx"


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


@contextlib.contextmanager
def staged_directory(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a staging place, then swap it into ``final_dir`` atomically.

    On any exception (KeyboardInterrupt included) the staging directory is deleted and
    ``final_dir`` is left exactly as it was.
    """
    final_dir = check_writable_dir(final_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.staging-", dir=final_dir.parent))
    os.chmod(stage, usual_mode(directory=True))
    try:
        yield stage
        old = None
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
            os.replace(final_dir, old)
        os.replace(stage, final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


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
    """Manifest entry for one ONNX file. ``extra`` holds e.g. parity / quantization / fidelity."""
    path = Path(path)
    entry = {"file": path.name, "precision": precision, "sha256": sha256_file(path),
             "size_bytes": path.stat().st_size, "created": _now()}
    if inputs is not None:
        entry["inputs"] = inputs
    if outputs is not None:
        entry["outputs"] = outputs
    entry.update(extra)
    return entry


def read_manifest(artifact_dir: str | os.PathLike) -> dict:
    d = Path(artifact_dir)
    if not d.exists():
        raise ArtifactError(f"artifact directory {d} does not exist. Create one with "
                            f"`edgeinfer export --model NAME --out {d}`.")
    if not d.is_dir():
        raise ArtifactError(f"{d} is not a directory; an artifact is a directory with {MANIFEST_NAME}.")
    mpath = d / MANIFEST_NAME
    if not mpath.exists():
        raise ArtifactError(f"{d} has no {MANIFEST_NAME}: not an edgeinfer artifact (or an "
                            f"interrupted export). Re-export with `edgeinfer export`.")
    try:
        m = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{mpath} is unreadable or not valid JSON ({e}); re-export the model.") from e
    if m.get("format") != FORMAT:
        raise ArtifactError(f"{mpath} is not an edgeinfer manifest (format={m.get('format')!r}).")
    if int(m.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(f"{mpath} has format_version {m['format_version']}, newer than this "
                            f"edgeinfer understands ({FORMAT_VERSION}); upgrade edgeinfer.")
    return m


def write_manifest(artifact_dir: str | os.PathLike, manifest: dict) -> None:
    atomic_write_json(Path(artifact_dir) / MANIFEST_NAME, manifest)


class Artifact:
    """A loaded artifact directory: manifest + verified access to its files."""

    def __init__(self, artifact_dir: str | os.PathLike, manifest: dict | None = None):
        self.dir = Path(artifact_dir)
        self.manifest = manifest if manifest is not None else read_manifest(self.dir)
        self._verified: set[str] = set()

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
        return self.manifest.get("weights", {}).get("origin", "unknown")

    @property
    def random_weights(self) -> bool:
        return self.weights_origin == "random"

    def files(self, tower: str = "image") -> dict:
        if tower == "image":
            return self.manifest.get("files", {})
        return self.manifest.get(tower, {}).get("files", {})

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

    def path(self, precision: str, tower: str = "image", *, verify: bool = True) -> Path:
        """Path of the ONNX file for ``precision``; checks it exists and matches its sha256."""
        e = self.entry(precision, tower)
        p = self.dir / e["file"]
        if not p.exists():
            raise ArtifactError(f"{p} is listed in the manifest but missing; re-export the model "
                                f"or re-run `edgeinfer quantize`.")
        key = f"{tower}/{precision}"
        if verify and key not in self._verified:
            digest = sha256_file(p)
            if digest != e["sha256"]:
                raise ArtifactError(f"{p} does not match its sha256 in the manifest (file is "
                                    f"corrupt or was modified); re-export the model.")
            self._verified.add(key)
        return p

    def add_file(self, src: str | os.PathLike, *, precision: str, tower: str = "image",
                 **extra: Any) -> dict:
        """Move ``src`` (ideally a temp file inside this dir) into place as the ``precision``
        file and record it in the manifest; both steps are atomic renames."""
        name = onnx_file_name(precision, tower)
        dst = self.dir / name
        entry = file_entry(src, precision=precision, **extra)
        entry["file"] = name
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
