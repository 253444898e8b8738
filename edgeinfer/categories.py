"""Few-shot user categories on an artifact's image embeddings (torch-free, numpy only).

"These five photos are my dog Rex; tag the rest": a category is the L2-normalised mean (prototype)
of at least ``MIN_EXAMPLES`` example embeddings, plus its own "none of these" threshold on the
cosine similarity to the prototype, so a photo of none of the categories stays untagged.

Threshold calibration, per category: the positives are the category's examples scored
*leave-one-out* (each against the prototype of the others: an example always looks close to a
mean that contains it); the negatives are the other categories' examples and any photos of no
category given as ``negatives`` (e.g. a sample of the user's other photos). The threshold sits in
the middle of the widest score interval that maximises TPR - FPR (Youden's J). With no negatives
at all it falls back to the lowest leave-one-out positive score minus ``FALLBACK_MARGIN`` and the
set says it is uncalibrated.

A category set is tied to the embedding model that made its embeddings: the identity is the
sha256 of the image-tower ONNX file that ran (plus model name and precision). Embeddings of
another model version do not live in the same space, so using them raises
``EmbeddingModelMismatchError`` instead of returning confident nonsense.

``evaluate()`` reports leave-one-out accuracy on the examples and the false-positive rate on the
negatives (each item is left out of prototypes *and* threshold calibration when it is scored).
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import CategoryError, EmbeddingModelMismatchError

FORMAT = "edgeinfer.categories/1"
MIN_EXAMPLES = 3
FALLBACK_MARGIN = 0.05


# ---------------------------------------------------------------- helpers
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim == 1:
        x = x[None]
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _b64(a: np.ndarray, dtype=np.float32) -> dict:
    a = np.ascontiguousarray(a, dtype)
    return {"dtype": np.dtype(dtype).name, "shape": list(a.shape),
            "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _unb64(d: dict) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"]))
    return a.reshape(d["shape"]).astype(np.float32)


def model_identity(model: Any) -> dict:
    """Identity of the embeddings a loaded ``edgeinfer.Model`` produces: artifact name, precision
    and the sha256 of the ONNX file that runs (from the manifest)."""
    art = model.artifact
    entry = art.entry(model.precision)
    return {"model": art.name, "precision": model.precision, "sha256": entry.get("sha256"),
            "dim": (art.manifest.get("output") or {}).get("dim")}


def _short(identity: Mapping) -> str:
    return (f"{identity.get('model')} ({identity.get('precision')}, sha256 "
            f"{str(identity.get('sha256'))[:12]}…)")


def _best_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """Middle of the widest interval of thresholds that maximise TPR - FPR (score >= t is a tag)."""
    cand = np.unique(np.concatenate([pos, neg]))
    # thresholds between consecutive distinct scores, plus one below all and one above all
    cuts = np.concatenate([[cand[0] - 1e-3], (cand[:-1] + cand[1:]) / 2, [cand[-1] + 1e-3]])
    tpr = (pos[None, :] >= cuts[:, None]).mean(1)
    fpr = (neg[None, :] >= cuts[:, None]).mean(1)
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)
    # the maximisers form runs of cuts; take the run with the widest score span, and its middle
    runs, start = [], best[0]
    for a, b in zip(best[:-1], best[1:]):
        if b != a + 1:
            runs.append((start, a))
            start = b
    runs.append((start, best[-1]))
    lo, hi = max(runs, key=lambda r: cuts[r[1]] - cuts[r[0]])
    # the run spans cuts[lo]..cuts[hi]; the scores just outside bound the gap
    below = cand[cand < cuts[lo]].max() if (cand < cuts[lo]).any() else cuts[lo]
    above = cand[cand >= cuts[hi]].min() if (cand >= cuts[hi]).any() else cuts[hi]
    return float((below + above) / 2)


# ---------------------------------------------------------------- the set
@dataclass
class Category:
    name: str
    examples: np.ndarray                  # [n, d] unit vectors
    sources: list[str] = field(default_factory=list)
    prototype: np.ndarray | None = None   # [d] unit vector
    threshold: float = 1.0
    calibrated: bool = False

    def summary(self) -> dict:
        return {"name": self.name, "examples": int(len(self.examples)), "sources": self.sources,
                "threshold": round(float(self.threshold), 6), "calibrated": self.calibrated}


class CategorySet:
    """User categories on one embedding model. Build with ``CategorySet.from_model`` (photos) or
    ``CategorySet(identity)`` + ``add(name, embeddings)``; tag with ``tag`` / ``tag_embeddings``."""

    def __init__(self, identity: Mapping, *, negatives: np.ndarray | None = None):
        if not identity or not identity.get("sha256"):
            raise CategoryError("a category set needs the identity of its embedding model "
                                "(model_identity(model): name, precision, sha256)")
        self.identity = dict(identity)
        self.categories: dict[str, Category] = {}
        self.negatives = _unit(negatives) if negatives is not None and len(negatives) else None

    # -------------------------------------------------- building
    @classmethod
    def from_model(cls, model: Any, examples: Mapping[str, Sequence[Any]], *,
                   negatives: Sequence[Any] | None = None) -> "CategorySet":
        """Embed the example photos (paths/bytes/PIL/arrays) per category name with ``model`` and
        build the set; ``negatives``: photos of none of the categories (optional, calibrates the
        "none of these" threshold better)."""
        cs = cls(model_identity(model))
        if negatives:
            emb, _, bad = _embed(model, negatives)
            cs.negatives = emb if len(emb) else None
        for name, photos in examples.items():
            emb, srcs, bad = _embed(model, photos)
            if bad:
                raise CategoryError(f"category {name!r}: {len(bad)} example photo(s) cannot be "
                                    f"used ({bad[0]}); replace them")
            cs._put(name, emb, srcs)
        cs.calibrate()
        return cs

    def _put(self, name: str, embeddings: np.ndarray, sources: Sequence[str] | None) -> None:
        name = str(name).strip()
        if not name:
            raise CategoryError("a category needs a non-empty name")
        emb = _unit(embeddings)
        if len(emb) < MIN_EXAMPLES:
            raise CategoryError(f"category {name!r} has {len(emb)} example(s); give at least "
                                f"{MIN_EXAMPLES} photos of it")
        dim = self.identity.get("dim")
        if dim and emb.shape[1] != int(dim):
            raise EmbeddingModelMismatchError(
                f"category {name!r}: embeddings have {emb.shape[1]} dimensions but "
                f"{_short(self.identity)} makes {dim}-dimensional ones")
        srcs = [str(s) for s in sources] if sources is not None else [f"#{i}" for i in range(len(emb))]
        self.categories[name] = Category(name, emb, srcs)

    def add(self, name: str, embeddings: np.ndarray, *, sources: Sequence[str] | None = None,
            identity: Mapping | None = None, replace: bool = True) -> Category:
        """Add (or replace) a category from example embeddings; thresholds are recalibrated."""
        if identity is not None:
            self.check_identity(identity)
        if not replace and name in self.categories:
            raise CategoryError(f"category {name!r} exists already")
        self._put(name, embeddings, sources)
        self.calibrate()
        return self.categories[str(name).strip()]

    def remove(self, name: str) -> None:
        if name not in self.categories:
            raise CategoryError(f"no category {name!r}; categories: {', '.join(self.names) or 'none'}")
        del self.categories[name]
        self.calibrate()

    def set_negatives(self, embeddings: np.ndarray | None) -> None:
        self.negatives = _unit(embeddings) if embeddings is not None and len(embeddings) else None
        self.calibrate()

    @property
    def names(self) -> list[str]:
        return list(self.categories)

    # -------------------------------------------------- calibration
    def calibrate(self) -> None:
        """Prototypes and per-category thresholds from the current examples and negatives."""
        for c in self.categories.values():
            c.prototype = _unit(c.examples.mean(0))[0]
        for c in self.categories.values():
            pos = _loo_scores(c.examples)
            negs = [o.examples for o in self.categories.values() if o is not c]
            if self.negatives is not None:
                negs.append(self.negatives)
            if negs:
                neg = np.concatenate(negs) @ c.prototype
                c.threshold = _best_threshold(pos, neg)
                c.calibrated = True
            else:
                c.threshold = float(pos.min() - FALLBACK_MARGIN)
                c.calibrated = False

    # -------------------------------------------------- use
    def check_identity(self, identity: Mapping) -> None:
        """Raise ``EmbeddingModelMismatchError`` unless ``identity`` is this set's model."""
        if identity.get("sha256") != self.identity.get("sha256"):
            raise EmbeddingModelMismatchError(
                f"these categories were built on embeddings of {_short(self.identity)}; the "
                f"embeddings given come from {_short(identity)}. Embeddings of another model "
                f"version are not comparable: rebuild the categories from their example photos "
                f"with this model.")

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity of each embedding to each category prototype [N, K]."""
        if not self.categories:
            return np.zeros((len(embeddings), 0), np.float32)
        P = np.stack([c.prototype for c in self.categories.values()])
        return _unit(embeddings) @ P.T

    def tag_embeddings(self, embeddings: np.ndarray, *, identity: Mapping) -> list[list[tuple[str, float]]]:
        """Per embedding: [(category, score), ...] of the categories it passes, best first (empty:
        none of these)."""
        self.check_identity(identity)
        S = self.scores(embeddings)
        names = self.names
        th = np.asarray([c.threshold for c in self.categories.values()], np.float32)
        out = []
        for row in S:
            hit = [(names[k], float(row[k])) for k in np.flatnonzero(row >= th)]
            out.append(sorted(hit, key=lambda t: -t[1]))
        return out

    def tag(self, model: Any, images: Any) -> list:
        """Tag photos with ``model`` (must be the set's embedding model). Per image a list of
        (category, score), or the runtime's falsy ``Failure`` for an undecodable image."""
        ident = model_identity(model)
        self.check_identity(ident)
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        res = model.embed(items)
        out: list = [None] * len(items)
        good = [i for i, r in enumerate(res) if not _is_failure(r)]
        for i, r in enumerate(res):
            if _is_failure(r):
                out[i] = r
        if good:
            tags = self.tag_embeddings(np.stack([res[i] for i in good]), identity=ident)
            for i, t in zip(good, tags):
                out[i] = t
        return out[0] if single else out

    # -------------------------------------------------- report
    def evaluate(self) -> dict:
        """Leave-one-out accuracy on the examples and false-positive rate on the negatives.

        Every scored item is removed from prototypes *and* threshold calibration first, so the
        numbers are what a new photo would get. ``accuracy`` counts an example as right when its
        best passing tag is its own category; ``nearest_prototype_accuracy`` ignores thresholds.
        """
        if len(self.categories) < 1:
            raise CategoryError("no categories to evaluate")
        right = nearest = untagged = 0
        per_cat: dict[str, dict] = {}
        for c in self.categories.values():
            ok = 0
            for i in range(len(c.examples)):
                if len(c.examples) - 1 < 1:
                    continue
                sub = self._without(category=c.name, index=i)
                e = c.examples[i:i + 1]
                tags = sub.tag_embeddings(e, identity=self.identity)[0]
                s = sub.scores(e)[0]
                nearest += int(sub.names[int(np.argmax(s))] == c.name)
                if tags and tags[0][0] == c.name:
                    ok += 1
                elif not tags:
                    untagged += 1
            right += ok
            per_cat[c.name] = {"examples": int(len(c.examples)), "loo_accuracy": ok / len(c.examples)}
        n = sum(len(c.examples) for c in self.categories.values())
        rep: dict = {"identity": self.identity, "categories": len(self.categories), "examples": n,
                     "loo_accuracy": right / n, "nearest_prototype_accuracy": nearest / n,
                     "loo_untagged": untagged / n, "per_category": per_cat}
        if self.negatives is not None:
            fp = 0
            for j in range(len(self.negatives)):
                sub = self._without(negative=j)
                fp += int(bool(sub.tag_embeddings(self.negatives[j:j + 1], identity=self.identity)[0]))
            rep.update(negatives=int(len(self.negatives)), false_positive_rate=fp / len(self.negatives))
        else:
            rep.update(negatives=0, false_positive_rate=None,
                       note="no negative photos given: false-positive rate not measured")
        return rep

    def _without(self, *, category: str | None = None, index: int | None = None,
                 negative: int | None = None) -> "CategorySet":
        sub = CategorySet(self.identity)
        for c in self.categories.values():
            ex = c.examples
            if c.name == category:
                ex = np.delete(ex, index, axis=0)
            sub.categories[c.name] = Category(c.name, ex, list(c.sources))
        if self.negatives is not None:
            sub.negatives = (np.delete(self.negatives, negative, axis=0) if negative is not None
                             else self.negatives)
            if not len(sub.negatives):
                sub.negatives = None
        sub.calibrate()
        return sub

    # -------------------------------------------------- file
    def to_dict(self) -> dict:
        return {"format": FORMAT, "identity": self.identity,
                "categories": [{**c.summary(), "examples_embeddings": _b64(c.examples)}
                               for c in self.categories.values()],
                # float16 halves the file; negatives only shape thresholds, not prototypes
                "negatives": _b64(self.negatives, np.float16) if self.negatives is not None else None}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set as one small JSON file (atomically)."""
        from .runtime.artifact import atomic_write_json

        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, d: Mapping) -> "CategorySet":
        if d.get("format") != FORMAT:
            raise CategoryError(f"not an edgeinfer categories file (format {d.get('format')!r}, "
                                f"expected {FORMAT!r})")
        cs = cls(d["identity"])
        if d.get("negatives"):
            cs.negatives = _unb64(d["negatives"])
        for c in d.get("categories", []):
            cs.categories[c["name"]] = Category(c["name"], _unb64(c["examples_embeddings"]),
                                                list(c.get("sources") or []))
        cs.calibrate()
        return cs

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Any = None,
             identity: Mapping | None = None) -> "CategorySet":
        """Read a categories file; with ``model`` (or ``identity``) refuse another model version."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise CategoryError(f"categories file {p} does not exist") from e
        except (OSError, ValueError) as e:
            raise CategoryError(f"cannot read categories file {p}: {e}") from e
        cs = cls.from_dict(d)
        if model is not None:
            identity = model_identity(model)
        if identity is not None:
            cs.check_identity(identity)
        return cs

    def summary(self) -> dict:
        return {"identity": self.identity, "categories": [c.summary() for c in self.categories.values()],
                "negatives": 0 if self.negatives is None else int(len(self.negatives))}


def _loo_scores(examples: np.ndarray) -> np.ndarray:
    """Each example's cosine to the prototype of the other examples of its category."""
    n = len(examples)
    if n < 2:
        return np.ones(n, np.float32)
    total = examples.sum(0)
    out = np.empty(n, np.float32)
    for i in range(n):
        p = _unit(total - examples[i])[0]
        out[i] = float(examples[i] @ p)
    return out


def _is_failure(r: Any) -> bool:
    return not isinstance(r, np.ndarray) and not bool(r)


def _embed(model: Any, photos: Iterable[Any]) -> tuple[np.ndarray, list[str], list[str]]:
    """(embeddings of the good photos, their source names, errors of the bad ones)."""
    photos = list(photos)
    res = model.embed(photos)
    good, srcs, bad = [], [], []
    for p, r in zip(photos, res):
        if _is_failure(r):
            bad.append(f"{getattr(r, 'source', p)}: {getattr(r, 'error', r)}")
        else:
            good.append(r)
            srcs.append(str(p) if isinstance(p, (str, os.PathLike)) else f"#{len(srcs)}")
    emb = np.stack(good) if good else np.zeros((0, 0), np.float32)
    return emb, srcs, bad
