"""Training data: a data set SPEC -> class names + images + targets, seeded splits, and tensors.

SPEC is what ``edgeinfer compare`` takes (``edgeinfer.evaluate.datasets.load_labelled``): an
ImageFolder (``DIR/<class>/<image>``), CIFAR-10 python batches, Fashion-MNIST idx files or a CSV
pixel table. Here the classes come from the data set itself (a new head gets them), so they are
discovered first and then handed to the shared loader.

Images are preprocessed once with the runtime's own ``preprocess_image`` and the artifact's
preprocessing spec, so a model is trained on exactly the tensors it will see after export.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InvalidOptionError

# Above this many bytes of float32 input the data set is not held in memory at once.
MAX_IN_MEMORY_BYTES = 3 << 30


@dataclass
class TrainData:
    items: list            # image paths or HxWx3 uint8 arrays
    targets: np.ndarray    # int64 [N]
    classes: list[str]
    source: str            # "imagefolder" | "cifar10" | "fashion-mnist" | "csv"
    spec: str              # what the user gave

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: Sequence[int]) -> "TrainData":
        idx = list(idx)
        return TrainData([self.items[i] for i in idx], self.targets[idx], self.classes,
                         self.source, self.spec)


def discover_classes(spec: str | Path) -> list[str]:
    """The class names a data set SPEC defines, in index order."""
    from ..evaluate import datasets

    p = Path(spec)
    if not p.exists():
        raise datasets.DatasetError(f"training data {p} does not exist; give an ImageFolder "
                             f"(DIR/<class>/<image>), CIFAR-10 batches, Fashion-MNIST idx files or "
                             f"a CSV pixel table")
    if p.is_file() and p.suffix.lower() == ".csv":
        from ..evaluate.dataset_spec import csv_class_names

        return csv_class_names(p)
    if (p.is_file() and p.name.startswith(("test_batch", "data_batch"))) or \
            (p.is_dir() and (p / "test_batch").exists()):
        # the shared loader maps the batches.meta names onto these (same order)
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"]
    if p.is_dir() and any(p.glob("*-idx3-ubyte*")):
        return list(datasets.FASHION_MNIST_CLASSES)
    if p.is_dir():
        from ..runtime.preprocess import list_images

        classes = sorted(d.name for d in p.iterdir() if d.is_dir() and list_images(d))
        if not classes:
            raise datasets.DatasetError(f"{p} has no class sub-folders with images; fine-tuning needs an "
                                 f"ImageFolder (DIR/<class>/<image>) or another labelled SPEC")
        return classes
    raise datasets.DatasetError(f"{p}: not a data set edgeinfer can read (ImageFolder, CIFAR-10 batches, "
                         f"Fashion-MNIST idx files, CSV pixel table)")


def load_train_data(spec: str | Path) -> TrainData:
    """Class names, items and targets of a data set SPEC (see module docstring)."""
    from ..evaluate.datasets import DatasetError, load_labelled

    classes = discover_classes(spec)
    ls = load_labelled(spec, classes)
    targets = np.asarray(ls.targets, dtype=np.int64)
    present = np.unique(targets)
    if len(present) < 2:
        raise DatasetError(f"{spec}: {len(present)} class(es) with images; a classifier needs at "
                           f"least 2")
    return TrainData(list(ls.paths), targets, list(ls.classes), ls.source, str(spec))


# ---------------------------------------------------------------- splits
def stratified_split(targets: np.ndarray, *, val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): ``val_fraction`` of every class (at least one image of a class
    with two or more), drawn with a seeded generator."""
    if not 0.0 < val_fraction < 1.0:
        raise InvalidOptionError(f"--val-split must be between 0 and 1 (got {val_fraction})")
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        k = int(round(val_fraction * len(idx)))
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        va.extend(idx[:k].tolist())
        tr.extend(idx[k:].tolist())
    return np.sort(np.asarray(tr, np.int64)), np.sort(np.asarray(va, np.int64))


def stratified_folds(targets: np.ndarray, *, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, val) index pairs; every image is in exactly one val fold, classes spread evenly."""
    if folds < 2:
        raise InvalidOptionError(f"--folds must be at least 2 (got {folds})")
    counts = np.bincount(targets)
    if counts[counts > 0].min() < folds:
        raise InvalidOptionError(f"--folds {folds}: the smallest class has only "
                                 f"{int(counts[counts > 0].min())} images; use fewer folds")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(targets), np.int64)
    offset = 0
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        # continue the round robin across classes so fold sizes differ by at most one
        fold_of[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(folds)]


# ---------------------------------------------------------------- tensors
def preprocess_items(items: list, spec: dict, *, progress: Callable[[str], None] | None = None
                     ) -> tuple[np.ndarray, list[int]]:
    """NCHW float32 for every decodable item (runtime preprocessing) and the indices kept."""
    from ..runtime.preprocess import preprocess_batch

    c, h, w = spec["input_size"]
    need = len(items) * c * h * w * 4
    if need > MAX_IN_MEMORY_BYTES:
        raise InvalidOptionError(f"{len(items)} images at {h}x{w} need {need / 2**30:.1f} GiB as "
                                 f"float32; fine-tuning holds the preprocessed set in memory (limit "
                                 f"{MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB). Use a smaller subset.")
    out = np.empty((len(items), c, h, w), np.float32)
    kept: list[int] = []
    step = 256
    for s in range(0, len(items), step):
        batch, errors = preprocess_batch(items[s:s + step], spec)
        j = 0
        for i, e in enumerate(errors):
            if e is None:
                out[len(kept)] = batch[j]
                kept.append(s + i)
                j += 1
        if progress:
            progress(f"preprocessed {min(s + step, len(items))}/{len(items)} images")
    return out[:len(kept)], kept
