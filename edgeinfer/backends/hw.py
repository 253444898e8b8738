"""CPU / hardware detection (torch-free): ISA flags that decide INT8 settings and engine choice."""
from __future__ import annotations

import os
import platform
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model, vendor, core count and the ISA features that matter for INT8."""
    flags: set[str] = set()
    model, vendor = platform.processor() or "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k in ("flags", "Features") and not flags:
                    flags = set(v.split())
                elif k == "model name" and not model.strip():
                    model = v.strip()
                elif k == "model name":
                    model = v.strip()
                elif k == "vendor_id" and not vendor:
                    vendor = v.strip()
    except OSError:
        pass
    machine = platform.machine().lower()
    arm = machine in ("aarch64", "arm64") or machine.startswith("arm")
    isa = {
        "arch": machine,
        "arm": arm,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "amx": "amx_int8" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "neon_dotprod": arm and ("asimddp" in flags),
    }
    if isa["amx"]:
        tier = "amx"
    elif isa["vnni"]:
        tier = "vnni"
    elif isa["avx512"]:
        tier = "avx512"
    elif isa["avx2"]:
        tier = "avx2"
    elif arm:
        tier = "arm-dotprod" if isa["neon_dotprod"] else "arm"
    else:
        tier = "generic"
    return {"model": model or machine, "vendor": vendor, "cores": os.cpu_count() or 1,
            "isa": isa, "int8_tier": tier,
            "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4", "asimd")))}


def machine_key(*engine_versions: str) -> str:
    """Short stable key for "this machine + these engine versions" (tuning results, caches)."""
    import hashlib

    info = cpu_info()
    raw = "|".join([info["model"], info["int8_tier"], str(info["cores"]), ",".join(info["flags"]),
                    *engine_versions])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
