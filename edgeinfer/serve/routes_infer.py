"""Routes: /health (public), /v1/models, /v1/classify, /v1/zero-shot, /v1/embed, /metrics."""
from __future__ import annotations

import asyncio
import time
from typing import Optional

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from ..errors import EdgeInferError, LabelError
from . import pipeline as pl
from .app import ApiError, check_token, run_blocking, state


def require_token(request: Request) -> None:
    check_token(request)


public = APIRouter()
router = APIRouter(dependencies=[Depends(require_token)])


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


@public.get("/health", summary="Liveness, models and memory (no token needed)")
async def health(request: Request):
    st = state(request)
    return {"status": "ok",
            "models": [{"name": m.name, "kind": m.kind, "provider": m.provider, "precision": m.precision,
                        "loaded": m.loaded, "load_seconds": m.describe()["load_seconds"],
                        "reloads": max(0, m.loads - 1)} for m in st.models.values()],
            "rss_mb": _rss_mb(), "queue": st.admission.depth, "uptime_s": round(time.time() - st.started, 1),
            "library": str(st.store.path)}


@router.get("/v1/models", summary="Loaded models: kind, engine, precision, labels, weights, accuracy")
async def models(request: Request):
    return {"models": [m.describe() for m in state(request).models.values()]}


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics(request: Request):
    st = state(request)
    st.metrics.library.set(st.store.counts()["photos"])
    st.metrics.rss.set(_rss_mb() * 2**20)
    body, ctype = st.metrics.render()
    return Response(body, media_type=ctype)


# ---------------------------------------------------------------- helpers
async def read_uploads(files: list[UploadFile] | None) -> list[pl.Upload]:
    if not files:
        raise ApiError(400, "no images: send one or more files in the multipart field 'image'")
    out = []
    for i, f in enumerate(files):
        out.append(pl.Upload(f.filename or f"image{i}", await f.read()))
    return out


def pick_models(request: Request, name: Optional[str], kinds: tuple[str, ...], what: str):
    st = state(request)
    if name:
        names = [n.strip() for n in name.split(",") if n.strip()]
        chosen = []
        for n in names:
            m = st.models.get(n)
            if m is None:
                raise ApiError(404, f"unknown model {n!r}; loaded models: {', '.join(st.models) or 'none'} "
                                    f"(GET /v1/models)")
            if m.kind not in kinds:
                raise ApiError(422, f"model {n!r} is a {m.kind}; {what} needs a "
                                    f"{' or '.join(kinds)} model: "
                                    f"{', '.join(x.name for x in st.models.values() if x.kind in kinds) or 'none loaded'}")
            chosen.append(m)
        return chosen
    chosen = [m for m in st.models.values() if m.kind in kinds]
    if not chosen:
        raise ApiError(422, f"no {' or '.join(kinds)} model is loaded, so {what} is not available; "
                            f"start `edgeinfer serve` with such an artifact")
    return chosen


async def _run_model(request: Request, sm, images):
    st = state(request)
    batch, good = await run_blocking(request, pl.preprocess, sm, images, st.metrics)
    t = time.perf_counter()
    rows = await asyncio.wrap_future(sm.infer(batch)) if len(batch) else []
    return pl.scatter(len(images), good, rows, images), (time.perf_counter() - t)


def _image_entries(uploads, results, render):
    out = []
    for u, r in zip(uploads, results):
        if isinstance(r, str):
            out.append({"filename": u.filename, "error": r})
        else:
            out.append({"filename": u.filename, **render(r)})
    return out


def _labels_json(r):
    return {"labels": [{"label": lab, "score": round(float(s), 6)} for lab, s in r]}


async def _infer_each(request: Request, models, uploads, post):
    """decode once -> per model: preprocess, (coalesced) infer, post-process."""
    st = state(request)
    with st.admission:
        images = await run_blocking(request, pl.decode, uploads, pl.draft_size(models), st.metrics)

        async def one(sm):
            t = time.perf_counter()
            rows, _ = await _run_model(request, sm, images)
            res = await run_blocking(request, post, sm, rows)
            return sm, res, (time.perf_counter() - t) * 1000

        return await asyncio.gather(*(one(sm) for sm in models))


def _result(sm, ms, images):
    return {"model": sm.name, "provider": sm.provider, "precision": sm.precision,
            "time_ms": round(ms, 2), "images": images}


def _check_top_k(top_k: int) -> int:
    if top_k < 1 or top_k > 1000:
        raise ApiError(400, f"top_k must be between 1 and 1000 (got {top_k})")
    return top_k


