"""Models defined by edgeinfer itself (recipes with ``source = "edgeinfer"``): ``simple_cnn``.

``simple_cnn`` is a small CNN for 28-64 px inputs (digits, MNIST-like sets, CIFAR-sized photos),
the "custom CNN" baseline people train from scratch next to transfer-learned backbones. It follows
timm's classifier conventions (``get_classifier`` / ``reset_classifier`` / ``forward_features``)
so fine-tuning and export treat it like any timm model.

Also here: ``labels_beside_weights``, which gives a model exported from a fine-tuned weights file
(``DIR/weights.safetensors`` written by ``edgeinfer finetune``) the class names of the
``DIR/labels.txt`` written next to it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UnknownModelError, WeightsError
from .recipes import Recipe

DEFAULT_CLASSES = 10
WIDTHS = (32, 64, 128)
LABELS_FILE = "labels.txt"


def _simple_cnn_class():
    import torch.nn as nn

    class SimpleCNN(nn.Module):
        """Three blocks of (conv3x3-BN-ReLU) x2 + 2x2 max-pool, global average pool, dropout, fc."""

        def __init__(self, num_classes: int = DEFAULT_CLASSES, in_chans: int = 3,
                     widths: tuple[int, ...] = WIDTHS, drop_rate: float = 0.2):
            super().__init__()
            layers, c = [], in_chans
            for w in widths:
                layers.append(nn.Sequential(
                    nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                    nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                    nn.MaxPool2d(2)))
                c = w
            self.blocks = nn.Sequential(*layers)
            self.num_features = c
            self.num_classes = num_classes
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(drop_rate)
            self.fc = nn.Linear(c, num_classes)

        # timm-style API: fine-tuning (edgeinfer.train) and export find the head the same way
        def get_classifier(self):
            return self.fc

        def reset_classifier(self, num_classes: int) -> None:
            self.num_classes = num_classes
            self.fc = nn.Linear(self.num_features, num_classes)

        def forward_features(self, x):
            return self.blocks(x)

        def forward_head(self, x):
            return self.fc(self.drop(self.pool(x).flatten(1)))

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    return SimpleCNN


def simple_cnn(num_classes: int = DEFAULT_CLASSES, **kw: Any):
    """A new ``SimpleCNN`` (random init; seed torch first for reproducibility)."""
    return _simple_cnn_class()(num_classes=num_classes, **kw)


def build_custom(recipe: Recipe, *, weights: str, seed: int):
    """``BuiltModel`` for a ``source = "edgeinfer"`` recipe. No pretrained weights exist: weights
    are "random" (seeded) or a state-dict file, whose class count sets the head's size."""
    import torch

    from .torch_models import (BuiltModel, _file_info, _freeze, load_state_dict_checked,
                               read_state_dict)

    if recipe.family != "simple_cnn":
        raise UnknownModelError(recipe.name, ["simple_cnn", "simple_cnn_64"])
    if weights == "pretrained":
        raise WeightsError(f"{recipe.name} has no pretrained weights (it is edgeinfer's own small "
                           f"CNN). Train it with `edgeinfer finetune --model {recipe.name} --weights "
                           f"random --strategy full --data DATA`, then export with `--weights "
                           f"DIR/weights.safetensors`; or use `--weights random`.")
    sd = None
    num_classes = DEFAULT_CLASSES
    if weights != "random":
        sd = read_state_dict(weights)
        w = sd.get("fc.weight")
        if w is None or w.dim() != 2:
            raise WeightsError(f"weights file {weights} has no 'fc.weight' matrix: it is not a "
                               f"{recipe.name} checkpoint. Pick the matching --model.")
        num_classes = int(w.shape[0])  # a fine-tuned model: the head says how many classes
    torch.manual_seed(seed)
    model = simple_cnn(num_classes)
    if sd is not None:
        load_state_dict_checked(model, sd, path=weights, arch=recipe.name)
        info = _file_info(weights)
    else:
        info = {"origin": "random", "seed": seed}
    return BuiltModel(module=_freeze(model), recipe=recipe, weights_info=info, labels=None,
                      extra={"num_classes": num_classes, "label_ids": None, "library": "edgeinfer",
                             "library_name": "simple_cnn", "warnings": []})


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines ignored)."""
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def labels_beside_weights(built, weights: str | os.PathLike):
    """A weights file with ``labels.txt`` next to it (written by ``edgeinfer finetune``): use its
    class names when their count matches the model's outputs. Returns ``built`` (updated)."""
    w = os.fspath(weights)
    if w in ("pretrained", "random"):
        return built
    f = Path(w).with_name(LABELS_FILE)
    n = built.extra.get("num_classes")
    if not f.is_file() or n is None:
        return built
    names = read_labels_file(f)
    if len(names) != n:
        built.extra.setdefault("warnings", []).append(
            f"{f} lists {len(names)} labels but the model has {n} outputs; labels not used")
        return built
    built.labels = names
    built.extra["label_ids"] = None
    built.extra["labels_file"] = str(f.absolute())
    return built
