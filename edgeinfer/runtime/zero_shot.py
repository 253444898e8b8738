"""CLIP text side, torch-free: label sets, custom labels, free-text embeddings, zero-shot logits.

``TextEncoder`` is the explicit object a CLIP ``Model`` makes on first use (``Model.text``). It
owns the tokenizer, the text-tower session (obtained from the model through a callable, so the
engine and its options stay the model's), and the cache of label embeddings:

- ``label_set(name)``: a label set stored in the artifact (``"imagenet"``, ``"cifar10"``): the
  text embeddings computed at export time with the set's prompt-template ensemble;
- ``label_embeddings(labels, templates=...)``: custom labels, each put into the prompt templates
  (default ``manifest["text"]["templates"]``: ``"a photo of a {}."``), tokenized and encoded by
  the text tower in batches, shortest prompts together and cut after their end-of-text token when
  the tower allows it; cached per (labels, templates), LRU, ``CACHE_SIZE`` lists;
- ``embed(texts)``: L2-normalised embeddings of free texts as written (text search);
- ``resolve(labels)``: any accepted ``labels`` value -> (names, embeddings);
- ``probabilities(image_rows, text_embeddings)``: CLIP's
  ``softmax(logit_scale * cos(image, text) [+ logit_bias])`` per image row.

Accepted ``labels``: ``None`` (the artifact's default label set), a stored label-set name, a list
of strings, or one comma-separated string (``"beach, receipts, pets"``). Bad labels (an empty
list, an empty label, a non-string, duplicates) raise ``LabelError``; duplicates are compared
case- and whitespace-insensitively because CLIP's tokenizer lowercases and collapses whitespace,
so "Cat" and "cat " would split one probability in two. Labels longer than the text encoder's 77
tokens are truncated by the tokenizer (with a warning). A one-element list naming a stored label
set means that set.

The label sets and prompt templates themselves (``edgeinfer/data/clip_prompts.json``) are read
here, once, for the exporter and the runtime alike (``prompt_data``, ``label_set_spec``).
"""
from __future__ import annotations

import json
import threading
import time
import warnings
from collections import Counter, OrderedDict
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ArtifactError, InvalidOptionError, LabelError
from .artifact import sha256_file
from .numeric import l2_normalize, softmax  # noqa: F401 - zero_shot.softmax/l2_normalize kept importable

CACHE_SIZE = 8
DEFAULT_TEXT_BATCH = 64
DEFAULT_TEMPLATES = ("a photo of a {}.",)

Progress = Callable[[str], None] | None


# ------------------------------------------------------------------ prompt data (one source)
@lru_cache(maxsize=1)
def prompt_data() -> dict:
    """``edgeinfer/data/clip_prompts.json``: ``{"sample_prompts": [...], "templates": {name:
    [...]}, "label_sets": {name: {"labels": [...], "templates": name}}}``."""
    try:
        text = (resources.files("edgeinfer") / "data" / "clip_prompts.json").read_text("utf-8")
    except (FileNotFoundError, ModuleNotFoundError):  # a source tree that is not installed
        text = (Path(__file__).resolve().parents[1] / "data" / "clip_prompts.json").read_text("utf-8")
    return json.loads(text)


def sample_prompts() -> list[str]:
    """Realistic free-text prompts (search queries, custom labels): the one list used for text
    parity checks, INT8 calibration of the text tower and the text-tower benchmark."""
    return list(prompt_data()["sample_prompts"])


def label_set_spec(name: str, templates: str | Sequence[str] | None = None
                   ) -> tuple[list[str], str, list[str]]:
    """(labels, template set name, templates) of a label set; ``templates`` overrides the set's
    template ensemble (a template set name or a list of ``{}`` strings)."""
    data = prompt_data()
    sets = data["label_sets"]
    if name not in sets:
        raise InvalidOptionError.choice("label set", name, sets)
    spec = sets[name]
    tname = templates if templates is not None else spec["templates"]
    if isinstance(tname, str):
        if tname not in data["templates"]:
            raise InvalidOptionError.choice("template set", tname, data["templates"])
        tlist = list(data["templates"][tname])
    else:
        tlist, tname = [str(t) for t in tname], "custom"
    if not tlist or not all("{}" in t for t in tlist):
        raise InvalidOptionError(f"templates for label set {name!r} must be non-empty strings "
                                 f"with a '{{}}' placeholder (got {tlist[:3]!r})")
    return list(spec["labels"]), tname, tlist


