"""The scan's throughput path (issue 17): batches split across engine streams (ONNX Runtime
single-threaded streams, OpenVINO infer requests under the THROUGHPUT hint) give the same rows in
the same order as one LATENCY call; the scan's decode stage + batched inference store what the
runtime's own classify/embed give; failures in a batch stay per photo; an engine error fails its
batch's transaction only; cancel stops decoding ahead. No timing here (benchmarks/indexing.py)."""
from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
from test_library_fixtures import classifier_artifact, clip_artifact, write_images
from test_runtime_helpers import tiny_onnx

from edgeinfer.backends import SessionOptions, create_session
from edgeinfer.backends import ort as ortb
from edgeinfer.errors import InvalidOptionError
from edgeinfer.library import LibraryModel, Store, run_scan
from edgeinfer.library import scan as sc


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "engine-cache"))


def _x(n: int, size: int = 32) -> np.ndarray:
    # distinct rows, so a reordered merge cannot pass
    return np.random.default_rng(n).normal(size=(n, 3, size, size)).astype(np.float32)


# ------------------------------------------------------------------ pure pieces
def test_cpu_session_config_throughput_is_single_threaded_streams():
    c = ortb.cpu_session_config(3, performance_hint="THROUGHPUT")
    assert (c["intra_op_num_threads"], c["streams"]) == (1, 3)
    assert ortb.cpu_session_config(None, performance_hint="throughput")["streams"] == ortb.physical_cores()
    assert "streams" not in ortb.cpu_session_config(3, performance_hint="LATENCY")
    assert ortb.cpu_session_config(3)["intra_op_num_threads"] == 3
    with pytest.raises(InvalidOptionError, match="LATENCY, THROUGHPUT"):
        ortb.cpu_session_config(2, performance_hint="FAST")


@pytest.mark.parametrize("n,parts", [(1, 4), (5, 2), (16, 3), (7, 7), (3, 8)])
def test_split_bounds_cover_in_order(n, parts):
    from edgeinfer.backends.openvino import split_bounds

    b = split_bounds(n, parts)
    assert len(b) == min(n, parts) and b[0][0] == 0 and b[-1][1] == n
    assert all(e == s2 for (_, e), (s2, _) in itertools.pairwise(b))          # contiguous, in order
    sizes = [e - s for s, e in b]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


