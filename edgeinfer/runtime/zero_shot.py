"""CLIP zero-shot classification, torch-free (``Model.zero_shot`` delegates here).

``labels`` is one of

- ``None``: the artifact's default label set (``manifest["text"]["default_label_set"]``);
- a label-set name stored in the artifact (``"imagenet"``, ``"cifar10"``): text embeddings
  computed at export time with the set's prompt-template ensemble;
- custom labels: a list of strings, or one comma-separated string (``"beach, receipts, pets"``).
  Each label is put into the prompt templates (default ``manifest["text"]["templates"]``:
  ``"a photo of a {}."``; pass ``templates=[...]`` for an ensemble), tokenized with the artifact's
  tokenizer and encoded by the text tower (``text.<precision>.onnx``, the image tower's precision
  when the artifact has it, else fp32) in batches, shortest prompts together and trimmed after
  their end-of-text token when the tower allows it. Embeddings are cached per (labels, templates)
  on the ``Model`` (LRU, ``CACHE_SIZE`` label lists).

Bad labels: an empty list, an empty label, a non-string, or duplicates raise ``LabelError``
(duplicates are compared case- and whitespace-insensitively, as CLIP's tokenizer lowercases and
collapses whitespace: "Cat" and "cat " would split one probability in two; the error names them).
Labels longer than the text encoder's 77 tokens are truncated by the tokenizer (with a warning),
non-ASCII labels work. A one-element list naming a stored label set means that set.

Probabilities are CLIP's: ``softmax(logit_scale * cos(image, text) [+ logit_bias])``.
"""
from __future__ import annotations

import threading
import warnings
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ArtifactError, InvalidOptionError, LabelError
from .artifact import sha256_file

CACHE_SIZE = 8
DEFAULT_TEXT_BATCH = 64
DEFAULT_TEMPLATES = ("a photo of a {}.",)
_lock = threading.Lock()


# ------------------------------------------------------------------ shared numeric helpers
def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ensemble(feats: np.ndarray, n_labels: int, n_templates: int) -> np.ndarray:
    """[n_labels * n_templates, D] label-major features -> [n_labels, D]: the mean of the
    normalised template embeddings, renormalised (open_clip's build_zero_shot_classifier)."""
    f = l2_normalize(feats).reshape(n_labels, n_templates, -1).mean(axis=1)
    return l2_normalize(f)


