"""The one interface every engine implements (Polygraphy-style runner life cycle).

A ``Session`` is created from an ONNX file + options, runs batches, and is closed. It is a
context manager. ``run(batch)`` is the fast path for single-input image models; ``run_feeds``
is the general one (CLIP text tower: token ids).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

# Public provider names (API and CLI).
PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino")

#: what to install for each engine (the one copy: errors, `edgeinfer providers`)
INSTALL = {
    "cpu": "pip install onnxruntime",
    "cuda": "pip uninstall -y onnxruntime && pip install 'edgeinfer[gpu]'   (onnxruntime-gpu; "
            "CUDA 12 + cuDNN 9 libraries and an NVIDIA driver)",
    "tensorrt": "pip uninstall -y onnxruntime && pip install 'edgeinfer[gpu]' tensorrt   "
                "(onnxruntime-gpu + TensorRT 10 libraries and an NVIDIA driver)",
    "openvino": "pip install 'edgeinfer[openvino]'   (openvino)",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple            # ints or str/None for dynamic dims
    dtype: str              # numpy dtype name, e.g. "float32"


@dataclass(frozen=True)
class SessionOptions:
    """Everything an engine needs besides the file, typed. None means the engine's default.

    Built for ``edgeinfer.load``, the bench and the service by one function,
    ``edgeinfer.runtime.selection.engine_options``, so that they cannot drift apart.
    """
    threads: int | None = None            # CPU inference threads (None: physical cores)
    device: str | None = None             # openvino: CPU/GPU/NPU/AUTO; cuda/tensorrt: GPU index
    precision: str | None = None          # the file's precision: TensorRT fp16/int8 kernels and
                                          # OpenVINO's inference precision follow from it
    cache_dir: str | None = None          # root of the engine caches (TensorRT, OpenVINO)
    model_sha256: str | None = None       # the file's sha256 from the manifest: the engine-cache
                                          # key without hashing the file again
    input_shapes: Mapping[str, tuple] | None = None  # per-sample input shapes (no batch dim):
                                          # TensorRT's min/opt/max optimisation profile
    opt_batch: int | None = None          # tensorrt profile: the batch it is tuned for
    max_batch: int | None = None          # tensorrt profile: the largest batch it accepts
    performance_hint: str | None = None   # LATENCY | THROUGHPUT: OpenVINO hint; on the ORT CPU engine THROUGHPUT runs a batch as single-threaded streams (library scan)
    static_batch: int | None = None       # openvino: compile a static batch (the NPU needs one)
    batch1_static: bool = False           # openvino: add a static batch-1 model for single images
    provider_options: Mapping[str, Any] | None = None  # raw onnxruntime EP options (advanced)
    compile_config: Mapping[str, Any] | None = None    # raw OpenVINO compile config (advanced)
    session_config: Mapping[str, str] | None = None    # onnxruntime session config entries


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
