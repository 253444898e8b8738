"""Search and near-duplicates by exact inner product in numpy.

Stored vectors are L2-normalised, so the inner product is the cosine. One matrix-vector product
over N x D float32 (N = 100,000, D = 512: 200 MB, one BLAS call) plus ``argpartition`` is exact
and takes a few tens of ms on a laptop CPU (benchmarks/search.py); past a few hundred thousand
photos per model, or on a small CPU where the matrix does not fit comfortably in RAM, an
approximate index (sqlite-vec, usearch HNSW) takes over: sub-linear query time at the cost of a
build step and approximate recall. See edgeinfer/library/README.md.
"""
from __future__ import annotations

import numpy as np

from .store import Store, VectorSet


def top_k(vs: VectorSet, query: np.ndarray, k: int, *, exclude: set[int] | None = None
          ) -> list[tuple[int, float]]:
    """(photo id, score) of the ``k`` highest inner products, best first."""
    if len(vs.ids) == 0:
        return []
    q = np.asarray(query, np.float32).reshape(-1)
    if q.shape[0] != vs.matrix.shape[1]:
        raise ValueError(f"query has {q.shape[0]} dimensions, the stored vectors {vs.matrix.shape[1]}")
    scores = vs.matrix @ q
    exclude = exclude or set()
    # take a few more than k and drop the excluded ones afterwards (no pass over all ids)
    want = max(0, min(int(k) + len(exclude), len(scores)))
    if want == 0:
        return []
    idx = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    out = [(int(vs.ids[i]), float(scores[i])) for i in idx if int(vs.ids[i]) not in exclude]
    return out[: int(k)]


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
