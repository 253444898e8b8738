"""Library search: the int8 index and the float32 product return exactly the brute-force float64
top k (same ids, same order, ties by the lower id) on random data, ties, near-ties, outlier
dimensions and edge cases; the index is per store snapshot, so a write is never searched stale."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgeinfer.library import search
from edgeinfer.library.search import Int8Index, build_index, exact_top_k, top_k
from edgeinfer.library.store import PhotoResult, Store, VectorSet


def brute_force(vs: VectorSet, q, k: int, exclude=()) -> list[tuple[int, float]]:
    """The definition of exact: float64 scores, best first, then the lower id."""
    s = (vs.matrix.astype(np.float64) * np.asarray(q, np.float32).astype(np.float64)).sum(axis=1)
    order = [i for i in np.lexsort((vs.ids, -s)) if int(vs.ids[i]) not in set(exclude)]
    return [(int(vs.ids[i]), float(s[i])) for i in order[:k]]


def unit_rows(rng, n: int, d: int, *, dtype=np.float16) -> np.ndarray:
    m = rng.normal(size=(n, d)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m.astype(dtype).astype(np.float32)  # as the store holds them (float16 blobs)


def vectorset(m: np.ndarray, ids=None) -> VectorSet:
    ids = np.arange(1, len(m) + 1, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    return VectorSet("m" * 64, ids, np.ascontiguousarray(m, np.float32))


def assert_same(got, want):
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-12)


@pytest.mark.parametrize("n,d,k", [(3000, 64, 10), (4000, 512, 20), (257, 32, 1), (50, 8, 50)])
def test_index_and_exact_equal_brute_force_on_random_data(n, d, k):
    rng = np.random.default_rng(n + d)
    m = unit_rows(rng, n, d)
    ids = rng.permutation(np.arange(10, 10 + 3 * n))[:n]   # ids not in row order
    vs = vectorset(m, ids)
    idx = Int8Index(vs)
    queries = [m[3] + 0.05 * rng.normal(size=d).astype(np.float32), -m[5], m[7]]
    queries += [rng.normal(size=d).astype(np.float32) for _ in range(5)]
    for q in queries:
        want = brute_force(vs, q, k)
        assert_same(exact_top_k(vs, q, k), want)
        assert_same(idx.top_k(q, k), want)
        # and the float32 BLAS scores the service used before agree within 1e-3
        s32 = vs.matrix @ q
        by_id = dict(zip(vs.ids.tolist(), s32.tolist()))
        assert all(abs(by_id[i] - s) < 1e-3 for i, s in want)


def test_ties_go_to_the_lower_id_and_near_ties_stay_exact():
    rng = np.random.default_rng(1)
    d = 64
    base = unit_rows(rng, 1, d)[0]
    m = unit_rows(rng, 2000, d)
    m[[900, 40, 1500, 7]] = base                       # exact ties, ids 901, 41, 1501, 8
    # 300 rows within ~1e-4 of the base: far inside the int8 error bound (every one is a candidate)
    near = base + 1e-4 * rng.normal(size=(300, d)).astype(np.float32)
    m[1000:1300] = near
    vs = vectorset(m)
    idx = Int8Index(vs)
    for q in (base, base + 1e-3 * rng.normal(size=d).astype(np.float32)):
        for k in (1, 3, 4, 5, 50, 299):
            want = brute_force(vs, q, k)
            assert_same(exact_top_k(vs, q, k), want)
            assert_same(idx.top_k(q, k), want)
    hits = idx.top_k(base, 304)
    pos = [p for p, (i, _) in enumerate(hits) if i in (8, 41, 901, 1501)]
    assert [hits[p][0] for p in pos] == [8, 41, 901, 1501] and pos == list(range(pos[0], pos[0] + 4))
    assert len({hits[p][1] for p in pos}) == 1


def test_outlier_dimensions_zero_rows_and_unnormalised_rows():
    """CLIP embeddings have a few large dimensions; rows of the store need not be unit length."""
    rng = np.random.default_rng(2)
    n, d = 3000, 128
    m = unit_rows(rng, n, d)
    m[:, 5] *= 30.0                                    # an outlier dimension
    m[:, 77] -= 2.0
    m[10] = 0.0                                        # an all-zero row
    m[11] = m[12] * 1000.0                             # a huge row
    vs = vectorset(m)
    idx = Int8Index(vs)
    for q in (rng.normal(size=d).astype(np.float32), m[12], np.eye(d, dtype=np.float32)[5] * 1e-6):
        for k in (1, 10, 100):
            want = brute_force(vs, q, k)
            assert_same(exact_top_k(vs, q, k), want)
            assert_same(idx.top_k(q, k), want)


def test_exclude_k_bounds_and_bad_queries():
    rng = np.random.default_rng(3)
    m = unit_rows(rng, 500, 16)
    vs = vectorset(m)
    idx = Int8Index(vs)
    q = m[17]
    for fn in (lambda *a, **kw: exact_top_k(vs, *a, **kw), idx.top_k):
        assert_same(fn(q, 10, exclude={18}), brute_force(vs, q, 10, exclude={18}))
        assert 18 not in [i for i, _ in fn(q, 10, exclude={18, 999_999})]
        assert_same(fn(q, 500), brute_force(vs, q, 500))          # k = N
        assert len(fn(q, 10_000)) == 500                           # k > N
        assert fn(q, 0) == [] and fn(q, -1) == []
        assert len(fn(q, 495, exclude=set(range(1, 11)))) == 490   # want > N after excluding
        assert fn(q, 5, exclude=set(range(1, 501))) == []          # everything excluded
        assert_same(fn(np.zeros(16, np.float32), 5), brute_force(vs, np.zeros(16), 5))  # all tie
        with pytest.raises(ValueError, match="dimensions"):
            fn(np.ones(15, np.float32), 3)
        with pytest.raises(ValueError, match="NaN"):
            fn(np.full(16, np.nan, np.float32), 3)
    empty = VectorSet("e", np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    assert top_k(empty, np.ones(4), 3) == [] and exact_top_k(empty, np.ones(4), 3) == []


def test_integer_products_are_exact_at_the_extremes():
    """The engine's u8 x s8 product must not saturate (AVX2 without VNNI pairs products in
    int16): rows at +-127 against a query at +-63 is the worst case."""
    rng = np.random.default_rng(4)
    d = 512
    m = np.where(rng.random((64, d)) < 0.5, -1.0, 1.0).astype(np.float32)
    m[0] = 1.0
    m[1] = -1.0
    idx = Int8Index(vectorset(m))
    ints = np.rint(m / idx.scale[:, None]).astype(np.int32)
    assert np.abs(ints).max() == 127
    for qq in (np.full(d, 63), np.full(d, -63), np.where(rng.random(d) < 0.5, -63, 63),
               rng.integers(-63, 64, d)):
        qq = qq.astype(np.int8)
        np.testing.assert_array_equal(idx.int_scores(qq), ints @ qq.astype(np.int32))


def test_hand_written_onnx_graph_is_valid():
    onnx = pytest.importorskip("onnx")
    b = np.arange(-6, 6, dtype=np.int8).reshape(4, 3)
    model = onnx.load_from_string(search._matmul_integer_model(b, rows=3, dim=4))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["MatMulInteger"]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(model.graph.initializer[0]), b)


def test_top_k_builds_the_index_for_a_snapshot_searched_twice(monkeypatch):
    monkeypatch.setattr(search, "INDEX_MIN_ROWS", 100)
    rng = np.random.default_rng(5)
    vs = vectorset(unit_rows(rng, 400, 32))
    q = rng.normal(size=32).astype(np.float32)
    first = top_k(vs, q, 7)
    assert "int8" not in vs.derived                  # a one-off search builds nothing
    assert_same(top_k(vs, q, 7), first)              # the second starts the build
    deadline = time.monotonic() + 30
    while not isinstance(vs.derived.get("int8"), Int8Index) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isinstance(vs.derived["int8"], Int8Index)
    assert_same(top_k(vs, q, 7), first)
    assert_same(first, brute_force(vs, q, 7))
    small = vectorset(unit_rows(rng, 50, 32))        # below INDEX_MIN_ROWS: never indexed
    top_k(small, q, 3), top_k(small, q, 3)
    assert "int8" not in small.derived


def test_a_store_write_is_never_searched_through_a_stale_index(tmp_path):
    rng = np.random.default_rng(6)
    n, d, sha = 600, 32, "c" * 64
    m = unit_rows(rng, n, d)
    with Store(tmp_path / "lib.db") as store:
        store.register_model(sha256=sha, name="clip", kind="clip", dim=d)
        with store.transaction() as db:
            db.executemany("INSERT INTO photos(id, path, size, mtime, scanned_at) VALUES (?, ?, 0, 0, 0)",
                           [(i + 1, f"/p/{i}.jpg") for i in range(n)])
        store.add_embeddings(sha, range(1, n + 1), m)
        vs = store.vectors(sha)
        idx = build_index(vs)
        assert store.vectors(sha) is vs and top_k(vs, m[9], 1)[0][0] == 10   # no write: same index
        # a scan batch adds a photo whose vector is the query: the next snapshot must find it
        new = unit_rows(rng, 1, d)[0]
        store.write_results([PhotoResult(path="/p/new.jpg", size=1, mtime=1.0, sha256="x" * 64,
                                         outputs={sha: {"embedding": new}})])
        vs2 = store.vectors(sha)
        assert vs2 is not vs and "int8" not in vs2.derived
        new_id = top_k(vs2, new, 1)[0][0]
        assert new_id not in vs.ids and new_id in vs2.ids
        assert_same(top_k(vs2, new, 5), brute_force(vs2, new, 5))
        assert idx.top_k(new, 1)[0][0] != new_id       # the old snapshot's index did not change
        # a deleted photo leaves the next snapshot, and its index
        store.delete_photos([10])
        vs3 = store.vectors(sha)
        assert 10 not in [i for i, _ in build_index(vs3).top_k(m[9], 5)]
        assert_same(build_index(vs3).top_k(m[9], 5), brute_force(vs3, m[9], 5))
        # a bulk import replaces the snapshot too
        store.add_embeddings(sha, [1], -m[9][None])
        vs4 = store.vectors(sha)
        assert vs4 is not vs3 and top_k(vs4, -m[9], 1)[0][0] == 1


def test_float32_rounding_does_not_reorder_the_exact_path():
    """Rows whose scores differ by less than float32 rounding (a float32 store): the float32
    product alone would rank them wrongly; the float64 re-score of its bound's candidates does not."""
    rng = np.random.default_rng(7)
    d = 512
    base = unit_rows(rng, 1, d, dtype=np.float32)[0]
    m = unit_rows(rng, 1000, d, dtype=np.float32)
    m[:600] = base + 2e-8 * rng.normal(size=(600, d)).astype(np.float32)
    vs = vectorset(m)
    for q in (base, base + 0.01 * rng.normal(size=d).astype(np.float32)):
        for k in (1, 5, 20):
            assert_same(exact_top_k(vs, q, k), brute_force(vs, q, k))
            assert_same(Int8Index(vs).top_k(q, k), brute_force(vs, q, k))