def encode_token_ids(run: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, *,
                     variable_length: bool, batch_size: int = DEFAULT_TEXT_BATCH,
                     progress: Callable[[str], None] | None = None, what: str = "labels") -> np.ndarray:
    """Run a text tower over token ids [N, 77] in batches -> float32 [N, D] (input order).

    Sequences are grouped by length (the end-of-text token is the highest id, so its position is
    ``argmax``); for a variable-length (causal) tower each batch is cut after its longest
    sequence's end-of-text token, which does not change any result."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    if n == 0:
        raise LabelError("no texts to encode")
    if int(batch_size) < 1:
        raise InvalidOptionError(f"batch_size must be >= 1 (got {batch_size})")
    lengths = ids.argmax(axis=1) + 1
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    step = max(1, n // 10)
    next_report = step
    for start in range(0, n, int(batch_size)):
        idx = order[start:start + int(batch_size)]
        b = ids[idx]
        if variable_length:
            b = b[:, : int(lengths[idx].max())]
        y = np.asarray(run(np.ascontiguousarray(b)), dtype=np.float32)
        if out is None:
            out = np.empty((n, y.shape[1]), np.float32)
        out[idx] = y
        done = start + len(idx)
        if progress is not None and n > batch_size and (done >= next_report or done == n):
            progress(f"encoded {done}/{n} {what}")
            next_report = done + step
    assert out is not None
    return out


# ------------------------------------------------------------------ labels
def _text_section(model) -> dict:
    text = model.artifact.manifest.get("text") or {}
    if not text.get("files"):
        raise ArtifactError(f"artifact {model.artifact.dir} has no CLIP text tower "
                            f"(manifest['text']); re-export it with `edgeinfer export`.")
    return text


def _label_key(s: str) -> str:
    return " ".join(s.split()).casefold()


def parse_labels(labels: Any, *, label_sets: Sequence[str] = (),
                 default: str | None = None) -> tuple[str, str | list[str]]:
    """-> ("set", name) or ("custom", [labels]); raises LabelError for bad labels."""
    if labels is None:
        if not default:
            raise LabelError("no labels given and the artifact has no stored label set; pass "
                             "labels, e.g. ['cat', 'dog'] or 'beach, receipts, pets'")
        return "set", default
    if isinstance(labels, str):
        if labels.strip() in label_sets:
            return "set", labels.strip()
        items = [s.strip() for s in labels.split(",")]
        items = [s for s in items if s]  # "a, b," : a trailing comma is not a label
    else:
        try:
            items = list(labels)
        except TypeError:
            raise LabelError(f"labels must be a list of strings, a comma-separated string or a "
                             f"label-set name ({', '.join(label_sets) or 'none stored'}); got "
                             f"{type(labels).__name__}") from None
        bad = [(i, x) for i, x in enumerate(items) if not isinstance(x, str)]
        if bad:
            raise LabelError(f"labels must be strings; label #{bad[0][0]} is "
                             f"{type(bad[0][1]).__name__}: {bad[0][1]!r}")
        if len(items) == 1 and items[0].strip() in label_sets:
            return "set", items[0].strip()
        empty = [i for i, x in enumerate(items) if not x.strip()]
        if empty:
            raise LabelError(f"label #{empty[0]} is empty; every label needs some text")
        items = [x.strip() for x in items]
    if not items:
        raise LabelError("the label list is empty; give at least one label (two or more for a "
                         "meaningful choice), e.g. ['cat', 'dog']")
    counts = Counter(_label_key(x) for x in items)
    dups = [k for k, c in counts.items() if c > 1]
    if dups:
        shown = ", ".join(f"{k!r} (x{counts[k]})" for k in dups[:10])
        more = f" and {len(dups) - 10} more" if len(dups) > 10 else ""
        raise LabelError(f"duplicate labels: {shown}{more}. Each label must be unique (labels "
                         f"differing only in case or spacing are the same text to CLIP).")
    return "custom", items


# ------------------------------------------------------------------ cache on the Model
def _cache(model) -> dict:
    c = getattr(model, "zero_shot_cache", None)
    if c is None:
        c = {}
        try:
            model.zero_shot_cache = c
        except AttributeError:
            pass
    return c


def _cache_get(model, key):
    c = _cache(model)
    with _lock:
        if key in c:
            v = c.pop(key)
            c[key] = v  # most recently used last
            return v
    return None


def _cache_put(model, key, value) -> None:
    c = _cache(model)
    with _lock:
        c[key] = value
        lru = [k for k in c if isinstance(k, tuple) and k and k[0] == "custom"]
        for k in lru[:-CACHE_SIZE] if len(lru) > CACHE_SIZE else []:
            c.pop(k, None)


# ------------------------------------------------------------------ text embeddings
def label_set(model, name: str) -> tuple[list[str], np.ndarray]:
    """(labels, [n, D] normalised embeddings) of a label set stored in the artifact."""
    key = ("set", name)
    hit = _cache_get(model, key)
    if hit is not None:
        return hit
    text = _text_section(model)
    sets = text.get("label_sets") or {}
    if name not in sets:
        raise LabelError(f"artifact {model.artifact.dir} has no label set {name!r}; it has: "
                         f"{', '.join(sets) or 'none'} (or pass custom labels)")
    spec = sets[name]
    path = model.artifact.dir / spec["file"]
    if not path.exists():
        raise ArtifactError(f"{path} (label set {name!r}) is listed in the manifest but missing; "
                            f"re-export the model.")
    if spec.get("sha256") and sha256_file(path) != spec["sha256"]:
        raise ArtifactError(f"{path} does not match its sha256 in the manifest; re-export.")
    emb = np.load(path, allow_pickle=False).astype(np.float32)
    labels = list(spec["labels"])
    if emb.ndim != 2 or emb.shape[0] != len(labels):
        raise ArtifactError(f"{path} has shape {emb.shape}, expected [{len(labels)}, D]")
    value = (labels, l2_normalize(emb))
    _cache_put(model, key, value)
    return value


def _tokenizer(model):
    from .tokenizer import ClipTokenizer

    c = _cache(model)
    tok = c.get("__tokenizer__")
    if tok is None:
        tok = c["__tokenizer__"] = ClipTokenizer.from_artifact(model.artifact)
    return tok


def text_embeddings(model, labels: Sequence[str], *, templates: Sequence[str] | None = None,
                    batch_size: int = DEFAULT_TEXT_BATCH,
                    progress: Callable[[str], None] | None = None) -> np.ndarray:
    """[len(labels), D] normalised text embeddings of custom labels through the text tower
    (cached per labels + templates on the Model)."""
    text = _text_section(model)
    templates = tuple(templates or text.get("templates") or DEFAULT_TEMPLATES)
    if not all(isinstance(t, str) and "{}" in t for t in templates):
        raise InvalidOptionError(f"templates must be strings with a '{{}}' placeholder, e.g. "
                                 f"'a photo of a {{}}.' (got {list(templates)[:3]!r})")
    labels = tuple(labels)
    key = ("custom", labels, templates, getattr(model, "precision", None))
    hit = _cache_get(model, key)
    if hit is not None:
        return hit
    tok = _tokenizer(model)
    try:
        texts = [t.format(lab) for lab in labels for t in templates]
    except (KeyError, IndexError, ValueError) as e:
        raise InvalidOptionError(f"templates may contain only one '{{}}' placeholder (write other "
                                 f"braces as '{{{{' and '}}}}'): {e!r} in {list(templates)!r}") from e
    ids = tok.encode(texts)
    long = [lab for lab in labels if tok.truncated(templates[0].format(lab))]
    if long:
        warnings.warn(f"{len(long)} label(s) exceed the text encoder's {tok.context_length} tokens "
                      f"and were truncated, e.g. {long[0][:60]!r}...", stacklevel=3)
    session = model.tower_session("text")
    name = session.inputs[0].name if getattr(session, "inputs", None) else "input_ids"

    def run(b: np.ndarray) -> np.ndarray:
        return session.run_feeds({name: b})[0]

    feats = encode_token_ids(run, ids, variable_length=bool(text.get("variable_length")),
                             batch_size=batch_size, progress=progress)
    emb = ensemble(feats, len(labels), len(templates))
    _cache_put(model, key, emb)
    return emb


def resolve(model, labels: Any = None, *, templates: Sequence[str] | None = None
            ) -> tuple[list[str], np.ndarray]:
    """(label names, [L, D] normalised text embeddings) for any accepted ``labels``."""
    text = _text_section(model)
    sets = text.get("label_sets") or {}
    kind, value = parse_labels(labels, label_sets=list(sets),
                               default=text.get("default_label_set") or next(iter(sets), None))
    if kind == "set":
        return label_set(model, value)
    return list(value), text_embeddings(model, value, templates=templates)


# ------------------------------------------------------------------ classification
def logits_from_features(image_features: np.ndarray, text_embeddings: np.ndarray, *,
                         logit_scale: float, logit_bias: float | None = None) -> np.ndarray:
    img = l2_normalize(np.asarray(image_features, np.float32)).astype(np.float64)
    logits = float(logit_scale) * img @ np.asarray(text_embeddings, np.float64).T
    if logit_bias is not None:
        logits = logits + float(logit_bias)
    return logits


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def probabilities(model, images: Any, labels: Any = None, *,
                  templates: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], list]:
    """(probs [N, L] float64 with NaN rows for images that failed, label names, per-image raw
    results: the image-tower row or a ``Failure``)."""
    names, txt = resolve(model, labels, templates=templates)
    text = _text_section(model)
    rows = model.embed_raw(images)
    probs = np.full((len(rows), len(names)), np.nan)
    good = [i for i, r in enumerate(rows) if isinstance(r, np.ndarray)]
    if good:
        feats = np.stack([rows[i] for i in good])
        logits = logits_from_features(feats, txt, logit_scale=text.get("logit_scale", 100.0),
                                      logit_bias=text.get("logit_bias"))
        probs[good] = _softmax(logits)
    return probs, names, rows


def zero_shot(model, images: Any, labels: Any = None, top_k: int = 3, *,
              templates: Sequence[str] | None = None):
    """Per image ``[(label, probability), ...]`` best first (a ``Failure`` for a bad image); one
    image in gives one result, a list gives a ``Results`` list."""
    from .model import Results, _is_single, top_k as _top_k

    if int(top_k) < 1:
        raise InvalidOptionError(f"top_k must be >= 1 (got {top_k})")
    single = _is_single(images)
    probs, names, rows = probabilities(model, images, labels, templates=templates)
    out = Results([r if not isinstance(r, np.ndarray) else _top_k(probs[i], int(top_k), names)
                   for i, r in enumerate(rows)], getattr(model, "selection", None))
    return out[0] if single else out


# ------------------------------------------------------------------ for bench / quantize
BENCH_PROMPTS = ("a photo of a dog.", "a photo of a receipt.", "a photo of people at the beach.",
                 "a blurry photo of a cat.", "a screenshot of a document.", "a photo of a pet.",
                 "a photo of a mountain lake at sunset.", "a drawing of a giraffe.")


def text_feeds(artifact, batch_size: int = 1, *, texts: Sequence[str] | None = None,
               trim: bool = True) -> dict[str, np.ndarray]:
    """Feeds for the text tower of ``artifact`` (Artifact or directory): ``{"input_ids": int64
    [batch_size, L]}`` from realistic prompts, cut after the last end-of-text token when the
    tower is variable-length (as ``zero_shot`` runs it; ``trim=False``: always 77)."""
    from .artifact import Artifact
    from .tokenizer import tokenize

    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    pool = list(texts or BENCH_PROMPTS)
    ids = tokenize([pool[i % len(pool)] for i in range(int(batch_size))], art)
    text = art.manifest.get("text") or {}
    if trim and text.get("variable_length"):
        ids = ids[:, : int(ids.argmax(axis=1).max()) + 1]
    name = ((text.get("files") or {}).get("fp32", {}).get("inputs") or [{}])[0].get("name", "input_ids")
    return {name: np.ascontiguousarray(ids)}
