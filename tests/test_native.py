"""The native runner (edgeinfer-run, libedgeinfer) against the Python runtime.

Built once per session into build/pytest-native (or $EDGEINFER_NATIVE_BUILD; make only rebuilds
what changed). Skips with the reason when the compiler, CMake, the -dev headers or openvino are
missing. What is checked:

- preprocessing is bit-identical to edgeinfer.runtime.preprocess (PIL) on the real photos, for
  every interpolation, and on generated edge cases: draft-decoded large JPEGs, Image.reduce'd
  large PNGs, EXIF orientations 1..8 (JPEG and PNG), grayscale / CMYK JPEG, PNG modes
  1 / L / LA / P / P+tRNS / I;16 / RGBA, smaller-than-crop and extreme-aspect images;
- on the same engine (OpenVINO CPU) and precision the outputs match the Python runtime's
  (cosine, top-1 agreement, top-k labels and probabilities) for a classifier and an embedding model;
- bad images are per-image errors and the exit codes are the documented ones;
- the C API (edgeinfer.h) works end to end through the example program.

The four-architecture check (mobilevit_s, mobilenetv3_large_100, resnet50, CLIP ViT-B/32 image
tower; FP32 and INT8) is the slow test at the end (also benchmarks/native_vs_python.py).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import REPO, make_image
from test_runtime_helpers import tiny_artifact

pytestmark = pytest.mark.openvino

HAVE_OV = __import__("importlib").util.find_spec("openvino") is not None


@pytest.fixture(scope="session")
def native_bin() -> Path:
    from edgeinfer.cli.native_build import _describe_missing, build_native, missing_prerequisites

    if not HAVE_OV:
        pytest.skip("openvino is not installed (pip install 'edgeinfer[openvino]')")
    missing = missing_prerequisites()
    if missing:
        pytest.skip(_describe_missing(missing))
    build_dir = Path(os.environ.get("EDGEINFER_NATIVE_BUILD", REPO / "build" / "pytest-native"))
    return build_native(build_dir=build_dir)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "engine-cache"))


def run_native(binary: Path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, input=stdin,
                          timeout=300)


def json_lines(proc) -> tuple[dict, list[dict]]:
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return rows[0], rows[1:]


def set_preprocess(artifact: Path, **kw) -> dict:
    from edgeinfer.runtime.artifact import read_manifest, write_manifest

    m = read_manifest(artifact)
    m["preprocess"].update(kw)
    write_manifest(artifact, m)
    return m["preprocess"]


def compare_preprocessing(native_bin: Path, artifact: Path, images: list, tmp_path: Path,
                          *, draft: bool = True) -> list[float]:
    """Max |native - python| of the preprocessed tensor, per image (python: runtime.preprocess)."""
    from edgeinfer.runtime.artifact import read_manifest
    from edgeinfer.runtime.preprocess import preprocess_image

    spec = read_manifest(artifact)["preprocess"]
    dump = tmp_path / f"dump-{len(list(tmp_path.iterdir()))}"
    dump.mkdir()
    proc = run_native(native_bin, artifact, *images, "--preprocess-only", "--dump-input", dump, "--json",
                      *([] if draft else ["--no-draft"]))
    assert proc.returncode == 0, proc.stderr
    _, rows = json_lines(proc)
    assert [r["image"] for r in rows] == [str(p) for p in images]
    diffs = []
    for i, p in enumerate(images):
        ours = np.load(dump / f"{i}.npy")
        ref = preprocess_image(p, spec, draft=draft)
        assert ours.shape == ref.shape and ours.dtype == np.float32
        diffs.append(float(np.abs(ours - ref).max()))
    return diffs


# ----------------------------------------------------------------- preprocessing, bit for bit
@pytest.mark.photos
@pytest.mark.parametrize("interpolation,size,resize", [("bicubic", 256, 288), ("bicubic", 224, 256),
                                                       ("bilinear", 224, 232), ("lanczos", 96, 110),
                                                       ("box", 96, 110), ("hamming", 96, 110),
                                                       ("nearest", 96, 110)])
def test_preprocessing_is_bit_identical_on_the_photos(native_bin, photo_paths, tmp_path, interpolation,
                                                      size, resize):
    art = tiny_artifact(tmp_path / "a", size=size)
    set_preprocess(art, interpolation=interpolation, resize_size=resize)
    photos = photo_paths if interpolation == "bicubic" else photo_paths[::4]
    diffs = compare_preprocessing(native_bin, art, photos, tmp_path)
    assert max(diffs) == 0.0, {str(p.name): d for p, d in zip(photos, diffs) if d}


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def _exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


def _edge_cases(d: Path) -> list[Path]:
    """Generated files covering every decode path (sizes chosen for a 32px model: resize 36,
    draft / reduce from a shorter side of 144 px)."""
    base = make_image(3, size=(410, 300))
    rng = np.random.default_rng(0)
    alpha = Image.fromarray(rng.integers(0, 256, (300, 410), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))
    files = []
    for o in range(1, 9):  # EXIF orientation, JPEG (draft path) and PNG (reduce path)
        files.append(_save(base, d / f"exif{o}.jpg", "JPEG", quality=90, exif=_exif(o)))
        files.append(_save(base.resize((205, 150)), d / f"exif{o}.png", "PNG", exif=_exif(o)))
    small = base.resize((120, 88))  # below the draft / reduce threshold
    files += [
        _save(small, d / "small.jpg", "JPEG", quality=85),
        _save(small.convert("L"), d / "gray.jpg", "JPEG"),
        _save(base.convert("L"), d / "gray_draft.jpg", "JPEG"),
        _save(small.convert("CMYK"), d / "cmyk.jpg", "JPEG"),
        _save(base.convert("CMYK"), d / "cmyk_reduced.jpg", "JPEG"),
        _save(base, d / "progressive.jpg", "JPEG", progressive=True, quality=80),
        _save(base, d / "subsampling444.jpg", "JPEG", subsampling=0),
        _save(small, d / "rgb.png", "PNG"),
        _save(small.convert("1"), d / "bilevel.png", "PNG"),
        _save(small.convert("L"), d / "gray.png", "PNG"),
        _save(small.convert("P", palette=Image.ADAPTIVE), d / "palette.png", "PNG"),
        _save(small.convert("P", palette=Image.ADAPTIVE), d / "palette_trns.png", "PNG", transparency=3),
        _save(base.convert("P", palette=Image.ADAPTIVE), d / "palette_trns_reduced.png", "PNG", transparency=3),
        _save(Image.merge("LA", (small.convert("L"), alpha.resize(small.size))), d / "la.png", "PNG"),
        _save(Image.merge("LA", (base.convert("L"), alpha)), d / "la_reduced.png", "PNG"),
        _save(Image.merge("RGBA", (*small.split(), alpha.resize(small.size))), d / "rgba.png", "PNG"),
        _save(Image.merge("RGBA", (*base.split(), alpha)), d / "rgba_reduced.png", "PNG"),
        _save(Image.fromarray((np.asarray(small.convert("L"), np.uint16) * 257)), d / "gray16.png", "PNG"),
        _save(Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 200)), d / "gray16_reduced.png", "PNG"),
        _save(base, d / "interlaced.png", "PNG", optimize=False),
        _save(base.resize((20, 14)), d / "smaller_than_crop.png", "PNG"),
        _save(base.resize((37, 29)), d / "tiny.jpg", "JPEG"),
        _save(base.resize((1000, 10)), d / "wide.png", "PNG"),
        # taller than 2:1 and shrunk: Pillow 13 runs the vertical pass first there
        _save(base.resize((60, 200)), d / "tall_vertical_first.png", "PNG"),
        _save(base.resize((50, 140)).convert("L"), d / "tall_vertical_first_gray.jpg", "JPEG"),
    ]
    return files


def test_preprocessing_is_bit_identical_on_edge_cases(native_bin, tmp_path):
    d = tmp_path / "edge"
    d.mkdir()
    files = _edge_cases(d)
    art = tiny_artifact(tmp_path / "a", size=32)
    for draft in (True, False):
        diffs = compare_preprocessing(native_bin, art, files, tmp_path, draft=draft)
        bad = {p.name: round(x * 255 * 0.25, 2) for p, x in zip(files, diffs) if x}  # in pixel levels
        assert not bad, f"draft={draft}: max difference in 8-bit levels: {bad}"


def test_extreme_aspect_resizes_only_the_kept_pixels_exactly(native_bin, tmp_path):
    # 30 x 3000 at resize 256 is a 256 x 25600 resize (> FULL_RESIZE_PIXELS): the sub-box path
    img = make_image(5, size=(30, 3000))
    f = _save(img, tmp_path / "tall.png", "PNG")
    g = _save(img.transpose(Image.Transpose.ROTATE_90), tmp_path / "wide.png", "PNG")
    art = tiny_artifact(tmp_path / "a", size=224)
    set_preprocess(art, resize_size=256)
    assert compare_preprocessing(native_bin, art, [f, g], tmp_path) == [0.0, 0.0]


@pytest.mark.photos
def test_draft_decoding_difference_is_measured_and_small(native_bin, photo_paths, tmp_path):
    """Large photos (5x upscaled) are decoded at 1/2..1/8 in the DCT domain, as PIL's draft does:
    identical to Python either way; the draft-vs-full difference is the measured cost of speed."""
    big = []
    for p in photo_paths[:6]:
        im = Image.open(p).convert("RGB")
        big.append(_save(im.resize((im.width * 5, im.height * 5), Image.BICUBIC), tmp_path / p.name, "JPEG",
                         quality=92))
    art = tiny_artifact(tmp_path / "a", size=224)
    set_preprocess(art, resize_size=256, mean=[0, 0, 0], std=[1, 1, 1])
    assert max(compare_preprocessing(native_bin, art, big, tmp_path, draft=True)) == 0.0
    assert max(compare_preprocessing(native_bin, art, big, tmp_path, draft=False)) == 0.0
    drafted = sorted(tmp_path.glob("dump-*"))
    a = [np.load(drafted[0] / f"{i}.npy") for i in range(len(big))]
    b = [np.load(drafted[1] / f"{i}.npy") for i in range(len(big))]
    mean_abs = [float(np.abs(x - y).mean()) * 255 for x, y in zip(a, b)]
    print(f"draft vs full decode: mean |diff| {np.mean(mean_abs):.3f}/255 (max image {max(mean_abs):.3f})")
    assert 0 < np.mean(mean_abs) < 0.6


# ----------------------------------------------------------------- same outputs as Python
@pytest.mark.photos
def test_classifier_outputs_match_python_runtime_on_openvino(native_bin, photo_paths, tmp_path):
    import edgeinfer

    art = tiny_artifact(tmp_path / "a", size=64, classes=20)
    proc = run_native(native_bin, art, *photo_paths, "--json", "--raw", "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    head, rows = json_lines(proc)
    assert head["engine"].startswith("openvino") and head["precision"] == "fp32" and head["images"] == len(photo_paths)
    nat = np.array([r["output"] for r in rows], np.float32)
    with edgeinfer.load(art, provider="openvino", precision="fp32") as m:
        ref = np.stack(m.embed_raw(photo_paths))
        py_top = m.classify(photo_paths, top_k=3)
    cos = (nat * ref).sum(1) / np.linalg.norm(nat, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.mean() >= 0.999 and (nat.argmax(1) == ref.argmax(1)).mean() >= 0.99
    print(f"tiny classifier: cosine min {cos.min():.7f}, max |diff| {np.abs(nat - ref).max():.3g}")
    for r, py in zip(rows, py_top):
        assert [t["label"] for t in r["top"]] == [lab for lab, _ in py]
        np.testing.assert_allclose([t["probability"] for t in r["top"]], [p for _, p in py], rtol=1e-5, atol=1e-6)


@pytest.mark.photos
def test_embedding_model_matches_python_embed(native_bin, photo_paths, tmp_path):
    import edgeinfer

    art = tiny_artifact(tmp_path / "a", size=48, classes=16, kind="clip")
    photos = photo_paths[:30]
    proc = run_native(native_bin, art, *photos, "--json")
    assert proc.returncode == 0, proc.stderr
    head, rows = json_lines(proc)
    assert head["output"] == "embedding"
    nat = np.array([r["embedding"] for r in rows], np.float32)
    with edgeinfer.load(art, provider="openvino", precision="fp32") as m:
        ref = np.stack(m.embed(photos))
    np.testing.assert_allclose(np.linalg.norm(nat, axis=1), 1.0, rtol=1e-5)
    assert (nat * ref).sum(1).min() >= 0.999


def test_text_output_and_folder_and_stdin_inputs(native_bin, tmp_path, generated_images_dir):
    art = tiny_artifact(tmp_path / "a", size=32, labels=[f"thing {i}" for i in range(10)])
    by_folder = run_native(native_bin, art, generated_images_dir, "--top-k", "2")
    assert by_folder.returncode == 0, by_folder.stderr
    files = sorted(str(p) for p in generated_images_dir.iterdir())
    assert [line for line in by_folder.stdout.splitlines() if not line.startswith(" ")] == files
    assert by_folder.stdout.count("%  thing ") == 2 * len(files)
    assert "random weights" in by_folder.stderr
    by_stdin = run_native(native_bin, art, "-", "--top-k", "2", stdin="\n".join(files) + "\n")
    assert by_stdin.returncode == 0 and by_stdin.stdout == by_folder.stdout


# ----------------------------------------------------------------- errors and exit codes
def test_bad_images_are_per_image_errors_and_exit_code_3(native_bin, tmp_path):
    art = tiny_artifact(tmp_path / "a", size=32)
    good = _save(make_image(1), tmp_path / "good.jpg", "JPEG")
    data = good.read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (tmp_path / "text.jpg").write_text("not an image at all")
    buf = io.BytesIO()
    make_image(2).save(buf, "BMP")
    (tmp_path / "bitmap.bmp").write_bytes(buf.getvalue())
    bad = ["missing.jpg", "empty.jpg", "truncated.jpg", "garbage.png", "text.jpg", "bitmap.bmp"]
    paths = [good] + [tmp_path / b for b in bad] + [good]
    proc = run_native(native_bin, art, *paths, "--json")
    assert proc.returncode == 3, proc.stderr
    _, rows = json_lines(proc)
    assert len(rows) == len(paths)
    assert "top" in rows[0] and "top" in rows[-1] and rows[0]["top"] == rows[-1]["top"]
    errors = {Path(r["image"]).name: r["error"] for r in rows[1:-1]}
    assert "does not exist" in errors["missing.jpg"]
    assert "empty (0 bytes)" in errors["empty.jpg"]
    assert "truncated" in errors["truncated.jpg"]
    assert "PNG" in errors["garbage.png"]
    assert "not a JPEG or PNG" in errors["text.jpg"] and "not a JPEG or PNG" in errors["bitmap.bmp"]
    assert "6 of 8 image(s) failed" in proc.stderr
    # text mode: the error lines go to stderr, results still to stdout
    proc = run_native(native_bin, art, good, tmp_path / "empty.jpg")
    assert proc.returncode == 3 and "error: " in proc.stderr and str(good) in proc.stdout


def test_decompression_bomb_and_aspect_guards(native_bin, tmp_path):
    art = tiny_artifact(tmp_path / "a", size=32)
    big = _save(make_image(0, size=(300, 200)), tmp_path / "big.png", "PNG")
    proc = run_native(native_bin, art, big, "--max-pixels", "1000", "--json")
    assert proc.returncode == 3 and "decompression-bomb" in json_lines(proc)[1][0]["error"]
    thin = _save(Image.new("RGB", (2020, 20), (10, 20, 30)), tmp_path / "thin.png", "PNG")
    proc = run_native(native_bin, art, thin, "--json")
    assert proc.returncode == 3 and "aspect ratio" in json_lines(proc)[1][0]["error"]


def test_artifact_and_usage_errors_exit_1(native_bin, tmp_path):
    img = _save(make_image(0), tmp_path / "x.jpg", "JPEG")
    art = tiny_artifact(tmp_path / "a", size=32)

    def fails(*args, expect):
        proc = run_native(native_bin, *args)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert expect in proc.stderr, (expect, proc.stderr)

    fails(expect="usage")
    fails(art, expect="at least one image")
    fails(art, img, "--precision", "int4", expect="unknown precision")
    fails(art, img, "--top-k", "0", expect="--top-k must be >= 1")
    fails(art, img, "--frobnicate", expect="unknown option")
    fails(tmp_path / "nope", img, expect="does not exist")
    fails(art, img, "--precision", "int8", expect="has no int8 image file")
    fails(art, img, "--device", "TPU", expect="unknown OpenVINO device")
    (art / "model.fp32.onnx").write_bytes((art / "model.fp32.onnx").read_bytes() + b"x")
    fails(art, img, expect="does not match its sha256")
    (art / "manifest.json").write_text("{not json")
    fails(art, img, expect="not valid JSON")
    (art / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    fails(art, img, expect="not an edgeinfer manifest")
    art2 = tiny_artifact(tmp_path / "b", size=32)
    set_preprocess(art2, interpolation="sinc")
    fails(art2, img, expect="interpolation 'sinc' is unknown")


def test_c_api_example(native_bin, tmp_path):
    example = native_bin.parent / "edgeinfer-c-example"
    art = tiny_artifact(tmp_path / "a", size=32)
    imgs = [_save(make_image(i), tmp_path / f"{i}.jpg", "JPEG") for i in range(3)]
    proc = subprocess.run([str(example), str(art), *map(str, imgs), str(tmp_path / "missing.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "missing.png" in proc.stderr and "(status 3)" in proc.stderr
    c_rows = [line.split("\t") for line in proc.stdout.splitlines() if not line.startswith("#")]
    ref = run_native(native_bin, art, *imgs, "--json", "--top-k", "3")
    _, rows = json_lines(ref)
    # odd arguments go through ei_classify_encoded (a memory buffer), even ones through the file API
    expect = [(r["image"], str(t["index"]), t["label"]) for r in rows for t in r["top"]]
    assert [(c[0], c[1], c[3]) for c in c_rows] == expect
    assert proc.stdout.startswith("# tiny, libedgeinfer ")


def test_native_build_names_the_missing_apt_packages(monkeypatch, tmp_path):
    from edgeinfer.cli import native_build
    from edgeinfer.errors import NativeBuildError

    monkeypatch.setattr(native_build.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(native_build, "INCLUDE_DIRS", (str(tmp_path),))
    with pytest.raises(NativeBuildError) as e:
        native_build.build_native(build_dir=tmp_path / "b")
    msg = str(e.value)
    for pkg in ("cmake", "g++", "libjpeg62-turbo-dev", "libpng-dev", "nlohmann-json3-dev"):
        assert pkg in msg
    assert "apt-get install" in msg
    with pytest.raises(NativeBuildError, match="source checkout"):
        native_build.source_dir(tmp_path)


def test_native_build_cli_prints_the_binary(native_bin, capsys):
    from edgeinfer.cli.main import main

    assert main(["native-build", "--build-dir", str(native_bin.parent)]) == 0
    assert Path(capsys.readouterr().out.strip()) == native_bin.resolve()


# ----------------------------------------------------------------- four architectures (slow)
SLOW_MODELS = ["mobilevit_s", "mobilenetv3_large_100", "resnet50", "clip_vit_b32"]


@pytest.mark.slow
@pytest.mark.photos
@pytest.mark.parametrize("name", SLOW_MODELS)
def test_four_architectures_fp32_and_int8_match_python(native_bin, photo_paths, tmp_path_factory, name):
    """Random-weight exports with INT8 (calibrated on the photos): mean logit cosine >= 0.999 and
    top-1 agreement >= 99% against the Python runtime on OpenVINO, per precision."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from native_vs_python import compare_fidelity, ensure_artifact

    root = Path(os.environ.get("EDGEINFER_NATIVE_ARTIFACTS", tmp_path_factory.mktemp("native-artifacts")))
    art = ensure_artifact(name, root, photos=photo_paths[0].parent)
    for precision in ("fp32", "int8"):
        r = compare_fidelity(native_bin, art, photo_paths, precision=precision)
        print(f"{name} {precision}: {r}")
        assert r["mean_cosine"] >= 0.999 and r["top1_agreement"] >= 0.99, (name, precision, r)

