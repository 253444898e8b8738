"""edgeinfer: export image models to ONNX (FP32/FP16/INT8), run them on the best engine of the
machine, and report accuracy vs latency vs memory.

``import edgeinfer`` stays fast and torch-free: heavy modules load on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "Model", "__version__"]


def load(artifact_dir, *, precision: str = "auto", provider: str = "auto", threads=None, **kw):
    """Load an artifact directory for inference. See ``edgeinfer.runtime.model.load``."""
    from .runtime.model import load as _load

    return _load(artifact_dir, precision=precision, provider=provider, threads=threads, **kw)


def __getattr__(name):
    if name == "Model":
        from .runtime.model import Model

        return Model
    raise AttributeError(f"module 'edgeinfer' has no attribute {name!r}")
