"""Labelled image sets for evaluation, mapped onto an artifact's class indices.

Two forms are understood:

- an ImageFolder: ``DIR/<class>/<image>``; ``<class>`` is one of the artifact's labels
  (case, spaces/underscores/hyphens ignored) or an ImageNet synset id (``n01440764``) when the
  artifact has the 1000 ImageNet classes;
- photos named ``<synset>_<label>.JPEG`` (the ImageNet validation naming used by the sample
  photos): the synset gives the ImageNet class index.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

from ..errors import DatasetError, InvalidOptionError  # noqa: F401 - DatasetError re-exported
from ..runtime.preprocess import list_images

_SYNSET = re.compile(r"^(n\d{8})(?:_|$)")


@lru_cache(maxsize=1)
def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synset ids in class-index order (from timm's ImageNetInfo)."""
    try:
        text = resources.files("edgeinfer").joinpath("data/imagenet_synsets.txt").read_text()
    except (FileNotFoundError, ModuleNotFoundError):  # source checkout without install
        text = (Path(__file__).resolve().parents[1] / "data" / "imagenet_synsets.txt").read_text()
    syn = [s.strip() for s in text.split() if s.strip()]
    if len(syn) != 1000:
        raise DatasetError(f"edgeinfer/data/imagenet_synsets.txt has {len(syn)} entries, not 1000")
    return syn


def synset_index(synset: str) -> int | None:
    idx = {s: i for i, s in enumerate(imagenet_synsets())}
    return idx.get(synset)


def _norm(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s).strip().lower()


@dataclass
class LabelledSet:
    paths: list            # image files, or HxWx3 uint8 arrays (CIFAR-10 / Fashion-MNIST / CSV)
    targets: list[int]
    source: str            # "imagefolder" | "synset-names" | "cifar10" | "fashion-mnist" | "csv"
    classes: list[str]     # class names for the targets' indices (the artifact's labels)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def in_memory(self) -> bool:
        return bool(self.paths) and not isinstance(self.paths[0], (str, Path))


FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


def _map_names(names: Sequence[str], class_names: Sequence[str], where: str) -> list[int]:
    idx = [_class_index(n, class_names) for n in names]
    missing = [n for n, i in zip(names, idx) if i is None]
    if missing:
        ex = ", ".join(repr(c) for c in list(class_names)[:5])
        raise DatasetError(f"classes {', '.join(missing)} of {where} match none of the artifact's "
                           f"{len(class_names)} labels (e.g. {ex}); this dataset needs a model trained "
                           f"on its classes")
    return idx  # type: ignore[return-value]


def _subsample(n: int, limit: int | None):
    import numpy as np

    if limit and n > limit:
        return np.linspace(0, n - 1, limit).round().astype(int)
    return np.arange(n)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
#: largest data file read (CIFAR-10 test_batch is 31 MB, Fashion-MNIST t10k images 7.8 MB)
MAX_DATA_BYTES = 1 << 30

# The only globals a CIFAR-10 python batch needs (a dict of bytes/lists/ints and one uint8
# ndarray). Anything else in a pickle (os.system, builtins.eval, ...) is refused before it is
# looked up, so unpickling a crafted file runs no code.
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                   ("numpy", "ndarray"), ("numpy", "dtype")}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DatasetError("unexpected _codecs.encode call in a data file")
    return text.encode("latin1")


