"""Calibration and hold-out images for INT8 (and the FP16 parity check).

``load_calibration(calib, spec, ...)`` reads a flat folder or an ImageFolder tree, skips and counts
corrupt images (a warning, not a crash), splits off a hold-out part for the accuracy guard (so the
quantized model is never judged on the images it was calibrated on when there are enough), and
preprocesses both parts with the artifact's own preprocessing. With no folder it uses a small set
of redistributable natural images that scikit-image ships, with a warning that the user's own
photos calibrate better.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CalibrationError, ImageError, MissingDependencyError

DEFAULT_CALIB_SIZE = 64
MAX_HOLDOUT = 200

# scikit-image's bundled (no download) natural photographs; all redistributable (see
# skimage/data/README.txt). Grey ones are converted to RGB.
SKIMAGE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "camera", "coins", "moon", "grass", "gravel",
                  "brick", "motorcycle_left", "motorcycle_right")


class CalibrationWarning(UserWarning):
    """Something about the calibration data the user should know (default set, skipped files...)."""


@dataclass
class CalibrationSet:
    calib: np.ndarray                     # NCHW float32, images used for calibration
    holdout: np.ndarray                   # NCHW float32, images used to judge the result
    calib_names: list[str]
    holdout_names: list[str]
    holdout_labels: list[int | None]      # index into manifest labels when known
    source: str                           # folder path or "skimage-default"
    found: int                            # image files found
    corrupt: list[str] = field(default_factory=list)
    sha256: str = ""
    holdout_is_calib: bool = False        # too few images to keep them apart
    notes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        n = len(self.holdout_labels)
        return n > 0 and sum(x is not None for x in self.holdout_labels) >= max(1, n // 2)

    def summary(self) -> dict:
        return {"source": self.source, "found": self.found, "corrupt_skipped": len(self.corrupt),
                "corrupt_files": self.corrupt[:20], "calib_images": len(self.calib_names),
                "holdout_images": len(self.holdout_names),
                "holdout_is_calibration": self.holdout_is_calib,
                "sha256": self.sha256, "labelled_holdout": self.labelled, "notes": self.notes}


def _warn(msg: str, notes: list[str]) -> None:
    notes.append(msg)
    warnings.warn(msg, CalibrationWarning, stacklevel=3)


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def label_index(name: str, labels: list[str] | None) -> int | None:
    """Index of a class name (folder name or photo file name ``<synset>_<label>``) in ``labels``."""
    if not labels:
        return None
    table: dict[str, int] = {}
    for i, lab in enumerate(labels):
        for key in (lab, lab.split(",")[0]):
            table.setdefault(_norm(key), i)
    cands = [name]
    if re.match(r"^n\d{8}_", name):
        cands.append(name.split("_", 1)[1])
    for c in cands:
        if _norm(c) in table:
            return table[_norm(c)]
    return None


def _holdout_count(n: int) -> int:
    if n < 4:
        return 0
    return min(MAX_HOLDOUT, max(n // 4, min(8, n // 2)))


def _spread(idx: list[int], k: int) -> tuple[list[int], list[int]]:
    """Pick ``k`` of ``idx`` evenly spread (so hold-out covers all classes of a sorted tree)."""
    if k <= 0:
        return [], list(idx)
    pos = sorted(set(np.linspace(0, len(idx) - 1, k).round().astype(int).tolist()))
    chosen = [idx[p] for p in pos]
    rest = [i for i in idx if i not in set(chosen)]
    return chosen, rest


def calibration_images(folder: Path) -> list[Path]:
    """The image files of a calibration folder, or a CalibrationError saying what is wrong with
    it. Export checks this before building the model (a bad --calib fails in a second, not after
    the whole FP32 export)."""
    from ..runtime.preprocess import list_images

    folder = Path(folder).expanduser()
    if not folder.exists():
        raise CalibrationError(f"calibration folder {folder} does not exist; give a folder of "
                               f"images (flat or ImageFolder) with --calib DIR.")
    if not folder.is_dir():
        raise CalibrationError(f"--calib {folder} is not a directory; give a folder of images.")
    try:
        paths = list_images(folder)
    except PermissionError as e:
        raise CalibrationError(f"calibration folder {folder} is not readable: {e.strerror}") from e
    if not paths:
        raise CalibrationError(f"calibration folder {folder} has no image files (.jpg .png .bmp "
                               f".webp .tif .gif, searched recursively).")
    return paths


def _folder_items(folder: Path, notes: list[str], limit: int | None = None
                  ) -> tuple[list[tuple[str, Any, str]], list[str], int]:
    """(name, PIL image, label name) for every decodable image; plus corrupt names and count."""
    from ..runtime.preprocess import load_image

    paths = calibration_images(folder)
    found = len(paths)
    if limit is not None and found > limit:
        # a big folder: decode an evenly spread subset (all classes of an ImageFolder), not all
        pick, _ = _spread(list(range(found)), limit)
        paths = [paths[i] for i in pick]
        notes.append(f"{found} images found; {limit} evenly spread ones were read")
    items, corrupt = [], []
    for p in paths:
        try:
            img = load_image(p)
        except (ImageError, OSError):
            corrupt.append(str(p.relative_to(folder)))
            continue
        label = p.parent.name if p.parent != folder else p.stem
        items.append((str(p.relative_to(folder)), img, label))
    if corrupt:
        _warn(f"skipped {len(corrupt)} of {len(paths)} calibration images that cannot be decoded "
              f"(e.g. {corrupt[0]})", notes)
    if not items:
        raise CalibrationError(f"none of the {len(paths)} image files in {folder} could be "
                               f"decoded; the calibration folder is unusable.")
    return items, corrupt, found


def _skimage_items(notes: list[str]) -> list[list[tuple[str, Any, str]]]:
    """Default images grouped per source photo (views of one photo stay on one side of the split)."""
    try:
        import skimage.data as skd
    except ImportError as e:
        raise MissingDependencyError("scikit-image", "export", "the default calibration images") from e
    from PIL import Image

    groups = []
    for name in SKIMAGE_IMAGES:
        try:
            if name.startswith("motorcycle_"):
                left, right, _ = skd.stereo_motorcycle()
                arr = left if name.endswith("left") else right
            else:
                arr = getattr(skd, name)()
        except Exception:  # a stripped-down scikit-image install: use what is there
            continue
        img = Image.fromarray(np.asarray(arr)).convert("RGB")
        w, h = img.size
        views = [("", img), ("flip", img.transpose(Image.FLIP_LEFT_RIGHT))]
        cw, ch = int(w * 0.6), int(h * 0.6)
        for tag, (x, y) in {"tl": (0, 0), "tr": (w - cw, 0), "bl": (0, h - ch),
                            "br": (w - cw, h - ch)}.items():
            views.append((tag, img.crop((x, y, x + cw, y + ch))))
        groups.append([(f"skimage:{name}{'-' + t if t else ''}", v, name) for t, v in views])
    if not groups:
        raise CalibrationError("no --calib folder given and scikit-image's sample images are "
                               "unavailable; pass --calib DIR with some of your own photos.")
    return groups


def _hash_images(items) -> str:
    h = hashlib.sha256()
    for name, img, _ in sorted(items, key=lambda t: t[0]):
        h.update(name.encode())
        h.update(hashlib.sha256(np.asarray(img).tobytes()).digest())
    return h.hexdigest()


def load_calibration(calib: str | os.PathLike | None, spec: dict, *,
                     calib_size: int | None = None, labels: list[str] | None = None,
                     progress: Callable[[str], None] | None = None) -> CalibrationSet:
    """Calibration + hold-out images, preprocessed with ``spec`` (manifest["preprocess"])."""
    from ..runtime.preprocess import preprocess_image

    notes: list[str] = []
    if calib_size is not None and int(calib_size) < 1:
        raise CalibrationError(f"--calib-size must be at least 1 (got {calib_size}).")
    want = int(calib_size) if calib_size is not None else DEFAULT_CALIB_SIZE
    if calib is None:
        _warn("no --calib folder given: calibrating on scikit-image's sample photos; your own "
              "photos (--calib DIR, ~100-500 images like the ones you will run on) calibrate "
              "better", notes)
        groups = _skimage_items(notes)
        n_hold_groups = max(1, len(groups) // 4)
        hold_idx, cal_idx = _spread(list(range(len(groups))), n_hold_groups)
        hold = [it for g in hold_idx for it in groups[g]]
        cal = [it for g in cal_idx for it in groups[g]]
        found, corrupt, source = sum(len(g) for g in groups), [], "skimage-default"
    else:
        folder = Path(calib).expanduser()
        items, corrupt, found = _folder_items(folder, notes, limit=2 * (want + MAX_HOLDOUT))
        source = str(folder)
        k = _holdout_count(len(items))
        hi, ci = _spread(list(range(len(items))), k)
        hold = [items[i] for i in hi]
        cal = [items[i] for i in ci]
    holdout_is_calib = False
    if len(cal) < want and calib_size is not None:
        _warn(f"--calib-size {want} is larger than the {len(cal)} calibration images available "
              f"({len(hold)} more are held out to check accuracy); using all {len(cal)}", notes)
    if len(cal) > want:
        pick, _ = _spread(list(range(len(cal))), want)
        cal = [cal[i] for i in pick]
    if not hold:
        hold = list(cal)
        holdout_is_calib = True
        _warn(f"only {len(cal)} usable image(s): the accuracy guard measures on the calibration "
              f"images themselves (give more images for an independent check)", notes)
    if progress:
        progress(f"preprocessing {len(cal)} calibration + {len(hold)} hold-out images")
    try:
        xc = np.stack([preprocess_image(img, spec) for _, img, _ in cal])
        xh = np.stack([preprocess_image(img, spec) for _, img, _ in hold])
    except ImageError as e:  # pragma: no cover - images were decoded above
        raise CalibrationError(f"calibration image cannot be preprocessed: {e}") from e
    return CalibrationSet(
        calib=xc.astype(np.float32), holdout=xh.astype(np.float32),
        calib_names=[n for n, _, _ in cal], holdout_names=[n for n, _, _ in hold],
        holdout_labels=[label_index(lab, labels) for _, _, lab in hold],
        source=source, found=found, corrupt=corrupt, sha256=_hash_images(cal),
        holdout_is_calib=holdout_is_calib, notes=notes)


class ArrayDataReader:
    """onnxruntime.quantization CalibrationDataReader over an NCHW array (small batches)."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 1):
        self.input_name, self.data, self.batch = input_name, data, batch
        self._i = 0
        self._end = len(data)

    def get_next(self):
        if self._i >= self._end:
            return None
        x = self.data[self._i:min(self._i + self.batch, self._end)]
        self._i += self.batch
        return {self.input_name: x}

    def rewind(self):
        self._i = 0
        self._end = len(self.data)

    def set_range(self, start_index: int, end_index: int):
        """Used by quantize_static's CalibStridedMinMax (index in batches)."""
        self._i = start_index * self.batch
        self._end = min(len(self.data), end_index * self.batch)

    def __len__(self):
        return (len(self.data) + self.batch - 1) // self.batch

    def __iter__(self):
        self.rewind()
        while (b := self.get_next()) is not None:
            yield b
