"""Torch-free preprocessing from the manifest's ``preprocess`` section.

Matches timm's / open_clip's eval transform: resize the shorter side to ``resize_size`` with
the recipe's interpolation (PIL, as torchvision does for PIL images), center crop to
``input_size``, scale to [0, 1], normalize with mean/std, NCHW float32.

Speed, without giving up exactness:

- JPEG draft decoding: a photo much larger than the target is decoded at 1/2, 1/4 or 1/8 scale
  in the DCT domain (``Image.draft``), but never below ``DRAFT_SAFETY`` x the resize size, so the
  final antialiased resize still sees plenty of pixels (mean abs difference vs a full decode is
  ~0.1/255, measured in tests/test_preprocess.py). Other formats get the same treatment after
  decoding with ``Image.reduce`` (box filter), before any colour conversion.
- The resize computes only the pixels the center crop keeps (``resize(..., box=...)``: the same
  sampling positions and filter support as resizing the whole image and cropping).
- Decoding runs in a thread pool for batches (PIL releases the GIL while decoding/resizing).
- Normalisation is one fused multiply-add per pixel written straight into the batch buffer.

Input hygiene (uploads are hostile): only the formats a photo library has are opened
(``ACCEPTED_FORMATS``, recognised by content, never by file name); the work per image is bounded
from the header before any pixel is decoded: zero-sized images, aspect ratios beyond
``MAX_ASPECT``, more than ``Image.MAX_IMAGE_PIXELS`` pixels, or a decode + conversion estimate
above ``MAX_DECODE_BYTES`` are refused. EXIF orientation; grayscale, RGBA/LA/P with transparency
(composited on white, as a photo viewer shows them), CMYK, 16-bit and palette images. Every
failure, whatever raised it, is an ``ImageError`` with a deterministic message (no object
addresses), and every file the decoder opened is closed, also on failure.
"""
from __future__ import annotations

import io
import os
import re
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from ..errors import ImageError

_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
           "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}

#: draft-decode JPEGs only down to this multiple of the resize size (quality safety margin)
DRAFT_SAFETY = 2.0

#: Pillow format ids opened at all (by content); EPS (Ghostscript), PSD, ICO, the scientific
#: formats etc. are refused. HEIF needs the pillow-heif plugin; AVIF is built into Pillow >= 11.2.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
#: longer side / shorter side above this is not a photo (a 1 x 40000 PNG of 157 bytes is)
MAX_ASPECT = 100
#: estimated bytes to decode one image and convert it to RGB (Pillow keeps 1 or 4 bytes per
#: pixel; conversions make copies): what no single input may exceed (the process stays within
#: ~256 MB of growth per image, measured by benchmarks/reliability.py)
MAX_DECODE_BYTES = 200 << 20
#: resized images up to this many pixels are resized whole then cropped (exact); larger ones
#: (extreme aspect ratios) only where the crop keeps pixels
FULL_RESIZE_PIXELS = 1 << 22
#: a numpy array input larger than this many pixels is refused (HxWx4 uint8 copy at most)
MAX_ARRAY_PIXELS = 40_000_000

_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")
_HEIF_TRIED = False


def _register_plugins() -> None:
    """HEIF/AVIF via pillow-heif when it is installed (optional; photos from phones)."""
    global _HEIF_TRIED
    if _HEIF_TRIED:
        return
    _HEIF_TRIED = True
    try:
        import pillow_heif  # type: ignore[import-not-found]

        pillow_heif.register_heif_opener()
    except Exception:  # noqa: BLE001 - not installed or broken: HEIF is simply not accepted
        pass


def _openable() -> list[str]:
    """The accepted formats Pillow can open here (MPO comes from the JPEG opener; HEIF only
    with its plugin)."""
    Image.init()
    return [f for f in ACCEPTED_FORMATS if f in Image.OPEN]


def _clean(msg: str) -> str:
    """The same bad input gives the same message: no ``<... object at 0x7f...>`` addresses."""
    msg = _ADDR.sub("", msg)
    return msg if len(msg) <= 500 else msg[:497] + "..."