# ------------------------------------------------------------------ the text tower of a query
class _Art:
    """The part of an Artifact that selection reads (files per tower, entries, its folder)."""

    def __init__(self, d, text: dict, image=("fp32",)):
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.manifest = {"files": {p: {"sha256": f"img-{p}"} for p in image},
                         "text": {"files": {p: {"sha256": f"txt-{p}", **e} for p, e in text.items()}}}

    def files(self, tower="image"):
        return self.manifest["files"] if tower == "image" else self.manifest[tower]["files"]

    def precisions(self, tower="image"):
        return [p for p in ("fp32", "fp16", "int8") if p in self.files(tower)]

    def entry(self, precision, tower="image"):
        return self.files(tower)[precision]


AMD = {"isa": {"arm": False}, "vendor": "AuthenticAMD", "int8_tier": "avx2"}
INTEL = {"isa": {"arm": False}, "vendor": "GenuineIntel", "int8_tier": "vnni"}


def _sel(provider="cpu", device="CPU", precision="fp32", reason="provider: heuristic; precision: fp32"):
    from edgeinfer.runtime.selection import Selection

    return Selection(provider, device, precision, reason)


def _ok(p):
    return True, "installed"


def test_text_tower_engine_and_precision_heuristics(tmp_path):
    from edgeinfer.runtime.selection import text_tower_pick

    good = {"fidelity": {"cosine_mean": 0.9991, "prompts": 16}}
    art = _Art(tmp_path / "a", {"fp32": {}, "int8": good})
    # AMD, image tower tuned to OpenVINO: the text tower still goes to ONNX Runtime, INT8 (guard ok)
    prov, prec, why = text_tower_pick(_sel("openvino"), art, cpu=AMD, usable=_ok)
    assert (prov, prec) == ("cpu", "int8") and "0.9991" in why
    # a text INT8 that lost too much is never picked; no INT8 file: FP32
    bad = _Art(tmp_path / "b", {"fp32": {}, "int8": {"fidelity": {"cosine_mean": 0.95}}})
    assert text_tower_pick(_sel(), bad, cpu=AMD, usable=_ok)[:2] == ("cpu", "fp32")
    assert text_tower_pick(_sel(), _Art(tmp_path / "c", {"fp32": {}}), cpu=AMD, usable=_ok)[:2] == ("cpu", "fp32")
    # Intel: the image tower's engine; OpenVINO gets FP32 (the INT8 file is ORT's dynamic kind)
    assert text_tower_pick(_sel("openvino"), art, cpu=INTEL, usable=_ok)[:2] == ("openvino", "fp32")
    # GPU and explicitly requested engines keep the image tower's engine
    assert text_tower_pick(_sel("cuda", "cuda:0", "fp16"), art, cpu=AMD, usable=_ok)[:2] == ("cuda", "fp32")
    req = _sel("openvino", reason="provider: requested; precision: fp32")
    assert text_tower_pick(req, art, cpu=AMD, usable=_ok)[:2] == ("openvino", "fp32")
    # ONNX Runtime not usable: stay on the image tower's engine
    assert text_tower_pick(_sel("openvino"), art, cpu=AMD, usable=lambda p: (p == "openvino", "no"))[0] == "openvino"


