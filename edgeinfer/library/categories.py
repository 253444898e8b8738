"""User categories in the library store (torch-free): ``edgeinfer.categories.CategorySet`` kept
per embedding model in SQLite, and the photos each category tags, with their scores.

Tables (created on first use through ``Store.ensure_schema``):

- ``category_sets``: one row per embedding model (``models.sha256``): the category set as the same
  JSON a ``CategorySet.save`` file holds (prototypes' examples, thresholds, identity).
- ``photo_categories``: (photo, model, category, score) for every photo that passes a category's
  threshold. Rewritten for a model in one transaction whenever its categories change, and after
  every scan (``tag_scanned``, called by ``run_scan``), so new photos are tagged as they arrive.

The "none of these" threshold is calibrated with the other categories' examples and a sample
of up to ``NEGATIVE_SAMPLE`` other library photos as negatives: most photos in a library belong
to none of a user's few categories, and the few that do only make the threshold a little
stricter. Examples are photo ids already embedded by the model, or uploaded images.
"""
from __future__ import annotations

import json
import time
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..categories import CategorySet
from ..errors import CategoryError
from .store import Store

SCHEMA_NAME = "categories/1"
DDL = """
CREATE TABLE IF NOT EXISTS category_sets (
    model_sha256 TEXT PRIMARY KEY REFERENCES models(sha256) ON DELETE CASCADE,
    data TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS photo_categories (
    photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
    model_sha256 TEXT NOT NULL REFERENCES models(sha256) ON DELETE CASCADE,
    category TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (photo_id, model_sha256, category)
);
CREATE INDEX IF NOT EXISTS photo_categories_cat ON photo_categories(category)
"""
NEGATIVE_SAMPLE = 200


def ensure(store: Store) -> None:
    store.ensure_schema(SCHEMA_NAME, DDL)


def load_set(store: Store, model_sha256: str) -> CategorySet | None:
    ensure(store)
    rows = store.query("SELECT data FROM category_sets WHERE model_sha256 = ?", (model_sha256,))
    return CategorySet.from_dict(json.loads(rows[0]["data"])) if rows else None


def example_embeddings(store: Store, model_sha256: str, photo_ids: Sequence[int]
                       ) -> tuple[np.ndarray, list[str]]:
    """Stored embeddings of the example photos (an error names the ids that have none)."""
    vecs, srcs, missing = [], [], []
    paths = store.photos_by_ids(photo_ids)
    for pid in photo_ids:
        v = store.embedding(int(pid), model_sha256)
        if v is None or int(pid) not in paths:
            missing.append(int(pid))
            continue
        vecs.append(v)
        srcs.append(f"photo:{int(pid)}")
    if missing:
        raise CategoryError(f"photos {', '.join(map(str, missing[:10]))} have no embedding from this "
                            f"model (unknown ids, unreadable photos, or not scanned with it yet); scan "
                            f"their folder first or upload the examples")
    return (np.stack(vecs) if vecs else np.zeros((0, 0), np.float32)), srcs


def library_negatives(store: Store, model_sha256: str, exclude: Iterable[int], *,
                      n: int = NEGATIVE_SAMPLE, seed: int = 0) -> np.ndarray | None:
    """A seeded sample of the library's embeddings (examples left out) as "none of these" photos."""
    vs = store.vectors(model_sha256)
    if not len(vs.ids):
        return None
    keep = ~np.isin(vs.ids, np.fromiter(exclude, np.int64))
    idx = np.flatnonzero(keep)
    if not len(idx):
        return None
    if len(idx) > n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))
    return vs.matrix[idx]


def _write(store: Store, cs: CategorySet) -> int:
    """Save the set and re-tag every photo of its model, in one transaction; returns tag rows."""
    sha = cs.identity["sha256"]
    vs = store.vectors(sha)
    rows: list[tuple] = []
    if cs.categories and len(vs.ids):
        for pid, tags in zip(vs.ids.tolist(), cs.tag_embeddings(vs.matrix, identity=cs.identity)):
            rows.extend((pid, sha, name, float(score)) for name, score in tags)
    with store.transaction() as db:
        if cs.categories:
            db.execute("INSERT INTO category_sets(model_sha256, data, updated_at) VALUES (?, ?, ?) "
                       "ON CONFLICT(model_sha256) DO UPDATE SET data = excluded.data, "
                       "updated_at = excluded.updated_at",
                       (sha, json.dumps(cs.to_dict()), time.time()))
        else:
            db.execute("DELETE FROM category_sets WHERE model_sha256 = ?", (sha,))
        db.execute("DELETE FROM photo_categories WHERE model_sha256 = ?", (sha,))
        db.executemany("INSERT INTO photo_categories(photo_id, model_sha256, category, score) "
                       "VALUES (?, ?, ?, ?)", rows)
    return len(rows)