def _restricted_unpickle(path: Path) -> object:
    import pickle

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) == ("_codecs", "encode"):
                return _latin1_bytes  # how Python 3 writes bytes at protocol 2
            if (module, name) not in _PICKLE_GLOBALS:
                raise DatasetError(f"{path} is not a plain CIFAR-10 python batch: it references "
                                   f"{module}.{name}, which a data file never needs; refusing to "
                                   f"unpickle it (no code from data files is run)")
            if module.startswith("numpy.core."):  # the NumPy 1.x name (the real CIFAR-10
                import numpy as np                   # files); NumPy 2 warns on it

                if int(np.__version__.split(".")[0]) >= 2:
                    module = "numpy._core." + module[len("numpy.core."):]
            return super().find_class(module, name)

    size = path.stat().st_size
    if size > MAX_DATA_BYTES:
        raise DatasetError(f"{path} is {size} bytes; a CIFAR-10 batch is about 31 MB")
    with open(path, "rb") as f:
        try:
            return _Restricted(f, encoding="bytes").load()
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - any malformed pickle is a bad data file
            raise DatasetError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: "
                               f"{str(e)[:200]})") from None


def _cifar_python(batch: Path, meta: Path):
    import numpy as np

    d = _restricted_unpickle(batch)
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DatasetError(f"{batch} is not a CIFAR-10 python batch (expected a dict with "
                           f"b'data' and b'labels')")
    data, labels = d[b"data"], d[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise DatasetError(f"{batch}: b'data' must be a uint8 array of N x 3072 pixels")
    if not isinstance(labels, list) or len(labels) != data.shape[0] or \
            not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        raise DatasetError(f"{batch}: b'labels' must be a list of {data.shape[0]} integers")
    names = CIFAR10_CLASSES
    if meta.exists():
        m = _restricted_unpickle(meta)
        raw = m.get(b"label_names") if isinstance(m, dict) else None
        if not isinstance(raw, list) or not all(isinstance(n, bytes) for n in raw):
            raise DatasetError(f"{meta} is not CIFAR-10 metadata (expected b'label_names')")
        names = [n.decode("utf-8", "replace") for n in raw]
    return data, labels, names


def _cifar_binary(batch: Path, meta: Path):
    """The binary version (cifar-10-batches-bin): records of 1 label byte + 3072 pixel bytes."""
    import numpy as np

    size = batch.stat().st_size
    if size == 0 or size % 3073 or size > MAX_DATA_BYTES:
        raise DatasetError(f"{batch} is not a CIFAR-10 binary batch ({size} bytes is not a "
                           f"multiple of 3073)")
    raw = np.fromfile(batch, np.uint8).reshape(-1, 3073)
    names = CIFAR10_CLASSES
    if meta.exists():
        names = [n.strip() for n in meta.read_text(errors="replace").splitlines() if n.strip()]
    return raw[:, 1:], [int(x) for x in raw[:, 0]], names


def cifar10(path, class_names: Sequence[str], *, limit: int | None = None) -> LabelledSet:
    """CIFAR-10 python batches (``cifar-10-batches-py``: ``test_batch`` + ``batches.meta``) or
    binary batches (``cifar-10-batches-bin``: ``test_batch.bin`` + ``batches.meta.txt``), or
    one batch file. Python batches are read with an unpickler that only builds dicts, lists,
    bytes and uint8 arrays: a crafted file cannot run code."""
    import numpy as np

    path = Path(path)
    if path.is_dir():
        batch = path / "test_batch" if (path / "test_batch").exists() else path / "test_batch.bin"
    else:
        batch = path
    binary = batch.suffix == ".bin"
    meta = batch.parent / ("batches.meta.txt" if binary else "batches.meta")
    try:
        data, labels, names = (_cifar_binary if binary else _cifar_python)(batch, meta)
    except OSError as e:
        raise DatasetError(f"cannot read CIFAR-10 batch {batch}: {e.strerror or e}") from None
    bad = sorted({x for x in labels if not 0 <= x < len(names)})
    if bad:
        raise DatasetError(f"{batch}: labels {bad[:5]} are outside the {len(names)} class names")
    data = np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    mapping = _map_names(names, class_names, f"CIFAR-10 ({path})")
    sel = _subsample(len(labels), limit)
    return LabelledSet([np.ascontiguousarray(data[i]) for i in sel], [mapping[labels[i]] for i in sel],
                       "cifar10", list(class_names))


def _read_idx(path: Path):
    """An idx file (Fashion-MNIST), reading no more than its header says (a .gz can expand to
    any size)."""
    import gzip

    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        head = f.read(4)
        if len(head) != 4 or head[:2] != b"\x00\x00" or head[2] != 0x08 or not 1 <= head[3] <= 4:
            raise ValueError("not an idx file of unsigned bytes (bad magic number)")
        ndim = head[3]
        dims_raw = f.read(4 * ndim)
        if len(dims_raw) != 4 * ndim:
            raise ValueError("truncated idx header")
        dims = [int.from_bytes(dims_raw[4 * i: 4 * i + 4], "big") for i in range(ndim)]
        n = int(np.prod(dims, dtype=np.int64))
        if n > MAX_DATA_BYTES:
            raise ValueError(f"idx header announces {n} bytes, more than {MAX_DATA_BYTES}")
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"idx file has {len(raw)} data bytes, its header announces {n}")
    return np.frombuffer(raw, np.uint8).reshape(dims)


