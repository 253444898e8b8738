"""Execution engines behind one ``Session`` interface (torch-free; engines import at first use).

Public provider names: ``cpu`` (ONNX Runtime CPU), ``cuda`` and ``tensorrt`` (ONNX Runtime
GPU execution providers), ``openvino`` (OpenVINO runtime; device CPU/GPU/NPU/AUTO via
``SessionOptions.device``). Detection and ``auto`` selection live in ``providers``.
"""
from __future__ import annotations

import os

from .base import PROVIDERS, Session, SessionOptions, TensorSpec

__all__ = ["PROVIDERS", "Session", "SessionOptions", "TensorSpec", "create_session"]


def create_session(path: str | os.PathLike, *, provider: str,
                   options: SessionOptions | None = None, precision: str | None = None) -> Session:
    """Open ``path`` (an ONNX file) on ``provider``.

    A provider whose engine is missing raises ``ProviderUnavailableError`` saying what to
    install; there is no fallback to another engine. ``precision`` (the file's precision) lets
    engines keep that precision exactly (OpenVINO would otherwise run FP32 files as bf16/f16).
    """
    from ..errors import ArtifactError, InvalidOptionError

    if provider not in PROVIDERS:
        raise InvalidOptionError.choice("provider", provider, (*PROVIDERS, "auto"))
    if not os.path.exists(path):
        raise ArtifactError(f"model file {path} does not exist")
    if provider == "openvino":
        from .openvino import OpenVINOSession

        return OpenVINOSession(path, options=options, precision=precision)
    from .ort import OrtSession

    return OrtSession(path, provider=provider, options=options)
