"""The model to fine-tune: any classifier recipe / timm / torchvision model with a new head for the
data set's classes, and the three strategies' trainable parts.

- ``head``: only the new classifier trains; the backbone is frozen in eval mode, so its output
  for an image never changes and can be computed once (feature caching).
- ``partial``: the last N blocks plus the head train. "Blocks" are the backbone's top-level
  children, with stage containers (``nn.Sequential`` / ``nn.ModuleList``: timm's ``stages`` /
  ``blocks``, ResNet's ``layerK``) expanded into their elements; frozen BatchNorm layers stay in
  eval mode so their running statistics are not re-estimated from a few examples.
- ``full``: everything trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidOptionError

STRATEGIES = ("head", "partial", "full")
NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


@dataclass
class TrainModel:
    module: Any                   # torch.nn.Module with the new head
    head: Any                     # the new classifier module
    blocks: list[tuple[str, Any]]  # backbone blocks in forward order (for --unfreeze N)
    trainable: list[str] = field(default_factory=list)  # names of the trainable blocks

    def param_counts(self) -> dict:
        total = sum(p.numel() for p in self.module.parameters())
        train = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        return {"total": int(total), "trainable": int(train)}


def _parent_and_attr(root: Any, name: str) -> tuple[Any, str]:
    parts = name.split(".")
    obj = root
    for p in parts[:-1]:
        obj = obj[int(p)] if p.isdigit() else getattr(obj, p)
    return obj, parts[-1]


def replace_head(module: Any, num_classes: int) -> Any:
    """Give ``module`` a new, randomly initialised classifier for ``num_classes``; return it."""
    import torch.nn as nn

    if hasattr(module, "reset_classifier") and hasattr(module, "get_classifier"):
        module.reset_classifier(num_classes)  # timm and edgeinfer's own models
        return module.get_classifier()
    # torchvision: the last Linear is the classifier (resnet.fc, mobilenet.classifier[-1], ...)
    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise InvalidOptionError(f"{type(module).__name__} has no Linear classifier to replace; "
                                 f"fine-tuning supports classifiers (timm, torchvision, simple_cnn)")
    name, old = last
    parent, attr = _parent_and_attr(module, name)
    new = nn.Linear(old.in_features, num_classes)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    return new


def backbone_blocks(module: Any, head: Any) -> list[tuple[str, Any]]:
    """Backbone blocks in forward order (children holding the head are left out)."""
    import torch.nn as nn

    out = []
    for name, child in module.named_children():
        if child is head or any(m is head for m in child.modules()):
            continue
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            out.extend((f"{name}.{i}", c) for i, c in enumerate(child)
                       if any(True for _ in c.parameters()))
        else:
            out.append((name, child))
    return out


def build_train_model(model_name: str, *, weights: str, num_classes: int, seed: int):
    """(BuiltModel from the exporter's ``build_model``, TrainModel with the new head)."""
    import torch

    from ..export.torch_models import build_model

    built = build_model(model_name, weights=weights, seed=seed)
    if built.recipe.kind != "classifier":
        raise InvalidOptionError(f"{model_name} is a {built.recipe.kind} model, not a classifier; "
                                 f"for a few labelled photos on CLIP embeddings use "
                                 f"edgeinfer.categories (few-shot categories) instead")
    module = built.module
    torch.manual_seed(seed)  # the new head's initialisation is part of the seeded run
    head = replace_head(module, num_classes)
    return built, TrainModel(module=module, head=head, blocks=backbone_blocks(module, head))


def apply_strategy(tm: TrainModel, strategy: str, *, unfreeze: int = 1) -> None:
    """Set ``requires_grad`` for ``strategy``; records the trainable block names."""
    if strategy not in STRATEGIES:
        raise InvalidOptionError.choice("strategy", strategy, STRATEGIES)
    for p in tm.module.parameters():
        p.requires_grad_(strategy == "full")
    if strategy == "full":
        tm.trainable = ["all"]
        return
    names = []
    if strategy == "partial":
        if unfreeze < 1:
            raise InvalidOptionError(f"--unfreeze must be >= 1 for --strategy partial (got {unfreeze})")
        chosen = tm.blocks[-unfreeze:]
        for name, block in chosen:
            for p in block.parameters():
                p.requires_grad_(True)
        names = [n for n, _ in chosen]
        # whatever sits between the blocks and the head (timm's head container: norm, pre-logits)
        # trains with the head
        blocks = {id(b) for _, b in tm.blocks}
        for name, child in tm.module.named_children():
            if id(child) not in blocks and not any(child is b or b in list(child.modules())
                                                   for _, b in tm.blocks):
                for p in child.parameters():
                    p.requires_grad_(True)
    for p in tm.head.parameters():
        p.requires_grad_(True)
    tm.trainable = names + ["head"]


def set_train_mode(tm: TrainModel, strategy: str) -> None:
    """``train()`` for the parts that learn; frozen parts stay in eval mode (BatchNorm keeps its
    running statistics, dropout in frozen parts is off)."""
    import torch.nn as nn

    tm.module.eval()
    if strategy == "full":
        tm.module.train()
        return
    for m in tm.module.modules():
        own = list(m.parameters(recurse=False))
        if own and all(p.requires_grad for p in own):
            m.train()
        elif isinstance(m, nn.Dropout):
            # dropout right before a trainable head (simple_cnn, timm heads) regularises it
            m.train(strategy == "partial")
    tm.head.train()
