"""Torch-free preprocessing from the manifest's ``preprocess`` section.

Matches timm's / open_clip's eval transform: resize the shorter side to ``resize_size`` with
the recipe's interpolation (PIL, as torchvision does for PIL images), center crop to
``input_size``, scale to [0, 1], normalize with mean/std, NCHW float32.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError

_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
           "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def load_image(src: Any) -> Image.Image:
    """Open a path / bytes / PIL image / HxWxC uint8 array as an RGB PIL image (EXIF-oriented)."""
    try:
        if isinstance(src, Image.Image):
            img = src
        elif isinstance(src, np.ndarray):
            arr = src
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
        elif isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) == 0:
                raise ImageError("empty image data (0 bytes)")
            img = Image.open(io.BytesIO(bytes(src)))
        elif isinstance(src, (str, os.PathLike)):
            p = Path(src)
            if not p.exists():
                raise ImageError(f"image file {p} does not exist")
            if p.stat().st_size == 0:
                raise ImageError(f"image file {p} is empty (0 bytes)")
            img = Image.open(p)
        else:
            raise ImageError(f"unsupported image input of type {type(src).__name__}; "
                             f"give a path, bytes, a PIL image or an HxWxC uint8 array")
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused: image is too large (decompression bomb guard): {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot decode image {_describe(src)}: {e}") from e


def _describe(src: Any) -> str:
    return str(src) if isinstance(src, (str, os.PathLike)) else f"<{type(src).__name__}>"


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any PIL mode: alpha composited on white, 16-bit scaled, palette/CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray((arr / hi * 255).round().astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def resize_crop(img: Image.Image, spec: dict) -> Image.Image:
    _, th, tw = spec["input_size"]
    short = int(spec["resize_size"])
    w, h = img.size
    interp = _INTERP[spec.get("interpolation", "bilinear")]
    if (w <= h and w != short) or (h < w and h != short):
        if w <= h:
            nw, nh = short, int(short * h / w)
        else:
            nw, nh = int(short * w / h), short
        img = img.resize((nw, nh), interp)
        w, h = nw, nh
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def normalize(arr_hwc_uint8: np.ndarray, spec: dict) -> np.ndarray:
    mean = np.asarray(spec["mean"], np.float32) * 255.0
    std = np.asarray(spec["std"], np.float32) * 255.0
    x = (arr_hwc_uint8.astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(src: Any, spec: dict) -> np.ndarray:
    """One image -> CHW float32."""
    return normalize(np.asarray(resize_crop(load_image(src), spec)), spec)


def preprocess_images(images: Sequence[Any] | Iterable[Any], spec: dict) -> np.ndarray:
    """Images -> NCHW float32 batch. Raises ImageError on the first bad image."""
    return np.stack([preprocess_image(i, spec) for i in images])


def list_images(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (flat or ImageFolder), sorted."""
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts)
