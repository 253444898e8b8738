"""Target- and ISA-aware INT8 settings (ARCHITECTURE.md, "Precision rules").

Why each choice:

- x86 without VNNI (AVX2 only): the U8S8 kernels multiply uint8 activations by int8 weights with
  ``vpmaddubsw``, which adds two products into an int16 and saturates. 8-bit weights can overflow
  it and silently lose accuracy (the same INT8 MobileNetV2 scored 65.8% on a VNNI CPU and 58.6% on
  an AVX2 one). ``reduce_range=True`` quantizes weights to 7 bits so the pair sum fits.
- x86 with VNNI / AVX-512 VNNI / AMX: ``vpdpbusd`` accumulates into int32 without the int16 step,
  so U8S8 with full 8-bit weights is safe (ONNX Runtime's recommendation).
- AVX-512 without VNNI: same int16 pair-sum path as AVX2 -> reduce_range.
- ARM: ONNX Runtime recommends symmetric S8S8 (signed activations) for its ARM kernels.
- TensorRT: explicit-quantization networks must be symmetric S8S8 QDQ; TensorRT removes the
  QDQ pairs itself, so removable activations (Relu/Clip) are kept and every consumer gets its
  own QDQ pair.
- OpenVINO: OpenVINO reads QDQ ONNX; U8 activations / S8 symmetric weights is its native scheme
  (the same as NNCF's MIXED preset, which uses asymmetric activations and symmetric weights).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidOptionError

TARGETS = ("auto", "cpu", "openvino", "tensorrt")


@dataclass
class Int8Settings:
    target: str                      # cpu | openvino | tensorrt
    activation_type: str             # "QUInt8" | "QInt8"
    weight_type: str                 # "QInt8"
    reduce_range: bool
    activation_symmetric: bool
    weight_symmetric: bool = True
    per_channel: bool = True
    quant_format: str = "QDQ"
    calibrate_method: str = "MinMax"
    isa_tier: str = ""
    cpu_model: str = ""
    reason: str = ""
    extra_options: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        a = "U8" if self.activation_type == "QUInt8" else "S8"
        return f"{a}S8" + ("+reduce_range" if self.reduce_range else "")

    def ort_extra_options(self) -> dict[str, Any]:
        opts = {"ActivationSymmetric": self.activation_symmetric,
                "WeightSymmetric": self.weight_symmetric}
        opts.update(self.extra_options)
        return opts

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scheme"] = self.scheme
        return d


def resolve_target(target: str | None) -> str:
    t = (target or "auto").lower()
    if t not in TARGETS:
        raise InvalidOptionError.choice("target", target, TARGETS)
    if t == "auto":
        # The artifact is quantized on the machine it is meant for: a CPU target unless the user
        # names an engine. (OpenVINO/TensorRT need their own settings, so they are explicit.)
        return "cpu"
    return t


def choose_int8_settings(target: str | None = "auto", cpu: dict | None = None) -> Int8Settings:
    """INT8 settings for ``target`` on the CPU described by ``cpu`` (default: this machine)."""
    from ..backends.hw import cpu_info

    cpu = cpu or cpu_info()
    t = resolve_target(target)
    tier = cpu.get("int8_tier", "generic")
    model = cpu.get("model", "")
    common = dict(target=t, isa_tier=tier, cpu_model=model)
    if t == "tensorrt":
        return Int8Settings(
            activation_type="QInt8", weight_type="QInt8", reduce_range=False,
            activation_symmetric=True, weight_symmetric=True,
            reason="TensorRT explicit quantization needs symmetric S8S8 QDQ; removable activations "
                   "kept and one QDQ pair per consumer so TensorRT can fuse them itself",
            extra_options={"QDQKeepRemovableActivations": True, "DedicatedQDQPair": True,
                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}},
            **common)
    if t == "openvino":
        return Int8Settings(
            activation_type="QUInt8", weight_type="QInt8", reduce_range=False,
            activation_symmetric=False, weight_symmetric=True,
            reason="OpenVINO CPU executes QDQ ONNX with its own oneDNN kernels: asymmetric U8 "
                   "activations, symmetric S8 weights (NNCF's MIXED preset)",
            **common)
    # ONNX Runtime CPU
    if tier in ("vnni", "amx"):
        return Int8Settings(
            activation_type="QUInt8", weight_type="QInt8", reduce_range=False,
            activation_symmetric=False,
            reason=f"CPU has {'AMX' if tier == 'amx' else 'VNNI'}: int8 dot products accumulate in "
                   f"int32 without int16 saturation, so U8S8 with full 8-bit weights is safe",
            **common)
    if tier in ("avx2", "avx512", "generic"):
        return Int8Settings(
            activation_type="QUInt8", weight_type="QInt8", reduce_range=True,
            activation_symmetric=False,
            reason=f"CPU is {tier.upper()} without VNNI: U8S8 products are summed in int16 "
                   f"(vpmaddubsw) and saturate with 8-bit weights; reduce_range=True uses 7-bit "
                   f"weights so they cannot",
            **common)
    # ARM
    return Int8Settings(
        activation_type="QInt8", weight_type="QInt8", reduce_range=False,
        activation_symmetric=True,
        reason=f"ARM CPU ({tier}): ONNX Runtime recommends symmetric S8S8 for its ARM int8 kernels",
        **common)
