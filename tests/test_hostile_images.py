"""Hostile images: a seeded mutation corpus (fast subset here, 10,000 in the slow run and in
benchmarks/reliability.py), bounded memory and time per input, formats refused by content,
EXIF orientations, deterministic Failure messages, closed files, Model.close() under load, and
the classify CLI's exit status (issue 9)."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

import edgeinfer
from conftest import REPO
from edgeinfer.errors import ModelClosedError
from edgeinfer.runtime import preprocess as P
from edgeinfer.runtime.model import Failure

from test_runtime_helpers import tiny_artifact


def _reliability():
    spec = importlib.util.spec_from_file_location("reliability", REPO / "benchmarks" / "reliability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


R = _reliability()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "engine-cache"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tiny_artifact(tmp_path_factory.mktemp("hostile") / "tiny", size=64)
    m = edgeinfer.load(d, provider="cpu", precision="fp32", batch_size=4)
    yield m
    m.close()


def _time_limit() -> float:
    # 5 s on an idle machine; a loaded shared machine gets proportionally more
    return R.TIME_LIMIT_S * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


# ----------------------------------------------------------------- the mutation corpus
def test_corpus_is_seeded_and_covers_every_kind():
    a = [R.make_case(7, i) for i in range(300)]
    assert a[:100] == [R.make_case(7, i) for i in range(100)]
    assert a[:100] != [R.make_case(8, i) for i in range(100)]
    kinds = {desc.split(" ")[0] for desc, _ in a}
    for k in ("valid", "extreme", "refused", "random", "jpeg"):
        assert k in kinds, kinds
    assert any("bit flips" in d for d, _ in a) and any("truncated" in d for d, _ in a)
    assert any("header" in d for d, _ in a) and any("orientation" in d for d, _ in a)


def test_fast_mutation_subset_never_raises_and_messages_are_stable(model):
    """400 seeded inputs in batches of 8: every item is a result or a Failure; the same bad
    input gives the same message, with no object address in it."""
    cases = [R.make_case(1234, i) for i in range(400)]
    out = []
    for s in range(0, len(cases), 8):
        out += model.classify([d for _, d in cases[s:s + 8]], top_k=1)
    assert len(out) == len(cases)
    fails = [(i, r) for i, r in enumerate(out) if isinstance(r, Failure)]
    oks = [r for r in out if not isinstance(r, Failure)]
    assert fails and oks  # the corpus has both, or it tests nothing
    assert all(isinstance(r, list) and len(r) == 1 for r in oks)
    for i, f in fails[:150]:
        assert f.error and " at 0x" not in f.error, f.error
        again = model.classify(cases[i][1], top_k=1)
        assert isinstance(again, Failure) and again.error == f.error, (cases[i][0], f.error, again)
    # every valid image of an accepted format decodes
    bad_valid = [(cases[i][0], r.error) for i, r in enumerate(out)
                 if cases[i][0].startswith("valid") and isinstance(r, Failure)]
    assert not bad_valid, bad_valid[:5]


def test_extreme_shapes_are_bounded_in_memory_and_time(model):
    """The probe's amplifiers (157-byte 1x40000 PNG, 9000x9000 1-bit PNG, 2 x 44M header, zero
    sizes, huge headers) and large legitimate images: each alone grows the process by less
    than 256 MB and takes less than 5 s (scaled by the machine's load)."""
    limit_s = _time_limit()
    for name, data in R.extreme_inputs():
        rec = R.classify_one(model, data)
        assert rec["outcome"] in ("ok", "failure"), (name, rec)
        if rec["grew_mb"] is not None:
            assert rec["grew_mb"] < R.RSS_LIMIT_MB, (name, rec)
        assert rec["seconds"] < limit_s and rec["cpu_seconds"] < R.TIME_LIMIT_S, (name, rec)
    expect_refused = {"png 1x40000": "aspect ratio", "png 2x44000000": "aspect ratio",
                      "png header 2x44000000": "aspect ratio", "png header 0x0": "",
                      "png header 65535x65535": "decompression"}
    ex = dict(R.extreme_inputs())
    for name, why in expect_refused.items():
        if name in ex:
            r = model.classify(ex[name])
            assert isinstance(r, Failure) and why in r.error, (name, r)


def test_zero_sized_and_overflowing_inputs_fail_cleanly(model):
    cases = [np.zeros((0, 10, 3), np.uint8), np.zeros((10, 0), np.uint8),
             Image.new("RGB", (0, 0)), Image.new("L", (2, 1000)), b"\x89PNG\r\n\x1a\n"]
    res = model.classify(cases)
    assert all(isinstance(r, Failure) for r in res), res
    assert "zero width" in res[2].error or "empty" in res[2].error
    assert "aspect ratio" in res[3].error


def test_any_exception_while_decoding_is_that_images_failure(model, monkeypatch):
    """An AVIF-style RuntimeError (or anything else) from the decoder costs only its image."""
    good = [R.encode(R.base_image(__import__("random").Random(i)), "PNG") for i in range(3)]
    b = io.BytesIO()
    Image.new("RGB", (37, 29), (1, 2, 3)).save(b, "PNG")
    real = Image.Image.load

    def load(self):
        if self.size == (37, 29):
            raise RuntimeError("Failed to decode image")
        return real(self)

    monkeypatch.setattr(Image.Image, "load", load)
    res = model.classify([good[0], b.getvalue(), good[1], good[2]], top_k=1)
    assert [isinstance(r, Failure) for r in res] == [False, True, False, False]
    assert "RuntimeError: Failed to decode image" in res[1].error

    def boom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(P, "resize_crop", boom)
    res = model.classify(good)
    assert all(isinstance(r, Failure) and "MemoryError" in r.error for r in res)


# ----------------------------------------------------------------- formats and EXIF
@pytest.mark.parametrize("fmt", R.REFUSED)
def test_other_formats_are_refused_by_content(model, tmp_path, fmt):
    data = R.encode(R.base_image(__import__("random").Random(3)), fmt)
    p = tmp_path / "holiday.jpg"     # the name says JPEG; the content decides
    p.write_bytes(data)
    for src in (data, p):
        r = model.classify(src)
        assert isinstance(r, Failure) and "accepted format" in r.error, (fmt, r)


def test_every_accepted_format_and_mode_decodes(model, tmp_path):
    import random

    for fmt, modes in R._formats().items():
        for mode in modes:
            data = R.encode(R.base_image(random.Random(5), mode), fmt)
            p = tmp_path / f"img.{fmt.lower()}.bin"  # no telling extension
            p.write_bytes(data)
            for src in (data, p):
                r = model.classify(src, top_k=1)
                assert not isinstance(r, Failure), (fmt, mode, r)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientations(orientation):
    from PIL import ImageOps

    base = R.base_image(__import__("random").Random(11)).resize((60, 40))
    data = R.encode(base, "JPEG", orientation=orientation)
    img = P.load_image(data)
    ref = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert img.size == ref.size == ((40, 60) if orientation >= 5 else (60, 40))
    assert np.array_equal(np.asarray(img), np.asarray(ref))


@pytest.mark.parametrize("exif", [b"Exif\x00\x00" + bytes(range(60)), b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"])
def test_broken_exif_is_ignored_not_fatal(exif):
    base = R.base_image(__import__("random").Random(12)).resize((60, 40))
    data = R.encode(base, "JPEG", exif=exif)
    assert P.load_image(data).size == (60, 40)


def test_bogus_orientation_values_are_ignored():
    base = R.base_image(__import__("random").Random(13)).resize((60, 40))
    for o in (0, 9, 65535):
        assert P.load_image(R.encode(base, "JPEG", orientation=o)).size == (60, 40)


# ----------------------------------------------------------------- files and devices
def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_every_file_is_closed_also_on_failure(model, tmp_path):
    import random

    paths = []
    frames = [R.base_image(random.Random(i)).resize((30, 30)) for i in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    tif = tmp_path / "multi.tif"
    frames[0].save(tif, save_all=True, append_images=frames[1:])
    paths += [gif, tif]
    for i in range(20):
        desc, data = R.make_case(99, i)
        p = tmp_path / f"case{i}.bin"
        p.write_bytes(data)
        paths.append(p)
    eps = tmp_path / "x.eps"
    eps.write_bytes(R.encode(frames[0], "EPS"))
    paths.append(eps)
    model.classify(paths)  # warm up (thread pool, lazy imports)
    before = _open_fds()
    for _ in range(3):
        model.classify(paths)
    assert _open_fds() <= before


def test_devices_fifos_and_directories_are_refused_without_reading(model, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    res = model.classify(["/dev/zero", str(fifo), str(tmp_path)])
    assert time.perf_counter() - t0 < 10
    assert all(isinstance(r, Failure) for r in res)
    assert "not a regular file" in res[0].error and "not a regular file" in res[1].error
    assert "directory" in res[2].error


# ----------------------------------------------------------------- close under load
def test_close_while_other_threads_classify(tmp_path):
    d = tiny_artifact(tmp_path / "tiny", size=64)
    m = edgeinfer.load(d, provider="cpu", batch_size=2)
    imgs = [np.full((80, 70, 3), i * 20, np.uint8) for i in range(6)]
    errors, results, started = [], [], threading.Event()

    def worker():
        started.set()
        for _ in range(200):
            try:
                r = m.classify(imgs, top_k=1)
                results.append(r)
                assert all(not isinstance(x, Failure) for x in r)
            except ModelClosedError:
                return
            except Exception as e:  # noqa: BLE001 - anything else is the bug
                errors.append(repr(e))
                return

    ts = [threading.Thread(target=worker) for _ in range(4)]
    [t.start() for t in ts]
    started.wait()
    time.sleep(0.2)
    m.close()
    [t.join(60) for t in ts]
    assert not errors, errors
    assert results  # some calls completed before the close
    with pytest.raises(ModelClosedError, match="closed"):
        m.classify(imgs[0])
    with pytest.raises(ModelClosedError):
        m.infer(np.zeros((1, 3, 64, 64), np.float32))
    m.close()  # idempotent


# ----------------------------------------------------------------- CLI exit status
def test_cli_classify_exits_3_when_any_image_failed(tmp_path, capsys):
    from edgeinfer.cli.classify import EXIT_IMAGES_FAILED
    from edgeinfer.cli.main import main

    d = tiny_artifact(tmp_path / "tiny", size=64)
    good = tmp_path / "good.png"
    Image.fromarray(np.full((50, 60, 3), 90, np.uint8)).save(good)
    bad = []
    for i, data in enumerate([b"", b"GIF89a" + b"\x00" * 20, R.encode(Image.new("RGB", (8, 8)), "EPS"),
                              b"\x89PNG garbage", b"\xff\xd8\xff" + os.urandom(50)]):
        p = tmp_path / f"bad{i}.jpg"
        p.write_bytes(data)
        bad.append(str(p))
    rc = main(["classify", str(d), *bad, str(good), "--provider", "cpu", "--json"])
    assert rc == EXIT_IMAGES_FAILED == 3
    out = json.loads(capsys.readouterr().out)
    assert [("error" in r) for r in out["results"]] == [True] * 5 + [False]
    assert out["results"][5]["top"]
    assert main(["classify", str(d), str(good), "--provider", "cpu"]) == 0
    assert "exit status" in __import__("edgeinfer.cli.classify", fromlist=["EPILOG"]).EPILOG


@pytest.mark.slow
def test_full_mutation_run_10000_inputs(tmp_path):
    """The 10,000-input run (also `benchmarks/reliability.py`): 0 uncaught, 0 crashes, every
    input under the memory bound."""
    recs = R.mutation_run(10000, 0, tmp_path, progress=lambda s: None)
    s = R.summarize(recs)
    assert s["inputs"] == 10000 and s["uncaught"] == 0 and s["crash"] == 0, s["uncaught_examples"]
    assert s["over_rss_limit"] == 0, s["worst_memory"]
    assert s["max_cpu_seconds"] < R.TIME_LIMIT_S, s["worst_time"]
    assert s["max_seconds"] < _time_limit(), s["worst_time"]
