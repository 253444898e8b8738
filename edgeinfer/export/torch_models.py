"""Recipe -> torch module with weights: ``build_model``.

Weights come from one of three places, and the manifest records which:

- ``"pretrained"``: the library's own weights (timm ``<name>.<tag>`` via the Hugging Face hub
  cache, torchvision's default weights enum via the torch hub cache). The local cache is tried
  first with the hub in offline mode; a download is attempted only when the host answers within a
  few seconds, so an offline machine fails at once with a ``WeightsError`` that names
  ``--weights PATH`` and ``--weights random`` instead of retrying for a minute.
- ``"random"``: ``torch.manual_seed(seed)`` then the library's own initialisation; recorded as
  ``{"origin": "random", "seed": seed}`` so every report made from the artifact can say so.
- a path: a state dict (``.pt/.pth/.bin``, loaded with ``torch.load(weights_only=True)``; a
  ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a DataParallel ``module.`` prefix are
  accepted) or a ``.safetensors`` file. A file for another architecture fails with the
  missing / unexpected / mis-shaped keys. A classifier head with another class count rebuilds the
  model with that many classes (a fine-tuned model), without ImageNet labels.

CLIP recipes (``source == "open_clip"``) are delegated to ``edgeinfer.export.clip.build_clip``.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterator

from ..errors import MissingDependencyError, UnknownModelError, WeightsError
from ..runtime.artifact import sha256_file
from .built import BuiltModel  # noqa: F401  re-exported: the pipeline and tests import it here
from .recipes import Recipe, get_recipe

WEIGHTS_HINT = ("Use `--weights PATH` with a local state dict / .safetensors file, or "
                "`--weights random` for seeded random weights (labelled random everywhere).")
_PROBE_TIMEOUT_S = 3.0


def _import_torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - the export extra is installed in dev
        raise MissingDependencyError("torch", "export", "exporting models") from e
    return torch


# ---------------------------------------------------------------- labels
def imagenet_labels(subset: str = "imagenet-1k") -> tuple[list[str], list[str]]:
    """(short human-readable names, synset ids) in class-index order, from timm's ImageNetInfo.

    The short name is the first entry of WordNet's description ("tench, Tinca tinca" -> "tench").
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo(subset)
    ids = list(info.label_names())
    names = [info.index_to_description(i).split(",")[0].strip() for i in range(len(ids))]
    return names, ids


def _labels_for(recipe: Recipe, num_classes: int | None, model: Any = None) -> tuple[list | None, list | None]:
    if num_classes is None:
        return None, None
    subset = None
    if model is not None and recipe.source == "timm":
        try:
            from timm.data import infer_imagenet_subset

            subset = infer_imagenet_subset(model)
        except Exception:  # noqa: BLE001 - best effort: unknown subset means no labels
            subset = None
    if subset is None and recipe.labels == "imagenet-1k" and num_classes == 1000:
        subset = "imagenet-1k"
    if subset is None:
        return None, None
    names, ids = imagenet_labels(subset)
    if len(names) != num_classes:
        return None, None
    return names, ids


# ---------------------------------------------------------------- network / cache helpers
def _host_reachable(host: str, port: int = 443, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _env_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "EDGEINFER_OFFLINE"))


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Hugging Face hub in offline mode for the block: cache hits only, no retries."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _pretrained_error(what: str, cause: BaseException | str) -> WeightsError:
    reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return WeightsError(f"pretrained weights for {what} are not in the local cache and cannot be "
                        f"downloaded ({reason}). {WEIGHTS_HINT}")


# ---------------------------------------------------------------- weights files
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema", "model_ema")


