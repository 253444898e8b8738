"""OpenVINO native runtime (``openvino``): devices CPU, GPU, NPU, AUTO.

The ONNX file is read directly (no IR conversion step). Compilation uses the model cache
(``CACHE_DIR``, keyed like every engine cache) so a second start is fast, a performance hint
(LATENCY by default, THROUGHPUT on request) and, on the CPU, the thread count.

Thread safety: an ``InferRequest`` must not be used by two threads at once, so the session keeps
a pool of idle requests; each call takes one (creating it if none is idle), runs, copies the
output and gives it back. Concurrent callers therefore run in parallel, like ORT's ``run``.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InvalidOptionError, ProviderUnavailableError
from .base import INSTALL, Session, SessionOptions, TensorSpec

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")

_CORE = None
_CORE_LOCK = threading.Lock()


def import_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise ProviderUnavailableError(f"provider 'openvino' needs the openvino package, which is "
                                       f"not installed. Install: {INSTALL['openvino']}.") from e
    return ov


def core():
    """One shared ``openvino.Core`` (creating one loads the plugin registry; do it once)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = import_openvino().Core()
        return _CORE


def openvino_version() -> str:
    ov = import_openvino()
    return ov.get_version().split("-")[0]


def available_devices() -> list[str]:
    """e.g. ['CPU', 'GPU.0', 'GPU.1', 'NPU'] (what ``Core().available_devices`` reports)."""
    return list(core().available_devices)


def cpu_half_precision() -> str | None:
    """The reduced-precision type OpenVINO's CPU plugin computes in on this CPU, or None."""
    from .hw import cpu_info

    flags = set(cpu_info()["flags"]) | {k for k, v in cpu_info()["isa"].items() if v is True}
    if "amx_fp16" in flags or "avx512_fp16" in flags:
        return "f16"
    if "avx512_bf16" in flags or "amx" in flags:
        return "bf16"
    return None


