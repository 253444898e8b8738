"""Execution engines behind one ``Session`` interface (torch-free; engines import at first use).

Public provider names: ``cpu`` (ONNX Runtime CPU), ``cuda`` and ``tensorrt`` (ONNX Runtime
GPU execution providers), ``openvino`` (OpenVINO runtime; device CPU/GPU/NPU/AUTO via
``SessionOptions.device``). ``providers`` says which engines this machine has and why; which
one to use, and with which options, is decided in ``edgeinfer.runtime.selection``.
"""
from __future__ import annotations

import os

from .base import PROVIDERS, Session, SessionOptions, TensorSpec

__all__ = ["PROVIDERS", "Session", "SessionOptions", "TensorSpec", "create_session"]


def create_session(path: str | os.PathLike, *, provider: str,
                   options: SessionOptions | None = None, precision: str | None = None) -> Session:
    """Open ``path`` (an ONNX file) on ``provider``.

    A provider whose engine is missing raises ``ProviderUnavailableError`` saying what to
    install; there is no fallback to another engine. The file's precision (``options.precision``,
    or ``precision`` as a shorthand) lets engines keep it exactly: TensorRT enables FP16/INT8
    kernels from it, OpenVINO would otherwise run FP32 files as bf16/f16.
    """
    from dataclasses import replace

    from ..errors import ArtifactError, InvalidOptionError

    if provider not in PROVIDERS:
        raise InvalidOptionError.choice("provider", provider, (*PROVIDERS, "auto"))
    if not os.path.exists(path):
        raise ArtifactError(f"model file {path} does not exist")
    options = options or SessionOptions()
    if precision is not None:
        options = replace(options, precision=precision)
    if provider == "openvino":
        from .openvino import OpenVINOSession

        return OpenVINOSession(path, options=options)
    from .ort import OrtSession

    return OrtSession(path, provider=provider, options=options)