def read_state_dict(path: str | os.PathLike) -> dict:
    """A flat ``{name: tensor}`` from a .pt/.pth/.bin/.ckpt (weights_only) or .safetensors file."""
    torch = _import_torch()
    p = Path(path)
    if not p.exists():
        looks_like_word = p.suffix == "" and os.sep not in str(path)
        hint = (" --weights takes 'pretrained', 'random' or the path of a state dict / "
                ".safetensors file." if looks_like_word else
                " Give an existing state dict / .safetensors file, or use `--weights pretrained` "
                "or `--weights random`.")
        raise WeightsError(f"weights file {p} does not exist.{hint}")
    if p.is_dir():
        raise WeightsError(f"weights path {p} is a directory; give a state dict file "
                           f"(.pt/.pth/.bin) or a .safetensors file.")
    try:
        if p.suffix.lower() == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError as e:
                raise MissingDependencyError("safetensors", "export", "reading .safetensors") from e
            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except (WeightsError, MissingDependencyError):
        raise
    except Exception as e:  # noqa: BLE001 - pickle/zip/safetensors errors all mean "unreadable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"cannot read weights file {p}: {first}. It must be a state dict saved "
                           f"with torch.save (loaded with weights_only=True, so no pickled modules) "
                           f"or a .safetensors file.") from e
    # unwrap training checkpoints: {"state_dict": {...}}, {"model": {...}}, ...
    for _ in range(3):
        if isinstance(sd, dict) and not _is_tensor_dict(sd):
            inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, dict) or not _is_tensor_dict(sd):
        raise WeightsError(f"{p} does not hold a state dict (a mapping of parameter names to "
                           f"tensors, optionally under 'state_dict' or 'model'); found "
                           f"{type(sd).__name__}.")
    sd = {k: v for k, v in sd.items() if hasattr(v, "shape")}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(d: dict) -> bool:
    vals = list(d.values())
    return bool(vals) and sum(hasattr(v, "shape") for v in vals) >= max(1, len(vals) // 2)


def _few(keys: list[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_dict_checked(module: Any, sd: dict, *, path: str | os.PathLike, arch: str) -> None:
    """``module.load_state_dict(sd, strict=True)`` with an error naming the keys that do not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} keys with another shape (file vs model): {_few(shapes, 3)}")
        raise WeightsError(f"weights file {path} does not fit {arch}: " + "; ".join(parts) +
                           ". Is it a checkpoint for another model? Pick the matching --model.")
    module.load_state_dict(sd, strict=True)


def _head_class_count(module: Any, sd: dict) -> int | None:
    """If the only mismatch is the classifier head's class count, that count (fine-tuned model)."""
    own = module.state_dict()
    if set(own) != set(sd):
        return None
    bad = [k for k in own if tuple(own[k].shape) != tuple(sd[k].shape)]
    if not bad:
        return None
    try:
        head = module.get_classifier()
    except Exception:  # noqa: BLE001 - not a timm classifier
        return None
    head_names = {n for n, m in module.named_modules() if m is head}
    if not head_names:
        return None
    prefix = next(iter(head_names)) + "."
    if not all(k.startswith(prefix) for k in bad):
        return None
    w = sd.get(prefix + "weight")
    return int(w.shape[0]) if w is not None and w.dim() >= 1 else None


# ---------------------------------------------------------------- timm
def _timm_name(recipe: Recipe, weights: str) -> str:
    name = recipe.source_name
    if weights == "pretrained" and recipe.pretrained_tag and "." not in name:
        name = f"{name}.{recipe.pretrained_tag}"
    return name


def _check_timm_name(recipe: Recipe) -> None:
    import timm

    base = recipe.source_name
    if timm.is_model(base):
        arch, _, tag = base.partition(".")
        if tag and base not in timm.list_pretrained(f"{arch}.*"):
            tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
            raise UnknownModelError(recipe.name, [f"{recipe.name.partition(':')[0]}:{arch}.{t}"
                                                  if ":" in recipe.name else f"{arch}.{t}" for t in tags])
        return
    known = timm.list_models()
    raise UnknownModelError(recipe.name, [f"timm:{n}" for n in known] if recipe.name.startswith("timm:") else known)


def _timm_create(recipe: Recipe, name: str, *, pretrained: bool, **kw: Any) -> Any:
    import timm

    if not pretrained:
        return timm.create_model(name, pretrained=False, **kw)
    with _hf_offline():
        try:
            return timm.create_model(name, pretrained=True, **kw)
        except (OSError, RuntimeError, ValueError) as e:  # cache miss (LocalEntryNotFoundError is an OSError)
            cache_err: BaseException = e
    if _env_offline():
        raise _pretrained_error(name, f"offline mode (HF_HUB_OFFLINE) and not cached: {cache_err}")
    if not _host_reachable("huggingface.co"):
        raise _pretrained_error(name, "huggingface.co is not reachable")
    try:
        return timm.create_model(name, pretrained=True, **kw)
    except Exception as e:  # noqa: BLE001 - any download / hub failure
        raise _pretrained_error(name, e) from e


def _build_timm(recipe: Recipe, weights: str, seed: int) -> BuiltModel:
    torch = _import_torch()
    import timm
    from timm.data import resolve_data_config

    _check_timm_name(recipe)
    kind = "pretrained" if weights == "pretrained" else "random" if weights == "random" else "file"
    name = _timm_name(recipe, weights)
    sd = read_state_dict(weights) if kind == "file" else None
    torch.manual_seed(seed)
    model = _timm_create(recipe, name, pretrained=kind == "pretrained")
    weights_info: dict = {}
    if kind == "pretrained":
        weights_info = {"origin": "pretrained", "library": "timm", "tag": name,
                        "hf_hub_id": (model.pretrained_cfg or {}).get("hf_hub_id")}
    elif kind == "random":
        weights_info = {"origin": "random", "seed": seed}
    else:
        n = _head_class_count(model, sd)
        if n is not None:
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, num_classes=n)
        load_state_dict_checked(model, sd, path=weights, arch=f"{recipe.name} (timm {name})")
        weights_info = _file_info(weights)
    model.eval()
    cfg = resolve_data_config({}, model=model)
    # Registered recipes carry their preprocessing; pass-through ones take timm's.
    if not recipe.preprocess_resolved:
        recipe = recipe.with_preprocess(
            input_size=tuple(int(v) for v in cfg["input_size"]), crop_pct=float(cfg["crop_pct"]),
            interpolation=str(cfg["interpolation"]), mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]))
    num_classes = int(getattr(model, "num_classes", 0)) or None
    labels, label_ids = _labels_for(recipe, num_classes, model)
    warnings = []
    if cfg.get("crop_mode", "center") != "center":
        warnings.append(f"timm's eval transform for {name} uses crop_mode={cfg['crop_mode']!r}; "
                        f"edgeinfer preprocesses with a center crop")
    return BuiltModel(module=_freeze(model), recipe=recipe, weights_info=weights_info, labels=labels,
                      extra={"num_classes": num_classes, "label_ids": label_ids, "library": "timm",
                             "library_name": name, "warnings": warnings})


