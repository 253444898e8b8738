"""The FastAPI application factory: ``create_app(ServeConfig(...))``.

Layout: ``app.state.edge`` (an ``AppState``) holds the models, the library store, the metrics,
the admission counter and the pools; routes live in APIRouters (``routes_*.py``) that all read
that state, so another feature adds its routes with one line here (``include_router``). Routers
that need the bearer token get ``dependencies=[Depends(require_token)]``; ``/health`` and the
static page (which asks for the token itself) do not.

Every error is JSON ``{"error": "..."}`` (``ApiError`` and the handlers below); an unexpected
exception is a 500 that says it is a bug and is logged with its traceback.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError
from .config import ServeConfig

log = logging.getLogger("edgeinfer.serve")
WEB_DIR = Path(__file__).resolve().parent / "web"


def _import_fastapi():
    try:
        import fastapi  # noqa: F401
        import importlib.util

        if not (importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart")):
            raise ImportError("python-multipart is needed for uploads", name="python-multipart")
    except ImportError as e:
        raise MissingDependencyError(getattr(e, "name", None) or "fastapi", "serve",
                                     "`edgeinfer serve`") from e


class ApiError(Exception):
    """An error response: status + a sentence saying what to do (+ headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Admission:
    """The bounded request queue: at most ``limit`` inference requests admitted at once (running
    or waiting for the engine); the next one is refused with 503 + Retry-After at once instead of
    queueing without bound."""

    def __init__(self, limit: int, metrics=None):
        self.limit, self.metrics = int(limit), metrics
        self.depth = 0
        self._lock = threading.Lock()

    def __enter__(self):
        with self._lock:
            if self.depth >= self.limit:
                if self.metrics:
                    self.metrics.rejected.inc()
                raise ApiError(503, f"the server is busy ({self.depth} requests queued, limit "
                                    f"{self.limit}); retry after the number of seconds in Retry-After",
                               {"Retry-After": "1"})
            self.depth += 1
            if self.metrics:
                self.metrics.queue.set(self.depth)
        return self

    def __exit__(self, *exc):
        with self._lock:
            self.depth -= 1
            if self.metrics:
                self.metrics.queue.set(self.depth)


class AppState:
    def __init__(self, config: ServeConfig):
        from ..library.jobs import JobRunner
        from ..library.store import Store
        from .metrics import Metrics
        from .models import ServedModel, unique_names

        self.config = config
        self.metrics = Metrics()
        self.started = time.time()
        self.admission = Admission(config.max_queue, self.metrics)
        # decoding/preprocessing never runs on the event loop; PIL releases the GIL
        self.pool = ThreadPoolExecutor(max_workers=max(2, min(8, (os.cpu_count() or 2) + 2)),
                                       thread_name_prefix="edgeinfer-serve")
        self.models: dict[str, ServedModel] = {}
        try:
            for art, name in zip(config.artifacts, unique_names(config.artifacts)):
                self.models[name] = ServedModel(art, name=name, provider=config.provider,
                                                precision=config.precision, threads=config.threads,
                                                max_batch=config.max_batch,
                                                batch_wait_ms=config.batch_wait_ms, metrics=self.metrics)
            if not config.lazy:
                for m in self.models.values():
                    m.model()
            self.roots = [Path(r).resolve() for r in config.library_roots]
            self.store = Store(config.library)
            self.store.interrupted_jobs()
            self.jobs = JobRunner(self.store, self.library_models, batch_size=config.scan_batch,
                                  top_k=config.top_k_tags, release=self.release_library_models)
        except BaseException:
            self.close()
            raise
        self._stop = threading.Event()
        self._idle = None
        if config.idle_unload_s:
            self._idle = threading.Thread(target=self._idle_loop, name="edgeinfer-idle", daemon=True)
            self._idle.start()

    def library_models(self) -> list:
        """The models wrapped for a library scan, loaded and pinned (no idle unload) until
        ``release_library_models``."""
        from ..library.scan import LibraryModel

        out = []
        try:
            for m in self.models.values():
                if m.kind in ("classifier", "clip"):
                    out.append(LibraryModel(m.pin(), artifact_dir=m.artifact_dir, name=m.name))
                    out[-1].served = m
        except BaseException:
            self.release_library_models(out)
            raise
        return out

    def release_library_models(self, models: list) -> None:
        for lm in models:
            lm.served.unpin()

    def _idle_loop(self) -> None:
        idle = float(self.config.idle_unload_s)
        while not self._stop.wait(min(5.0, max(0.2, idle / 4))):
            for m in self.models.values():
                m.unload_if_idle(idle)

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        jobs = getattr(self, "jobs", None)
        if jobs is not None:
            jobs.close()  # the running batch finishes and commits; the rest waits for a re-scan
        for m in getattr(self, "models", {}).values():
            m.close()
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=True)


def state(request) -> AppState:
    return request.app.state.edge


