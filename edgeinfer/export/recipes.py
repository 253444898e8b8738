"""Kept for existing imports: the recipes live in ``edgeinfer.catalog`` (read by export and
quantize alike); new code imports them from there."""
from __future__ import annotations

from ..catalog import PASS_THROUGH, Recipe, get_recipe, list_recipes, registry

__all__ = ["PASS_THROUGH", "Recipe", "get_recipe", "list_recipes", "registry"]
