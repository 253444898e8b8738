"""A labelled data set in its own class space, for comparing several models on it.

``evaluate.datasets`` maps a data set onto one artifact's labels; ``compare`` needs the opposite:
the data set's classes first (the same images and targets for every model), then one mapping per
model. ``open_dataset(SPEC)`` reads any of the five formats through the readers in
``evaluate.datasets`` (asking them for the data set's own class names), and ``DataSet.sample``
draws the same seeded N images for every model.

Formats (``SPEC``):

- an ImageFolder ``DIR/<class>/<image>``: classes are the folder names;
- a flat folder of ``<synset>_<name>.JPEG`` photos (ImageNet validation naming): classes are the
  synsets present, shown by the name in the file (``n01440764_tench`` -> "tench");
- CIFAR-10 python batches (``DIR/test_batch`` + ``batches.meta``) or one batch file;
- Fashion-MNIST idx files (``*-images-idx3-ubyte[.gz]`` + ``*-labels-idx1-ubyte[.gz]``);
- a CSV pixel table (``label,pixel1,...``; labels are class names or integers, an integer label
  ``k`` is the class named ``"k"``).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import datasets
from .datasets import DatasetError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]


@dataclass
class DataSet:
    items: list                 # image paths, or HxWx3 uint8 arrays
    targets: list[int]          # index into ``classes``
    classes: list[str]          # class keys (folder names, synsets, CSV labels)
    source: str                 # imagefolder | synset-names | cifar10 | fashion-mnist | csv
    spec: str
    display: list[str] = field(default_factory=list)   # human names (zero-shot prompts, plots)
    ids: list[str] = field(default_factory=list)       # per item: file name or "<source>[i]"

    def __post_init__(self):
        if not self.display:
            self.display = list(self.classes)
        if not self.ids:
            self.ids = [str(p) if isinstance(p, (str, Path)) else f"{self.source}[{i}]"
                        for i, p in enumerate(self.items)]

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, n: int | None, *, seed: int = 0) -> "DataSet":
        """``n`` items drawn without replacement with ``numpy.random.default_rng(seed)`` (all of
        them, in a seeded order, when ``n`` is None or >= the size)."""
        import numpy as np

        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.items))
        if n is not None:
            if int(n) < 1:
                raise DatasetError(f"--n must be >= 1 (got {n})")
            order = order[: int(n)]
        order = sorted(int(i) for i in order)  # file order: reproducible and readable CSVs
        return DataSet([self.items[i] for i in order], [self.targets[i] for i in order],
                       list(self.classes), self.source, self.spec, list(self.display),
                       [self.ids[i] for i in order])

    def present(self) -> list[int]:
        """Class indices that occur in this (sampled) set."""
        return sorted(set(self.targets))


def csv_class_names(path: Path) -> list[str]:
    """The class names of a CSV pixel table in index order, read from its label column only
    (integer labels are class indices: classes 0..max named by number). ``compare`` and
    ``finetune`` both use it, so the two agree on what class k is."""
    with open(path, newline="") as f:
        r = csv.reader(f)
        head = [h.strip().lower() for h in next(r, [])]
        if "label" not in head:
            raise DatasetError(f"{path}: no 'label' column in the header")
        li = head.index("label")
        labels = {row[li].strip() for row in r if len(row) > li}
    if not labels:
        raise DatasetError(f"{path} has no data rows")
    if all(x.lstrip("-").isdigit() for x in labels):
        ints = sorted(int(x) for x in labels)
        if ints[0] < 0:
            raise DatasetError(f"{path}: negative class label {ints[0]}")
        # index k must be the class named "k" for csv_pixels' integer labels
        return [str(i) for i in range(ints[-1] + 1)]
    return sorted(labels)


def _synset_display(paths) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in paths:
        m = re.match(r"^(n\d{8})_(.+)$", Path(p).stem)
        if m:
            out.setdefault(m.group(1), m.group(2).replace("_", " "))
    return out


def open_dataset(spec) -> DataSet:
    """Read a labelled data set in any supported format (see the module doc)."""
    p = Path(spec)
    if not p.exists():
        raise DatasetError(f"data set {p} does not exist")
    if p.is_file() and p.suffix.lower() == ".csv":
        names = csv_class_names(p)
        ls = datasets.csv_pixels(p, names)
        return _compact(DataSet(ls.paths, ls.targets, names, "csv", str(p)))
    if (p.is_file() and p.name.startswith(("test_batch", "data_batch"))) or \
            (p.is_dir() and (p / "test_batch").exists()):
        ls = datasets.cifar10(p, CIFAR10_CLASSES)
        return DataSet(ls.paths, ls.targets, CIFAR10_CLASSES, "cifar10", str(p))
    if p.is_dir() and any(p.glob("*-idx3-ubyte*")):
        ls = datasets.fashion_mnist(p, datasets.FASHION_MNIST_CLASSES)
        return DataSet(ls.paths, ls.targets, list(datasets.FASHION_MNIST_CLASSES), "fashion-mnist", str(p))
    if not p.is_dir():
        raise DatasetError(f"{p} is none of: an ImageFolder, a folder of <synset>_<name> photos, "
                           f"CIFAR-10 python batches, Fashion-MNIST idx files, a .csv pixel table")
    subdirs = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        ls = datasets.image_folder(p, subdirs)
        return _compact(DataSet(ls.paths, ls.targets, subdirs, "imagefolder", str(p)))
    syn = datasets.imagenet_synsets()
    ls = datasets.image_folder(p, syn)   # flat folder: synset-named files, ImageNet indices
    present = sorted(set(ls.targets))
    local = {c: i for i, c in enumerate(present)}
    keys = [syn[c] for c in present]
    disp = _synset_display(ls.paths)
    return DataSet(ls.paths, [local[t] for t in ls.targets], keys, "synset-names", str(p),
                   [disp.get(k, k) for k in keys])


def _compact(ds: DataSet) -> DataSet:
    """Drop classes with no item (integer CSV labels with gaps, empty folders) and re-index."""
    present = sorted(set(ds.targets))
    if present == list(range(len(ds.classes))):
        return ds
    local = {c: i for i, c in enumerate(present)}
    return DataSet(ds.items, [local[t] for t in ds.targets], [ds.classes[c] for c in present],
                   ds.source, ds.spec, [ds.display[c] for c in present], ds.ids)


# ------------------------------------------------------------------ matching a model's classes
def match_classes(ds: DataSet, model_labels: Sequence[str] | None) -> tuple[list[int | None], list[str]]:
    """Per data-set class, the model's class index (None where it has no such class), matched by
    name (case, spaces, underscores, hyphens ignored; ImageNet synsets and the first alias of an
    ImageNet label also match); and the data-set classes it misses."""
    if not model_labels:
        return [None] * len(ds.classes), list(ds.display)
    idx: list[int | None] = []
    for key, disp in zip(ds.classes, ds.display):
        i = datasets._class_index(key, model_labels)
        if i is None and disp != key:
            i = datasets._class_index(disp, model_labels)
        idx.append(i)
    missing = [ds.display[c] for c, i in enumerate(idx) if i is None]
    return idx, missing