def compile_config(*, device: str = "CPU", hint: str | None = None, threads: int | None = None,
                   cache_dir: str | os.PathLike | None = None, precision: str | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict:
    """The ``compile_model`` config (pure).

    ``precision`` is the artifact file's precision. The CPU runs FP32 and INT8 files in f32 (their
    float parts): OpenVINO would otherwise silently run bf16 on CPUs with AVX512-BF16 / AMX,
    a visible output change (benchmarks/results/engine_choice.md), which is not what was asked for. An
    FP16 file runs in the CPU's half type (bf16 / f16) when it has one, else f32.
    An FP32 file on the GPU runs f32 (the GPU default is f16); an FP16 file there runs f16.
    """
    hint = (hint or "LATENCY").upper()
    if hint not in HINTS:
        raise InvalidOptionError.choice("openvino performance hint", hint, HINTS)
    base = device.split(".")[0].split(":")[0].upper()
    if base not in DEVICES:
        raise InvalidOptionError.choice("openvino device", device, DEVICES)
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if threads and base == "CPU":
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir is not None:
        cfg["CACHE_DIR"] = str(cache_dir)
    if base == "CPU" and precision == "fp16" and cpu_half_precision():
        # An FP16 file asks for reduced-precision compute; on a CPU with bf16 units that is
        # bf16 (OpenVINO CPU has no f16 compute without AMX-FP16). Its fidelity is measured
        # and guarded like any FP16 file's (`edgeinfer bench`, tuning.json).
        cfg["INFERENCE_PRECISION_HINT"] = cpu_half_precision()
    elif base == "CPU" or (precision == "fp32" and base == "GPU"):
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    elif precision == "fp16" and base == "GPU":
        cfg["INFERENCE_PRECISION_HINT"] = "f16"
    cfg.update(extra or {})
    return cfg


def cpu_graph_for(path: Path, precision: str | None, device: str) -> Path:
    """The ONNX file OpenVINO should compile for ``path`` (an artifact file of ``precision``).

    The CPU plugin never computes an FP16 ONNX file in f16 (no AMX-FP16 here): it runs it in its
    half type (bf16) or f32. The file differs from the FP32 graph only by what the ONNX-level
    conversion added: 55 Cast nodes in CLIP's image tower (LayerNormalization kept in float
    because ONNX Runtime crashes on it in f16, overflow-prone nodes, ``keep_io_types``) and f16
    weight constants, which the plugin may keep as compressed weights decompressed at run time.
    Issue 17 measured CLIP's FP16 file in bf16 slower (33.2 ms) than ``compile_model`` on the
    FP32 file (27.7 ms, which defaults to bf16 on such a CPU). Compiling the FP32 sibling with
    the same half hint gives exactly that peer's graph and config: same compute precision,
    the plugin's own bf16 enforcement instead of ONNX Casts. Any other file/device (or a
    missing sibling) compiles ``path`` itself.
    """
    base = device.split(".")[0].split(":")[0].upper()
    if base != "CPU" or precision != "fp16" or ".fp16." not in path.name:
        return path
    sibling = path.with_name(path.name.replace(".fp16.", ".fp32."))
    return sibling if sibling.exists() else path


def _dtype(t) -> str:
    try:
        return np.dtype(t.to_dtype()).name
    except Exception:  # an OpenVINO type with no numpy twin
        return str(t)


class _Compiled:
    """A compiled model plus its pool of idle infer requests (requests are not thread-safe).

    ``parallel``: infer requests one batch is split across (1: the whole batch in one request).
    Under the THROUGHPUT hint it is the plugin's OPTIMAL_NUMBER_OF_INFER_REQUESTS (one per
    stream): a single request would keep only one stream busy, so a batch is cut into that many
    chunks, started together with ``start_async`` and merged back in order (issue 17: the library
    scan sends whole batches)."""

    def __init__(self, compiled, *, parallel: int = 1):
        self.compiled = compiled
        self.parallel = max(1, int(parallel))
        self.idle: queue.SimpleQueue = queue.SimpleQueue()

    def _take(self):
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            return self.compiled.create_infer_request()

    def run(self, feeds: Mapping[str, np.ndarray], n_out: int) -> list[np.ndarray]:
        n = len(next(iter(feeds.values())))
        if self.parallel > 1 and n > 1:
            return self._run_split(feeds, n_out, n)
        req = self._take()
        try:
            req.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            # copy: the request's output buffers are reused by its next inference
            return [req.get_output_tensor(i).data.copy() for i in range(n_out)]
        finally:
            self.idle.put(req)

    def _run_split(self, feeds: Mapping[str, np.ndarray], n_out: int, n: int) -> list[np.ndarray]:
        bounds = split_bounds(n, self.parallel)
        reqs = [self._take() for _ in bounds]
        started = []
        try:
            for req, (a, b) in zip(reqs, bounds):
                # share_inputs=False (the default) copies the chunk into the request
                req.start_async({k: np.ascontiguousarray(v[a:b]) for k, v in feeds.items()})
                started.append(req)
            for req in reqs:
                req.wait()
            parts = [[req.get_output_tensor(i).data.copy() for i in range(n_out)] for req in reqs]
        except BaseException:
            for req in started:  # never hand a running request back to the pool
                with contextlib.suppress(Exception):  # the first error is the one raised
                    req.wait()
            raise
        finally:
            for req in reqs:
                self.idle.put(req)
        return [np.concatenate([p[i] for p in parts]) for i in range(n_out)]


def split_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of at most ``parts`` contiguous, non-empty chunks of ``n`` items, in order,
    sizes differing by at most one (pure)."""
    parts = max(1, min(int(parts), int(n)))
    base, extra = divmod(int(n), parts)
    out, a = [], 0
    for i in range(parts):
        b = a + base + (1 if i < extra else 0)
        out.append((a, b))
        a = b
    return out


def _parallel_requests(compiled, hint: str | None) -> int:
    """Requests a batch is split across: the plugin's optimum under THROUGHPUT, else 1."""
    if (hint or "LATENCY").upper() != "THROUGHPUT":
        return 1
    try:
        return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    except Exception:  # noqa: BLE001 - a plugin that does not report it: no split
        return 1


def _spec(p, *, dynamic_batch: bool = False) -> TensorSpec:
    dims = [str(d) if d.is_dynamic else d.get_length() for d in p.get_partial_shape()]
    if dynamic_batch and dims:
        dims[0] = "batch"  # the static batch-1 variant still serves any batch (via the dynamic one)
    return TensorSpec(p.get_any_name(), tuple(dims), _dtype(p.get_element_type()))


class OpenVINOSession(Session):
    """OpenVINO session.

    Batch handling (``SessionOptions``): by default one dynamic-batch model, compiled from
    the ONNX path so that a model-cache hit skips reading the file. ``static_batch=N`` compiles a
    static batch N and runs any input in padded chunks of N (default on the NPU, whose compiler
    needs static shapes). ``batch1_static=True`` adds a static batch-1 model for single images
    (larger batches use the dynamic model, compiled on first use); its IR is saved in the engine
    cache. It is opt-in: faster per image but slower to start and larger in memory, which pays
    off in a long-running service, not in a CLI call (benchmarks/results/engine_choice.md).
    """
    provider = "openvino"

    def __init__(self, path: str | os.PathLike, *, options: SessionOptions | None = None):
        options = options or SessionOptions()
        precision = options.precision
        c = core()
        path = Path(path)
        self.artifact_path = path
        device = (options.device or "CPU").upper()
        # what is compiled: the FP32 graph for an FP16 file on the CPU (see cpu_graph_for)
        path = cpu_graph_for(path, precision, device)
        self.path = path
        base = device.split(".")[0]
        if base not in DEVICES:
            raise InvalidOptionError.choice("openvino device", device, DEVICES)
        avail = list(c.available_devices)
        if base != "AUTO" and not any(d == device or d.split(".")[0] == device for d in avail):
            raise ProviderUnavailableError(
                f"OpenVINO device {device!r} is not available here (available: "
                f"{', '.join(avail) or 'none'}). GPU needs an Intel GPU and its compute runtime "
                f"(intel-opencl-icd / level-zero); NPU needs the intel_vpu driver.")
        static_batch = options.static_batch
        if base == "NPU" and static_batch is None:
            static_batch = 1  # the NPU compiler needs static shapes
        from .cache import engine_cache_dir, model_sha256

        sha = (options.model_sha256 if path == self.artifact_path else None) or model_sha256(path)
        cache_dir = engine_cache_dir(engine="openvino", model_sha=sha,
                                     engine_version=openvino_version(),
                                     device=f"{device}-{precision or 'model'}", root=options.cache_dir)
        self.cache_dir = cache_dir
        self.cache_hit = any(cache_dir.glob("*.blob"))
        self._cfg = compile_config(device=device, hint=options.performance_hint,
                                   threads=options.threads, cache_dir=cache_dir, precision=precision,
                                   extra=options.compile_config)
        self.device = device
        self.precision = precision
        self._lock = threading.Lock()
        self._dynamic: _Compiled | None = None
        self._static: _Compiled | None = None
        self._closed = False
        t0 = time.perf_counter()
        sb = int(static_batch) if static_batch else (1 if options.batch1_static else None)
        try:
            ir = self._static_ir(c, sb, required=bool(static_batch)) if sb else None
            if ir is not None:
                # a static batch cannot be split (its requests take exactly sb images)
                self._static = _Compiled(c.compile_model(str(ir), device, self._cfg))
                self._static_n = sb
            else:
                # compiling from the path lets a model-cache hit skip reading the ONNX file
                comp = c.compile_model(str(path), device, self._cfg)
                self._dynamic = _Compiled(comp, parallel=_parallel_requests(comp, options.performance_hint))
                self._static_n = None
        except RuntimeError as e:
            if base == "CPU":  # the CPU plugin is always there: the model itself is the problem
                from ..errors import ArtifactError

                raise ArtifactError(f"OpenVINO cannot load {path}: {e}") from e
            raise ProviderUnavailableError(f"OpenVINO could not compile {path.name} for {device}: {e}") from e
        first = self._static or self._dynamic
        self.inputs = [_spec(p, dynamic_batch=not static_batch) for p in first.compiled.inputs]
        self.outputs = [_spec(p, dynamic_batch=not static_batch) for p in first.compiled.outputs]
        self.load_seconds = time.perf_counter() - t0
        self.static_batch = int(static_batch) if static_batch else None
        try:
            self.threads = int(first.compiled.get_property("INFERENCE_NUM_THREADS")) if base == "CPU" else None
        except Exception:  # property not reported by this plugin
            self.threads = options.threads

    def _static_ir(self, c, batch: int, *, required: bool) -> Path | None:
        """A static-batch OpenVINO IR of the model, kept in the engine cache directory, so a
        later start compiles it straight from the model cache without reading the ONNX file.
        None when the model has dynamic non-batch dims (unless ``required``: then an error)."""
        xml = self.cache_dir / f"static-b{batch}.xml"
        marker = self.cache_dir / "dynamic-only"
        if xml.exists() and xml.with_suffix(".bin").exists():
            return xml
        if marker.exists() and not required:
            return None
        ov = import_openvino()
        model = c.read_model(str(self.path))
        if not all(not d.is_dynamic for p in model.inputs for d in list(p.get_partial_shape())[1:]):
            if required:
                raise InvalidOptionError(f"static_batch needs static non-batch input dims; "
                                         f"{self.path.name} has {[str(p.get_partial_shape()) for p in model.inputs]}")
            marker.touch()
            return None
        model.reshape({p.get_any_name(): [batch, *[int(d.get_length()) for d in
                                                   list(p.get_partial_shape())[1:]]]
                       for p in model.inputs})
        tmp = self.cache_dir / f".static-b{batch}.{os.getpid()}.{threading.get_ident()}.xml"
        # keep the weights as they are (save_model compresses to fp16 by default)
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
        return xml

    def _dynamic_model(self) -> _Compiled:
        with self._lock:
            if self._dynamic is None:
                comp = core().compile_model(str(self.path), self.device, self._cfg)
                self._dynamic = _Compiled(comp, parallel=_parallel_requests(comp, self._cfg.get("PERFORMANCE_HINT")))
            return self._dynamic

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._closed:
            raise RuntimeError("session is closed")
        n_out = len(self.outputs)
        n = len(next(iter(feeds.values())))
        if self._static is not None and n == self._static_n:
            return self._static.run(feeds, n_out)
        if not self.static_batch:
            return self._dynamic_model().run(feeds, n_out)
        # static-batch mode (NPU): run in chunks of the compiled batch, padding the last one
        b = self.static_batch
        outs: list[list[np.ndarray]] = []
        for s in range(0, n, b):
            chunk = {}
            for k, v in feeds.items():
                part = v[s:s + b]
                if len(part) < b:
                    part = np.concatenate([part, np.repeat(part[-1:], b - len(part), 0)])
                chunk[k] = part
            res = self._static.run(chunk, n_out)
            outs.append([r[:min(b, n - s)] for r in res])
        return [np.concatenate([o[i] for o in outs]) for i in range(n_out)]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_feeds({self.inputs[0].name: batch})[0]

    @property
    def parallel_requests(self) -> int:
        """Infer requests a batch is split across (THROUGHPUT hint: one per stream; else 1)."""
        return self._dynamic.parallel if self._dynamic is not None else 1

    def close(self) -> None:
        self._closed = True
        self._static = self._dynamic = None

    def describe(self) -> dict:
        d = super().describe()
        d.update(threads=self.threads, engine="openvino", cache_dir=str(self.cache_dir),
                 compiled_file=self.path.name, parallel_requests=self.parallel_requests,
                 static_batch=self.static_batch, batch1_static=self._static_n == 1 and not self.static_batch)
        return d
