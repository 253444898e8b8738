"""CLIP (open_clip) export: the image tower as the artifact's model, plus the text tower, the
tokenizer data and the label-set text embeddings (manifest ``text`` section).

``build_clip`` makes the torch side (``BuiltModel``: ``module`` = image tower returning
UNNORMALISED features); the export pipeline exports that module like any other model and then
calls ``add_text_tower`` inside its staging directory, which writes

- ``text.fp32.onnx``: token ids int64 ``[N, L]`` -> UNNORMALISED text features ``[N, D]``, parity
  checked against open_clip (cosine >= 0.9999). For causal text towers (every OpenAI-style CLIP)
  ``L`` may be anything up to 77: ids after the end-of-text token cannot change its features, so
  the runtime trims padding (``manifest["text"]["variable_length"]``), which makes short labels
  several times cheaper. Non-causal text towers (MobileCLIP) keep ``L = 77``.
- ``tokenizer_bpe.txt.gz``: the BPE merges the torch-free ``runtime.tokenizer`` needs;
- ``labels.<set>.npy``: float32 ``[n_labels, D]`` L2-normalised text embeddings of each label
  set, computed as open_clip's ``build_zero_shot_classifier`` does: mean of the normalised
  embeddings of every prompt template, renormalised.

Label sets and templates are in ``edgeinfer/data/clip_prompts.json`` (ImageNet: open_clip's
class names and OpenAI's 80 templates; CIFAR-10: CLIP's 18 templates). The recipe's ``[clip]``
table chooses them: ``label_sets = [...]`` and optionally ``templates = {set = "<template set>"}``
(e.g. ``"simple_imagenet"``, 7 templates, for a quick CPU export: the 80-template ImageNet
ensemble is 80,000 text encodings, minutes on a CPU).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ExportError, InvalidOptionError, ParityError, WeightsError
from ..runtime.artifact import file_entry, sha256_file

try:  # helper A's dataclass; a compatible stand-in until it exists
    from .torch_models import BuiltModel
except ImportError:  # pragma: no cover - only while torch_models.py lacks it
    @dataclass
    class BuiltModel:  # type: ignore[no-redef]
        module: Any
        recipe: Any
        weights_info: dict
        labels: list | None = None
        extra: dict = field(default_factory=dict)

TEXT_INPUT = "input_ids"
TEXT_OUTPUT = "text_embedding"  # "embedding" collides with a node name in the dynamo export
TOKENIZER_FILE = "tokenizer_bpe.txt.gz"
PARITY_COSINE_MIN = 0.9999
DEFAULT_LABEL_SETS = ("imagenet", "cifar10")

Progress = Callable[[str], None] | None


# ------------------------------------------------------------------ prompt data
@lru_cache(maxsize=1)
def prompt_data() -> dict:
    """``edgeinfer/data/clip_prompts.json``: {"templates": {name: [...]}, "label_sets": {...}}."""
    try:
        text = (resources.files("edgeinfer") / "data" / "clip_prompts.json").read_text("utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        text = (Path(__file__).resolve().parents[1] / "data" / "clip_prompts.json").read_text("utf-8")
    return json.loads(text)


def label_set_spec(name: str, templates: str | list[str] | None = None) -> tuple[list[str], str, list[str]]:
    """(labels, template set name, templates) of a label set; ``templates`` overrides the set's
    template ensemble (a template set name or a list of ``{}`` strings)."""
    data = prompt_data()
    sets = data["label_sets"]
    if name not in sets:
        raise InvalidOptionError.choice("label set", name, sets)
    spec = sets[name]
    tname = templates if templates is not None else spec["templates"]
    if isinstance(tname, str):
        if tname not in data["templates"]:
            raise InvalidOptionError.choice("template set", tname, data["templates"])
        tlist = list(data["templates"][tname])
    else:
        tlist, tname = [str(t) for t in tname], "custom"
    if not tlist or not all("{}" in t for t in tlist):
        raise InvalidOptionError(f"templates for label set {name!r} must be non-empty strings "
                                 f"with a '{{}}' placeholder (got {tlist[:3]!r})")
    return list(spec["labels"]), tname, tlist


def _say(progress: Progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


# ------------------------------------------------------------------ build
def _import_open_clip():
    try:
        import open_clip  # noqa: PLC0415
        import torch  # noqa: PLC0415,F401
    except ImportError as e:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("open_clip_torch", "export", "exporting CLIP models") from e
    return open_clip


def _local_pretrained_file(open_clip, model_name: str, tag: str) -> str | None:
    """The cached checkpoint of ``model_name``/``tag`` if it is already on disk (no network)."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        return None
    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return cfg["file"]
    hub = cfg.get("hf_hub", "")
    if hub:
        with contextlib.suppress(Exception):
            from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

            repo, fname = os.path.split(hub)
            names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            if fname.endswith((".bin", ".pth")):
                names.insert(0, fname[:-4] + ".safetensors")
            for n in names:
                p = try_to_load_from_cache(repo, n)
                if isinstance(p, str) and os.path.isfile(p):
                    return p
    url = cfg.get("url", "")
    if url:
        p = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(p):
            return p
    return None


