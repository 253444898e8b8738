"""Engine selection, in one place: which engine, device, precision and batch size, and why.

Everything that turns "this artifact on this machine" into an engine session goes through here:
``edgeinfer.load``, ``edgeinfer bench`` (its measurement subprocesses included), the service and
the library scan. Nothing else builds engine options, reads ``tuning.json`` or the INT8 guard
record, so what the bench measures is what ``load`` runs.

- ``select``: the ``Selection`` record (engine, device, precision, batch size, reason).
  ``provider="auto"`` picks TensorRT > CUDA > OpenVINO GPU/NPU > the faster CPU engine; an
  explicitly requested engine that is missing is an error, never a silent fallback.
- ``tuning.json``: per machine, the bench's measurements, each keyed to the sha256 of the file
  it measured. A replaced file (``quantize --target openvino``) invalidates its measurement, and
  a bench over a subset of engines leaves the other measurements alone.
- ``int8_guard``: the accuracy-guard record exactly as ``edgeinfer quantize`` writes it.
- ``engine_options``: the typed ``SessionOptions`` for a selection (TensorRT profile, cache key,
  threads, device).

Torch-free; engine libraries are imported only by the probes in ``backends.providers``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..backends.base import PROVIDERS, SessionOptions
from ..errors import InvalidOptionError, ProviderUnavailableError

PRECISIONS = ("fp32", "fp16", "int8")
TUNING_FILE = "tuning.json"
TUNING_SCHEMA = "edgeinfer-tuning/2"

DEFAULT_GPU_BATCH_SIZE = 16  # GPUs (cuda, tensorrt, OpenVINO GPU/NPU): batching pays off there
DEFAULT_CPU_BATCH_SIZE = 1   # CPU engines: larger batches bought little throughput but
                             # multiplied peak RSS (benchmarks/results/runtime_footprint.md)
TRT_MIN_MAX_BATCH = 32       # TensorRT profile: one engine serves batches 1..32 (or the batch size)


@dataclass(frozen=True)
class Selection:
    """What runs an artifact here, and why. ``reason`` reads "provider: ...; precision: ..."."""
    provider: str                  # cpu | cuda | tensorrt | openvino
    device: str                    # CPU, cuda:0, GPU.0, NPU...
    precision: str                 # fp32 | fp16 | int8
    reason: str
    batch_size: int = DEFAULT_CPU_BATCH_SIZE   # images per engine call (batch policy)
    tuned: bool = False            # came from this machine's tuning.json measurements
    threads: int | None = None     # CPU threads the tuned measurement used (None: automatic)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.provider}/{self.device}/{self.precision} ({self.reason})"


def default_batch_size(provider: str, device: str | None) -> int:
    """The batch policy: 1 on CPU engines (footprint), 16 on GPUs and NPUs (throughput)."""
    on_cpu = provider == "cpu" or (provider == "openvino"
                                   and str(device or "CPU").upper().startswith("CPU"))
    return DEFAULT_CPU_BATCH_SIZE if on_cpu else DEFAULT_GPU_BATCH_SIZE


# ------------------------------------------------------------------ the INT8 guard record
def budget_drop(fidelity: Mapping[str, Any], kind: str) -> float:
    """How much a converted file lost against FP32, in the budget's unit: points of top-1
    agreement for a ``classifier`` budget, loss of mean cosine for an ``embedding`` budget.
    (The quantizer's guard uses this too, so writer and reader cannot disagree.)"""
    if kind == "classifier" and fidelity.get("top1_agreement") is not None:
        return round((1.0 - fidelity["top1_agreement"]) * 100.0, 4)
    return round(1.0 - fidelity["cosine_mean"], 6)


def int8_guard(entry: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether an INT8 file's accuracy guard passed, read as ``edgeinfer quantize`` writes it:
    ``entry["quantization"]["budget"]`` (kind, max_drop, text) and ``entry["fidelity"]`` (the
    hold-out fidelity to FP32). The recorded numbers are checked against the recorded budget, so
    a hand-edited or foreign entry cannot claim a pass it did not measure.
    """
    if not entry:
        return False, "no INT8 file"
    budget = (entry.get("quantization") or {}).get("budget")
    fid = entry.get("fidelity")
    if not isinstance(budget, dict) or not isinstance(fid, dict):
        return True, "INT8 file has no guard record (not made by `edgeinfer quantize`)"
    try:
        lost = budget_drop(fid, budget["kind"])
        ok = lost <= float(budget["max_drop"]) + 1e-9
    except (KeyError, TypeError, ValueError):
        return False, "INT8 guard record is unreadable; re-run `edgeinfer quantize`"
    text = budget.get("text") or f"max drop {budget['max_drop']}"
    return ok, f"INT8 accuracy guard {'passed' if ok else 'FAILED'} ({text}; drop {lost})"


# ------------------------------------------------------------------ tuning.json
def engine_versions() -> list[str]:
    """Installed engine versions; a new engine version gets new tuning (it may be faster)."""
    from importlib import metadata

    out = []
    for name in ("onnxruntime", "onnxruntime-gpu", "openvino"):
        try:
            out.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def tuning_key() -> str:
    """This machine + these engine versions: the key of its section in ``tuning.json``."""
    from ..backends.hw import machine_key

    return machine_key(*engine_versions())


def _artifact_dir(artifact: Any) -> Path:
    return Path(getattr(artifact, "dir", artifact))


def _read_tuning_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("schema") == TUNING_SCHEMA else {}


def read_tuning(artifact: Any) -> dict[str, dict]:
    """This machine's measurements in ``<artifact>/tuning.json``: {"provider/precision": record}.
    Empty when there are none (or the file is from an older edgeinfer: re-run the bench)."""
    data = _read_tuning_file(_artifact_dir(artifact) / TUNING_FILE)
    machine = (data.get("machines") or {}).get(tuning_key()) or {}
    m = machine.get("measurements")
    return {k: v for k, v in m.items() if isinstance(v, dict)} if isinstance(m, dict) else {}


def record_tuning(artifact: Any, measurements: Iterable[Mapping[str, Any]], *,
                  machine: str = "") -> Path:
    """Merge measurements into ``<artifact>/tuning.json`` for this machine (atomic write).

    Each measurement: provider, precision, sha256 (of the measured file), latency_ms, batch,
    threads, device, fidelity_pass. Only the configurations measured now are replaced; others
    keep their earlier measurement.
    """
    from .artifact import atomic_write_json

    path = _artifact_dir(artifact) / TUNING_FILE
    data = _read_tuning_file(path) or {"schema": TUNING_SCHEMA, "machines": {}}
    key = tuning_key()
    section = data["machines"].setdefault(key, {"measurements": {}})
    section["machine"] = machine or section.get("machine", "")
    section["engines"] = engine_versions()
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    for m in measurements:
        rec = dict(m)
        rec.setdefault("measured", now)
        # a CLIP text tower's measurement (tower="text") lives beside the image tower's under
        # "text:provider/precision"; the image pick never reads it (see tuned_pick)
        prefix = f"{rec['tower']}:" if rec.get("tower", "image") != "image" else ""
        section["measurements"][f"{prefix}{rec['provider']}/{rec['precision']}"] = rec
    atomic_write_json(path, data)
    return path


def tuned_pick(artifact: Any, *, usable: Callable[[str], tuple[bool, str]],
               provider: str | None = None) -> tuple[dict | None, list[str]]:
    """The fastest valid measurement whose engine is usable here, and notes on what was passed
    over (stale: measured on a file since replaced; unusable: the engine is not installed).

    Valid: measured on the file the artifact has now (same sha256), and FP32 or within the
    bench's fidelity guard. ``provider`` restricts the pick to one engine.
    """
    notes: list[str] = []
    path = _artifact_dir(artifact) / TUNING_FILE
    if path.is_file() and not _read_tuning_file(path):
        notes.append(f"{TUNING_FILE} is unreadable or from an older edgeinfer (re-run `edgeinfer bench`)")
    cands = []
    for key, m in read_tuning(artifact).items():
        prec, prov = m.get("precision"), m.get("provider")
        if provider is not None and prov != provider:
            continue
        if m.get("tower", "image") != "image":   # a text-tower measurement (text_tower_pick)
            continue
        try:
            sha = artifact.entry(prec).get("sha256")
        except Exception:  # the precision's file was removed from the artifact
            notes.append(f"{key} was measured on a file the artifact no longer has")
            continue
        if not sha or m.get("sha256") != sha:
            notes.append(f"{key} was measured on an earlier {prec} file (re-run `edgeinfer bench`)")
            continue
        if prec != "fp32" and not m.get("fidelity_pass"):
            continue
        if isinstance(m.get("latency_ms"), (int, float)):
            cands.append(m)
    for m in sorted(cands, key=lambda m: m["latency_ms"]):
        ok, why = usable(m["provider"])
        if ok:
            return m, notes
        notes.append(f"measured fastest {m['provider']}/{m['precision']} ({m['latency_ms']} ms) "
                     f"is not usable here: {why}")
    return None, notes


# ------------------------------------------------------------------ select
def parse_provider(provider: str, device: str | None = None) -> tuple[str, str | None]:
    """``provider`` (optionally ``openvino:GPU`` / ``cuda:1``) and ``device`` -> (name, device).
    The one place a device suffix is unpacked."""
    valid = ("auto", *PROVIDERS)
    if not isinstance(provider, str):
        raise InvalidOptionError.choice("provider", provider, valid)
    name, _, dev = provider.partition(":")
    name = name.strip().lower()
    if name not in valid:
        raise InvalidOptionError.choice("provider", provider, valid)
    if dev and device is not None and dev != str(device):
        raise InvalidOptionError(f"provider {provider!r} and device={device!r} disagree; give one")
    dev = dev or (None if device is None else str(device))
    if dev is None:
        return name, None
    if name == "openvino":
        return name, dev.upper()
    if name in ("cuda", "tensorrt"):
        idx = dev.split(":")[-1]
        if not idx.isdigit():
            raise InvalidOptionError(f"the device for {name} is a GPU index like 0 or 'cuda:1' "
                                     f"(got {dev!r})")
        return name, f"cuda:{idx}"
    if name == "cpu" and dev.upper() == "CPU":
        return name, None
    raise InvalidOptionError(f"device={dev!r} needs an explicit provider: 'openvino' "
                             f"(CPU/GPU/NPU/AUTO) or 'cuda'/'tensorrt' (a GPU index)")


def _auto_precision(provider: str, device: str, have: list[str], artifact: Any,
                    cpu: dict) -> tuple[str, str]:
    gpu = provider in ("cuda", "tensorrt") or (provider == "openvino" and device.startswith("GPU"))
    npu = provider == "openvino" and device.startswith("NPU")
    fast_int8 = cpu["int8_tier"] in ("amx", "vnni", "arm-dotprod")
    if "int8" in have and (npu or provider == "tensorrt" or (not gpu and fast_int8)):
        entry = artifact.files().get("int8") if artifact is not None else None
        ok, why = int8_guard(entry)
        if ok:
            where = "NPU" if npu else ("TensorRT" if provider == "tensorrt" else
                                      f"CPU with fast INT8 ({cpu['int8_tier']})")
            return "int8", f"int8 on {where}; {why}"
    if (gpu or npu) and "fp16" in have:
        return "fp16", "fp16 on a GPU/NPU"
    if "fp32" in have:
        why = "fp32 (no fast INT8 on this CPU)" if not gpu and not fast_int8 and "int8" in have else "fp32"
        return "fp32", why
    if have:
        return have[0], f"{have[0]} (the only precision in the artifact)"
    return "fp32", "fp32 (artifact lists no files)"


def select(provider: str = "auto", *, artifact: Any = None, precision: str = "auto",
           device: str | None = None, statuses: list | None = None,
           cpu: dict | None = None) -> "Selection":
    """Choose engine, device, precision and batch size, with the reason.

    ``artifact`` (an ``Artifact``) gives the available precisions and the tuning measurements.
    ``statuses`` and ``cpu`` are for tests (default: probes of this machine, done lazily, so an
    explicit ``provider="cpu"`` never imports openvino).
    """
    from ..backends import providers as probes
    from ..backends.hw import cpu_info

    name, dev = parse_provider(provider, device)
    if precision not in ("auto", *PRECISIONS):
        raise InvalidOptionError.choice("precision", precision, ("auto", *PRECISIONS))
    cpu = cpu or cpu_info()
    have = artifact.precisions() if artifact is not None else list(PRECISIONS)
    if precision != "auto" and artifact is not None and precision not in have:
        artifact.entry(precision)  # raises ArtifactError saying which precisions exist
    known = {s.name: s for s in statuses} if statuses is not None else {}

    def status(p: str):
        if p not in known:
            known[p] = probes.detect_one(p)
        return known[p]

    def usable(p: str) -> tuple[bool, str]:
        if p == "openvino" and "openvino" not in known and not probes.openvino_installed():
            return False, "the openvino package is not installed"
        s = status(p)
        return s.available, s.reason

    notes: list[str] = []
    pick = None
    if name == "auto":
        chosen, dev, preason = _auto_provider(status, cpu, known=set(known))
        if chosen in ("cpu", "openvino") and dev == "CPU" and artifact is not None:
            # a CPU engine: this machine's measurements beat the heuristic
            pick, notes = tuned_pick(artifact, usable=lambda p: (False, "not a CPU engine")
                                     if p not in ("cpu", "openvino") else usable(p))
            if pick is not None:
                chosen = pick["provider"]
                preason = (f"tuned on this machine: {chosen}/{pick['precision']} measured "
                           f"fastest ({pick['latency_ms']} ms, {pick.get('measured', '?')})")
    else:
        s = status(name)
        if not s.available:
            raise ProviderUnavailableError(f"provider {name!r} is not available: {s.reason}. "
                                           f"Install: {s.install}")
        chosen = name
        if name == "openvino":
            dev = dev or "CPU"
            ok = [d for d in s.device_status if d.device.split(".")[0] == dev.split(".")[0]]
            if dev != "AUTO" and not any(d.available for d in ok):
                why = ok[0].reason if ok else f"available: {', '.join(s.devices)}"
                raise ProviderUnavailableError(f"OpenVINO device {dev} is not available: {why}")
        elif name in ("cuda", "tensorrt"):
            dev = dev or "cuda:0"
        else:
            dev = "CPU"
        preason = "requested"
        if artifact is not None and precision == "auto":
            pick, notes = tuned_pick(artifact, usable=usable, provider=name)

    if precision != "auto":
        prec, why = precision, "requested"
    elif pick is not None and pick["provider"] == chosen and pick["precision"] in have:
        prec = pick["precision"]
        why = (f"{prec}, from the same measurement" if name == "auto" else
               f"tuned on this machine ({pick['latency_ms']} ms, measured {pick.get('measured', '?')})")
    else:
        pick = None
        prec, why = _auto_precision(chosen, dev, have, artifact, cpu)
    reason = f"provider: {preason}; precision: {why}"
    if notes:
        reason += "; " + "; ".join(notes)
    return Selection(chosen, dev, prec, reason, batch_size=default_batch_size(chosen, dev),
                     tuned=pick is not None, threads=pick.get("threads") if pick else None)


def _auto_provider(status, cpu: dict, known: set = frozenset()) -> tuple[str, str, str]:
    from ..backends import providers as probes

    # without an NVIDIA driver neither GPU provider can work: don't even import onnxruntime's
    # GPU probes (an OpenVINO process then stays free of them: less memory, faster start)
    if known & {"tensorrt", "cuda"} or probes.nvidia_driver()[0]:
        for p in ("tensorrt", "cuda"):
            s = status(p)
            if s.available:
                return p, (s.devices or ["cuda:0"])[0], f"{p}: {s.reason}"
    skipped = []
    ov_installed = status("openvino").available if "openvino" in known \
        else probes.openvino_installed()
    # only ask OpenVINO about GPU/NPU when a device node suggests one (importing it costs ~0.3 s)
    if ov_installed and (probes.intel_gpu_present() or probes.npu_present()):
        s = status("openvino")
        for kind in ("GPU", "NPU"):
            devs = [d for d in s.devices if d.startswith(kind)]
            if devs:
                return "openvino", devs[0], f"OpenVINO {devs[0]} (Intel {kind})"
    else:
        skipped.append("no NVIDIA GPU, no Intel GPU/NPU")
    x86 = not cpu["isa"]["arm"]
    intel = x86 and cpu.get("vendor") == "GenuineIntel"
    pre = f"{'; '.join(skipped) + '; ' if skipped else ''}"
    if intel and ov_installed:
        return "openvino", "CPU", (f"{pre}heuristic: OpenVINO CPU on an Intel CPU (run "
                                   f"`edgeinfer bench` to measure this model here)")
    why = ("ARM CPU" if not x86 else "openvino not installed" if not ov_installed
           else f"{cpu.get('vendor') or 'non-Intel'} CPU: OpenVINO not reliably faster, ORT uses "
                f"less memory; run `edgeinfer bench` to measure this model here")
    if not status("cpu").available:
        raise ProviderUnavailableError(f"no usable engine: {status('cpu').reason}. "
                                       f"Install: {status('cpu').install}")
    return "cpu", "CPU", f"{pre}heuristic: ONNX Runtime CPU ({why})"


# ------------------------------------------------------------------ the CLIP text tower
def text_tower_pick(selection: Selection, artifact: Any, *, cpu: dict | None = None,
                    usable: Callable[[str], tuple[bool, str]] | None = None
                    ) -> tuple[str, str, str]:
    """(provider, precision, reason) for the CLIP text tower of a model that runs ``selection``.

    A search query is one prompt of ~10 tokens at batch 1: the tower then reads all its weights
    once per query and is bound by memory bandwidth, so its best engine and precision need not be
    the image tower's (benchmarks/results/search.md: on an AVX2 EPYC, ONNX Runtime FP32 ~20 ms,
    OpenVINO FP32 ~44 ms, ONNX Runtime dynamic INT8 ~7 ms). In order:

    1. this machine's text-tower measurements in ``tuning.json`` (``record_tuning`` with
       ``tower="text"``), measured on the text file the artifact has now and, for FP16/INT8,
       within the fidelity guard: the fastest whose engine is usable here;
    2. an explicitly requested engine, or a GPU/NPU selection: the image tower's engine;
    3. a CPU selection: ONNX Runtime CPU (OpenVINO CPU only on Intel CPUs, as for images), with
       the text INT8 file when its accuracy guard passed (dynamic INT8 weights: a quarter of the
       bytes to read per query) and the engine is ONNX Runtime (the file's quantisation is
       ONNX Runtime's dynamic MatMulInteger), else FP32 (FP16 is slower on CPUs).
    """
    from ..backends.hw import cpu_info

    have = artifact.precisions("text") if artifact is not None else []
    if not have:
        return selection.provider, "fp32", "the artifact has no text tower files"
    if usable is None:
        def usable(p: str) -> tuple[bool, str]:
            if p == selection.provider:
                return True, "the image tower's engine"
            from ..backends import providers as probes

            st = probes.detect_one(p)
            return st.available, st.reason
    on_cpu = selection.device in (None, "CPU") and selection.provider in ("cpu", "openvino")
    explicit = selection.reason.startswith("provider: requested")   # select()'s wording
    notes: list[str] = []
    if on_cpu and not explicit:
        best = None
        for key, m in read_tuning(artifact).items():
            if m.get("tower") != "text" or m.get("provider") not in ("cpu", "openvino"):
                continue
            prec = m.get("precision")
            if prec not in have or m.get("sha256") != artifact.entry(prec, "text").get("sha256"):
                notes.append(f"{key} was measured on an earlier text file")
                continue
            if (prec != "fp32" and not m.get("fidelity_pass")) or \
                    not isinstance(m.get("latency_ms"), (int, float)):
                continue
            ok, why = usable(m["provider"])
            if not ok:
                notes.append(f"{key} is not usable here: {why}")
            elif best is None or m["latency_ms"] < best["latency_ms"]:
                best = m
        if best is not None:
            return best["provider"], best["precision"], "; ".join(
                [f"text tower tuned on this machine: {best['provider']}/{best['precision']} measured "
                 f"fastest ({best['latency_ms']} ms)", *notes])
    if not on_cpu or explicit:
        prec = selection.precision if selection.precision in have else "fp32"
        why = "requested engine" if explicit else "GPU/NPU: the image tower's engine"
        return selection.provider, prec, f"text tower: {why}, {prec}"
    cpu = cpu or cpu_info()
    intel = not cpu["isa"]["arm"] and cpu.get("vendor") == "GenuineIntel"
    provider = selection.provider if intel else "cpu"
    if provider != selection.provider and not usable(provider)[0]:
        provider = selection.provider
    if intel:
        why = "heuristic: the image tower's engine on an Intel CPU"
    elif provider == "cpu":
        why = ("heuristic: ONNX Runtime CPU (measured faster than OpenVINO for the batch-1 text "
               "tower on a non-Intel CPU)")
    else:
        why = "the image tower's engine (ONNX Runtime CPU is not usable here)"
    prec = "fp32" if "fp32" in have else have[0]
    if provider == "cpu" and "int8" in have:
        ok, guard = _text_int8_guard(artifact.entry("int8", "text"))
        if ok:
            prec = "int8"
            why += f"; int8 (dynamic weights: memory-bound at batch 1; {guard})"
    return provider, prec, "; ".join([f"text tower {why}", *notes])


def _text_int8_guard(entry: Mapping[str, Any]) -> tuple[bool, str]:
    """The text INT8 file's guard: ``int8_guard`` when it has a budget record; the text tower's
    quantizer records only the fidelity (it refuses a file under cosine 0.99), so that is read."""
    if isinstance((entry.get("quantization") or {}).get("budget"), dict):
        return int8_guard(entry)
    fid = entry.get("fidelity") or {}
    c = fid.get("cosine_mean")
    if not isinstance(c, (int, float)):
        return False, "text INT8 file has no fidelity record; re-run `edgeinfer quantize --int8`"
    ok = 1.0 - c <= 0.01 + 1e-9
    return ok, f"text INT8 cosine to FP32 {c:.4f} on {fid.get('prompts', '?')} prompts " \
               f"({'>=' if ok else '<'} 0.99)"


# ------------------------------------------------------------------ engine options
_OVERRIDABLE = {f.name for f in fields(SessionOptions)} - {"precision", "model_sha256", "device"}


def engine_options(selection: Selection, artifact: Any, *, tower: str = "image",
                   precision: str | None = None, threads: int | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   performance_hint: str | None = None, batch_size: int | None = None,
                   overrides: Mapping[str, Any] | None = None) -> SessionOptions:
    """The engine options for ``selection`` on one file of ``artifact``.

    ``precision`` is the file's precision when it differs from the selection's (a CLIP text tower
    that has only fp32). TensorRT gets a min/opt/max batch profile around the batch size, so one
    engine serves batches 1..max. ``overrides``: more ``SessionOptions`` fields by name (advanced:
    ``static_batch``, ``batch1_static``, ``provider_options``, ``compile_config``...).
    """
    prec = precision or selection.precision
    entry = artifact.entry(prec, tower) if artifact is not None else {}
    bad = sorted(set(overrides or ()) - _OVERRIDABLE)
    if bad:
        raise InvalidOptionError(f"unknown engine option(s) {', '.join(bad)}; valid: "
                                 f"{', '.join(sorted(_OVERRIDABLE))}")
    if threads is not None and int(threads) < 1:
        raise InvalidOptionError(f"threads must be >= 1 (got {threads}); None means automatic")
    batch = int(batch_size or selection.batch_size)
    input_shapes = opt_batch = max_batch = None
    if selection.provider == "tensorrt" and artifact is not None:
        input_shapes = _input_shapes(artifact, entry, tower)
        max_batch = max(TRT_MIN_MAX_BATCH, batch)
        opt_batch = min(batch, max_batch)
    opts = SessionOptions(
        threads=threads or selection.threads,
        device=selection.device if selection.provider != "cpu" else None,
        precision=prec, cache_dir=None if cache_dir is None else str(cache_dir),
        model_sha256=entry.get("sha256"), input_shapes=input_shapes,
        opt_batch=opt_batch, max_batch=max_batch, performance_hint=performance_hint)
    return replace(opts, **dict(overrides or {}))


def _input_shapes(artifact: Any, entry: Mapping[str, Any], tower: str) -> dict | None:
    """Per-sample input shapes for TensorRT's profile, from the manifest's input records (the
    image tower's single input falls back to the preprocessing size)."""
    shapes = {}
    for spec in entry.get("inputs") or []:
        dims = list(spec.get("shape") or [])[1:]
        if dims and all(isinstance(d, int) for d in dims):
            shapes[spec["name"]] = tuple(dims)
    if not shapes and tower == "image":
        name = ((entry.get("inputs") or [{}])[0]).get("name", "pixel_values")
        shapes[name] = tuple(artifact.preprocess["input_size"])
    return shapes or None
