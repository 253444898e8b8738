"""Which engines are usable here (``detect``) and which one + which precision to use (``select``).

Selection is explicit and explainable (DESIGN.md): ``provider="auto"`` picks
TensorRT > CUDA > OpenVINO GPU/NPU > the faster CPU engine for this model, and the returned
``Selection`` carries the reason. A requested engine that is missing raises
``ProviderUnavailableError`` naming what to install; there is never a silent fallback.

The faster CPU engine: ``<artifact>/tuning.json`` for this machine (written by
``edgeinfer bench``) when present; otherwise a heuristic: OpenVINO CPU on Intel x86 CPUs when the
openvino package is installed (OpenVINO's CPU plugin is Intel's own, tuned for their VNNI/AMX
kernels), ONNX Runtime CPU everywhere else (AMD, ARM, no openvino). Measured on an AMD EPYC Zen 4
(2 shared cores, random weights, batch 1, interleaved runs, heavily loaded so noisy) there was no
consistent winner: ORT/OpenVINO latency ratio 0.89 (mobilevit_s fp32), 1.09 (mobilevit_s int8),
0.67 (mobilenetv3_large_100), 0.97 (resnet18) with 1 thread; an earlier, quieter run with 2
threads had OpenVINO ahead on mobilevit_s (57 vs 108 ms). Where speed is a toss-up ORT wins on
cost: peak RSS 116 vs ~180 MB (mobilevit_s INT8, load + classify) and a faster cold start.

``precision="auto"``: the tuned precision when present; else int8 on CPUs/NPUs with fast INT8
dot products (VNNI / AMX / ARM dotprod) when the artifact has an INT8 file whose accuracy guard
did not fail, fp16 on GPUs when the artifact has an FP16 file, fp32 otherwise.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError, ProviderUnavailableError
from .base import PROVIDERS
from .hw import cpu_info, machine_key

PRECISIONS = ("fp32", "fp16", "int8")
TUNING_FILE = "tuning.json"

INSTALL = {
    "cpu": "pip install onnxruntime",
    "cuda": "pip uninstall -y onnxruntime && pip install 'edgeinfer[gpu]'   (onnxruntime-gpu; CUDA 12 + cuDNN 9)",
    "tensorrt": "pip uninstall -y onnxruntime && pip install 'edgeinfer[gpu]' tensorrt   (onnxruntime-gpu + TensorRT 10)",
    "openvino": "pip install 'edgeinfer[openvino]'   (openvino)",
}


@dataclass
class DeviceStatus:
    device: str
    available: bool
    reason: str


@dataclass
class ProviderStatus:
    name: str                      # public provider name: cpu | cuda | tensorrt | openvino
    available: bool
    reason: str
    devices: list[str] = field(default_factory=list)   # usable devices
    engine: str = ""               # library that implements it
    version: str | None = None
    install: str = ""              # what to pip install when it is missing
    device_status: list[DeviceStatus] = field(default_factory=list)  # every device, usable or not

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    provider: str
    device: str
    precision: str
    reason: str
    tuned: bool = False            # came from tuning.json measured on this machine
    threads: int | None = None     # from tuning.json, when measured

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.provider}/{self.device}/{self.precision} ({self.reason})"


# ------------------------------------------------------------------ probes (cheap, no heavy imports)
def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def onnxruntime_dists() -> dict[str, str]:
    """Installed onnxruntime distributions (they all provide the same ``onnxruntime`` module)."""
    out = {}
    for d in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
              "onnxruntime-silicon", "onnxruntime-qnn"):
        v = _dist_version(d)
        if v:
            out[d] = v
    return out


def nvidia_driver() -> tuple[bool, str]:
    """(present, how we know) without importing CUDA."""
    if os.path.exists("/proc/driver/nvidia/version"):
        try:
            line = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
        except (OSError, IndexError):
            line = "present"
        return True, f"NVIDIA driver: {line.strip()[:80]}"
    if os.path.exists("/etc/nv_tegra_release"):
        return True, "NVIDIA Jetson (L4T) driver"
    if shutil.which("nvidia-smi"):
        return True, "nvidia-smi found"
    return False, "no NVIDIA driver (/proc/driver/nvidia/version and nvidia-smi absent)"


@lru_cache(maxsize=1)
def nvidia_gpus() -> tuple[str, ...]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ()
    try:
        r = subprocess.run([smi, "--query-gpu=index,name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(f"cuda:{ln.split(',', 1)[0].strip()} {ln.split(',', 1)[-1].strip()}"
                 for ln in r.stdout.splitlines() if ln.strip())


def tensorrt_libs() -> tuple[bool, str]:
    for mod in ("tensorrt", "tensorrt_libs", "tensorrt_bindings"):
        try:
            if importlib.util.find_spec(mod) is not None:
                return True, f"TensorRT python package {mod!r} found"
        except (ImportError, ValueError):
            continue
    import ctypes.util

    if ctypes.util.find_library("nvinfer"):
        return True, "libnvinfer found"
    for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if d and glob.glob(os.path.join(d, "libnvinfer.so*")):
            return True, f"libnvinfer in {d}"
    return False, "TensorRT libraries not found (pip install tensorrt)"


def intel_gpu_present() -> bool:
    """An Intel GPU DRM device (vendor 0x8086) exists; says nothing about its compute runtime."""
    for vendor in glob.glob("/sys/class/drm/card*/device/vendor"):
        try:
            if Path(vendor).read_text().strip().lower() == "0x8086":
                return True
        except OSError:
            continue
    return False


def npu_present() -> bool:
    return bool(glob.glob("/dev/accel/accel*"))


def openvino_installed() -> bool:
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


# ------------------------------------------------------------------ detection
def _detect_ort() -> list[ProviderStatus]:
    dists = onnxruntime_dists()
    clobber = ""
    if len(dists) > 1:
        clobber = (f" WARNING: several onnxruntime packages are installed ({', '.join(dists)}); "
                   f"they overwrite each other's files. Keep only one (see backends/README.md).")
    try:
        import onnxruntime as ort
        eps = list(ort.get_available_providers())
        ver = ort.__version__
    except ImportError:
        return [ProviderStatus(p, False, "onnxruntime is not installed" + clobber, [],
                               "onnxruntime", None, INSTALL[p],
                               [DeviceStatus("CPU" if p == "cpu" else "GPU", False, "onnxruntime is not installed")])
                for p in ("cpu", "cuda", "tensorrt")]
    out = [ProviderStatus("cpu", "CPUExecutionProvider" in eps,
                          f"onnxruntime {ver} ({'/'.join(dists) or 'onnxruntime'}) CPUExecutionProvider"
                          + clobber, ["CPU"], "onnxruntime", ver, INSTALL["cpu"],
                          [DeviceStatus("CPU", True, "always")])]
    drv, drv_why = nvidia_driver()
    gpus = list(nvidia_gpus()) if drv else []
    for p, ep in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        reasons = []
        ok = True
        if ep not in eps:
            ok = False
            reasons.append(f"this onnxruntime has no {ep} (install onnxruntime-gpu instead of onnxruntime)")
        if not drv:
            ok = False
            reasons.append(drv_why)
        if p == "tensorrt":
            trt, trt_why = tensorrt_libs()
            if not trt:
                ok = False
            reasons.append(trt_why)
        if ok:
            reasons.insert(0, f"{ep} + {drv_why}")
        devs = [g.split(" ")[0] for g in gpus] or (["cuda:0"] if ok else [])
        out.append(ProviderStatus(p, ok, "; ".join(reasons) + clobber, devs if ok else [],
                                  "onnxruntime", ver, INSTALL[p],
                                  [DeviceStatus(g, ok, "; ".join(reasons)) for g in (gpus or ["GPU"])]))
    return out


def _detect_openvino() -> ProviderStatus:
    if not openvino_installed():
        return ProviderStatus("openvino", False, "openvino package is not installed", [], "openvino",
                              None, INSTALL["openvino"],
                              [DeviceStatus(d, False, "openvino package is not installed")
                               for d in ("CPU", "GPU", "NPU")])
    try:
        from .openvino import available_devices, openvino_version

        devs = available_devices()
        ver = openvino_version()
    except Exception as e:  # broken install: report, don't crash `edgeinfer providers`
        return ProviderStatus("openvino", False, f"openvino failed to initialise: {e}", [],
                              "openvino", None, INSTALL["openvino"])
    bases = {d.split(".")[0] for d in devs}
    st = []
    st.append(DeviceStatus("CPU", "CPU" in bases, "OpenVINO CPU plugin" if "CPU" in bases
                           else "CPU plugin not reported (unsupported CPU?)"))
    gpu_names = [d for d in devs if d.startswith("GPU")]
    if gpu_names:
        for g in gpu_names:
            st.append(DeviceStatus(g, True, "Intel GPU with OpenVINO GPU plugin"))
    elif intel_gpu_present():
        st.append(DeviceStatus("GPU", False, "Intel GPU present but OpenVINO does not see it: install "
                                             "its compute runtime (intel-opencl-icd / level-zero)"))
    else:
        st.append(DeviceStatus("GPU", False, "no Intel GPU device"))
    if "NPU" in bases:
        st.append(DeviceStatus("NPU", True, "Intel NPU with OpenVINO NPU plugin"))
    elif npu_present():
        st.append(DeviceStatus("NPU", False, "NPU device node present but OpenVINO does not see it "
                                             "(install the intel_vpu driver / NPU plugin)"))
    else:
        st.append(DeviceStatus("NPU", False, "no NPU device (/dev/accel absent)"))
    return ProviderStatus("openvino", bool(devs), f"openvino {ver}: devices {', '.join(devs) or 'none'}",
                          devs, "openvino", ver, INSTALL["openvino"], st)


def detect() -> list[ProviderStatus]:
    """Every engine, available or not, with the reason (imports onnxruntime and openvino)."""
    return [*_detect_ort(), _detect_openvino()]


def status_map(statuses: list[ProviderStatus] | None = None) -> dict[str, ProviderStatus]:
    return {s.name: s for s in (statuses if statuses is not None else detect())}


# ------------------------------------------------------------------ tuning.json
def tuning_key() -> str:
    """The machine key under which ``edgeinfer bench`` records tuning for this machine."""
    return machine_key()


def read_tuning(artifact: Any) -> dict | None:
    """This machine's entry of ``<artifact>/tuning.json``, or None."""
    d = getattr(artifact, "dir", artifact)
    if d is None:
        return None
    p = Path(d) / TUNING_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    entry = data.get(tuning_key()) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else None