def _resolve_preprocess(recipe, open_clip, model, pcfg: dict | None):
    """The recipe with preprocessing taken from the model (the library is the reference)."""
    pre = dict(open_clip.get_model_preprocess_cfg(model))
    if pcfg:
        pre.update({k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg})
    size = pre.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if pre.get("resize_mode", "shortest") != "shortest":
        warnings.warn(f"open_clip resize_mode {pre.get('resize_mode')!r} is approximated by "
                      f"shorter-side resize + center crop", stacklevel=3)
    return recipe.with_preprocess(
        input_size=(3, int(h), int(w)), crop_pct=1.0,
        interpolation=str(pre.get("interpolation") or "bicubic"),
        mean=tuple(float(x) for x in pre.get("mean", recipe.mean)),
        std=tuple(float(x) for x in pre.get("std", recipe.std)))


def build_clip(recipe, *, weights: str | os.PathLike = "pretrained", seed: int = 0) -> BuiltModel:
    """open_clip model for ``recipe`` -> ``BuiltModel`` whose ``module`` is the image tower
    (NCHW float32 -> UNNORMALISED image features) and whose ``extra`` holds the full model.

    ``weights``: ``"pretrained"`` (the recipe's tag, from the local open_clip / Hugging Face
    cache only: nothing is downloaded), ``"random"`` (seeded with ``seed``; same architecture as
    the pretrained tag, e.g. QuickGELU for OpenAI weights), or a path to a state dict of the whole
    CLIP model (``.pt``/``.pth``/``.bin``/``.safetensors``, as open_clip saves them).
    """
    open_clip = _import_open_clip()
    import torch  # noqa: PLC0415

    name, tag = recipe.source_name, recipe.pretrained_tag
    pcfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    quick_gelu = bool(pcfg.get("quick_gelu", False)) if pcfg else False
    try:
        if weights == "pretrained":
            if not tag:
                raise WeightsError(f"recipe {recipe.name!r} names no pretrained tag; use "
                                   f"--weights random or --weights PATH")
            if not pcfg:
                tags = open_clip.list_pretrained_tags_by_model(name)
                raise WeightsError(f"open_clip has no pretrained tag {tag!r} for {name}; known "
                                   f"tags: {', '.join(tags) or 'none'}")
            path = _local_pretrained_file(open_clip, name, tag)
            if path is None:
                raise WeightsError(
                    f"pretrained weights {name}/{tag} are not in the local open_clip or Hugging "
                    f"Face cache and edgeinfer does not download them. Use --weights PATH (a state "
                    f"dict of the whole CLIP model) or --weights random (seeded; for testing the "
                    f"pipeline only).")
            model = open_clip.create_model(name, pretrained=path, force_quick_gelu=quick_gelu)
            info = {"origin": "pretrained", "tag": tag, "library": "open_clip",
                    "file": path, "sha256": sha256_file(path)}
        elif weights == "random":
            torch.manual_seed(int(seed))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu)
            info = {"origin": "random", "seed": int(seed), "library": "open_clip",
                    "note": "randomly initialised: labels and probabilities are meaningless"}
        else:
            path = Path(weights)
            if not path.is_file():
                raise WeightsError(f"weights file {path} does not exist (give --weights PATH to a "
                                   f"state dict of the whole CLIP model, 'pretrained' or 'random')")
            torch.manual_seed(int(seed))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu)
            try:
                incompatible = open_clip.load_checkpoint(model, str(path), strict=True)
            except Exception as e:  # noqa: BLE001 - any loader failure is a weights problem
                raise WeightsError(f"cannot load {path} into open_clip {name}: "
                                   f"{str(e).splitlines()[0][:400]}") from e
            if incompatible and (getattr(incompatible, "missing_keys", None)
                                 or getattr(incompatible, "unexpected_keys", None)):
                raise WeightsError(f"{path} does not fit open_clip {name}: missing "
                                   f"{incompatible.missing_keys[:5]}, unexpected "
                                   f"{incompatible.unexpected_keys[:5]}")
            info = {"origin": "file", "path": str(path.resolve()), "sha256": sha256_file(path),
                    "library": "open_clip"}
    except WeightsError:
        raise
    except RuntimeError as e:
        raise WeightsError(f"open_clip could not create {name} with weights={weights!r}: {e}") from e
    model.eval()
    recipe = _resolve_preprocess(recipe, open_clip, model, pcfg)
    tokenizer = open_clip.get_tokenizer(name)
    logit_scale = float(model.logit_scale.detach().exp().item())
    bias = getattr(model, "logit_bias", None)
    return BuiltModel(
        module=ImageTower(model).eval(), recipe=recipe, weights_info=info, labels=None,
        extra={"clip_model": model, "tokenizer": tokenizer, "model_name": name, "pretrained": tag,
               "logit_scale": logit_scale,
               "logit_bias": None if bias is None else float(bias.detach().item())})


