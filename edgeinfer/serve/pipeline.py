"""One request's way through the runtime, stage by stage (decode -> preprocess -> infer ->
post-process), each stage timed for /metrics. These functions run on the service's thread pool;
the engine call goes through the model's batcher (``ServedModel.infer``), which coalesces
concurrent requests. Everything numeric is the runtime's own code (``preprocess``,
``Model.infer``, ``top_k``/``softmax``, ``zero_shot``)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageError
from ..library.scan import clean_error
from ..runtime.preprocess import DRAFT_SAFETY, load_image, normalize, resize_crop


@dataclass
class Upload:
    filename: str
    data: bytes


def draft_size(models) -> int:
    """Decode once at a scale that every model can use (the largest model's need)."""
    return max(int(int(m.spec()["resize_size"]) * DRAFT_SAFETY) for m in models)


def decode(uploads: list[Upload], draft: int, metrics=None) -> list[Any]:
    """Per upload: an RGB PIL image or an error message (str)."""
    t = time.perf_counter()
    out: list[Any] = []
    for u in uploads:
        try:
            out.append(load_image(u.data, draft_size=draft))
        except ImageError as e:
            out.append(clean_error(str(e), u.filename))
    if metrics:
        metrics.stage.labels("request", "decode").observe(time.perf_counter() - t)
    return out


def preprocess(sm, images: list[Any], metrics=None) -> tuple[np.ndarray, list[int]]:
    """The good images -> one NCHW batch for this model, and their positions."""
    t = time.perf_counter()
    spec = sm.spec()
    _, h, w = spec["input_size"]
    good = [i for i, im in enumerate(images) if not isinstance(im, str)]
    batch = np.empty((len(good), 3, h, w), np.float32)
    for k, i in enumerate(good):
        normalize(np.asarray(resize_crop(images[i], spec)), spec, out=batch[k])
    if metrics:
        metrics.stage.labels(sm.name, "preprocess").observe(time.perf_counter() - t)
    return batch, good


def scatter(n: int, good: list[int], rows, images: list[Any]) -> list[Any]:
    """Rows for the good images back in request order; the error message for the others."""
    out: list[Any] = [images[i] if isinstance(images[i], str) else None for i in range(n)]
    for k, i in enumerate(good):
        out[i] = rows[k]
    return out


def classify_rows(rows, labels, k: int) -> list:
    from ..runtime.model import softmax, top_k

    return [r if isinstance(r, str) else top_k(softmax(r), k, labels) for r in rows]


def zero_shot_rows(model, rows, labels: Any, k: int) -> list:
    """CLIP rows -> top-k over ``labels`` (custom list or a stored label-set name), through the
    model's public text side (``Model.text``: label-set and custom-label caches)."""
    from ..runtime.model import top_k

    names, txt = model.text.resolve(labels)
    probs = model.text.probabilities(rows, txt)
    return [r if isinstance(r, str) else top_k(probs[i], k, names) for i, r in enumerate(rows)]


def text_embedding(model, texts: list[str]) -> np.ndarray:
    """[len(texts), D] normalised CLIP text embeddings of raw queries (no prompt template: a
    search query is already a description). ``Model.embed_text`` keeps queries out of the
    label-list cache."""
    return np.atleast_2d(model.embed_text(list(texts)))