def _open(src: Any) -> tuple[Image.Image, Any]:
    """(image, file object we opened and must close, or None)."""
    if isinstance(src, Image.Image):
        if src.format is not None and src.format not in ACCEPTED_FORMATS:
            raise ImageError(f"refused: {src.format} images are not accepted (accepted: "
                             f"{', '.join(ACCEPTED_FORMATS)})")
        return src, None
    if isinstance(src, np.ndarray):
        return Image.fromarray(_array_to_uint8(src)), None
    _register_plugins()
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError("empty image data (0 bytes)")
        fp: Any = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        p = Path(src)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise ImageError(f"image file {p} does not exist") from None
        except OSError as e:
            raise ImageError(f"cannot read image file {p}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{p} is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO: reading would never end
            raise ImageError(f"{p} is not a regular file")
        if st.st_size == 0:
            raise ImageError(f"image file {p} is empty (0 bytes)")
        try:
            fp = open(p, "rb")  # noqa: SIM115 - closed by load_image, also on failure
        except OSError as e:
            raise ImageError(f"cannot read image file {p}: {e.strerror}") from None
    else:
        raise ImageError(f"unsupported image input of type {type(src).__name__}; "
                         f"give a path, bytes, a PIL image or an HxWxC uint8 array")
    try:
        return Image.open(fp, formats=_openable()), fp
    except Image.UnidentifiedImageError:
        fp.close()
        raise ImageError(f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)}): "
                         f"{_describe(src)}") from None
    except BaseException:
        fp.close()
        raise


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """HxW / HxWx1 / HxWx3 / HxWx4 arrays. uint8 as is; uint16 scaled; floats in [0, 1] scaled
    by 255, other floats clipped to [0, 255]."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {arr.shape} is not an image (expected HxW, HxWx3 or HxWx4)")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(f"array of shape {arr.shape} is an empty image")
    if h * w > MAX_ARRAY_PIXELS:
        raise ImageError(f"refused: array image of {w}x{h} pixels is larger than "
                         f"{MAX_ARRAY_PIXELS} pixels")
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


def _check_shape(img: Image.Image) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"refused: the image is {w}x{h} pixels (zero width or height)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(f"refused: {w}x{h} has an aspect ratio above {MAX_ASPECT}:1; not a "
                         f"photo (and resizing it would take gigabytes)")


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1   # Pillow stores "1" as one byte per pixel
    if mode.startswith("I;16"):
        return 2
    return 4       # RGB, RGBA, CMYK, I, F, ...: 4 bytes per pixel in Pillow's memory


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _conversion_bytes_per_pixel(mode: str, transparency: bool) -> int:
    """Peak extra bytes per pixel of ``to_rgb`` at full size."""
    if mode == "RGB":
        return 0
    if mode in _ALPHA_MODES or (mode == "P" and transparency):
        return 16  # RGBA copy, white RGBA background, composite, RGB
    if mode in _WIDE_MODES:
        return 10  # float32 array, uint8 array, L image, RGB image
    return 4


def _reducible(mode: str) -> bool:
    return mode not in ("1", "P") and not mode.startswith("I;16")


#: decoded rasters alive at once while decoding, per format (default 2)
_DECODE_COPIES = {"WEBP": 4, "AVIF": 4, "HEIF": 4}


def _check_budget(img: Image.Image, reduce_to: int | None) -> int:
    """Refuse, before decoding, what would take more than MAX_DECODE_BYTES; returns the
    ``Image.reduce`` factor to use after decoding (1: none).

    The estimate counts the decoded raster twice (decoder buffers; measured: a 6000x4000 RGBA
    PNG grows the process by 100-180 MB for its 96 MB raster; WebP decodes through an RGBA frame
    buffer: 380 MB for a 5000x5000 one), plus the conversions made at full size: to a mode
    ``reduce`` takes when reducing, else to RGB."""
    w, h = img.size
    px = w * h
    mode = img.mode
    factor = 1
    if reduce_to and min(w, h) >= 2 * reduce_to:
        factor = max(1, min(w, h) // int(reduce_to))
    cost = _DECODE_COPIES.get(img.format or "", 2) * px * _bytes_per_pixel(mode)
    if factor > 1:
        if not _reducible(mode):
            cost += px * (1 if mode == "1" else 4)  # "1" -> "L"; "P" / "I;16" -> 4 bytes
    else:
        cost += px * _conversion_bytes_per_pixel(mode, "transparency" in img.info)
    if cost > MAX_DECODE_BYTES:
        raise ImageError(f"refused: decoding this {w}x{h} {mode} image needs about "
                         f"{cost / 2**20:.0f} MB, above the per-image limit of "
                         f"{MAX_DECODE_BYTES / 2**20:.0f} MB (decompression bomb guard)")
    return factor


_TRANSPOSE = {2: (Image.Transpose.FLIP_LEFT_RIGHT,), 3: (Image.Transpose.ROTATE_180,),
              4: (Image.Transpose.FLIP_TOP_BOTTOM,), 5: (Image.Transpose.TRANSPOSE,),
              6: (Image.Transpose.ROTATE_270,), 7: (Image.Transpose.TRANSVERSE,),
              8: (Image.Transpose.ROTATE_90,)}


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent or unreadable: a broken EXIF block is no reason to
    refuse a photo)."""
    try:
        o = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF
        return 1
    return o if isinstance(o, int) and o in _TRANSPOSE else 1


def _orient(img: Image.Image, orientation: int) -> Image.Image:
    for t in _TRANSPOSE.get(orientation, ()):
        img = img.transpose(t)
    return img