def _torch_nn():
    import torch  # noqa: PLC0415

    return torch.nn


@lru_cache(maxsize=1)
def _module_classes():
    nn = _torch_nn()

    class _ImageTower(nn.Module):
        """NCHW float32 -> UNNORMALISED CLIP image features (``encode_image(normalize=False)``)."""

        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            return self.clip.encode_image(pixel_values, normalize=False)

    class _TextTower(nn.Module):
        """int64 ids [N, 77] -> UNNORMALISED text features (``encode_text(normalize=False)``)."""

        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, input_ids):
            return self.clip.encode_text(input_ids, normalize=False)

    class _CausalTextTower(nn.Module):
        """open_clip ``CLIP.encode_text`` for ids [N, L], any L <= context length.

        The text transformer is causal and pools at the end-of-text token (the highest id), so
        the ids after it cannot change the result: padding can be cut off."""

        def __init__(self, clip):
            super().__init__()
            self.token_embedding = clip.token_embedding
            self.positional_embedding = clip.positional_embedding
            self.transformer = clip.transformer
            self.ln_final = clip.ln_final
            self.text_projection = clip.text_projection
            self.register_buffer("attn_mask", clip.attn_mask.clone(), persistent=False)

        def forward(self, input_ids):
            import torch  # noqa: PLC0415

            n = input_ids.shape[1]
            cast = self.transformer.get_cast_dtype()
            x = self.token_embedding(input_ids).to(cast) + self.positional_embedding[:n].to(cast)
            x = self.transformer(x, attn_mask=self.attn_mask[:n, :n])
            x = self.ln_final(x)
            x = x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)]
            proj = self.text_projection
            if proj is None:
                return x
            return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    return _ImageTower, _TextTower, _CausalTextTower


def ImageTower(clip):  # noqa: N802 - a factory that reads like the class it returns
    return _module_classes()[0](clip)


def text_tower(clip) -> tuple[Any, bool]:
    """(module, variable_length): the causal variable-length tower when the model allows it."""
    from open_clip.model import CLIP  # noqa: PLC0415

    _, full, causal = _module_classes()
    if (isinstance(clip, CLIP) and getattr(clip, "attn_mask", None) is not None
            and getattr(clip, "text_pool_type", "argmax") == "argmax"):
        return causal(clip).eval(), True
    return full(clip).eval(), False


# ------------------------------------------------------------------ text encoding helpers
def _encode_numpy(run, ids: np.ndarray, *, variable_length: bool, batch_size: int = 256,
                  progress: Progress = None, what: str = "texts") -> np.ndarray:
    from ..runtime.zero_shot import encode_token_ids  # noqa: PLC0415  torch-free, shared

    return encode_token_ids(run, ids, variable_length=variable_length, batch_size=batch_size,
                            progress=progress, what=what)


def torch_text_runner(module, device: str = "cpu"):
    import torch  # noqa: PLC0415

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(ids)).to(device)).float().cpu().numpy()

    return run


def label_set_embeddings(run, tokenizer, labels: list[str], templates: list[str], *,
                         variable_length: bool, batch_size: int = 256,
                         progress: Progress = None) -> np.ndarray:
    """[n_labels, D] float32: mean of the L2-normalised template embeddings, renormalised
    (open_clip's ``build_zero_shot_classifier``)."""
    from ..runtime.zero_shot import ensemble  # noqa: PLC0415

    texts = [t.format(c) for c in labels for t in templates]
    ids = tokenizer.encode(texts)
    feats = _encode_numpy(run, ids, variable_length=variable_length, batch_size=batch_size,
                          progress=progress, what="prompts")
    return ensemble(feats, len(labels), len(templates))