# ------------------------------------------------------------------ selection
def _validate(provider: str, precision: str) -> tuple[str, str | None]:
    """-> (provider, openvino device or None). Accepts 'openvino:GPU' style device suffixes."""
    valid_p = ("auto", *PROVIDERS)
    valid_x = ("auto", *PRECISIONS)
    if not isinstance(provider, str):
        raise InvalidOptionError.choice("provider", provider, valid_p)
    name, _, dev = provider.partition(":")
    name = name.strip().lower()
    if name not in valid_p:
        raise InvalidOptionError.choice("provider", provider, valid_p)
    if precision not in valid_x:
        raise InvalidOptionError.choice("precision", precision, valid_x)
    if dev and name != "openvino" and not (name in ("cuda", "tensorrt") and dev.isdigit()):
        raise InvalidOptionError(f"provider {provider!r}: a device suffix is valid for openvino "
                                 f"(openvino:CPU|GPU|NPU|AUTO) or a GPU index for cuda/tensorrt")
    return name, (dev.upper() if name == "openvino" else dev) or None


def int8_guard_ok(entry: dict | None) -> tuple[bool, str]:
    """Whether an INT8 file's recorded accuracy guard passed (missing record: allowed, said so)."""
    if not entry:
        return False, "no INT8 file"
    for key in ("guard", "accuracy_guard", "fidelity", "quantization"):
        v = entry.get(key)
        if isinstance(v, dict):
            for k in ("passed", "within_budget", "ok"):
                if k in v:
                    return bool(v[k]), f"INT8 accuracy guard {'passed' if v[k] else 'failed'}"
    budget = (entry.get("quantization") or {}).get("budget")
    if isinstance(budget, dict) and budget.get("text"):
        # `edgeinfer quantize` only adds an INT8 file that met its budget
        return True, f"INT8 accuracy guard passed at quantization ({budget['text']})"
    return True, "INT8 file has no guard record"


