"""ONNX Runtime engines: ``cpu`` (CPUExecutionProvider), ``cuda`` and ``tensorrt`` (onnxruntime-gpu).

The option dictionaries are built by pure functions (``cpu_session_config``,
``cuda_provider_options``, ``tensorrt_provider_options``, ``provider_chain``) so that they are
unit-tested without a GPU; ``OrtSession`` only applies them. ORT silently falls back to the CPU
when a GPU provider fails to load its libraries; we check the providers the session really got
and raise instead (never a silent fallback).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InvalidOptionError, ProviderUnavailableError
from .base import INSTALL, Session, SessionOptions, TensorSpec

EP_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
            "tensorrt": "TensorrtExecutionProvider"}


#: default TensorRT builder workspace (bytes): enough for image models, small for Jetsons
DEFAULT_TRT_WORKSPACE = 2 << 30
#: default dynamic-batch optimisation profile for TensorRT (min 1, opt, max)
DEFAULT_TRT_OPT_BATCH = 8
DEFAULT_TRT_MAX_BATCH = 32

_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
           "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
           "tensor(double)": "float64", "tensor(bool)": "bool"}


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2/v1 quota (containers), or None."""
    import math

    try:
        q, _, per = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2] + [""]
        if q != "max":
            return max(1, math.ceil(int(q) / int(per or 100000)))
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        per = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if q > 0 and per > 0:
            return max(1, math.ceil(q / per))
    except (OSError, ValueError):
        pass
    return None


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads don't help GEMM-bound inference),
    capped by the CPU affinity mask and a container's cgroup quota so that a 2-CPU container on
    a 64-core host does not start 64 threads."""
    n = None
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unsupported platform
        pass
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count() or 1
    limits = [x for x in (n, allowed, _cgroup_cpu_limit()) if x]
    return max(1, min(limits)) if limits else 1


#: chunks per stream a THROUGHPUT batch is cut into: smaller chunks taken in turn let a stream
#: slowed by the scan's decode threads (which share the cores) leave less of the batch for the
#: other to wait on. Measured on the 2-core Zen 3, scan of 48 12 MP photos, 4 runs each:
#: 2 chunks 8.54-8.72 photos/s, 1 chunk 7.36-8.98 (benchmarks/results/indexing.md).
CHUNKS_PER_STREAM = 2


def cpu_session_config(threads: int | None = None, *, performance_hint: str | None = None) -> dict:
    """Session settings for CPU inference (pure).

    LATENCY (the default): all graph optimisations; one intra-op pool sized to the physical
    cores (or ``threads``); sequential execution, because image models are chains and parallel
    executors only add scheduling overhead there.

    THROUGHPUT (OpenVINO's hint name, same meaning): ``streams`` = that many single-threaded
    streams; a batch is cut into one chunk per stream and the chunks run concurrently
    (``OrtSession.run``). No intra-op pool means no barrier per operator and no spinning threads,
    which burn the CPU that image decoding running beside inference needs (issue 17: with 2
    spinning threads the CPU-seconds per image were about 2x those of 2 single-threaded streams).
    """
    if threads is not None and int(threads) < 1:
        raise InvalidOptionError(f"threads must be >= 1 (got {threads}); None means physical cores")
    hint = (performance_hint or "LATENCY").upper()
    hints = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")  # OpenVINO's names
    if hint not in hints:
        raise InvalidOptionError.choice("performance hint", hint, hints)
    n = int(threads) if threads else physical_cores()
    cfg = {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": n,
           "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL"}
    if hint != "LATENCY":
        cfg.update(intra_op_num_threads=1, streams=n)
    return cfg


def cuda_provider_options(*, device_id: int = 0, extra: Mapping[str, Any] | None = None) -> dict:
    """CUDAExecutionProvider options (pure). Exhaustive cuDNN search picks the fastest conv
    algorithms once per shape; arena grows only as needed so a small model stays small."""
    opts = {"device_id": int(device_id), "cudnn_conv_algo_search": "EXHAUSTIVE",
            "arena_extend_strategy": "kSameAsRequested", "do_copy_in_default_stream": True}
    opts.update(extra or {})
    return opts


def _shape_str(name: str, batch: int, sample_shape) -> str:
    return f"{name}:" + "x".join(str(int(d)) for d in (batch, *sample_shape))


def tensorrt_provider_options(*, device_id: int = 0, fp16: bool = False, int8: bool = False,
                              cache_dir: str | os.PathLike | None = None,
                              workspace_bytes: int = DEFAULT_TRT_WORKSPACE,
                              input_shapes: Mapping[str, tuple] | None = None,
                              opt_batch: int = DEFAULT_TRT_OPT_BATCH,
                              max_batch: int = DEFAULT_TRT_MAX_BATCH,
                              extra: Mapping[str, Any] | None = None) -> dict:
    """TensorrtExecutionProvider options (pure).

    ``cache_dir`` enables the engine cache and the timing cache there (a second start skips the
    engine build). ``input_shapes`` maps each input name to its per-sample shape (without the
    batch dimension); it becomes an explicit min/opt/max optimisation profile over the batch, so
    TensorRT builds one engine for batches 1..max_batch instead of rebuilding per new shape.
    ``int8`` expects a QDQ model (explicit quantisation; no calibration table).
    """
    if not 1 <= opt_batch <= max_batch:
        raise InvalidOptionError(f"need 1 <= opt_batch <= max_batch (got {opt_batch}, {max_batch})")
    opts: dict[str, Any] = {"device_id": int(device_id),
                            "trt_max_workspace_size": int(workspace_bytes),
                            "trt_fp16_enable": bool(fp16),
                            "trt_int8_enable": bool(int8)}
    if int8:
        # QDQ models carry their scales; ORT must not look for a calibration table
        opts["trt_int8_use_native_calibration_table"] = False
    if cache_dir is not None:
        opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                     "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir)})
    if input_shapes:
        names = list(input_shapes)
        opts["trt_profile_min_shapes"] = ",".join(_shape_str(n, 1, input_shapes[n]) for n in names)
        opts["trt_profile_opt_shapes"] = ",".join(_shape_str(n, opt_batch, input_shapes[n]) for n in names)
        opts["trt_profile_max_shapes"] = ",".join(_shape_str(n, max_batch, input_shapes[n]) for n in names)
    opts.update(extra or {})
    return opts


def tensorrt_precision_flags(precision: str | None) -> dict[str, bool]:
    """TensorRT kernel flags for a file of ``precision`` (pure).

    An FP16 file needs FP16 kernels; a QDQ INT8 file needs INT8 and also FP16, because the
    layers its guard kept in float then run in FP16 rather than FP32. An FP32 file keeps FP32.
    """
    return {"fp16": precision in ("fp16", "int8"), "int8": precision == "int8"}


def provider_chain(provider: str, *, device_id: int = 0, fp16: bool = False, int8: bool = False,
                   cache_dir: str | os.PathLike | None = None,
                   input_shapes: Mapping[str, tuple] | None = None,
                   extra: Mapping[str, Any] | None = None, **trt_kw: Any) -> list[tuple[str, dict]]:
    """The ``providers=`` list for ``InferenceSession`` (pure).

    TensorRT is followed by CUDA (for the nodes TensorRT rejects) and CPU (for the few ops with no
    GPU kernel); CUDA by CPU. This is a per-node placement chain, not a fallback for the session:
    ``OrtSession`` checks that the requested provider itself was loaded.
    """
    if provider == "cpu":
        return [("CPUExecutionProvider", {})]
    if provider == "cuda":
        return [("CUDAExecutionProvider", cuda_provider_options(device_id=device_id, extra=extra)),
                ("CPUExecutionProvider", {})]
    if provider == "tensorrt":
        return [("TensorrtExecutionProvider",
                 tensorrt_provider_options(device_id=device_id, fp16=fp16, int8=int8,
                                           cache_dir=cache_dir, input_shapes=input_shapes,
                                           extra=extra, **trt_kw)),
                ("CUDAExecutionProvider", cuda_provider_options(device_id=device_id)),
                ("CPUExecutionProvider", {})]
    raise InvalidOptionError.choice("onnxruntime provider", provider, EP_NAMES)


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ProviderUnavailableError(f"onnxruntime is not installed; {INSTALL['cpu']}") from e
    return ort


def _device_id(options: SessionOptions) -> int:
    d = options.device
    if d in (None, "", "GPU", "gpu", "cuda"):
        return 0
    s = str(d).split(":")[-1]
    if not s.isdigit():
        raise InvalidOptionError(f"device for cuda/tensorrt is a GPU index like 0 or 'cuda:1' (got {d!r})")
    return int(s)


class OrtSession(Session):
    """An ``onnxruntime.InferenceSession`` behind the common interface.

    ``InferenceSession.run`` is thread-safe, so one session serves concurrent callers.
    """

    def __init__(self, path: str | os.PathLike, *, provider: str = "cpu",
                 options: SessionOptions | None = None):
        if provider not in EP_NAMES:
            raise InvalidOptionError.choice("onnxruntime provider", provider, EP_NAMES)
        options = options or SessionOptions()
        ort = import_ort()
        ep = EP_NAMES[provider]
        available = ort.get_available_providers()
        if ep not in available:
            raise ProviderUnavailableError(
                f"provider {provider!r} needs {ep}, which this onnxruntime ({ort.__version__}) "
                f"does not have (it has: {', '.join(available)}). Install: {INSTALL[provider]}.")
        path = Path(path)
        self.provider = provider
        self.path = path
        self.options = options

        so = ort.SessionOptions()
        # the THROUGHPUT hint splits batches across single-threaded streams on the CPU EP only
        cfg = cpu_session_config(options.threads, performance_hint=options.performance_hint
                                 if provider == "cpu" else None)
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, cfg["graph_optimization_level"])
        so.intra_op_num_threads = cfg["intra_op_num_threads"]
        so.inter_op_num_threads = cfg["inter_op_num_threads"]
        so.execution_mode = getattr(ort.ExecutionMode, cfg["execution_mode"])
        so.log_severity_level = 3  # errors only: ORT's warnings are about its own internals
        for k, v in dict(options.session_config or {}).items():
            so.add_session_config_entry(str(k), str(v))
        self.streams = cfg.get("streams", 1)
        self.threads = cfg["intra_op_num_threads"] * self.streams
        self._pool = None   # the other streams' threads (ThreadPoolExecutor starts them on first use)
        if self.streams > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.streams - 1,
                                            thread_name_prefix="edgeinfer-ort-stream")

        flags = tensorrt_precision_flags(options.precision)
        cache_dir = None
        self.cache_hit = None
        if provider == "tensorrt":
            from .cache import engine_cache_dir, model_sha256

            sha = options.model_sha256 or model_sha256(path)
            cache_dir = engine_cache_dir(engine="tensorrt", model_sha=sha,
                                         engine_version=f"ort{ort.__version__}-{_trt_version()}",
                                         device=f"gpu{_device_id(options)}-"
                                                f"{'fp16' if flags['fp16'] else 'fp32'}"
                                                f"{'-int8' if flags['int8'] else ''}",
                                         root=options.cache_dir)
            self.cache_hit = any(cache_dir.glob("*.engine"))
        self.cache_dir = cache_dir
        trt_kw = {k: v for k, v in (("opt_batch", options.opt_batch),
                                    ("max_batch", options.max_batch)) if v is not None}
        providers = provider_chain(provider, device_id=_device_id(options) if provider != "cpu" else 0,
                                   fp16=flags["fp16"], int8=flags["int8"], cache_dir=cache_dir,
                                   input_shapes=options.input_shapes,
                                   extra=options.provider_options, **trt_kw)
        t0 = time.perf_counter()
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=so,
                                              providers=[p for p, _ in providers],
                                              provider_options=[o for _, o in providers])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... classes
            if provider != "cpu":
                raise ProviderUnavailableError(f"{ep} could not create a session for {path.name}: "
                                               f"{e}. Install: {INSTALL[provider]}.") from e
            from ..errors import ArtifactError

            raise ArtifactError(f"onnxruntime cannot load {path}: {e}") from e
        self.load_seconds = time.perf_counter() - t0
        got = self._sess.get_providers()
        if ep not in got:
            raise ProviderUnavailableError(
                f"{ep} was requested but onnxruntime fell back to {', '.join(got)} (its CUDA/"
                f"TensorRT libraries failed to load; see the onnxruntime log). Install: "
                f"{INSTALL[provider]}.")
        self.device = "CPU" if provider == "cpu" else f"cuda:{_device_id(options)}"
        self.inputs = [TensorSpec(i.name, tuple(i.shape), _DTYPES.get(i.type, i.type))
                       for i in self._sess.get_inputs()]
        self.outputs = [TensorSpec(o.name, tuple(o.shape), _DTYPES.get(o.type, o.type))
                        for o in self._sess.get_outputs()]
        self._in0 = self.inputs[0].name
        self._out0 = [self.outputs[0].name]

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.streams > 1 and len(batch) > 1:
            return self._run_split(self._out0, {self._in0: batch})[0]
        return self._sess.run(self._out0, {self._in0: batch})[0]

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = dict(feeds)
        if self.streams > 1 and len(next(iter(feeds.values()))) > 1:
            return self._run_split(None, feeds)
        return self._sess.run(None, feeds)

    def _run_split(self, names, feeds: dict) -> list[np.ndarray]:
        """The batch cut into ``CHUNKS_PER_STREAM`` chunks per stream; the streams (the calling
        thread and the pool's) take chunks in turn until none is left (``InferenceSession.run``
        is thread-safe); outputs merged in input order."""
        import itertools
        import threading

        n = len(next(iter(feeds.values())))
        k = min(self.streams * CHUNKS_PER_STREAM, n)
        edges = [round(i * n / k) for i in range(k + 1)]
        chunks = [{name: v[a:b] for name, v in feeds.items()} for a, b in itertools.pairwise(edges)]
        sess, parts, lock, todo = self._sess, [None] * k, threading.Lock(), iter(range(k))

        def stream():
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                parts[i] = sess.run(names, chunks[i])

        futs = [self._pool.submit(stream) for _ in range(min(self.streams, k) - 1)]
        try:
            stream()
        finally:
            for f in futs:
                f.result()
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    def close(self) -> None:
        self._sess = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self) -> dict:
        d = super().describe()
        d.update(threads=self.threads, streams=self.streams, engine="onnxruntime",
                 cache_dir=str(self.cache_dir) if self.cache_dir else None)
        return d


def _trt_version() -> str:
    """TensorRT library version for the cache key (without importing tensorrt's heavy bindings
    when the package metadata is enough)."""
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-libs", "tensorrt_cu12_libs"):
        try:
            return "trt" + metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "trt-unknown"