# ------------------------------------------------------------------ numeric helpers
def ensemble(feats: np.ndarray, n_labels: int, n_templates: int) -> np.ndarray:
    """[n_labels * n_templates, D] label-major features -> [n_labels, D]: the mean of the
    normalised template embeddings, renormalised (open_clip's build_zero_shot_classifier)."""
    f = l2_normalize(feats).reshape(n_labels, n_templates, -1).mean(axis=1)
    return l2_normalize(f)


def logits_from_features(image_features: np.ndarray, text_embeddings: np.ndarray, *,
                         logit_scale: float, logit_bias: float | None = None) -> np.ndarray:
    img = l2_normalize(np.asarray(image_features, np.float32)).astype(np.float64)
    logits = float(logit_scale) * img @ np.asarray(text_embeddings, np.float64).T
    if logit_bias is not None:
        logits = logits + float(logit_bias)
    return logits


# ------------------------------------------------------------------ progress
class RateReporter:
    """Progress lines for long encodings: done/total, prompts/s and ETA, at most every
    ``every_s`` seconds (and at the end), so a 5-minute export says how long it will take."""

    def __init__(self, progress: Progress, total: int, *, what: str = "prompts",
                 every_s: float = 10.0, min_total: int = 1000):
        self.progress = progress if total >= min_total else None
        self.total, self.what, self.every_s = int(total), what, float(every_s)
        self.done = 0
        self.t0 = self.last = time.perf_counter()

    def add(self, n: int) -> None:
        self.done += int(n)
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.progress(f"encoded {self.done:,}/{self.total:,} {self.what} ({rate:,.0f} {self.what}/s"
                      + (f", ETA {_duration(eta)})" if self.done < self.total else ")"))