def load_image(src: Any, *, draft_size: int | None = None) -> Image.Image:
    """Open a path / bytes / PIL image / HxWxC uint8 array as an RGB PIL image (EXIF-oriented).

    ``draft_size``: images whose shorter side is at least twice this are decoded (JPEG: in the
    DCT domain) or reduced (others) to a scale whose shorter side stays >= ``draft_size``.
    Raises ``ImageError`` for anything that is not a usable image, whatever went wrong.
    """
    fp = None
    try:
        img, fp = _open(src)
        _check_shape(img)
        _check_bomb(img)
        full = img.size
        scale = 1
        # draft only images we opened (never mutate a caller's PIL image)
        ours = fp is not None
        if (ours and draft_size and img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L")
                and min(img.size) >= 2 * draft_size):
            # draft keeps both sides >= the request; ask for a square so the shorter side is kept
            img.draft(img.mode, (int(draft_size), int(draft_size)))
            scale = max(1, round(full[0] / img.size[0]))
        # a caller's PIL image / array is already in memory (and must come out exactly as
        # before): the decode budget and reduce() are for what we decode ourselves
        factor = _check_budget(img, draft_size if scale == 1 else None) if ours else 1
        orientation = _orientation(img)
        img.load()
        if factor > 1:
            if not _reducible(img.mode):
                img = img.convert("RGBA" if img.mode == "P" and "transparency" in img.info
                                  else "L" if img.mode == "1" else "I" if img.mode.startswith("I;16")
                                  else "RGB")
            img = img.reduce(factor)
            scale = factor
        img = _orient(to_rgb(img), orientation)
        if scale > 1:
            # the reduced image covers the full image's extent at 1/scale; remember that extent
            # so the resize maps exactly the same region as a full decode would (no sub-pixel shift)
            fw, fh = (full[1], full[0]) if orientation in (5, 6, 7, 8) else full
            img.info["edgeinfer_extent"] = (fw, fh, fw / scale, fh / scale)
        return img
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(_clean(f"refused: image is too large (decompression bomb guard): {e}")) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is this image's failure only
        raise ImageError(_clean(f"cannot decode image {_describe(src)}: {type(e).__name__}: {e}")) from None
    finally:
        if fp is not None:
            fp.close()


def _describe(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return f"<{type(src).__name__}>"


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any PIL mode: alpha composited on white, 16-bit scaled, palette/CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if arr.size and arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255, 0, 255).round().astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def _crop_span(n: int, t: int) -> tuple[int, int, int]:
    """(first kept pixel, kept count, zero padding before) of torchvision's CenterCrop(t) along
    an axis of n resized pixels (it pads with zeros when the crop is larger than the image)."""
    if n >= t:
        return int(round((n - t) / 2.0)), t, 0
    # padded to t, the paste offset is (t - n) // 2 and the crop starts at 0 of the padded axis
    return 0, n, (t - n) // 2


def resize_crop(img: Image.Image, spec: dict) -> Image.Image:
    """torchvision ``Resize(resize_size)`` (shorter side) + ``CenterCrop(input_size)``.

    Only the pixels the crop keeps are computed (``resize(box=...)`` with the same sampling
    positions as the full resize), so an extreme aspect ratio costs no more than the crop."""
    _, th, tw = spec["input_size"]
    short = int(spec["resize_size"])
    extent = img.info.get("edgeinfer_extent")
    # geometry from the full-resolution size (a reduced/draft-decoded image is smaller than that)
    w, h = extent[:2] if extent else img.size
    bw, bh = (extent[2], extent[3]) if extent else img.size  # that extent in img's pixels
    interp = _INTERP[spec.get("interpolation", "bilinear")]
    if (w <= h and w != short) or (h < w and h != short) or extent is not None:
        if w <= h:
            nw, nh = short, max(1, int(short * h / w))
        else:
            nw, nh = max(1, int(short * w / h)), short
        x0, cw, px = _crop_span(nw, tw)
        y0, ch, py = _crop_span(nh, th)
        if nw * nh <= FULL_RESIZE_PIXELS:
            # the usual case: resize everything, then crop (bit-exact with torchvision; a
            # vertical sub-box changes Pillow's intermediate rounding by up to a few levels)
            box = (0.0, 0.0, float(bw), float(bh))
            img = img.resize((nw, nh), interp, box=box).crop((x0, y0, x0 + cw, y0 + ch))
        else:
            # an extreme aspect ratio: a full resize would allocate gigabytes (256 x 10M for a
            # 1 x 40000 PNG); compute only the kept pixels, at the same sampling positions
            sx, sy = bw / nw, bh / nh
            img = img.resize((cw, ch), interp,
                             box=(x0 * sx, y0 * sy, (x0 + cw) * sx, (y0 + ch) * sy))
    else:
        x0, cw, px = _crop_span(w, tw)
        y0, ch, py = _crop_span(h, th)
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if (cw, ch) != (tw, th):
        padded = Image.new("RGB", (tw, th))
        padded.paste(img, (px, py))
        img = padded
    return img


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
        except Exception as e:  # noqa: BLE001 - one image's failure never costs the batch
            return None, ImageError(_clean(f"cannot preprocess image {_describe(src)}: "
                                           f"{type(e).__name__}: {e}"))

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
