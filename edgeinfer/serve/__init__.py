"""The HTTP service (FastAPI) over the runtime and the library: ``create_app(ServeConfig(...))``.

FastAPI is imported only when the app is built (``pip install 'edgeinfer[serve]'``)."""
from __future__ import annotations

from .config import ServeConfig


def create_app(config: ServeConfig | None = None, **options):
    from .app import create_app as _create

    return _create(config, **options)


__all__ = ["ServeConfig", "create_app"]
