"""Torch-free preprocessing from the manifest's ``preprocess`` section.

Matches timm's / open_clip's eval transform: resize the shorter side to ``resize_size`` with
the recipe's interpolation (PIL, as torchvision does for PIL images), center crop to
``input_size``, scale to [0, 1], normalize with mean/std, NCHW float32.

Speed, without giving up exactness:

- JPEG draft decoding: a photo much larger than the target is decoded at 1/2, 1/4 or 1/8 scale
  in the DCT domain (``Image.draft``), but never below ``DRAFT_SAFETY`` x the resize size, so the
  final antialiased resize still sees plenty of pixels (mean abs difference vs a full decode is
  ~0.1/255, measured in tests/test_preprocess.py).
- Decoding runs in a thread pool for batches (PIL releases the GIL while decoding/resizing).
- Normalisation is one fused multiply-add per pixel written straight into the batch buffer.

Input hygiene: EXIF orientation; grayscale, RGBA/LA/P with transparency (composited on white,
as a photo viewer shows them), CMYK, 16-bit and palette images; empty, corrupt, truncated and
non-image files raise ``ImageError``; so do images above ``Image.MAX_IMAGE_PIXELS`` pixels
(decompression bombs; PIL's own limit, ``None`` disables it), checked before decoding.
"""
from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError

_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
           "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}

#: draft-decode JPEGs only down to this multiple of the resize size (quality safety margin)
DRAFT_SAFETY = 2.0


def _open(src: Any) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return Image.fromarray(_array_to_uint8(src))
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError("empty image data (0 bytes)")
        return Image.open(io.BytesIO(bytes(src)))
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.exists():
            raise ImageError(f"image file {p} does not exist")
        if p.is_dir():
            raise ImageError(f"{p} is a directory, not an image file")
        if p.stat().st_size == 0:
            raise ImageError(f"image file {p} is empty (0 bytes)")
        return Image.open(p)
    raise ImageError(f"unsupported image input of type {type(src).__name__}; "
                     f"give a path, bytes, a PIL image or an HxWxC uint8 array")


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """HxW / HxWx1 / HxWx3 / HxWx4 arrays. uint8 as is; uint16 scaled; floats in [0, 1] scaled
    by 255, other floats clipped to [0, 255]."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {arr.shape} is not an image (expected HxW, HxWx3 or HxWx4)")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float32)
        if not np.isfinite(a).all():
            raise ImageError("array image contains NaN or infinity")
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(a, 0, 255).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return np.clip(arr.astype(np.int64) * (255 if arr.dtype == np.bool_ else 1), 0, 255).astype(np.uint8)
    raise ImageError(f"array of dtype {arr.dtype} is not an image")


def _check_bomb(img: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    w, h = img.size
    if limit and w * h > limit:
        raise ImageError(f"refused: {w}x{h} = {w * h} pixels exceeds the decompression-bomb limit "
                         f"of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)")


def load_image(src: Any, *, draft_size: int | None = None) -> Image.Image:
    """Open a path / bytes / PIL image / HxWxC uint8 array as an RGB PIL image (EXIF-oriented).

    ``draft_size``: JPEGs whose shorter side is at least twice this are decoded at a reduced
    scale whose shorter side stays >= ``draft_size`` (see ``Image.draft``).
    """
    try:
        img = _open(src)
        _check_bomb(img)
        full = img.size
        scale = 1
        # draft only images we opened (never mutate a caller's PIL image)
        if (draft_size and not isinstance(src, Image.Image) and getattr(img, "format", None) == "JPEG"
                and img.mode in ("RGB", "L")):
            # draft keeps both sides >= the request; ask for a square so the shorter side is kept
            if min(img.size) >= 2 * draft_size:
                img.draft(img.mode, (int(draft_size), int(draft_size)))
                scale = max(1, round(full[0] / img.size[0]))
        swap = scale > 1 and img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        img.load()
        img = to_rgb(ImageOps.exif_transpose(img))
        if scale > 1:
            # the draft image covers the full image's extent at 1/scale; remember that extent so
            # the resize maps exactly the same region as a full decode would (no sub-pixel shift)
            fw, fh = (full[1], full[0]) if swap else full
            img.info["edgeinfer_extent"] = (fw, fh, fw / scale, fh / scale)
        return img
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused: image is too large (decompression bomb guard): {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, MemoryError) as e:
        raise ImageError(f"cannot decode image {_describe(src)}: {e}") from e


def _describe(src: Any) -> str:
    return str(src) if isinstance(src, (str, os.PathLike)) else f"<{type(src).__name__}>"


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any PIL mode: alpha composited on white, 16-bit scaled, palette/CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if arr.size and arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255, 0, 255).round().astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def resize_crop(img: Image.Image, spec: dict) -> Image.Image:
    """torchvision ``Resize(resize_size)`` (shorter side) + ``CenterCrop(input_size)``."""
    _, th, tw = spec["input_size"]
    short = int(spec["resize_size"])
    extent = img.info.get("edgeinfer_extent")
    # geometry from the full-resolution size (a draft-decoded JPEG is smaller than that)
    w, h = extent[:2] if extent else img.size
    box = (0.0, 0.0, extent[2], extent[3]) if extent else None
    interp = _INTERP[spec.get("interpolation", "bilinear")]
    if (w <= h and w != short) or (h < w and h != short) or box is not None:
        if w <= h:
            nw, nh = short, int(short * h / w)
        else:
            nw, nh = int(short * w / h), short
        img = img.resize((nw, nh), interp, box=box)
        w, h = nw, nh
    if w < tw or h < th:  # torchvision pads with zeros when the crop is larger than the image
        padded = Image.new("RGB", (max(w, tw), max(h, th)))
        padded.paste(img, ((max(w, tw) - w) // 2, (max(h, th) - h) // 2))
        img, w, h = padded, *padded.size
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def _scale_bias(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    std = np.asarray(spec["std"], np.float32)
    mean = np.asarray(spec["mean"], np.float32)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    bias = (-mean / std).astype(np.float32)
    return scale.reshape(3, 1, 1), bias.reshape(3, 1, 1)


def normalize(arr_hwc_uint8: np.ndarray, spec: dict, out: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 -> CHW float32 ((x/255 - mean) / std), written into ``out`` when given."""
    scale, bias = _scale_bias(spec)
    chw = arr_hwc_uint8.transpose(2, 0, 1)
    if out is None:
        out = np.empty(chw.shape, np.float32)
    np.multiply(chw, scale, out=out, casting="unsafe")
    out += bias
    return out