# ------------------------------------------------------------------ ONNX export of the text tower
PARITY_TEXTS = [
    "a photo of a cat.", "a bad photo of the shark.", "a sculpture of a tabby cat.", "receipts",
    "documents", "a photo of people at the beach", "Überraschung! 😀 café", "日本語のラベル", "",
    "a very long label " * 20, "shark, dolphin, lizard, giraffe", "itap of a goldfish.",
]


def _export_text_onnx(module, path: Path, *, context_length: int, variable_length: bool,
                      opset: int, exporter: str = "dynamo") -> None:
    """torch.export-based exporter (symbolic batch and sequence axes); the legacy TorchScript
    exporter bakes nn.MultiheadAttention's shapes into Reshape nodes, so it is used only as a
    fallback (fixed length) and the parity check then decides."""
    import io  # noqa: PLC0415

    import torch  # noqa: PLC0415

    example = torch.zeros(2, context_length, dtype=torch.long)
    example[:, 0] = 49406
    example[:, 1:5] = 320
    example[:, 5] = 49407
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=65536)
                dims = {0: batch}
                if variable_length:
                    dims[1] = torch.export.Dim("sequence", min=1, max=context_length)
                prog = torch.onnx.export(module, (example,), None, input_names=[TEXT_INPUT],
                                         output_names=[TEXT_OUTPUT], dynamic_shapes=(dims,),
                                         opset_version=max(int(opset), 18), dynamo=True,
                                         optimize=True)
                prog.save(str(path))
            else:
                axes = {TEXT_INPUT: {0: "batch"}, TEXT_OUTPUT: {0: "batch"}}
                torch.onnx.export(module, (example,), str(path), input_names=[TEXT_INPUT],
                                  output_names=[TEXT_OUTPUT], dynamic_axes=axes,
                                  opset_version=int(opset), do_constant_folding=True, dynamo=False)
        except Exception as e:  # noqa: BLE001 - surface any exporter failure as a typed error
            tail = "\n".join(log.getvalue().strip().splitlines()[-10:])
            raise ExportError(f"exporting the CLIP text tower to ONNX ({exporter}) failed: "
                              f"{type(e).__name__}: {str(e)[:500]}" + (f"\n{tail}" if tail else "")) from e
    with contextlib.suppress(ImportError):
        import onnx  # noqa: PLC0415

        try:
            onnx.checker.check_model(str(path))
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"the exported CLIP text tower is not valid ONNX: {e}") from e


