"""The one interface every engine implements (Polygraphy-style runner life cycle).

A ``Session`` is created from an ONNX file + options, runs batches, and is closed. It is a
context manager. ``run(batch)`` is the fast path for single-input image models; ``run_feeds``
is the general one (CLIP text tower: token ids).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# Public provider names (API and CLI).
PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple            # ints or str/None for dynamic dims
    dtype: str              # numpy dtype name, e.g. "float32"


@dataclass
class SessionOptions:
    """Options common to all engines. None means default (the engine's own choice)."""
    threads: int | None = None
    device: str | None = None            # openvino: CPU/GPU/NPU/AUTO; cuda/tensorrt: device id
    cache_dir: str | None = None         # engine caches (TensorRT engines, OpenVINO model cache)
    performance_hint: str | None = None  # openvino: LATENCY | THROUGHPUT
    fp16: bool | None = None             # tensorrt: allow FP16 kernels
    int8: bool | None = None             # tensorrt: enable INT8 (QDQ models)
    extra: dict[str, Any] = field(default_factory=dict)


class Session:
    """Base class; subclasses set ``provider``, ``device``, ``inputs``, ``outputs``."""

    provider: str = ""
    device: str = ""
    inputs: Sequence[TensorSpec] = ()
    outputs: Sequence[TensorSpec] = ()
    #: seconds spent creating/compiling the session (cold start), measured by the backend
    load_seconds: float = 0.0
    #: whether an engine cache was hit at creation (None: the engine has no cache)
    cache_hit: bool | None = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run a single-input, single-output model on an NCHW float32 batch."""
        return self.run_feeds({self.inputs[0].name: batch})[0]

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        return {"provider": self.provider, "device": self.device,
                "load_seconds": round(self.load_seconds, 4), "cache_hit": self.cache_hit}