# ---------------------------------------------------------------- torchvision
def _torchvision_interp(mode: Any) -> str:
    v = getattr(mode, "value", mode)
    return str(v).lower()


def _build_torchvision(recipe: Recipe, weights: str, seed: int) -> BuiltModel:
    torch = _import_torch()
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    name = recipe.source_name
    if name not in known:
        raise UnknownModelError(recipe.name, [f"torchvision:{n}" for n in known])
    kind = "pretrained" if weights == "pretrained" else "random" if weights == "random" else "file"
    try:
        wenum = torchvision.models.get_model_weights(name).DEFAULT
    except Exception:  # noqa: BLE001 - a model without published weights
        wenum = None
    if kind == "pretrained":
        if wenum is None:
            raise WeightsError(f"torchvision publishes no pretrained weights for {name}. {WEIGHTS_HINT}")
        _torchvision_weights_available(name, wenum)
    sd = read_state_dict(weights) if kind == "file" else None
    torch.manual_seed(seed)
    try:
        model = torchvision.models.get_model(name, weights=wenum if kind == "pretrained" else None)
    except (OSError, RuntimeError) as e:
        if kind == "pretrained":
            raise _pretrained_error(f"torchvision:{name}", e) from e
        raise
    if kind == "pretrained":
        weights_info = {"origin": "pretrained", "library": "torchvision", "tag": str(wenum),
                        "url": wenum.url}
    elif kind == "random":
        weights_info = {"origin": "random", "seed": seed}
    else:
        load_state_dict_checked(model, sd, path=weights, arch=f"{recipe.name}")
        weights_info = _file_info(weights)
    model.eval()
    if not recipe.preprocess_resolved:
        crop, resize, interp = 224, 256, "bilinear"
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        if wenum is not None:
            t = wenum.transforms()
            crop = int(_first(getattr(t, "crop_size", crop)))
            resize = int(_first(getattr(t, "resize_size", resize)))
            interp = _torchvision_interp(getattr(t, "interpolation", interp))
            mean, std = tuple(t.mean), tuple(t.std)
        crop_pct = crop / resize
        if math.floor(crop / crop_pct) != resize:  # float round-off, e.g. 224/232
            crop_pct = crop / (resize + 1e-6)
        recipe = recipe.with_preprocess(input_size=(3, crop, crop), crop_pct=crop_pct,
                                        interpolation=interp, mean=tuple(map(float, mean)),
                                        std=tuple(map(float, std)))
    num_classes = _torchvision_classes(model, recipe)
    labels, label_ids = _labels_for(recipe, num_classes)
    return BuiltModel(module=_freeze(model), recipe=recipe, weights_info=weights_info, labels=labels,
                      extra={"num_classes": num_classes, "label_ids": label_ids,
                             "library": "torchvision", "library_name": name, "warnings": []})


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, (list, tuple)) else v


