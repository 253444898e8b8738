"""Typed errors, all in one place.

Every message says what was asked for, what is available, and what to do.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class EdgeInferError(Exception):
    """Base class: every error edgeinfer raises on purpose derives from it."""


class InvalidOptionError(EdgeInferError, ValueError):
    """An option value that is not one of the valid ones."""

    @classmethod
    def choice(cls, what: str, value: object, valid: Iterable[str]) -> "InvalidOptionError":
        valid = list(valid)
        return cls(f"unknown {what} {value!r}; valid {what}s: {', '.join(valid)}")


class UnknownModelError(EdgeInferError, KeyError):
    def __init__(self, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        msg = (f"unknown model {name!r}.{hint} Run `edgeinfer models` for the list, or use "
               f"'timm:<name>' / 'torchvision:<name>' for any timm or torchvision classifier.")
        super().__init__(msg)
        self.name, self.close_matches = name, close

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class MissingDependencyError(EdgeInferError, ImportError):
    """A heavy optional library is not installed; the message names the pip extra."""

    def __init__(self, package: str, extra: str, purpose: str = ""):
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{package} is not installed{what}. Install it with: "
                         f"pip install 'edgeinfer[{extra}]'")
        self.package, self.extra = package, extra


class WeightsError(EdgeInferError):
    """Weights cannot be found, loaded, or do not fit the architecture."""


class ExportError(EdgeInferError):
    """The torch -> ONNX conversion failed."""


class ParityError(ExportError):
    """The exported/converted model does not compute what the reference computes."""


class ArtifactError(EdgeInferError):
    """An artifact directory is missing, incomplete, or corrupt."""


class ProviderUnavailableError(EdgeInferError):
    """An explicitly requested engine is not usable here (never a silent fallback)."""


class ImageError(EdgeInferError, ValueError):
    """An input that is not a decodable image (corrupt, truncated, empty, too large)."""


class ModelClosedError(EdgeInferError, RuntimeError):
    """A Model used after ``close()`` (calls already in flight when it was closed finish)."""


class CalibrationError(EdgeInferError):
    """Calibration data is missing, empty, or unusable."""


class QuantizationError(EdgeInferError):
    """Quantization failed."""


class AccuracyBudgetError(QuantizationError):
    """The quantized model cannot meet the accuracy budget even with nodes kept in float."""


class DatasetError(EdgeInferError, ValueError):
    """A labelled dataset that cannot be used (empty, classes that match no label...)."""


class BenchError(EdgeInferError):
    """The benchmark cannot run at all (nothing to measure, no photo files for --pipeline...)."""


class LabelError(EdgeInferError, ValueError):
    """Bad zero-shot labels (empty list, duplicates...)."""


class CategoryError(EdgeInferError, ValueError):
    """A few-shot user category that cannot be built or used (too few examples, unknown name...)."""


class EmbeddingModelMismatchError(CategoryError):
    """Categories built on embeddings of one model version used with another model's embeddings."""


class NativeBuildError(EdgeInferError):
    """The native runner cannot be configured or built (compiler, CMake or a -dev package missing)."""