def _auto_precision(provider: str, device: str, have: list[str], artifact: Any,
                    cpu: dict) -> tuple[str, str]:
    gpu = provider in ("cuda", "tensorrt") or (provider == "openvino" and device.startswith("GPU"))
    npu = provider == "openvino" and device.startswith("NPU")
    fast_int8 = cpu["int8_tier"] in ("amx", "vnni", "arm-dotprod")
    if "int8" in have and (npu or provider == "tensorrt" or (not gpu and fast_int8)):
        entry = artifact.files().get("int8") if artifact is not None else None
        ok, why = int8_guard_ok(entry)
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
           statuses: list[ProviderStatus] | None = None, cpu: dict | None = None) -> Selection:
    """Choose provider, device and precision, with the reason.

    ``artifact`` (an ``Artifact``) gives the available precisions and tuning.json; ``statuses``
    and ``cpu`` are for tests (default: ``detect``-style probes of this machine, done lazily so
    that an explicit ``provider="cpu"`` never imports openvino).
    """
    name, dev = _validate(provider, precision)
    cpu = cpu or cpu_info()
    have = artifact.precisions() if artifact is not None else list(PRECISIONS)
    if precision != "auto" and artifact is not None and precision not in have:
        artifact.entry(precision)  # raises ArtifactError saying which precisions exist

    tuning = read_tuning(artifact) if artifact is not None else None
    st = status_map(statuses) if statuses is not None else None

    def status(p: str) -> ProviderStatus:
        nonlocal st
        if st is not None and p in st:
            return st[p]
        if p == "openvino":
            s = _detect_openvino()
        else:
            s = {x.name: x for x in _detect_ort()}[p]
        st = {**(st or {}), p: s}
        return s

    reason_prefix = ""
    if name == "auto":
        chosen, device, reason_prefix = _auto_provider(status, tuning, cpu, known=set(st or ()))
        tuned_provider = reason_prefix.startswith("tuned")
    else:
        s = status(name)
        if not s.available:
            raise ProviderUnavailableError(f"provider {name!r} is not available: {s.reason}. "
                                           f"Install: {s.install}")
        chosen = name
        if name == "openvino":
            device = dev or "CPU"
            ok = [d for d in s.device_status if d.device.split(".")[0] == device.split(".")[0]]
            if device != "AUTO" and not any(d.available for d in ok):
                why = ok[0].reason if ok else f"available: {', '.join(s.devices)}"
                raise ProviderUnavailableError(f"OpenVINO device {device} is not available: {why}")
        elif name in ("cuda", "tensorrt"):
            device = f"cuda:{dev or 0}"
        else:
            device = "CPU"
        reason_prefix = "requested"
        tuned_provider = False

    tuned_ok = (tuning is not None and tuning.get("provider") == chosen
                and tuning.get("precision") in have)
    if precision != "auto":
        prec, preason = precision, "requested"
    elif tuned_ok:
        prec, preason = tuning["precision"], (f"tuned on this machine ({tuning.get('latency_ms', '?')} "
                                              f"ms, measured {tuning.get('measured', '?')})")
    else:
        prec, preason = _auto_precision(chosen, device, have, artifact, cpu)
    threads = tuning.get("threads") if tuned_ok else None
    return Selection(chosen, device, prec, f"provider: {reason_prefix}; precision: {preason}",
                     tuned=bool(tuned_provider or (precision == "auto" and tuned_ok)), threads=threads)