def _torchvision_classes(model: Any, recipe: Recipe) -> int | None:
    torch = _import_torch()
    with torch.inference_mode():
        out = model(torch.zeros(1, *recipe.input_size))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return int(out.shape[-1])


def _torchvision_weights_available(name: str, wenum: Any) -> None:
    """Fail fast when the weights are neither in the torch hub cache nor downloadable."""
    import torch.hub

    fname = os.path.basename(wenum.url.split("?")[0])
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if cached.exists():
        return
    if _env_offline():
        raise _pretrained_error(f"torchvision:{name}", f"offline mode and {cached} is absent")
    host = re.sub(r"^https?://([^/]+)/.*$", r"\1", wenum.url)
    if not _host_reachable(host):
        raise _pretrained_error(f"torchvision:{name}", f"{cached} is absent and {host} is not reachable")


# ---------------------------------------------------------------- common
def _file_info(path: str | os.PathLike) -> dict:
    p = Path(path).absolute()
    return {"origin": "file", "path": str(p), "sha256": sha256_file(p)}


def _freeze(model: Any) -> Any:
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model


def _check_weights_arg(weights: Any) -> str:
    if weights is None:
        return "pretrained"
    if isinstance(weights, os.PathLike):
        return os.fspath(weights)
    if not isinstance(weights, str) or not weights:
        raise WeightsError(f"weights must be 'pretrained', 'random' or a file path, not {weights!r}")
    return weights


def build_model(recipe: Recipe | str, *, weights: str | os.PathLike = "pretrained",
                seed: int = 0) -> BuiltModel:
    """The torch module for ``recipe`` with ``weights`` ("pretrained" | "random" | a file path).

    Classifiers return logits ``[N, num_classes]``; CLIP recipes return the image tower (see
    ``edgeinfer.export.clip``). The returned recipe has its preprocessing resolved.
    """
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    weights = _check_weights_arg(weights)
    _import_torch()
    if recipe.source == "open_clip":
        from .clip import build_clip

        return build_clip(recipe, weights=weights, seed=seed)
    from .custom import build_custom, labels_beside_weights  # fine-tuned files carry labels.txt

    if recipe.source == "edgeinfer":
        return labels_beside_weights(build_custom(recipe, weights=weights, seed=seed), weights)
    if recipe.source == "timm":
        return labels_beside_weights(_build_timm(recipe, weights, seed), weights)
    if recipe.source == "torchvision":
        return labels_beside_weights(_build_torchvision(recipe, weights, seed), weights)
    raise UnknownModelError(recipe.name, [])