def add_category(store: Store, identity: Mapping, name: str, *, photo_ids: Sequence[int] = (),
                 embeddings: np.ndarray | None = None, sources: Sequence[str] = ()) -> dict:
    """Create or replace category ``name`` for the model ``identity`` (``model_identity(model)``)
    from stored photos and/or uploaded images' embeddings; re-tags the library. Returns the
    category, the leave-one-out report and how many photos it tags."""
    ensure(store)
    sha = identity["sha256"]
    parts, srcs = [], []
    if photo_ids:
        e, s = example_embeddings(store, sha, [int(p) for p in photo_ids])
        parts.append(e)
        srcs += s
    if embeddings is not None and len(embeddings):
        parts.append(np.asarray(embeddings, np.float32))
        srcs += list(sources) or [f"upload:{i}" for i in range(len(embeddings))]
    if not parts:
        raise CategoryError(f"category {name!r}: give example photo ids or upload example images "
                            f"(at least 3)")
    emb = np.concatenate(parts)
    cs = load_set(store, sha) or CategorySet(identity)
    cs.check_identity(identity)
    cs.negatives = None
    neg = library_negatives(store, sha, [int(p) for p in photo_ids])
    cs.add(name, emb, sources=srcs)       # validates (>= 3 examples, dimensions)
    cs.set_negatives(neg)
    if not store.query("SELECT 1 FROM models WHERE sha256 = ?", (sha,)):
        # uploads only, for a model that never scanned: the category set references its row
        store.register_model(sha256=sha, name=str(identity.get("model")), kind="clip",
                             precision=identity.get("precision"), dim=identity.get("dim"))
    n = _write(store, cs)
    report = cs.evaluate()
    cat = cs.categories[str(name).strip()]
    return {"category": cat.summary(), "model": identity.get("model"), "model_sha256": sha,
            "tagged_photos": count_tagged(store, sha, cat.name), "tag_rows": n,
            "report": {k: report.get(k) for k in ("loo_accuracy", "nearest_prototype_accuracy",
                                                  "loo_untagged", "false_positive_rate",
                                                  "negatives", "examples", "categories")},
            "negatives_source": f"{0 if neg is None else len(neg)} other library photos"}


def delete_category(store: Store, model_sha256: str, name: str) -> None:
    cs = load_set(store, model_sha256)
    if cs is None or name not in cs.categories:
        raise CategoryError(f"no category {name!r}"
                            + (f"; categories: {', '.join(cs.names)}" if cs and cs.names else ""))
    cs.remove(name)
    _write(store, cs)


def count_tagged(store: Store, model_sha256: str, name: str) -> int:
    return int(store.query("SELECT COUNT(*) AS n FROM photo_categories WHERE model_sha256 = ? AND "
                           "category = ?", (model_sha256, name))[0]["n"])


def list_categories(store: Store, model_sha256: str | None = None) -> list[dict]:
    ensure(store)
    sql = "SELECT model_sha256, data FROM category_sets"
    rows = store.query(sql + (" WHERE model_sha256 = ?" if model_sha256 else ""),
                       (model_sha256,) if model_sha256 else ())
    out = []
    for r in rows:
        cs = CategorySet.from_dict(json.loads(r["data"]))
        for c in cs.categories.values():
            out.append({**c.summary(), "model": cs.identity.get("model"),
                        "model_sha256": r["model_sha256"],
                        "tagged_photos": count_tagged(store, r["model_sha256"], c.name)})
    return out


def retag(store: Store, model_sha256: str) -> int:
    cs = load_set(store, model_sha256)
    return _write(store, cs) if cs is not None else 0


def tag_scanned(store: Store, model_sha256s: Iterable[str]) -> int:
    """After a scan: tag the photos of every model that has categories (cheap: one matrix
    product per model). Returns the tag rows written."""
    ensure(store)
    have = {r["model_sha256"] for r in store.query("SELECT model_sha256 FROM category_sets")}
    return sum(retag(store, s) for s in model_sha256s if s in have)


def photo_ids_in(store: Store, category: str, model_sha256: str | None = None) -> set[int]:
    """Photos tagged with ``category`` (by any model, or by ``model_sha256``)."""
    ensure(store)
    sql = "SELECT DISTINCT photo_id FROM photo_categories WHERE category = ?"
    params: tuple = (category,)
    if model_sha256:
        sql += " AND model_sha256 = ?"
        params += (model_sha256,)
    return {int(r["photo_id"]) for r in store.query(sql, params)}


def photo_categories(store: Store, photo_id: int) -> list[dict]:
    ensure(store)
    return [{"category": r["category"], "score": round(r["score"], 6), "model_sha256": r["model_sha256"]}
            for r in store.query("SELECT category, score, model_sha256 FROM photo_categories WHERE "
                                 "photo_id = ? ORDER BY score DESC", (int(photo_id),))]


def restrict(store: Store, vs, category: str):
    """``vs`` (a ``VectorSet``) limited to the photos tagged with ``category`` (search filter)."""
    from .store import VectorSet

    ids = photo_ids_in(store, category)
    keep = np.isin(vs.ids, np.fromiter(ids, np.int64, len(ids)))
    return VectorSet(vs.model_sha256, vs.ids[keep], vs.matrix[keep] if len(vs.ids) else vs.matrix)