async def run_blocking(request, fn, *args):
    """Run ``fn(*args)`` on the service's thread pool (never on the event loop)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(state(request).pool, fn, *args)


def check_token(request) -> None:
    token = state(request).config.token
    if not token:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "missing or wrong bearer token: send the header "
                            "'Authorization: Bearer <token>' with the token the server was started with",
                       {"WWW-Authenticate": "Bearer"})


class UploadLimit:
    """ASGI middleware: request bodies above the cap get 413 before they are read into memory
    (Content-Length), or as soon as a streamed body passes the cap."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        mb = self.max_bytes / 2**20
        msg = (f"upload too large: the limit is {mb:g} MB per request (--max-upload-mb); "
               f"send fewer or smaller images")
        for k, v in scope.get("headers") or ():
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return await _send_json(send, 400, {"error": "malformed Content-Length header"})
                if n > self.max_bytes:
                    return await _send_json(send, 413, {"error": msg})
        seen = 0
        started = False

        async def recv():
            nonlocal seen
            m = await receive()
            if m["type"] == "http.request":
                seen += len(m.get("body", b""))
                if seen > self.max_bytes:
                    scope["edgeinfer.too_large"] = msg
                    raise _TooLarge(msg)
            return m

        async def snd(m):
            nonlocal started
            if m["type"] == "http.response.start":
                started = True
            await send(m)

        try:
            await self.app(scope, recv, snd)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, {"error": msg})


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    import json

    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


class MetricsMiddleware:
    """Counts and times every request by route template."""

    def __init__(self, app, metrics, routes=None):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route_name(self, scope) -> str:
        route = scope.get("route")
        if getattr(route, "path", None):
            return route.path
        # refused before routing (413 from UploadLimit): find the route template it was for
        from starlette.routing import Match, Mount

        def flat(routes):
            for r in routes:
                inner = getattr(r, "original_router", None)  # FastAPI's included-router wrapper
                if inner is not None:
                    yield from flat(inner.routes)
                elif getattr(r, "path", None) and not isinstance(r, Mount):
                    yield r

        for r in flat(self.routes() if self.routes else ()):
            try:
                match, _ = r.matches(scope)
            except Exception:  # noqa: BLE001 -- a label lookup must never fail a request
                continue
            if match != Match.NONE:
                return r.path
        return "static" if scope["method"] in ("GET", "HEAD") else "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = {"code": 500}

        async def snd(m):
            if m["type"] == "http.response.start":
                status["code"] = m["status"]
            await send(m)

        try:
            await self.app(scope, receive, snd)
        finally:
            name = self._route_name(scope)
            code = str(status["code"])
            self.metrics.requests.labels(name, scope["method"], code).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(name, code).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - t)


def create_app(config: ServeConfig | None = None, **options: Any):
    """Build the service. ``create_app(ServeConfig(artifacts=[...], ...))`` or keyword options."""
    _import_fastapi()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .. import __version__
    from . import routes_infer, routes_library

    config = config or ServeConfig(**options)
    st = AppState(config)

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn calls this after in-flight requests finished (SIGTERM / Ctrl-C)
        log.info("shutting down: finishing the running scan batch, closing models and the store")
        st.close()

    app = FastAPI(title="edgeinfer", version=__version__, lifespan=lifespan,
                  description="Photo tagging, zero-shot, embeddings, library search and duplicates "
                              "on the torch-free edgeinfer runtime.")
    app.state.edge = st

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        too_large = request.scope.get("edgeinfer.too_large")
        if too_large:
            return JSONResponse({"error": too_large}, status_code=413)
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"no route {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}; see /docs for the API"
        return JSONResponse({"error": msg}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        too_large = request.scope.get("edgeinfer.too_large")
        if too_large:
            return JSONResponse({"error": too_large}, status_code=413)
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "form"))
            parts.append(f"{where or 'request'}: {e.get('msg')}")
        return JSONResponse({"error": "malformed request: " + "; ".join(parts) + " (see /docs)"},
                            status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request, exc):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error (a bug, please report it): "
                                      f"{type(exc).__name__}: {exc}"}, status_code=500)

    app.add_middleware(UploadLimit, max_bytes=int(config.max_upload_mb * 2**20))
    app.add_middleware(MetricsMiddleware, metrics=st.metrics, routes=lambda: app.routes)
    if config.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])

    app.include_router(routes_infer.public)
    app.include_router(routes_infer.router)
    app.include_router(routes_library.router)
    # issue 14 (user categories) plugs in here: app.include_router(routes_categories.router)
    try:
        import importlib

        app.include_router(importlib.import_module(f"{__package__}.routes_categories").router)
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.routes_categories":
            raise

    @app.get("/", include_in_schema=False)
    async def index():
        page = WEB_DIR / "index.html"
        if page.is_file():
            return FileResponse(page)
        return HTMLResponse("<!doctype html><title>edgeinfer</title><h1>edgeinfer</h1>"
                            "<p>The web page is not installed; the API is at <a href='/docs'>/docs</a>.</p>")

    # the page's assets: /web/app.js, and also /app.js for a page that uses relative URLs
    app.mount("/web", StaticFiles(directory=WEB_DIR, check_dir=False), name="web")
    app.mount("/", StaticFiles(directory=WEB_DIR, check_dir=False), name="web-root")
    return app