# ------------------------------------------------------------------ engines: split == one call
@pytest.mark.parametrize("streams,n", [(2, 5), (3, 7), (2, 1)])
def test_ort_throughput_streams_equal_latency_rows_in_order(tmp_path, streams, n):
    m = tiny_onnx(tmp_path / "m.onnx")
    x = _x(n)
    with create_session(m, provider="cpu", options=SessionOptions(threads=1)) as lat, \
            create_session(m, provider="cpu",
                           options=SessionOptions(threads=streams, performance_hint="THROUGHPUT")) as thr:
        assert thr.streams == streams and thr.describe()["streams"] == streams
        want = lat.run(x)
        got = thr.run(x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        rows = np.concatenate([lat.run(x[i:i + 1]) for i in range(n)])  # row i is image i
        np.testing.assert_allclose(got, rows, rtol=1e-5, atol=1e-5)
        feeds = thr.run_feeds({thr.inputs[0].name: x})
        np.testing.assert_allclose(feeds[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.openvino
def test_openvino_throughput_splits_across_requests_in_order(tmp_path):
    pytest.importorskip("openvino")
    m = tiny_onnx(tmp_path / "m.onnx")
    x = _x(7)
    with create_session(m, provider="openvino", precision="fp32") as lat, \
            create_session(m, provider="openvino", precision="fp32",
                           options=SessionOptions(performance_hint="THROUGHPUT")) as thr:
        assert lat.parallel_requests == 1 and thr.parallel_requests >= 1
        want = lat.run(x)
        # force a 3-way split whatever this machine's optimal request count is
        thr._dynamic_model().parallel = 3
        got = thr.run(x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        rows = np.concatenate([lat.run(x[i:i + 1]) for i in range(len(x))])
        np.testing.assert_allclose(got, rows, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(thr.run(x[:1]), want[:1], rtol=1e-4, atol=1e-5)  # 1 row: no split


# ------------------------------------------------------------------ the scan
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return clip_artifact(tmp_path_factory.getbasetemp())


def _models(tmp_path, clip_dir, hint):
    cls = classifier_artifact(tmp_path / "cls")
    return [LibraryModel.from_artifact(cls, provider="cpu", performance_hint=hint, threads=2),
            LibraryModel.from_artifact(clip_dir, provider="cpu", performance_hint=hint, threads=2)]


def _stored(store, models):
    clip = models[1]
    out = {}
    for r in store.query("SELECT id, path, error FROM photos"):
        rec = store.photo(r["id"])
        tags = [(t["label"], t["score"]) for t in rec["tags"][0]["labels"]] if rec["tags"] else None
        emb = store.embedding(r["id"], clip.sha256) if not r["error"] else None
        out[Path(r["path"]).name] = (r["error"], tags, emb)
    return out


def test_throughput_scan_equals_latency_scan_and_the_runtime(tmp_path, clip_dir):
    photos = tmp_path / "photos"
    write_images(photos, 7)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")   # fails in the middle of a batch
    stored = {}
    for hint in ("LATENCY", "THROUGHPUT"):
        ms = _models(tmp_path / hint, clip_dir, hint)
        try:
            with Store(tmp_path / f"{hint}.db") as store:
                s = run_scan(store, photos, ms, batch_size=3, top_k=3)
                assert (s.done, s.failed) == (8, 1)
                stored[hint] = _stored(store, ms)
            if hint == "THROUGHPUT":
                assert ms[0].model.session.streams == 2
                # what the scan stored is what the runtime says for each file
                for name, (err, tags, emb) in stored[hint].items():
                    if err:
                        continue
                    direct = ms[0].model.classify(str(photos / name), top_k=3)
                    assert [lab for lab, _ in tags] == [lab for lab, _ in direct]
                    np.testing.assert_allclose([s_ for _, s_ in tags], [s_ for _, s_ in direct], atol=1e-4)
                    np.testing.assert_allclose(emb, ms[1].model.embed(str(photos / name)), atol=2e-3)
        finally:
            for m in ms:
                m.close()
    lat, thr = stored["LATENCY"], stored["THROUGHPUT"]
    assert set(lat) == set(thr) and len(thr) == 8
    assert thr["broken.jpg"][0] and lat["broken.jpg"][0]
    for name in thr:
        (e1, t1, v1), (e2, t2, v2) = lat[name], thr[name]
        assert (e1 is None) == (e2 is None)
        if e1 is None:
            assert [a for a, _ in t1] == [a for a, _ in t2]
            np.testing.assert_allclose(v1, v2, atol=2e-3)


def test_model_postprocess_equals_classify_and_embed(tmp_path, clip_dir):
    cls, clip = _models(tmp_path, clip_dir, "THROUGHPUT")
    try:
        paths = [str(p) for p in write_images(tmp_path / "p", 3)]
        for m, direct in ((cls, cls.model.classify(paths, top_k=4)), (clip, clip.model.embed(paths))):
            rows = m.model.postprocess(m.model.infer(m.model.preprocess(paths)), top_k=4)
            for a, b in zip(rows, direct):
                if m is cls:
                    assert [lab for lab, _ in a] == [lab for lab, _ in b]
                else:
                    np.testing.assert_allclose(a, b, atol=1e-5)
    finally:
        cls.close()
        clip.close()


def test_a_preprocessing_failure_is_that_photos_output_only(tmp_path, clip_dir, monkeypatch):
    """A decoded photo that fails in preprocessing: its model outputs record the error, the photo
    itself is stored (size, signature), the other photos of the batch are unaffected. The two tiny
    models have the same preprocessing, so it runs once per photo for both."""
    ms = _models(tmp_path, clip_dir, "THROUGHPUT")
    assert sc._spec_key(ms[0].spec) == sc._spec_key(ms[1].spec)
    recs = [sc.PhotoRecord(str(p), p.stat().st_size, p.stat().st_mtime, models=[m.sha256 for m in ms])
            for p in write_images(tmp_path / "p", 4)]
    import edgeinfer.runtime.preprocess as pp

    real = pp.resize_crop
    calls = []

    def flaky(img, spec):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("boom")
        return real(img, spec)

    monkeypatch.setattr(pp, "resize_crop", flaky)
    try:
        out = sc.process_batch(ms, recs, decode_workers=0)
    finally:
        for m in ms:
            m.close()
    assert len(calls) == 4                                                # once per photo
    assert [r.path for r in out] == [r.path for r in recs]               # order kept
    assert out[1].error is None and out[1].width == 160 and out[1].signature is not None
    assert all("boom" in out[1].outputs[m.sha256]["error"] for m in ms)
    for r in out[:1] + out[2:]:
        assert "tags" in r.outputs[ms[0].sha256] and "embedding" in r.outputs[ms[1].sha256]


def test_an_engine_error_fails_only_its_batch_and_the_rescan_completes(tmp_path, clip_dir, monkeypatch):
    photos = tmp_path / "photos"
    write_images(photos, 6)
    ms = _models(tmp_path, clip_dir, "THROUGHPUT")
    calls = {"n": 0}
    real = ms[1].model.infer

    def failing(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("engine fell over")
        return real(batch)

    monkeypatch.setattr(ms[1].model, "infer", failing)
    try:
        with Store(tmp_path / "lib.db") as store:
            with pytest.raises(RuntimeError, match="fell over"):
                run_scan(store, photos, ms, batch_size=3)
            assert store.counts()["photos"] == 3          # batch 1 committed, batch 2 not at all
            s = run_scan(store, photos, ms, batch_size=3)
            assert (s.done, s.skipped) == (3, 3) and store.counts()["photos"] == 6
    finally:
        for m in ms:
            m.close()


def test_cancel_stops_decoding_ahead(tmp_path, clip_dir, monkeypatch):
    photos = tmp_path / "photos"
    write_images(photos, 24, size=(64, 48))
    ms = _models(tmp_path, clip_dir, "THROUGHPUT")
    cancel = threading.Event()
    decoded = []
    real = sc.prepare_record
    monkeypatch.setattr(sc, "prepare_record", lambda rec, *a: decoded.append(rec.path) or real(rec, *a))
    try:
        with Store(tmp_path / "lib.db") as store:
            s = run_scan(store, photos, ms, batch_size=2, cancel=cancel,
                         progress=lambda st: st.done >= 2 and cancel.set())
            assert s.done == 2 and store.counts()["photos"] == 2
    finally:
        for m in ms:
            m.close()
    # at most the prefetch window (the batch in flight + PREFETCH_BATCHES more) was decoded
    assert 2 <= len(decoded) <= 2 * (sc.PREFETCH_BATCHES + 2) < 24
