"""Library routes: scan jobs, text / similar search, duplicates, photo records and thumbnails."""
from __future__ import annotations

import io
import os
import time
from functools import lru_cache
from typing import Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ..errors import EdgeInferError
from . import pipeline as pl
from .app import ApiError, run_blocking, state
from .routes_infer import pick_models, require_token

router = APIRouter(dependencies=[Depends(require_token)])


async def _json_body(request: Request) -> dict:
    import json

    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON ({e}); send e.g. {{\"path\": \"/photos\"}}") from e
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object, e.g. {\"path\": \"/photos\"}")
    return body


@router.get("/v1/library", summary="Library size, models, roots and recent failures")
async def library(request: Request):
    st = state(request)
    return {"path": str(st.store.path), "roots": [str(r) for r in st.roots], **st.store.counts(),
            "models": st.store.models(), "failures": st.store.failures(20)}


@router.post("/v1/library/scan", summary="Scan a folder under a --library-root (a background job)")
async def scan(request: Request):
    from ..library.scan import under_roots

    st = state(request)
    body = await _json_body(request)
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise ApiError(400, "give the folder to scan: {\"path\": \"/photos/2024\"}")
    if not st.roots:
        raise ApiError(403, "scanning is disabled: start `edgeinfer serve` with --library-root DIR to "
                            "allow scans of folders under DIR")
    resolved = under_roots(path, st.roots)
    if resolved is None:
        raise ApiError(403, f"{path} is outside the library roots ({', '.join(map(str, st.roots))}); "
                            f"only folders under a --library-root can be scanned")
    if not resolved.is_dir():
        raise ApiError(422, f"{path} is not an existing folder")
    if not any(m.kind in ("classifier", "clip") for m in st.models.values()):
        raise ApiError(422, "no classifier or CLIP model is loaded; a scan would store nothing")
    return {"job": st.jobs.submit(str(resolved))}


@router.get("/v1/library/jobs/{job_id}", summary="A scan job's progress")
async def job(request: Request, job_id: str):
    j = state(request).jobs.get(job_id)
    if j is None:
        raise ApiError(404, f"unknown job {job_id!r}; POST /v1/library/scan returns job ids")
    return j


def _clip(request: Request, name: Optional[str]):
    return pick_models(request, name, ("clip",), "search")[0]


@router.get("/v1/search", summary="Photos ranked by CLIP text-to-image similarity")
async def search(request: Request, q: str = Query(..., min_length=1, max_length=1000),
                 k: int = Query(20, ge=1, le=1000), model: Optional[str] = None,
                 category: Optional[str] = None):
    from ..library.search import top_k, with_paths

    st = state(request)
    sm = _clip(request, model)
    t = time.perf_counter()
    with st.admission:
        try:
            vec = (await run_blocking(request, lambda: pl.text_embedding(sm.model(), [q])))[0]
        except EdgeInferError as e:
            raise ApiError(422, str(e)) from e
        vs = await run_blocking(request, st.store.vectors, sm.sha256)
        if category:  # user categories (issue 14): only photos tagged with it
            from ..library.categories import restrict

            vs = await run_blocking(request, restrict, st.store, vs, category)
        hits = await run_blocking(request, top_k, vs, vec, k)
    res = {"model": sm.name, "model_sha256": sm.sha256, "query": q, "results": with_paths(st.store, hits),
           "searched": int(len(vs.ids)), "time_ms": round((time.perf_counter() - t) * 1000, 2)}
    if not len(vs.ids):
        res["note"] = "no photo is indexed with this model yet; POST /v1/library/scan first"
    return res


@router.post("/v1/search/similar", summary="Nearest photos to an uploaded image or a stored photo")
async def similar(request: Request):
    from ..library.search import top_k, with_paths

    st = state(request)
    ctype = request.headers.get("content-type", "")
    exclude = None
    t = time.perf_counter()
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        files = [f for f in form.getlist("image") if hasattr(f, "read")]
        if not files:
            raise ApiError(400, "send the image in the multipart field 'image' (or JSON {\"photo_id\": N})")
        k = _int(form.get("k"), 20)
        sm = _clip(request, form.get("model"))
        uploads = [pl.Upload(files[0].filename or "image", await files[0].read())]
        with st.admission:
            images = await run_blocking(request, pl.decode, uploads, pl.draft_size([sm]), st.metrics)
            if isinstance(images[0], str):
                raise ApiError(422, f"the uploaded image cannot be used: {images[0]}")
            batch, _ = await run_blocking(request, pl.preprocess, sm, images, st.metrics)
            import asyncio

            from ..runtime.model import l2_normalize

            vec = l2_normalize((await asyncio.wrap_future(sm.infer(batch)))[0])
    else:
        body = await _json_body(request)
        pid = body.get("photo_id")
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise ApiError(400, "give {\"photo_id\": N} (an integer) or upload an 'image'")
        k = _int(body.get("k"), 20)
        sm = _clip(request, body.get("model"))
        await run_blocking(request, sm.model)  # loads it when lazy / unloaded (its sha256 is needed)
        if st.store.photo(pid) is None:
            raise ApiError(404, f"unknown photo {pid}")
        vec = st.store.embedding(pid, sm.sha256)
        if vec is None:
            raise ApiError(422, f"photo {pid} has no embedding from {sm.name} (unreadable, or not "
                                f"scanned since this model was loaded); scan its folder again")
        exclude = {pid}
    vs = await run_blocking(request, st.store.vectors, sm.sha256)
    hits = await run_blocking(request, lambda: top_k(vs, vec, k, exclude=exclude))
    return {"model": sm.name, "model_sha256": sm.sha256, "results": with_paths(st.store, hits),
            "searched": int(len(vs.ids)), "time_ms": round((time.perf_counter() - t) * 1000, 2)}


def _int(v, default: int) -> int:
    if v is None or v == "":
        return default
    try:
        k = int(v)
    except (TypeError, ValueError):
        raise ApiError(400, f"k must be an integer (got {v!r})") from None
    if not 1 <= k <= 1000:
        raise ApiError(400, f"k must be between 1 and 1000 (got {k})")
    return k


@router.get("/v1/duplicates", summary="Groups of near-duplicate photos, each with the one to keep")
async def duplicates(request: Request, threshold: Optional[float] = Query(None, gt=0, le=1),
                     method: str = Query("signature", pattern="^(signature|clip)$"),
                     model: Optional[str] = None):
    from ..library.search import duplicate_groups

    st = state(request)
    sha = None
    if method == "clip":
        sm = _clip(request, model)
        await run_blocking(request, sm.model)
        sha = sm.sha256
    t = time.perf_counter()
    groups = await run_blocking(request, lambda: duplicate_groups(st.store, threshold=threshold, model_sha256=sha))
    return {"method": method, "threshold": threshold, "groups": groups,
            "time_ms": round((time.perf_counter() - t) * 1000, 2)}


@router.get("/v1/photos", summary="List stored photos (paged), optionally with a tag")
async def photos(request: Request, tag: Optional[str] = None, offset: int = Query(0, ge=0),
                 limit: int = Query(50, ge=1, le=1000), category: Optional[str] = None):
    st = state(request)
    if category:  # user categories (issue 14), best score first
        from ..library.categories import ensure

        ensure(st.store)
        rows = st.store.query("SELECT p.id, p.path, p.width, p.height, p.error, MAX(c.score) AS score "
                              "FROM photos p JOIN photo_categories c ON c.photo_id = p.id WHERE "
                              "c.category = ? GROUP BY p.id ORDER BY score DESC LIMIT ? OFFSET ?",
                              (category, limit, offset))
    elif tag:
        rows = st.store.query("SELECT DISTINCT p.id, p.path, p.width, p.height, p.error FROM photos p "
                              "JOIN tags t ON t.photo_id = p.id WHERE t.label = ? ORDER BY p.id LIMIT ? OFFSET ?",
                              (tag, limit, offset))
    else:
        rows = st.store.query("SELECT id, path, width, height, error FROM photos ORDER BY id LIMIT ? OFFSET ?",
                              (limit, offset))
    return {"photos": [{"photo_id": r["id"], **{k: r[k] for k in ("path", "width", "height", "error")}}
                       for r in rows], "total": st.store.counts()["photos"], "offset": offset}


@router.get("/v1/photos/{photo_id}", summary="The stored record of one photo")
async def photo(request: Request, photo_id: int):
    p = state(request).store.photo(photo_id)
    if p is None:
        raise ApiError(404, f"unknown photo {photo_id}")
    p["photo_id"] = p.pop("id")
    from ..library.categories import photo_categories

    p["categories"] = photo_categories(state(request).store, photo_id)  # issue 14
    return p


@lru_cache(maxsize=512)
def _thumbnail(path: str, mtime: float, size: int) -> bytes:
    from PIL import Image

    from ..runtime.preprocess import load_image

    img = load_image(path, draft_size=size)
    img.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=82)
    return buf.getvalue()


@router.get("/v1/photos/{photo_id}/thumbnail", summary="A small JPEG of the photo")
async def thumbnail(request: Request, photo_id: int, size: int = Query(256, ge=32, le=1024)):
    st = state(request)
    p = st.store.photo(photo_id)
    if p is None:
        raise ApiError(404, f"unknown photo {photo_id}")
    if not os.path.isfile(p["path"]):
        raise ApiError(404, f"the file of photo {photo_id} ({p['path']}) is gone; scan its folder "
                            f"again to drop it from the library")
    try:
        data = await run_blocking(request, _thumbnail, p["path"], p["mtime"], size)
    except EdgeInferError as e:
        raise ApiError(422, f"photo {photo_id} cannot be read now: {e}") from e
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