def _duration(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# ------------------------------------------------------------------ batched text tower runs
def encode_token_ids(run: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, *,
                     variable_length: bool, batch_size: int = DEFAULT_TEXT_BATCH,
                     progress: Progress = None, what: str = "labels") -> np.ndarray:
    """Run a text tower over token ids [N, 77] in batches -> float32 [N, D] (input order).

    Identical rows are encoded once. Sequences are grouped by length (the end-of-text token is
    the highest id, so its position is ``argmax``); for a variable-length (causal) tower each
    batch is cut after its longest sequence's end-of-text token, which does not change any
    result and makes short prompts several times cheaper than 77 tokens."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        raise LabelError("no texts to encode")
    if int(batch_size) < 1:
        raise InvalidOptionError(f"batch_size must be >= 1 (got {batch_size})")
    uniq, inverse = np.unique(ids, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n = len(uniq)
    lengths = uniq.argmax(axis=1) + 1
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    report = RateReporter(progress, n, what=what)
    for start in range(0, n, int(batch_size)):
        idx = order[start:start + int(batch_size)]
        b = uniq[idx]
        if variable_length:
            b = b[:, : int(lengths[idx].max())]
        y = np.asarray(run(np.ascontiguousarray(b)), dtype=np.float32)
        if out is None:
            out = np.empty((n, y.shape[1]), np.float32)
        out[idx] = y
        report.add(len(idx))
    assert out is not None
    return out[inverse]


# ------------------------------------------------------------------ labels
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


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    templates = tuple(templates)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise InvalidOptionError(f"templates must be strings with a '{{}}' placeholder, e.g. "
                                 f"'a photo of a {{}}.' (got {list(templates)[:3]!r})")
    return templates


# ------------------------------------------------------------------ the explicit text object
class TextEncoder:
    """The text side of one CLIP artifact on one engine (see the module docstring).

    ``session``: a callable returning the text-tower session (created on first use by the
    owner, e.g. ``Model.tower_session("text")``); the session must have ``run_feeds(dict)``.
    Thread-safe: the cache and the tokenizer are guarded by a lock; sessions run concurrently.
    """

    def __init__(self, artifact, session: Callable[[], Any], *, cache_size: int = CACHE_SIZE):
        text = artifact.manifest.get("text") or {}
        if not text.get("files"):
            raise ArtifactError(f"artifact {artifact.dir} has no CLIP text tower "
                                f"(manifest['text']); re-export it with `edgeinfer export`.")
        self.artifact = artifact
        self.spec = text
        self._session_factory = session
        self._tokenizer = None
        self._lock = threading.Lock()
        self._cache: OrderedDict = OrderedDict()   # ("custom", labels, templates) -> [L, D]
        self._sets: dict[str, tuple[list[str], np.ndarray]] = {}
        self.cache_size = int(cache_size)

    # -- what the artifact has
    @property
    def label_sets(self) -> list[str]:
        return list(self.spec.get("label_sets") or {})

    @property
    def default_label_set(self) -> str | None:
        return self.spec.get("default_label_set") or next(iter(self.label_sets), None)

    @property
    def dim(self) -> int | None:
        return self.spec.get("embedding_dim")

    @property
    def tokenizer(self):
        from .tokenizer import ClipTokenizer

        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = ClipTokenizer.from_artifact(self.artifact)
            return self._tokenizer

    def warm(self) -> "TextEncoder":
        """Create the tokenizer and the text-tower session now and run one prompt, so the first
        request of a service does not pay for them (the engine session is most of it)."""
        self.embed("a photo.")
        return self

    def cached_label_lists(self) -> int:
        """How many custom label lists are cached (bounded by ``cache_size``)."""
        with self._lock:
            return len(self._cache)

    # -- encoding
    def _run(self, batch: np.ndarray) -> np.ndarray:
        session = self._session_factory()
        name = session.inputs[0].name if getattr(session, "inputs", None) else "input_ids"
        return session.run_feeds({name: batch})[0]

    def encode_ids(self, ids: np.ndarray, *, batch_size: int = DEFAULT_TEXT_BATCH,
                   progress: Progress = None) -> np.ndarray:
        """Raw (unnormalised) text-tower features of token ids [N, context] -> [N, D]."""
        return encode_token_ids(self._run, ids, variable_length=bool(self.spec.get("variable_length")),
                                batch_size=batch_size, progress=progress)

    def embed(self, texts: str | Sequence[str], *, batch_size: int = DEFAULT_TEXT_BATCH) -> np.ndarray:
        """L2-normalised float32 embeddings of ``texts`` as written (no prompt template): ``[D]``
        for one string, ``[N, D]`` for a list. Comparable with ``Model.embed`` image embeddings
        by a dot product (text-to-image search)."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        bad = [t for t in items if not isinstance(t, str)]
        if bad or not items:
            raise LabelError(f"texts must be a string or a non-empty list of strings (got "
                             f"{type(bad[0]).__name__ if bad else 'an empty list'})")
        ids = self.tokenizer.encode(items)
        out = l2_normalize(self.encode_ids(ids, batch_size=batch_size))
        return out[0] if single else out

    def label_set(self, name: str) -> tuple[list[str], np.ndarray]:
        """(labels, [n, D] normalised embeddings) of a label set stored in the artifact."""
        with self._lock:
            hit = self._sets.get(name)
        if hit is not None:
            return hit
        sets = self.spec.get("label_sets") or {}
        if name not in sets:
            raise LabelError(f"artifact {self.artifact.dir} has no label set {name!r}; it has: "
                             f"{', '.join(sets) or 'none'} (or pass custom labels)")
        spec = sets[name]
        path = self.artifact.dir / spec["file"]
        if not path.exists():
            raise ArtifactError(f"{path} (label set {name!r}) is listed in the manifest but "
                                f"missing; re-export the model.")
        if spec.get("sha256") and sha256_file(path) != spec["sha256"]:
            raise ArtifactError(f"{path} does not match its sha256 in the manifest; re-export.")
        emb = np.load(path, allow_pickle=False).astype(np.float32)
        labels = list(spec["labels"])
        if emb.ndim != 2 or emb.shape[0] != len(labels):
            raise ArtifactError(f"{path} has shape {emb.shape}, expected [{len(labels)}, D]")
        value = (labels, l2_normalize(emb))
        with self._lock:
            self._sets[name] = value
        return value

    def label_embeddings(self, labels: Sequence[str], *, templates: Sequence[str] | None = None,
                         batch_size: int = DEFAULT_TEXT_BATCH, progress: Progress = None) -> np.ndarray:
        """[len(labels), D] normalised text embeddings of custom labels: each label in every
        template, encoded, averaged over templates (cached per labels + templates)."""
        templates = _check_templates(templates or self.spec.get("templates") or DEFAULT_TEMPLATES)
        labels = tuple(labels)
        key = ("custom", labels, templates)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        tok = self.tokenizer
        try:
            texts = [t.format(lab) for lab in labels for t in templates]
        except (KeyError, IndexError, ValueError) as e:
            raise InvalidOptionError(f"templates may contain only one '{{}}' placeholder (write "
                                     f"other braces as '{{{{' and '}}}}'): {e!r} in "
                                     f"{list(templates)!r}") from e
        ids = tok.encode(texts)
        long = [lab for lab in labels if tok.truncated(templates[0].format(lab))]
        if long:
            warnings.warn(f"{len(long)} label(s) exceed the text encoder's {tok.context_length} "
                          f"tokens and were truncated, e.g. {long[0][:60]!r}...", stacklevel=3)
        feats = self.encode_ids(ids, batch_size=batch_size, progress=progress)
        emb = ensemble(feats, len(labels), len(templates))
        with self._lock:
            self._cache[key] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return emb

    def resolve(self, labels: Any = None, *, templates: Sequence[str] | None = None
                ) -> tuple[list[str], np.ndarray]:
        """(label names, [L, D] normalised text embeddings) for any accepted ``labels``."""
        kind, value = parse_labels(labels, label_sets=self.label_sets, default=self.default_label_set)
        if kind == "set":
            return self.label_set(value)
        return list(value), self.label_embeddings(value, templates=templates)

    # -- classification
    def probabilities(self, image_rows: Sequence[Any], text_embeddings: np.ndarray) -> np.ndarray:
        """[N, L] float64 CLIP probabilities for raw image-tower rows (np.ndarray); a row that
        is not an array (a failed image) gets NaNs."""
        probs = np.full((len(image_rows), len(text_embeddings)), np.nan)
        good = [i for i, r in enumerate(image_rows) if isinstance(r, np.ndarray)]
        if good:
            feats = np.stack([image_rows[i] for i in good])
            logits = logits_from_features(feats, text_embeddings,
                                          logit_scale=self.spec.get("logit_scale", 100.0),
                                          logit_bias=self.spec.get("logit_bias"))
            probs[good] = softmax(logits)
        return probs


# ------------------------------------------------------------------ for bench / quantize
def text_feeds(artifact, batch_size: int = 1, *, texts: Sequence[str] | None = None,
               trim: bool = True) -> dict[str, np.ndarray]:
    """Feeds for the text tower of ``artifact`` (Artifact or directory): ``{"input_ids": int64
    [batch_size, L]}`` from realistic prompts (``sample_prompts``), cut after the last
    end-of-text token when the tower is variable-length (as ``zero_shot`` runs it;
    ``trim=False``: always 77)."""
    from .artifact import Artifact
    from .tokenizer import tokenize

    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    pool = list(texts or sample_prompts())
    ids = tokenize([pool[i % len(pool)] for i in range(int(batch_size))], art)
    text = art.manifest.get("text") or {}
    if trim and text.get("variable_length"):
        ids = ids[:, : int(ids.argmax(axis=1).max()) + 1]
    name = ((text.get("files") or {}).get("fp32", {}).get("inputs") or [{}])[0].get("name", "input_ids")
    return {name: np.ascontiguousarray(ids)}
