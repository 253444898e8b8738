"""Which engines this machine has (``detect``), each with the reason it is usable or not.

Cheap probes first (files, package metadata), engine imports only when needed. Deciding which
engine to use is not done here: that is ``edgeinfer.runtime.selection``, the one owner of
selection.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path


from .base import INSTALL


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


def detect_one(name: str) -> ProviderStatus:
    """One engine's status (imports only that engine's library)."""
    if name == "openvino":
        return _detect_openvino()
    return {s.name: s for s in _detect_ort()}[name]
