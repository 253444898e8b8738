"""Shared fixtures. No network; real photos only from the folder given (skip when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "photos"


def _photos_dir() -> Path | None:
    p = Path(os.environ.get("EDGEINFER_PHOTOS", DEFAULT_PHOTOS))
    return p if p.is_dir() and any(p.iterdir()) else None


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    """The real labelled photos (../shared/data/photos or $EDGEINFER_PHOTOS)."""
    p = _photos_dir()
    if p is None:
        pytest.skip("real photos folder absent (set EDGEINFER_PHOTOS or place ../shared/data/photos)")
    return p


@pytest.fixture(scope="session")
def photo_paths(photos_dir) -> list[Path]:
    return sorted(x for x in photos_dir.iterdir() if x.suffix.lower() in (".jpeg", ".jpg", ".png"))


def make_image(seed: int, size=(320, 240), mode="RGB"):
    """A generated natural-ish image (smooth gradients + shapes + noise), deterministic."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([(x / w) * 255 * rng.random(), (y / h) * 255 * rng.random(),
                     ((x + y) / (w + h)) * 255 * rng.random()], -1)
    img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        d.ellipse([x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))],
                  fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img.convert(mode)


@pytest.fixture
def generated_images_dir(tmp_path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    for i in range(8):
        make_image(i).save(d / f"img{i}.jpg", quality=90)
    return d
