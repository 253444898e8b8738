"""Generated test images: natural-ish RGB pictures (gradients, shapes, noise), deterministic.

The one generator for export parity checks, the bench's fidelity-only runs and the tests; it
lives here, torch-free, so both the export side and the bench can use it.
"""
from __future__ import annotations

import numpy as np

N_GENERATED = 16


def synthetic_image(rng: "np.random.Generator", w: int, h: int):
    """One natural-ish RGB image (smooth gradients + noise + filled ellipses) from ``rng``."""
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([(x / w) * 255 * rng.random(), (y / h) * 255 * rng.random(),
                     ((x + y) / (w + h)) * 255 * rng.random()], -1)
    img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        d.ellipse([x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))],
                  fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img


def generated_images(n: int = N_GENERATED, *, seed: int = 0) -> list:
    """Deterministic natural-ish RGB images (gradients, shapes, noise) of varied sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        out.append(synthetic_image(rng, w, h))
    return out
