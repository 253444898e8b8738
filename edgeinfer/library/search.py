"""Text search, similar-photo search and near-duplicates over a library's stored vectors.

Search is exact: the result is the ``k`` rows with the highest inner product (stored vectors are
L2-normalised, so it is the cosine), best first, ties broken by the lower photo id, every score the
float64 sum of the exact products of the stored float32 values. Two ways reach that same result:

- ``exact_top_k``: one float32 matrix-vector product (BLAS) over all N rows, then the rows that
  could be in the top k given float32's rounding bound are re-scored in float64. The product
  reads the whole N x D float32 matrix per query (100,000 x 512: 195 MB) and is memory-bound.
- ``Int8Index``: the same snapshot quantised to int8 per row (a quarter of the bytes) in an ONNX
  Runtime ``MatMulInteger`` whose constant matrix is pre-packed once, so a query is one integer
  matrix-vector product (2-3x faster than the float32 path at 100,000 x 512 on a 2-core EPYC,
  benchmarks/results/search.md). Each
  row's int8 score comes with a guaranteed error bound (the quantisation residual norms of row
  and query, by Cauchy-Schwarz), so every row that could be in the exact top k is kept and
  re-scored in float64: identical ids, order and scores to ``exact_top_k``, never approximate.

``top_k`` picks: a snapshot (``Store.vectors``) searched a second time with at least
``INDEX_MIN_ROWS`` rows gets an index built in a background thread (about a second per 100,000
rows on a 2-core EPYC); until it is ready, and for one-off subsets (a category filter), the
exact product answers. A store write makes a new snapshot, so an index never serves stale rows.
Past a few million rows per model an approximate index (HNSW) would take over, at the cost of
approximate recall.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Callable

import numpy as np

from .store import Store, VectorSet

INDEX_MIN_ROWS = 20_000     # below this the float32 product takes a few ms: no index
_F32_EPS = 2.0 ** -24       # float32 unit roundoff
_Q_LEVELS = 63              # query quantised to [-63, 63] (7 bits + zero point 64 as uint8):
                            # u8 x s8 pairs then stay below int16 saturation on AVX2 (no VNNI)
_R_LEVELS = 127             # rows quantised to [-127, 127] (int8)
_build_lock = threading.Lock()   # guards the index state in VectorSet.derived
_one_build = threading.Lock()    # one background build at a time


def _check_query(vs: VectorSet, query) -> np.ndarray:
    q = np.asarray(query, np.float32).reshape(-1)
    if q.shape[0] != vs.matrix.shape[1]:
        raise ValueError(f"query has {q.shape[0]} dimensions, the stored vectors {vs.matrix.shape[1]}")
    if not np.isfinite(q).all():
        raise ValueError("the query vector has NaN or infinite values")
    return q


def _want(vs: VectorSet, k: int, exclude: set[int]) -> int:
    # a few more than k when some are excluded; they are dropped after the exact re-score
    return max(0, min(int(k) + len(exclude), len(vs.ids)))


def _rescore(vs: VectorSet, q: np.ndarray, rows: np.ndarray, k: int, exclude: set[int]
             ) -> list[tuple[int, float]]:
    """The exact top k of the candidate ``rows``: float64 sums of exact products (a float32 x
    float32 product is exact in float64), summed row by row in one order, so equal rows get equal
    scores; best first, then the lower id."""
    ids = vs.ids[rows]
    if exclude:
        keep = ~np.isin(ids, np.fromiter(exclude, np.int64, len(exclude)))
        rows, ids = rows[keep], ids[keep]
    scores = (vs.matrix[rows].astype(np.float64) * q.astype(np.float64)).sum(axis=1)
    order = np.lexsort((ids, -scores))[: int(k)]
    return [(int(ids[i]), float(scores[i])) for i in order]


def _kth_largest(x: np.ndarray, want: int) -> float:
    return float(np.partition(x, len(x) - want)[len(x) - want])


def _exact(vs: VectorSet, query, k: int, exclude: set[int] | None,
           candidates: Callable[[np.ndarray, int], np.ndarray]) -> list[tuple[int, float]]:
    """What every exact path shares: the checks, then the rows ``candidates(q, want)`` says may be
    in the top ``want`` (every row when fewer are stored), re-scored in float64."""
    exclude = exclude or set()
    if len(vs.ids) == 0 or int(k) <= 0:
        return []
    q = _check_query(vs, query)
    want = _want(vs, k, exclude)
    rows = np.arange(len(vs.ids)) if want >= len(vs.ids) else candidates(q, want)
    return _rescore(vs, q, rows, k, exclude)


def exact_top_k(vs: VectorSet, query, k: int, *, exclude: set[int] | None = None
                ) -> list[tuple[int, float]]:
    """(photo id, score) of the ``k`` highest inner products, best first (see the module
    docstring for what exact means): one float32 product over all rows + a float64 re-score."""
    return _exact(vs, query, k, exclude, lambda q, want: _float32_candidates(vs, q, want))


def _float32_candidates(vs: VectorSet, q: np.ndarray, want: int) -> np.ndarray:
    """Rows whose float32 score, widened by its rounding bound, may be in the top ``want``."""
    s = vs.matrix @ q
    # float32 dot products of D terms are within D * eps * |r| * |q| of the exact value
    # (|r| <= the largest row norm, computed once per snapshot)
    d = vs.matrix.shape[1]
    slack = 2.0 * (d + 2) * _F32_EPS * _max_row_norm(vs) * float(np.linalg.norm(q.astype(np.float64)))
    t = _kth_largest(s, want)
    return np.flatnonzero(s >= t - 2.0 * slack)


def _max_row_norm(vs: VectorSet) -> float:
    v = vs.derived.get("max_row_norm")
    if v is None:
        m = vs.matrix
        # float32 sums (3x faster than float64 here) are within a relative D * 2^-24 of exact
        sq = np.einsum("ij,ij->i", m, m) if m.size else np.zeros(1, np.float32)
        v = vs.derived["max_row_norm"] = float(np.sqrt(float(sq.max()) * (1 + 2 * m.shape[1] * _F32_EPS)))
    return v


# ------------------------------------------------------------------ the int8 index
class Int8Index:
    """One snapshot's rows in int8 (per-row scale) inside an ONNX Runtime session whose constant
    matrix is pre-packed at build; ``top_k`` returns exactly what ``exact_top_k`` returns.

    Bound: with r = r' + e_r (r' the dequantised row) and q = q' + e_q, the exact score differs
    from the int8 score r'.q' by r'.e_q + e_r.q, at most |r'| |e_q| + |e_r| |q|. |r'| and |e_r|
    are stored per row (rounded up); |e_q| and |q| are computed per query."""

    def __init__(self, vs: VectorSet, *, threads: int | None = None):
        import onnxruntime as ort  # a core dependency; imported here (the store never needs it)

        self.vs = vs
        m = vs.matrix
        n, d = m.shape
        self.scale = np.empty(n, np.float64)       # per row: r ~ scale * int8 row (a float32 value)
        self.row_norm = np.empty(n, np.float64)    # |r'| (rounded up)
        self.res_norm = np.empty(n, np.float64)    # |e_r| (rounded up)
        qt = np.empty((d, n), np.int8)             # the int8 rows, transposed for MatMulInteger
        for s in range(0, n, 8192):  # in blocks of a few MB; float32 arithmetic, bounded below
            r = m[s:s + 8192]
            e = s + len(r)
            amax = np.abs(r).max(axis=1)
            sc = np.where(amax > 0, amax / np.float32(_R_LEVELS), np.float32(1)).astype(np.float32)
            qb = np.rint(r * (np.float32(1) / sc)[:, None])
            np.clip(qb, -_R_LEVELS, _R_LEVELS, out=qb)
            # |r'| = scale * |int row|: the integer sum of squares is exact in float64
            self.row_norm[s:e] = (sc.astype(np.float64) * np.sqrt(np.einsum("ij,ij->i", qb, qb,
                                                                            dtype=np.float64)) * (1 + 1e-12))
            # e_r = r - scale * q in float32 is off by < 2^-23 * amax per element; its norm is
            # off by < sqrt(D) times that, and float32 summation by a relative D * 2^-24: both added
            res = r - qb * sc[:, None]
            self.res_norm[s:e] = (np.sqrt(np.einsum("ij,ij->i", res, res).astype(np.float64))
                                  * (1 + 2 * d * _F32_EPS) + np.sqrt(d) * 2.0 ** -22 * amax)
            self.scale[s:e] = sc
            qt[:, s:e] = qb.T
        model = _matmul_integer_model(qt, rows=n, dim=d)
        del qt
        so = ort.SessionOptions()
        # None: two threads (on a 2-core EPYC the product took 3.1 ms on two, 5.8 ms on one,
        # benchmarks/results/search.md); more were not measured
        so.intra_op_num_threads = int(threads or min(2, os.cpu_count() or 1))
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        del model
        self.dim = d

    @property
    def rows(self) -> int:
        return len(self.vs.ids)

    def int_scores(self, qq: np.ndarray) -> np.ndarray:
        """Integer products of the int8 rows with an int8 query in [-63, 63] -> int32 [N]."""
        a = (qq.astype(np.int16) + 64).astype(np.uint8)[None]
        return self.session.run(None, {"A": a})[0][0]

    def top_k(self, query, k: int, *, exclude: set[int] | None = None) -> list[tuple[int, float]]:
        return _exact(self.vs, query, k, exclude, self._candidates)

    def _candidates(self, q: np.ndarray, want: int) -> np.ndarray:
        """Rows whose int8 score, widened by its guaranteed error bound, may be in the top."""
        q64 = q.astype(np.float64)
        qmax = float(np.abs(q64).max())
        sq = qmax / _Q_LEVELS if qmax > 0 else 1.0
        qq = np.rint(q64 / sq).clip(-_Q_LEVELS, _Q_LEVELS)
        e_q = float(np.linalg.norm(q64 - qq * sq))
        q_norm = float(np.linalg.norm(q64))
        approx = self.int_scores(qq.astype(np.int8)) * (self.scale * sq)
        # + a relative 1e-9 for float64 rounding of approx and of the norms themselves
        margin = (self.row_norm * e_q + self.res_norm * q_norm) * (1 + 1e-9) + 1e-12
        t = _kth_largest(approx - margin, want)
        return np.flatnonzero(approx + margin >= t)

    def close(self) -> None:
        self.session = None


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _Msg(list):
    """A protobuf message as a list of byte chunks: nesting adds a prefix, never copies the
    51 MB matrix (joined once at the end)."""

    def add(self, num: int, payload: "bytes | int | str | _Msg") -> "_Msg":
        if isinstance(payload, int):
            self.append(_varint(num << 3) + _varint(payload))
            return self
        if isinstance(payload, str):
            payload = payload.encode()
        size = payload.size() if isinstance(payload, _Msg) else len(payload)
        self.append(_varint((num << 3) | 2) + _varint(size))
        if isinstance(payload, _Msg):
            self.extend(payload)
        else:
            self.append(payload)
        return self

    def size(self) -> int:
        return sum(len(c) for c in self)


def _matmul_integer_model(b: np.ndarray, *, rows: int, dim: int) -> bytes:
    """ONNX bytes of ``Y[1, N] = MatMulInteger(A[1, D] uint8, B[D, N] int8 constant, a_zero=64)``,
    written as protobuf by hand: the runtime does not depend on the ``onnx`` package (an export
    extra), and this graph is one node. Field numbers are onnx.proto's."""
    UINT8, INT8, INT32 = 2, 3, 6

    def value_info(name: str, elem: int, shape: tuple[int, ...]) -> _Msg:
        dims = _Msg()
        for s in shape:
            dims.add(1, _Msg().add(1, int(s)))                                   # Dimension.dim_value
        tensor = _Msg().add(1, elem).add(2, dims)                                 # TypeProto.Tensor
        return _Msg().add(1, name).add(2, _Msg().add(1, tensor))                  # ValueInfoProto

    def tensor(name: str, elem: int, shape: tuple[int, ...], raw) -> _Msg:
        t = _Msg()
        for s in shape:
            t.add(1, int(s))
        return t.add(2, elem).add(8, name).add(9, raw)                           # TensorProto

    node = _Msg().add(1, "A").add(1, "B").add(1, "a_zero").add(2, "Y").add(4, "MatMulInteger")
    graph = (_Msg().add(1, node).add(2, "top_k_int8")
             .add(5, tensor("B", INT8, (dim, rows), memoryview(np.ascontiguousarray(b)).cast("B")))
             .add(5, tensor("a_zero", UINT8, (), bytes([64])))
             .add(11, value_info("A", UINT8, (1, dim)))
             .add(12, value_info("Y", INT32, (1, rows))))
    opset = _Msg().add(1, "").add(2, 13)
    return b"".join(_Msg().add(1, 8).add(8, opset).add(7, graph))               # ModelProto


