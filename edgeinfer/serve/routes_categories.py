"""User categories (issue 14): ``POST /v1/categories`` (a name + example photo ids or uploads),
``GET /v1/categories``, ``DELETE /v1/categories/{name}``. Categories live on a CLIP model's image
embeddings in the library store (``edgeinfer.library.categories``); creating or deleting one
re-tags the library at once, and every scan tags new photos. ``GET /v1/search?category=NAME`` and
``GET /v1/photos?category=NAME`` filter by category."""
from __future__ import annotations

import asyncio
from typing import Optional

from fastapi import APIRouter, Depends, Request

from ..errors import CategoryError, EdgeInferError
from . import pipeline as pl
from .app import ApiError, run_blocking, state
from .routes_infer import pick_models, require_token

router = APIRouter(dependencies=[Depends(require_token)])

EXAMPLE_HINT = ("send JSON {\"name\": \"rex\", \"photo_ids\": [1, 2, 3]} or multipart with a 'name' "
                "field and 3+ example files in 'image'")


def _clip(request: Request, name: Optional[str]):
    return pick_models(request, name, ("clip",), "user categories")[0]


async def _upload_embeddings(request: Request, sm, files) -> tuple[list, list[str]]:
    """L2-normalised embeddings of uploaded example images (an unusable upload is a 422)."""
    from ..runtime.model import l2_normalize

    st = state(request)
    uploads = [pl.Upload(f.filename or f"image{i}", await f.read()) for i, f in enumerate(files)]
    images = await run_blocking(request, pl.decode, uploads, pl.draft_size([sm]), st.metrics)
    bad = [m for m in images if isinstance(m, str)]
    if bad:
        raise ApiError(422, f"{len(bad)} example image(s) cannot be used ({bad[0]}); replace them")
    batch, _ = await run_blocking(request, pl.preprocess, sm, images, st.metrics)
    rows = await asyncio.wrap_future(sm.infer(batch))
    return [l2_normalize(r) for r in rows], [f"upload:{u.filename}" for u in uploads]


@router.post("/v1/categories", summary="Create or replace a user category from 3+ example photos")
async def create_category(request: Request):
    from ..categories import model_identity
    from ..library import categories as lc

    st = state(request)
    ctype = request.headers.get("content-type", "")
    embeddings, sources, photo_ids = [], [], []
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        name = form.get("name")
        model = form.get("model")
        ids = form.get("photo_ids")
        if ids:
            try:
                photo_ids = [int(x) for x in str(ids).replace(",", " ").split()]
            except ValueError:
                raise ApiError(400, f"photo_ids must be integers separated by commas (got {ids!r})") from None
        files = [f for f in form.getlist("image") if hasattr(f, "read")]
    else:
        from .routes_library import _json_body

        body = await _json_body(request)
        name, model, files = body.get("name"), body.get("model"), []
        photo_ids = body.get("photo_ids") or []
        if not isinstance(photo_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                      for i in photo_ids):
            raise ApiError(400, f"photo_ids must be a list of integers; {EXAMPLE_HINT}")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, f"give the category a name; {EXAMPLE_HINT}")
    if len(name) > 200:
        raise ApiError(400, "category names are at most 200 characters")
    sm = _clip(request, model)
    if not photo_ids and not files:
        raise ApiError(400, f"no examples: {EXAMPLE_HINT}")
    with st.admission:
        await run_blocking(request, sm.model)
        if files:
            embeddings, sources = await _upload_embeddings(request, sm, files)
        ident = model_identity(sm.model())
        import numpy as np

        try:
            res = await run_blocking(
                request, lambda: lc.add_category(
                    st.store, ident, name.strip(), photo_ids=photo_ids,
                    embeddings=np.stack(embeddings) if embeddings else None, sources=sources))
        except CategoryError as e:
            raise ApiError(422, str(e)) from e
    return res


@router.get("/v1/categories", summary="User categories with their thresholds and tagged photo counts")
async def categories(request: Request, model: Optional[str] = None):
    from ..library import categories as lc

    st = state(request)
    sha = None
    if model:
        sm = _clip(request, model)
        await run_blocking(request, sm.model)
        sha = sm.sha256
    return {"categories": await run_blocking(request, lc.list_categories, st.store, sha)}


@router.delete("/v1/categories/{name}", summary="Delete a user category (its tags go with it)")
async def delete_category(request: Request, name: str, model: Optional[str] = None):
    from ..library import categories as lc

    st = state(request)
    sm = _clip(request, model)
    await run_blocking(request, sm.model)
    try:
        await run_blocking(request, lc.delete_category, st.store, sm.sha256, name)
    except CategoryError as e:
        raise ApiError(404, f"{e} (model {sm.name})") from e
    except EdgeInferError as e:
        raise ApiError(422, str(e)) from e
    return {"deleted": name, "model": sm.name}
