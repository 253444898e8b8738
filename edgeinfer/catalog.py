"""The model catalogue: declarative recipes, TOML files in the top-level ``export/`` folder.

A neutral home that both sides read: ``export`` builds models from recipes, ``quantize`` reads
their quantization rules, ``edgeinfer models`` lists them. It imports nothing but the standard
library, so reading it never pulls in torch or the export code.
Names follow timm's style. Besides the registered names, any timm model is reachable as
``timm:<name>`` and any torchvision classifier as ``torchvision:<name>``; their preprocessing is
resolved from the library at export time (``Recipe.preprocess_resolved`` is False until then).
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import UnknownModelError

PASS_THROUGH = ("timm", "torchvision")


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    source: str                      # timm | torchvision | open_clip
    source_name: str                 # name inside that library
    kind: str = "classifier"         # classifier | clip
    pretrained_tag: str | None = None  # timm tag / open_clip pretrained name
    description: str = ""
    input_size: tuple[int, int, int] | None = None   # C, H, W
    crop_pct: float | None = None
    interpolation: str | None = None  # bilinear | bicubic | nearest
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    labels: str | None = None        # "imagenet-1k" or None
    opset: int = 17
    quantize: dict[str, Any] = field(default_factory=dict)
    clip: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess_resolved(self) -> bool:
        return None not in (self.input_size, self.crop_pct, self.interpolation, self.mean, self.std)

    @property
    def resize_size(self) -> int:
        """Shorter-side size before the center crop, as timm computes it (floor(size / crop_pct))."""
        assert self.input_size is not None and self.crop_pct is not None
        return int(math.floor(self.input_size[-1] / self.crop_pct))

    def preprocess_dict(self) -> dict:
        """The manifest's ``preprocess`` section."""
        return {
            "input_size": list(self.input_size), "resize_size": self.resize_size,
            "crop": "center", "crop_pct": self.crop_pct, "interpolation": self.interpolation,
            "mean": list(self.mean), "std": list(self.std), "channel_order": "RGB", "layout": "NCHW",
        }

    def with_preprocess(self, **kw: Any) -> "Recipe":
        return replace(self, **kw)


def _recipe_files() -> list[tuple[str, str]]:
    """(file name, text) of every recipe TOML, from the installed package or the source tree."""
    out = []
    try:
        root = resources.files("edgeinfer.recipes")
        for f in root.iterdir():
            if f.name.endswith(".toml"):
                out.append((f.name, f.read_text()))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    if not out:  # running from a source checkout without install
        src = Path(__file__).resolve().parents[1] / "export"
        out = [(p.name, p.read_text()) for p in sorted(src.glob("*.toml"))]
    return sorted(out)


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


@lru_cache(maxsize=1)
def registry() -> dict[str, Recipe]:
    reg: dict[str, Recipe] = {}
    for fname, text in _recipe_files():
        data = tomllib.loads(text)
        defaults = {k: v for k, v in data.items() if k not in ("models",)}
        for name, spec in data.get("models", {}).items():
            merged = {**defaults, **spec}
            for k in ("preprocess",):
                if isinstance(defaults.get(k), dict) or isinstance(spec.get(k), dict):
                    merged[k] = {**defaults.get(k, {}), **spec.get(k, {})}
            pre = merged.pop("preprocess", {})
            for k in ("quantize", "clip"):
                merged[k] = {**defaults.get(k, {}), **spec.get(k, {})}
            kw = {k: _tuple(v) for k, v in {**merged, **pre}.items()
                  if k in Recipe.__dataclass_fields__}
            kw.setdefault("source_name", name)
            if name in reg:
                raise ValueError(f"recipe {name!r} defined twice ({fname})")
            reg[name] = Recipe(name=name, **kw)
    return reg


def list_recipes() -> list[Recipe]:
    return sorted(registry().values(), key=lambda r: (r.family, r.name))


def get_recipe(name: str) -> Recipe:
    """A registered recipe, or a pass-through one for ``timm:<name>`` / ``torchvision:<name>``."""
    reg = registry()
    if name in reg:
        return reg[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in PASS_THROUGH and rest:
        return Recipe(name=name, family=prefix, source=prefix, source_name=rest,
                      labels="imagenet-1k", description=f"{prefix} pass-through")
    raise UnknownModelError(name, reg)
