"""Fine-tuning (torch side): ``finetune(model, data=..., strategy="head"|"partial"|"full", ...)``.

A plain PyTorch loop (``loop``), models with a new head and the three strategies (``model``), data
sets and seeded splits (``data``), reports (``report``). See README.md in this folder.
"""
from __future__ import annotations

__all__ = ["finetune"]


def finetune(model: str, **kw):
    """See ``edgeinfer.train.api.finetune``."""
    from .api import finetune as _finetune

    return _finetune(model, **kw)