def build_index(vs: VectorSet) -> Int8Index:
    """The int8 index of a snapshot, built now and kept with it (``vs.derived``)."""
    with _build_lock:
        idx = vs.derived.get("int8")
        if isinstance(idx, Int8Index):
            return idx
        vs.derived["int8"] = "building"
    try:
        idx = Int8Index(vs)
    except Exception:
        vs.derived["int8"] = "failed"   # exact search keeps answering; no retry loop
        raise
    vs.derived["int8"] = idx
    return idx


def _build_in_background(vs: VectorSet) -> None:
    """One build at a time (each holds ~2x the int8 matrix while it runs); a snapshot the store
    has replaced and no request holds any more by the time its turn comes is not built."""
    ref = weakref.ref(vs)

    def run():
        with _one_build:
            target = ref()
            if target is None:
                return
            try:
                build_index(target)
            except Exception:  # noqa: BLE001 - recorded as "failed"; exact search answers
                pass

    threading.Thread(target=run, name="edgeinfer-search-index", daemon=True).start()


def top_k(vs: VectorSet, query: np.ndarray, k: int, *, exclude: set[int] | None = None
          ) -> list[tuple[int, float]]:
    """(photo id, score) of the ``k`` highest inner products, best first, ties by lower id.

    Exact whichever way it runs: the snapshot's int8 index when built, else the float32 product
    (and a snapshot of ``INDEX_MIN_ROWS``+ rows searched a second time starts its index build)."""
    idx = vs.derived.get("int8")
    if isinstance(idx, Int8Index):
        return idx.top_k(query, k, exclude=exclude)
    if idx is None and len(vs.ids) >= INDEX_MIN_ROWS:
        with _build_lock:
            seen = vs.derived.get("searches", 0) + 1
            vs.derived["searches"] = seen
            start = seen >= 2 and vs.derived.get("int8") is None
            if start:
                vs.derived["int8"] = "queued"
        if start:
            _build_in_background(vs)
    return exact_top_k(vs, query, k, exclude=exclude)


