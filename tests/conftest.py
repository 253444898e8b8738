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
    from edgeinfer.export.parity import synthetic_image

    return synthetic_image(np.random.default_rng(seed), *size).convert(mode)


@pytest.fixture
def generated_images_dir(tmp_path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    for i in range(8):
        make_image(i).save(d / f"img{i}.jpg", quality=90)
    return d
