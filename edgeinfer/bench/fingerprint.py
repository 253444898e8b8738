"""The machine fingerprint recorded with every result (CPU model, ISA flags, cores,
GPU, library versions). Library versions come from package metadata: nothing heavy is imported."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from importlib import metadata

LIBRARIES = ("edgeinfer", "numpy", "pillow", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf",
             "tensorrt", "onnx", "torch", "torchvision", "timm", "open_clip_torch", "matplotlib")


def library_versions() -> dict:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def gpu_info() -> list[dict]:
    """NVIDIA GPUs via nvidia-smi (empty when there is none)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        r = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in r.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append({"name": parts[0], "memory_mb": _num(parts[1]), "driver": parts[2]})
    return gpus


def _num(s: str):
    try:
        return float(s)
    except ValueError:
        return None


def _total_memory_mb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**20)
    except Exception:  # psutil is a base dependency, but a fingerprint must never fail
        return None


@lru_cache(maxsize=1)
def machine_fingerprint() -> dict:
    from ..backends.hw import cpu_info

    cpu = cpu_info()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu": {"model": cpu["model"], "vendor": cpu["vendor"], "cores": cpu["cores"],
                "usable_cores": affinity, "int8_tier": cpu["int8_tier"], "isa": cpu["isa"],
                "flags": cpu["flags"]},
        "memory_mb": _total_memory_mb(),
        "gpus": gpu_info(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "libraries": library_versions(),
        "hostname_hash": _host_hash(),
    }


def _host_hash() -> str:
    import hashlib

    return hashlib.sha256(platform.node().encode()).hexdigest()[:8]