def fashion_mnist(path, class_names: Sequence[str], *, limit: int | None = None) -> LabelledSet:
    """Fashion-MNIST idx files (``t10k-images-idx3-ubyte[.gz]`` + ``t10k-labels-idx1-ubyte[.gz]``)."""
    import numpy as np

    path = Path(path)
    imgs = sorted(path.glob("t10k-images-idx3-ubyte*")) or sorted(path.glob("*images-idx3-ubyte*"))
    labs = sorted(path.glob("t10k-labels-idx1-ubyte*")) or sorted(path.glob("*labels-idx1-ubyte*"))
    if not imgs or not labs:
        raise DatasetError(f"{path} has no *-images-idx3-ubyte / *-labels-idx1-ubyte files")
    try:
        x, y = _read_idx(imgs[0]), _read_idx(labs[0])
    except (OSError, ValueError, IndexError, EOFError) as e:
        raise DatasetError(f"cannot read Fashion-MNIST idx files in {path}: {e}") from None
    mapping = _map_names(FASHION_MNIST_CLASSES, class_names, f"Fashion-MNIST ({path})")
    sel = _subsample(len(y), limit)
    return LabelledSet([np.repeat(x[i][:, :, None], 3, axis=2) for i in sel],
                       [mapping[int(y[i])] for i in sel], "fashion-mnist", list(class_names))


def csv_pixels(path, class_names: Sequence[str], *, limit: int | None = None) -> LabelledSet:
    """A CSV pixel table: a ``label`` column (class index into the artifact's labels, or a class
    name) and H*W (grey, square) or H*W*3 (RGB, square) pixel columns 0..255."""
    import csv

    import numpy as np

    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise DatasetError(f"{path} has no data rows")
    head = [h.strip().lower() for h in rows[0]]
    if "label" not in head:
        raise DatasetError(f"{path}: no 'label' column in the header")
    li = head.index("label")
    body = rows[1:]
    sel = _subsample(len(body), limit)
    imgs, targets = [], []
    for i in sel:
        r = body[i]
        lab = r[li].strip()
        pix = np.asarray([float(v) for j, v in enumerate(r) if j != li], np.float32)
        n = pix.size
        side = int(round((n / 3) ** 0.5)) if n % 3 == 0 and int(round((n / 3) ** 0.5)) ** 2 * 3 == n else None
        if side:
            img = pix.reshape(side, side, 3)
        elif int(round(n ** 0.5)) ** 2 == n:
            side = int(round(n ** 0.5))
            img = np.repeat(pix.reshape(side, side, 1), 3, axis=2)
        else:
            raise DatasetError(f"{path}: {n} pixel columns are neither a square grey nor RGB image")
        if lab.lstrip("-").isdigit():
            t = int(lab)
            if not 0 <= t < len(class_names):
                raise DatasetError(f"{path}: label {t} is outside the artifact's {len(class_names)} classes")
        else:
            t = _map_names([lab], class_names, str(path))[0]
        imgs.append(np.clip(img, 0, 255).astype(np.uint8))
        targets.append(t)
    return LabelledSet(imgs, targets, "csv", list(class_names))


