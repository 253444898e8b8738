"""Preprocessing: exact vs the timm / open_clip reference transforms, image modes, bad input."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import make_image
from edgeinfer.errors import ImageError
from edgeinfer.runtime.preprocess import (load_image, preprocess_batch, preprocess_image,
                                          preprocess_images)

SPEC = {"input_size": [3, 64, 64], "resize_size": 73, "crop": "center", "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
UNIT = {**SPEC, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # output = pixel / 255


def _jpeg(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", quality=92, **kw)
    return b.getvalue()


# ----------------------------------------------------------------- reference transforms
@pytest.mark.photos
@pytest.mark.parametrize("name", ["mobilevit_s", "resnet50"])
def test_matches_timm_eval_transform_on_real_photos(name, photo_paths):
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    from edgeinfer.export.recipes import get_recipe

    recipe = get_recipe(name)
    model = timm.create_model(recipe.source_name, pretrained=False, num_classes=0)
    cfg = resolve_data_config(model=model)
    # the recipe is what the manifest records; it must agree with timm's pretrained_cfg
    assert tuple(cfg["input_size"]) == tuple(recipe.input_size)
    assert cfg["interpolation"] == recipe.interpolation
    tf = create_transform(**cfg)
    spec = recipe.preprocess_dict()
    diffs = []
    for p in photo_paths[:40]:
        ref = tf(Image.open(p).convert("RGB")).numpy()
        ours = preprocess_image(p, spec)
        assert ours.shape == ref.shape and ours.dtype == np.float32
        diffs.append(float(np.abs(ref - ours).mean()))
    assert np.mean(diffs) < 1e-5, np.mean(diffs)
    assert np.max(diffs) < 1e-4


@pytest.mark.photos
def test_matches_open_clip_preprocess_on_real_photos(photo_paths):
    open_clip = pytest.importorskip("open_clip")
    from edgeinfer.export.recipes import get_recipe

    recipe = get_recipe("clip_vit_b32")
    tf = open_clip.image_transform(recipe.input_size[-1], is_train=False,
                                   mean=recipe.mean, std=recipe.std)
    spec = recipe.preprocess_dict()
    diffs = [float(np.abs(tf(Image.open(p)).numpy() - preprocess_image(p, spec)).mean())
             for p in photo_paths[:30]]
    assert np.mean(diffs) < 1e-5, np.mean(diffs)


@pytest.mark.photos
def test_jpeg_draft_decoding_stays_close_to_full_decode(photo_paths):
    # photos upscaled 5x: big enough that draft decoding kicks in (1/2 or 1/4 scale)
    diffs = []
    for p in photo_paths[:8]:
        im = Image.open(p).convert("RGB")
        data = _jpeg(im.resize((im.width * 5, im.height * 5), Image.BICUBIC))
        fast = preprocess_image(data, UNIT, draft=True)
        full = preprocess_image(data, UNIT, draft=False)
        diffs.append(float(np.abs(fast - full).mean()) * 255)
    assert np.mean(diffs) < 0.6, diffs  # in 0..255 pixel units
    assert np.max(diffs) < 1.5, diffs


def test_draft_keeps_geometry():
    big = make_image(3, size=(1600, 1200))
    data = _jpeg(big)
    img = load_image(data, draft_size=146)
    assert img.size[0] < 1600 and "edgeinfer_extent" in img.info  # draft was used
    a = preprocess_image(data, UNIT, draft=True)
    b = preprocess_image(data, UNIT, draft=False)
    assert np.abs(a - b).mean() * 255 < 1.0


def test_draft_never_touches_caller_pil_image():
    big = Image.open(io.BytesIO(_jpeg(make_image(3, size=(1600, 1200)))))
    preprocess_image(big, UNIT, draft=True)
    assert big.size == (1600, 1200) and "edgeinfer_extent" not in big.info


# ----------------------------------------------------------------- image modes
def test_modes_all_become_rgb():
    rgb = make_image(1, size=(90, 70))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    cases = {
        "L": rgb.convert("L"), "1": rgb.convert("1"), "P": rgb.convert("P"), "CMYK": rgb.convert("CMYK"),
        "RGBA": rgba, "LA": rgb.convert("LA"), "I;16": Image.fromarray(
            (np.asarray(rgb.convert("L"), np.uint16) * 257)), "I": rgb.convert("I"),
    }
    for mode, im in cases.items():
        out = preprocess_image(im, SPEC)
        assert out.shape == (3, 64, 64) and np.isfinite(out).all(), mode


def test_16bit_png_scaled_like_8bit(tmp_path):
    gray8 = np.asarray(make_image(2, size=(80, 60)).convert("L"))
    p16 = tmp_path / "g16.png"
    Image.fromarray(gray8.astype(np.uint16) * 257).save(p16)
    p8 = tmp_path / "g8.png"
    Image.fromarray(gray8).save(p8)
    assert np.abs(preprocess_image(p16, SPEC) - preprocess_image(p8, SPEC)).max() < 1e-5


def test_transparency_composited_on_white():
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    out = preprocess_image(im, UNIT)
    assert np.allclose(out, 1.0)


def test_exif_orientation_applied(tmp_path):
    base = make_image(4, size=(120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    base.save(p, quality=95, exif=exif.tobytes())
    img = load_image(p)
    assert img.size == (80, 120)
    raw = Image.open(p).convert("RGB")  # decoded pixels, orientation not applied
    assert raw.size == (120, 80)
    ref = raw.transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(img), np.asarray(ref))


def test_numpy_inputs():
    arr = np.asarray(make_image(5, size=(70, 50)))
    a = preprocess_image(arr, SPEC)
    b = preprocess_image(arr.astype(np.float32) / 255.0, SPEC)
    assert np.abs(a - b).max() < 1e-5
    assert preprocess_image(arr[:, :, 0], SPEC).shape == (3, 64, 64)
    with pytest.raises(ImageError, match="shape"):
        preprocess_image(np.zeros((5, 5, 7), np.uint8), SPEC)


def test_small_image_padded_like_torchvision_center_crop():
    out = preprocess_image(Image.new("RGB", (20, 10), (255, 255, 255)), UNIT)
    assert out.shape == (3, 64, 64)


# ----------------------------------------------------------------- bad input
def _bad_inputs(tmp_path):
    good = tmp_path / "good.jpg"
    make_image(0).save(good, quality=90)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(data[:200] + bytes(range(256)) * 20)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    return good, {"truncated": trunc, "corrupt": corrupt, "zero-byte": empty, "non-image": text,
                  "missing": tmp_path / "nope.jpg", "directory": tmp_path,
                  "bytes": b"\x00\x01garbage", "object": object()}


def test_bad_inputs_raise_image_error(tmp_path):
    good, bad = _bad_inputs(tmp_path)
    assert preprocess_image(good, SPEC).shape == (3, 64, 64)
    for what, src in bad.items():
        with pytest.raises(ImageError):
            preprocess_image(src, SPEC)


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="decompression"):
        preprocess_image(p, SPEC)
    with pytest.raises(ImageError, match="decompression"):
        preprocess_image(p.read_bytes(), SPEC)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # None disables the guard, as in PIL
    assert preprocess_image(p, SPEC).shape == (3, 64, 64)


def test_batch_keeps_going_and_parallel_equals_serial(tmp_path):
    good, bad = _bad_inputs(tmp_path)
    imgs = [make_image(i) for i in range(6)]
    items = [imgs[0], bad["truncated"], imgs[1], good, bad["zero-byte"], *imgs[2:]]
    batch, errors = preprocess_batch(items, SPEC)
    assert [e is None for e in errors] == [True, False, True, True, False, True, True, True, True]
    assert batch.shape == (7, 3, 64, 64)
    serial, errs2 = preprocess_batch(items, SPEC, workers=0)
    assert np.array_equal(batch, serial) and [type(e) for e in errs2] == [type(e) for e in errors]
    with pytest.raises(ImageError):
        preprocess_images(items, SPEC)