def test_text_tower_measurements_win_and_never_touch_the_image_pick(tmp_path):
    from edgeinfer.runtime.selection import record_tuning, text_tower_pick, tuned_pick

    art = _Art(tmp_path / "a", {"fp32": {}, "int8": {"fidelity": {"cosine_mean": 0.999}}})

    def m(provider, precision, ms, *, tower="text", sha=None, passed=True):
        return {"tower": tower, "provider": provider, "precision": precision, "latency_ms": ms,
                "fidelity_pass": passed, "sha256": sha or art.entry(precision, tower)["sha256"]}

    record_tuning(art, [m("openvino", "fp32", 5.0), m("cpu", "fp32", 9.0), m("cpu", "int8", 1.0, passed=False),
                        m("cpu", "fp32", 30.0, tower="image")])
    prov, prec, why = text_tower_pick(_sel(), art, cpu=AMD, usable=_ok)
    assert (prov, prec) == ("openvino", "fp32") and "tuned" in why
    # the image pick reads only image measurements (no note about the text files either)
    pick, notes = tuned_pick(art, usable=_ok)
    assert (pick["provider"], pick["precision"], pick["latency_ms"]) == ("cpu", "fp32", 30.0) and not notes
    # a measurement of an earlier text file is stale
    record_tuning(art, [m("openvino", "fp32", 5.0, sha="old")])
    prov, prec, why = text_tower_pick(_sel(), art, cpu=AMD, usable=_ok)
    assert (prov, prec) == ("cpu", "fp32") and "earlier text file" in why
    # the measured engine not installed: the next one
    record_tuning(art, [m("openvino", "fp32", 5.0)])
    prov, _, why = text_tower_pick(_sel(), art, cpu=AMD, usable=lambda p: (p == "cpu", "not installed"))
    assert prov == "cpu" and "not usable here" in why


