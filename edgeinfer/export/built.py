"""``BuiltModel``: what a model builder hands to the export pipeline (its own module so that
the builders, ``torch_models`` and ``clip``, both use it without importing each other)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BuiltModel:
    """A torch module ready to export, plus what the manifest needs to describe it."""

    module: Any                      # torch.nn.Module in eval mode
    recipe: Any                      # edgeinfer Recipe, preprocessing resolved
    weights_info: dict               # manifest["weights"]
    labels: list[str] | None         # class names, index order
    extra: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int | None:
        return self.extra.get("num_classes")
