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

from ..errors import EdgeInferError, InvalidOptionError
from ..runtime.preprocess import list_images

_SYNSET = re.compile(r"^(n\d{8})(?:_|$)")


class DatasetError(EdgeInferError, ValueError):
    """A labelled dataset that cannot be used (empty, classes that match no label...)."""


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
    paths: list[Path]
    targets: list[int]
    source: str                 # "imagefolder" | "synset-names"
    classes: list[str]          # class names for the targets' indices (the artifact's labels)

    def __len__(self) -> int:
        return len(self.paths)


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
    if not class_names:
        raise InvalidOptionError("this artifact has no class labels (e.g. an embedding model); "
                                 "labelled metrics need a classifier. Use fidelity instead "
                                 "(omit --labels).")
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