def test_text_tower_reason_names_the_engine_and_why(tmp_path):
    from edgeinfer.runtime.selection import text_tower_pick

    art = _Art(tmp_path / "a", {"fp32": {}})
    assert "ONNX Runtime CPU" in text_tower_pick(_sel("cpu"), art, cpu=AMD, usable=_ok)[2]
    assert "Intel" in text_tower_pick(_sel("openvino"), art, cpu=INTEL, usable=_ok)[2]
    assert "on an Intel CPU" not in text_tower_pick(_sel("cpu"), art, cpu=AMD, usable=_ok)[2]


def test_a_replaced_snapshot_nobody_holds_is_not_indexed(monkeypatch):
    import gc

    monkeypatch.setattr(search, "INDEX_MIN_ROWS", 100)
    built = []
    monkeypatch.setattr(search, "build_index", lambda vs: built.append(len(vs.ids)))
    rng = np.random.default_rng(8)
    with search._one_build:                    # a build is running: the next one waits its turn
        vs = vectorset(unit_rows(rng, 300, 16))
        q = rng.normal(size=16).astype(np.float32)
        top_k(vs, q, 3), top_k(vs, q, 3)       # queues its build
        kept = vectorset(unit_rows(rng, 200, 16))
        top_k(kept, q, 3), top_k(kept, q, 3)
        del vs                                 # replaced by the store, no request holds it
        gc.collect()
    deadline = time.monotonic() + 10
    while not built and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert built == [200] and kept is not None