def with_paths(store: Store, hits: list[tuple[int, float]]) -> list[dict]:
    rows = store.photos_by_ids([i for i, _ in hits])
    return [{"photo_id": i, "path": rows[i]["path"], "score": round(s, 6)} for i, s in hits if i in rows]


DEFAULT_SIGNATURE_THRESHOLD = 0.90
DEFAULT_CLIP_THRESHOLD = 0.95


def duplicate_groups(store: Store, *, threshold: float | None = None, model_sha256: str | None = None,
                     block: int = 2048) -> list[dict]:
    """Groups of near-duplicates: photos whose vectors have cosine >= ``threshold`` are linked and
    the connected components of 2+ photos are the groups. Vectors: the perceptual signature
    (default; model-independent, robust to re-encoding, resizing, small crops) or, with
    ``model_sha256``, that CLIP model's image embeddings. Each group names the photo to keep:
    the largest resolution, then the largest file, then the lowest id."""
    vs = store.vectors(model_sha256) if model_sha256 else store.signatures()
    if threshold is None:
        threshold = DEFAULT_CLIP_THRESHOLD if model_sha256 else DEFAULT_SIGNATURE_THRESHOLD
    n = len(vs.ids)
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    best: dict[tuple[int, int], float] = {}
    m = vs.matrix
    for s in range(0, n, block):
        sims = m[s:s + block] @ m.T  # block x n
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = s + r
            if c <= i:
                continue
            best[(i, c)] = float(sims[r, c])
            a, b = find(i), find(c)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    members = [g for g in groups.values() if len(g) > 1]
    if not members:
        return []
    info = store.photos_by_ids([int(vs.ids[i]) for g in members for i in g])
    out = []
    for g in members:
        ids = [int(vs.ids[i]) for i in g]
        rows = [info[i] for i in ids if i in info]

        def rank(r):
            return (-(r["width"] or 0) * (r["height"] or 0), -(r["size"] or 0), r["id"])

        rows.sort(key=rank)
        keep = rows[0]["id"]
        sim = [best[(a, b)] for a in g for b in g if (a, b) in best]
        out.append({"keep": keep, "min_similarity": round(min(sim), 4) if sim else None,
                    "photos": [{"photo_id": r["id"], "path": r["path"], "width": r["width"],
                                "height": r["height"], "size": r["size"], "keep": r["id"] == keep}
                               for r in rows]})
    out.sort(key=lambda g: -len(g["photos"]))
    return out