def _require_class_names(class_names) -> None:
    if not class_names:
        raise InvalidOptionError("this artifact has no class labels (e.g. an embedding model); "
                                 "labelled metrics need a classifier. Use fidelity instead "
                                 "(omit --labels).")


def load_labelled(path, class_names: Sequence[str] | None, *, limit: int | None = None) -> LabelledSet:
    """Any supported labelled set: ImageFolder / synset-named photos, CIFAR-10 python batches,
    Fashion-MNIST idx files, or a CSV pixel table."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"labelled data {p} does not exist")
    _require_class_names(class_names)
    if p.is_file() and p.suffix.lower() == ".csv":
        return csv_pixels(p, class_names, limit=limit)
    if (p.is_file() and (p.name.startswith(("test_batch", "data_batch")))) or \
            (p.is_dir() and ((p / "test_batch").exists() or (p / "test_batch.bin").exists())):
        return cifar10(p, class_names, limit=limit)
    if p.is_dir() and any(p.glob("*-idx3-ubyte*")):
        return fashion_mnist(p, class_names, limit=limit)
    return image_folder(p, class_names)


def _class_index(name: str, class_names: Sequence[str] | None) -> int | None:
    m = _SYNSET.match(name)
    if m and class_names is not None and len(class_names) == 1000:
        i = synset_index(m.group(1))
        if i is not None:
            return i
    if class_names:
        by_name = {}
        for i, c in enumerate(class_names):
            by_name.setdefault(_norm(c), i)
            # ImageNet label strings like "tench, Tinca tinca": the first alias also matches
            first = c.split(",")[0]
            by_name.setdefault(_norm(first), i)
        return by_name.get(_norm(name))
    return None


def synset_labels(paths: Sequence[Path], class_names: Sequence[str] | None) -> list[int] | None:
    """Targets from ``<synset>_<label>`` file names, or None when not every file is named so
    (or the artifact is not an ImageNet-1k classifier)."""
    if not paths or class_names is None or len(class_names) != 1000:
        return None
    out = []
    for p in paths:
        m = _SYNSET.match(Path(p).stem)
        i = synset_index(m.group(1)) if m else None
        if i is None:
            return None
        out.append(i)
    return out


def image_folder(folder, class_names: Sequence[str] | None) -> LabelledSet:
    """A labelled set from an ImageFolder, or from synset-named photos in a flat folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"labelled image folder {folder} does not exist or is not a directory")
    _require_class_names(class_names)
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir())
    if not subdirs:
        paths = list_images(folder, recursive=False)
        if not paths:
            raise DatasetError(f"no images in {folder}")
        targets = synset_labels(paths, class_names)
        if targets is None:
            raise DatasetError(f"{folder} has no class sub-folders and its files are not named "
                               f"<synset>_<label>.JPEG; give an ImageFolder (DIR/<class>/<image>)")
        return LabelledSet(paths, targets, "synset-names", list(class_names))
    paths, targets, unknown = [], [], []
    for d in subdirs:
        i = _class_index(d.name, class_names)
        imgs = list_images(d)
        if not imgs:
            continue
        if i is None:
            unknown.append(d.name)
            continue
        paths += imgs
        targets += [i] * len(imgs)
    if unknown:
        ex = ", ".join(repr(c) for c in list(class_names)[:5])
        raise DatasetError(f"class folders {', '.join(unknown[:10])}"
                           f"{' ...' if len(unknown) > 10 else ''} in {folder} match none of the "
                           f"artifact's {len(class_names)} labels (e.g. {ex}) nor ImageNet synset ids")
    if not paths:
        raise DatasetError(f"no images in the class folders of {folder}")
    return LabelledSet(paths, targets, "imagefolder", list(class_names))