# ---------------------------------------------------------------- routes
@router.post("/v1/classify", summary="Top-k labels per image from every (or the named) classifier")
async def classify(request: Request, image: list[UploadFile] = File(None),
                   model: Optional[str] = Form(None), top_k: int = Form(5)):
    _check_top_k(top_k)
    models = pick_models(request, model, ("classifier", "clip") if model else ("classifier",), "classify")
    uploads = await read_uploads(image)

    def post(sm, rows):
        if sm.kind == "clip":  # a CLIP model classifies over its default label set
            return pl.zero_shot_rows(sm.model(), rows, None, top_k)
        return pl.classify_rows(rows, sm.labels, top_k)

    done = await _infer_each(request, models, uploads, post)
    return {"results": [_result(sm, ms, _image_entries(uploads, res, _labels_json)) for sm, res, ms in done]}


@router.post("/v1/zero-shot", summary="CLIP zero-shot over your labels or a stored label set")
async def zero_shot(request: Request, image: list[UploadFile] = File(None),
                    labels: Optional[str] = Form(None), label_set: Optional[str] = Form(None),
                    model: Optional[str] = Form(None), top_k: int = Form(5)):
    _check_top_k(top_k)
    if (labels is None) == (label_set is None):
        raise ApiError(400, "give exactly one of the form fields 'labels' (comma-separated text, e.g. "
                            "'beach, receipt, pets') or 'label_set' (e.g. 'cifar10', 'imagenet')")
    models = pick_models(request, model, ("clip",), "zero-shot")
    if label_set is not None:
        missing = [m.name for m in models if label_set not in (m.describe()["label_sets"])]
        if missing:
            have = sorted({s for m in models for s in m.describe()["label_sets"]})
            raise ApiError(422, f"label set {label_set!r} is not in {', '.join(missing)}; stored label "
                                f"sets: {', '.join(have) or 'none'} (or send custom 'labels')")
        wanted = label_set
    else:
        from ..runtime.zero_shot import parse_labels

        try:
            _, wanted = parse_labels(labels)
        except LabelError as e:
            raise ApiError(422, str(e)) from e
        if isinstance(wanted, str):
            wanted = [wanted]
    uploads = await read_uploads(image)

    def post(sm, rows):
        return pl.zero_shot_rows(sm.model(), rows, wanted, top_k)

    try:
        done = await _infer_each(request, models, uploads, post)
    except LabelError as e:
        raise ApiError(422, str(e)) from e
    return {"results": [_result(sm, ms, _image_entries(uploads, res, _labels_json)) for sm, res, ms in done]}


@router.post("/v1/embed", summary="L2-normalised image (and CLIP text) embeddings + model sha256")
async def embed(request: Request, image: list[UploadFile] = File(None), text: list[str] = Form(None),
                model: Optional[str] = Form(None)):
    models = pick_models(request, model, ("clip", "embedding"), "embed")
    texts = [t for t in (text or [])]
    if not image and not texts:
        raise ApiError(400, "send image files in the multipart field 'image' and/or texts in 'text'")
    uploads = await read_uploads(image) if image else []
    st = state(request)

    def post(sm, rows):
        from ..runtime.model import l2_normalize

        return [r if isinstance(r, str) else l2_normalize(r) for r in rows]

    results = []
    done = await _infer_each(request, models, uploads, post) if uploads else [(m, [], 0.0) for m in models]
    for sm, res, ms in done:
        entry = _result(sm, ms, _image_entries(uploads, res, lambda v: {"embedding": [round(float(x), 7) for x in v]}))
        if texts:
            if sm.kind != "clip":
                raise ApiError(422, f"model {sm.name!r} has no text tower; text embeddings need a CLIP model")
            t = time.perf_counter()
            with st.admission:
                try:
                    vec = await run_blocking(request, lambda: pl.text_embedding(sm.model(), texts))
                except EdgeInferError as e:
                    raise ApiError(422, str(e)) from e
            entry["texts"] = [{"text": s, "embedding": [round(float(x), 7) for x in v]} for s, v in zip(texts, vec)]
            entry["time_ms"] = round(entry["time_ms"] + (time.perf_counter() - t) * 1000, 2)
        entry["model_sha256"] = sm.sha256
        entry["dim"] = (sm.artifact.manifest.get("output") or {}).get("dim")
        results.append(entry)
    return {"results": results}