def _draft_size(spec: dict) -> int:
    return int(int(spec["resize_size"]) * DRAFT_SAFETY)


def preprocess_image(src: Any, spec: dict, *, draft: bool = True) -> np.ndarray:
    """One image -> CHW float32."""
    img = load_image(src, draft_size=_draft_size(spec) if draft else None)
    return normalize(np.asarray(resize_crop(img, spec)), spec)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            n = min(8, max(1, (os.cpu_count() or 1)))
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="edgeinfer-decode")
        return _POOL


def preprocess_batch(images: Sequence[Any], spec: dict, *, workers: int | None = None,
                     draft: bool = True) -> tuple[np.ndarray, list[ImageError | None]]:
    """Images -> (NCHW float32 batch of the good ones, per-input error or None).

    Bad images don't stop the batch: their error is returned in their slot and they are left
    out of the array (``len(batch) == errors.count(None)``). ``workers``: decode threads
    (None: a shared pool when there is more than one image; 0 or 1: inline).
    """
    images = list(images)
    _, th, tw = spec["input_size"]
    ds = _draft_size(spec) if draft else None

    def work(src):
        try:
            return np.asarray(resize_crop(load_image(src, draft_size=ds), spec)), None
        except ImageError as e:
            return None, e

    if len(images) > 1 and (workers is None or workers > 1):
        if workers is None:
            results = list(_pool().map(work, images))
        else:
            with ThreadPoolExecutor(max_workers=workers) as ex:
                results = list(ex.map(work, images))
    else:
        results = [work(i) for i in images]
    errors = [e for _, e in results]
    good = [a for a, _ in results if a is not None]
    batch = np.empty((len(good), 3, th, tw), np.float32)
    for i, a in enumerate(good):
        normalize(a, spec, out=batch[i])
    return batch, errors


def preprocess_images(images: Sequence[Any] | Iterable[Any], spec: dict, *,
                      workers: int | None = None) -> np.ndarray:
    """Images -> NCHW float32 batch. Raises ImageError on the first bad image."""
    batch, errors = preprocess_batch(list(images), spec, workers=workers)
    for e in errors:
        if e is not None:
            raise e
    return batch


def list_images(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (flat or ImageFolder), sorted."""
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts)