def _onnx_opset(path: Path) -> int | None:
    with contextlib.suppress(Exception):
        import onnx  # noqa: PLC0415

        m = onnx.load(str(path), load_external_data=False)
        return int(next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")))
    return None


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def _text_parity(onnx_path: Path, ref_run, tokenizer, *, variable_length: bool) -> dict:
    """ORT vs torch on PARITY_TEXTS at full length and (variable-length towers) trimmed."""
    import onnxruntime as ort  # noqa: PLC0415

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ids = tokenizer.encode(PARITY_TEXTS)
    ref = ref_run(ids)
    got = [sess.run(None, {TEXT_INPUT: ids})[0]]
    if variable_length:
        n = int(ids.argmax(1).max()) + 1
        got.append(sess.run(None, {TEXT_INPUT: ids[:, :n]})[0])
        short = ids[:4, : int(ids[:4].argmax(1).max()) + 1]
        got.append(np.concatenate([sess.run(None, {TEXT_INPUT: short})[0], got[0][4:]]))
    cos = np.concatenate([_cosine_rows(g, ref) for g in got])
    diff = max(float(np.abs(g - ref).max()) for g in got)
    return {"texts": len(PARITY_TEXTS), "source": "prompts", "max_abs_diff": diff,
            "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "top1_agreement": None, "reference": "torch",
            "lengths_checked": ["77"] + (["trimmed"] if variable_length else [])}


def _label_set_choice(cfg: dict, label_sets, templates) -> tuple[list[str], dict]:
    """Label sets and template sets: arguments > environment > recipe ``[clip]`` > defaults.

    ``EDGEINFER_CLIP_LABEL_SETS="cifar10"`` (comma-separated; empty for none) and
    ``EDGEINFER_CLIP_TEMPLATES="imagenet=simple_imagenet"`` let a CLI export on a slow CPU skip
    or shrink the 80-template ImageNet ensemble; what was used is recorded in the manifest."""
    env_sets = os.environ.get("EDGEINFER_CLIP_LABEL_SETS")
    if label_sets is not None:
        names = list(label_sets)
    elif env_sets is not None:
        names = [x.strip() for x in env_sets.split(",") if x.strip()]
    else:
        names = list(cfg.get("label_sets") or DEFAULT_LABEL_SETS)
    env_t = {}
    for item in (os.environ.get("EDGEINFER_CLIP_TEMPLATES") or "").split(","):
        if item.strip():
            k, sep, v = item.partition("=")
            if not sep or not v.strip():
                raise InvalidOptionError(f"EDGEINFER_CLIP_TEMPLATES item {item!r}: expected "
                                         f"LABEL_SET=TEMPLATE_SET, e.g. imagenet=simple_imagenet")
            env_t[k.strip()] = v.strip()
    for n in names:
        label_set_spec(n)  # unknown names fail here, before any slow work
    return names, {**(cfg.get("templates") or {}), **env_t, **(templates or {})}


def add_text_tower(built: BuiltModel, stage_dir: str | os.PathLike, manifest: dict, *,
                   progress: Progress = None, label_sets: list[str] | tuple[str, ...] | None = None,
                   templates: dict[str, str | list[str]] | None = None,
                   batch_size: int = 256) -> dict:
    """Export the text tower, tokenizer and label-set embeddings into ``stage_dir`` and fill
    ``manifest["text"]`` (also returned). Does not write the manifest file itself.

    ``label_sets`` / ``templates`` default to the recipe's ``[clip]`` table (``label_sets``,
    ``templates = {set = template set}``), else imagenet + cifar10 with their standard ensembles.
    """
    open_clip = _import_open_clip()
    import torch  # noqa: PLC0415

    from ..runtime.tokenizer import ClipTokenizer, write_bpe_vocab  # noqa: PLC0415

    stage = Path(stage_dir)
    clip = built.extra["clip_model"]
    ref_tok = built.extra.get("tokenizer") or open_clip.get_tokenizer(built.extra["model_name"])
    recipe = built.recipe
    cfg = dict(getattr(recipe, "clip", {}) or {})
    names, tmpl_cfg = _label_set_choice(cfg, label_sets, templates)
    t0 = time.perf_counter()

    # -- tokenizer data, checked against open_clip's tokenizer
    if not isinstance(ref_tok, open_clip.tokenizer.SimpleTokenizer) or \
            getattr(ref_tok, "reduction_fn", None) is not None or \
            ref_tok.clean_fn is not open_clip.tokenizer._clean_lower:
        raise ExportError(f"{built.extra.get('model_name')} uses a tokenizer edgeinfer's torch-free "
                          f"runtime does not implement ({type(ref_tok).__name__}); only CLIP's BPE "
                          f"tokenizer (open_clip SimpleTokenizer, clean='lower') is supported")
    ctx = int(ref_tok.context_length or cfg.get("context_length", 77))
    tok_path = stage / TOKENIZER_FILE
    write_bpe_vocab(open_clip.tokenizer.default_bpe(), tok_path)
    tok = ClipTokenizer(tok_path, context_length=ctx)
    ours, theirs = tok.encode(PARITY_TEXTS), ref_tok(PARITY_TEXTS).numpy()
    if not np.array_equal(ours, theirs):
        raise ParityError("edgeinfer's tokenizer does not reproduce open_clip's token ids for this "
                          "model; refusing to export a text tower the runtime would feed wrongly")

    # -- text tower -> ONNX, parity
    module, variable = text_tower(clip)
    full_ref = torch_text_runner(_module_classes()[1](clip).eval())
    if variable:  # the trimmed tower must equal open_clip's encode_text, else use the plain one
        ids = tok.encode(PARITY_TEXTS)
        a = torch_text_runner(module)(ids[:, : int(ids.argmax(1).max()) + 1])
        if _cosine_rows(a, full_ref(ids)).min() < 1 - 1e-6:
            module, variable = _module_classes()[1](clip).eval(), False
    _say(progress, f"text tower -> ONNX ({'variable' if variable else 'fixed'} length)")
    opset = int(manifest.get("opset") or getattr(recipe, "opset", 17) or 17)
    out_path = stage / "text.fp32.onnx"
    tmp = stage / ".text.fp32.onnx.tmp"
    try:
        try:
            _export_text_onnx(module, tmp, context_length=ctx, variable_length=variable, opset=opset)
            exporter = "dynamo"
        except ExportError as first:
            _say(progress, f"text tower: torch.export-based exporter failed ({str(first)[:200]}); "
                           f"trying the TorchScript exporter at fixed length")
            module, variable = _module_classes()[1](clip).eval(), False
            _export_text_onnx(module, tmp, context_length=ctx, variable_length=False, opset=opset,
                              exporter="torchscript")
            exporter = "torchscript"
        parity = _text_parity(tmp, full_ref, tok, variable_length=variable)
        if not parity["cosine_min"] >= PARITY_COSINE_MIN:
            raise ParityError(f"CLIP text tower ONNX vs torch: cosine {parity['cosine_min']:.6f} < "
                              f"{PARITY_COSINE_MIN} (max abs diff {parity['max_abs_diff']:.3g})")
        os.replace(tmp, out_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dim = int(full_ref(tok.encode(["x"])).shape[1])
    seq = "sequence" if variable else ctx
    entry = file_entry(out_path, precision="fp32",
                       inputs=[{"name": TEXT_INPUT, "shape": ["batch", seq], "dtype": "int64"}],
                       outputs=[{"name": TEXT_OUTPUT, "shape": ["batch", dim], "dtype": "float32"}],
                       parity=parity, export={"exporter": exporter, "opset": _onnx_opset(out_path),
                                              "variable_length": variable})

    # -- label sets: with torch on a GPU when there is one; on a CPU with the parity-checked
    # text.fp32.onnx in ONNX Runtime (about 1.5x faster than torch eager there, same features
    # within 1e-5). The 80-template ImageNet ensemble is 80,000 prompts: minutes on a CPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sets: dict[str, dict] = {}
    if names:
        if device == "cuda":
            module.to(device)
            run, engine = torch_text_runner(module, device), "torch-cuda"
        else:
            import onnxruntime as ort  # noqa: PLC0415

            sess = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
            run, engine = (lambda b: sess.run(None, {TEXT_INPUT: b})[0]), "onnxruntime-cpu text.fp32.onnx"
        try:
            for name in names:
                labels, tname, tlist = label_set_spec(name, tmpl_cfg.get(name))
                _say(progress, f"label set {name}: {len(labels)} labels x {len(tlist)} templates "
                               f"({tname}) with {engine}")
                emb = label_set_embeddings(run, tok, labels, tlist, variable_length=variable,
                                           batch_size=batch_size, progress=progress)
                f = stage / f"labels.{name}.npy"
                with open(f, "wb") as fh:
                    np.save(fh, emb.astype(np.float32), allow_pickle=False)
                sets[name] = {"file": f.name, "sha256": sha256_file(f), "labels": labels,
                              "templates": len(tlist), "template_set": tname,
                              "template_texts": tlist, "shape": list(emb.shape),
                              "computed_with": engine}
        finally:
            module.to("cpu")

    text = {
        "files": {"fp32": entry},
        "tokenizer": {"type": "clip_bpe", "file": TOKENIZER_FILE, "sha256": sha256_file(tok_path),
                      "context_length": ctx, "sot_token_id": tok.sot_token_id,
                      "eot_token_id": tok.eot_token_id, "vocab_size": tok.vocab_size,
                      "clean": "lower",
                      "source": "open_clip SimpleTokenizer (bpe_simple_vocab_16e6, first "
                                "48,894 merges)"},
        "context_length": ctx,
        "variable_length": variable,
        "pool": "argmax",
        "embedding_dim": dim,
        "logit_scale": float(built.extra.get("logit_scale")
                             or clip.logit_scale.detach().exp().item()),
        "logit_bias": built.extra.get("logit_bias"),
        "label_sets": sets,
        "default_label_set": names[0] if names else None,
        "templates": list(prompt_data()["templates"]["custom"]),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }
    manifest["text"] = text
    return text


def with_label_sets(recipe, label_sets: list[str], templates: dict | None = None):
    """A copy of a CLIP ``recipe`` with other label sets / template sets (tests, quick exports)."""
    clip = {**(recipe.clip or {}), "label_sets": list(label_sets)}
    if templates:
        clip["templates"] = {**clip.get("templates", {}), **templates}
    return replace(recipe, clip=clip)