def _auto_provider(status, tuning: dict | None, cpu: dict, known: set = frozenset()
                   ) -> tuple[str, str, str]:
    # without an NVIDIA driver neither GPU provider can work: don't even import onnxruntime
    # (an OpenVINO process then stays free of it: less memory, faster start)
    if known & {"tensorrt", "cuda"} or nvidia_driver()[0]:
        for p in ("tensorrt", "cuda"):
            s = status(p)
            if s.available:
                return p, (s.devices or ["cuda:0"])[0], f"{p}: {s.reason}"
    skipped = []
    # only ask OpenVINO about GPU/NPU when a device node suggests one (importing it costs ~0.3 s)
    if openvino_installed() and (intel_gpu_present() or npu_present()):
        s = status("openvino")
        for kind in ("GPU", "NPU"):
            devs = [d for d in s.devices if d.startswith(kind)]
            if devs:
                return "openvino", devs[0], f"OpenVINO {devs[0]} (Intel {kind})"
    else:
        skipped.append("no NVIDIA GPU, no Intel GPU/NPU")
    if tuning and tuning.get("provider") in ("cpu", "openvino"):
        tp = tuning["provider"]
        if tp == "cpu" or openvino_installed():
            return tp, "CPU", (f"tuned on this machine: {tp} measured fastest "
                               f"({tuning.get('latency_ms', '?')} ms, {tuning.get('measured', '?')})")
    x86 = not cpu["isa"]["arm"]
    intel = x86 and cpu.get("vendor") == "GenuineIntel"
    pre = f"{'; '.join(skipped) + '; ' if skipped else ''}"
    if intel and openvino_installed():
        return "openvino", "CPU", (f"{pre}heuristic: OpenVINO CPU on an Intel CPU (run "
                                   f"`edgeinfer bench` to measure this model here)")
    why = ("ARM CPU" if not x86 else "openvino not installed" if not openvino_installed()
           else f"{cpu.get('vendor') or 'non-Intel'} CPU: OpenVINO not reliably faster, ORT uses "
                f"less memory; run `edgeinfer bench` to measure this model here")
    if not status("cpu").available:
        raise ProviderUnavailableError(f"no usable engine: {status('cpu').reason}. Install: {INSTALL['cpu']}")
    return "cpu", "CPU", f"{pre}heuristic: ONNX Runtime CPU ({why})"
