"""INT8 calibration / PTQ, FP16 conversion and the accuracy guard.

Public entry point: ``quantize_artifact(artifact_dir, *, int8=False, fp16=False, calib=None,
calib_size=None, target="auto", max_drop=None, progress=None)``. Heavy libraries (onnx,
onnxruntime.quantization, onnxconverter-common, nncf, openvino) are imported when used.
"""
from __future__ import annotations

from .api import quantize_artifact

__all__ = ["quantize_artifact"]
