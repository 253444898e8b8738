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

Why the label sets are fast (the 80-template ImageNet ensemble is 80,000 prompts): where the time
goes is the number of token positions the 12-layer text transformer processes. The exporter

1. never pads to 77: prompts are 9.6 tokens on average (at most 22), and the causal mask makes
   everything after the end-of-text token irrelevant (padding to 77 was 8x the work);
2. computes every template's shared prefix once ("<start> a bad photo of a") and only the
   label-specific rest per prompt, attending to the cached prefix keys/values
   (``SharedPrefixEncoder``): the causal mask makes prefix states independent of what follows,
   so this is exact; it removes 56% of the remaining token positions for ImageNet;
3. in the last layer, runs attention and the MLP for the end-of-text position only (the only one
   CLIP reads) and just the keys/values for the others;
4. encodes identical prompts once, in large batches of prompts of equal length (no padding; up to
   ``LABEL_BATCH`` prompts or ``LABEL_BATCH_TOKENS`` positions), with torch's CPU kernels on all
   cores (or CUDA when present).

Before a label set is written, a sample of its prompts is encoded both ways and compared with the
parity-checked ``text.fp32.onnx`` (cosine >= 0.9999); a text tower this does not fit (not
open_clip's ``CLIP`` with standard residual attention blocks) is encoded with ``text.fp32.onnx``
in ONNX Runtime instead, at trimmed length.

Label sets and templates are in ``edgeinfer/data/clip_prompts.json`` (ImageNet: open_clip's
class names and OpenAI's 80 templates; CIFAR-10: CLIP's 18 templates), read through
``edgeinfer.runtime.zero_shot``. The recipe's ``[clip]`` table chooses them: ``label_sets =
[...]`` and optionally ``templates = {set = "<template set>"}``.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ExportError, InvalidOptionError, ParityError, WeightsError
from ..evaluate.fidelity import cosine_per_row
from ..runtime.artifact import file_entry, sha256_file
from ..runtime.tokenizer import EOT_TOKEN_ID, SOT_TOKEN_ID
from ..runtime.zero_shot import (RateReporter, encode_token_ids, ensemble, label_set_spec,
                                 prompt_data, sample_prompts)
from .built import BuiltModel

TEXT_INPUT = "input_ids"
TEXT_OUTPUT = "text_embedding"  # "embedding" collides with a node name in the dynamo export
TOKENIZER_FILE = "tokenizer_bpe.txt.gz"
PARITY_COSINE_MIN = 0.9999
DEFAULT_LABEL_SETS = ("imagenet", "cifar10")
LABEL_BATCH = 1024          # prompts per text-tower call while computing label sets, and
LABEL_BATCH_TOKENS = 8192   # at most this many token positions per call (activations in cache)
CHECK_LABELS = 8            # labels per label set encoded both ways as the check (x all templates
                            # up to CHECK_TEMPLATES): a few seconds
CHECK_TEMPLATES = 4

Progress = Callable[[str], None] | None
__all__ = ["BuiltModel", "build_clip", "add_text_tower", "label_set_spec", "prompt_data",
           "SharedPrefixEncoder", "label_set_embeddings"]


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


def _is_causal_clip(clip) -> bool:
    from open_clip.model import CLIP  # noqa: PLC0415

    return (isinstance(clip, CLIP) and getattr(clip, "attn_mask", None) is not None
            and getattr(clip, "text_pool_type", "argmax") == "argmax")


def text_tower(clip) -> tuple[Any, bool]:
    """(module, variable_length): the causal variable-length tower when the model allows it."""
    _, full, causal = _module_classes()
    if _is_causal_clip(clip):
        return causal(clip).eval(), True
    return full(clip).eval(), False


def torch_text_runner(module, device: str = "cpu"):
    import torch  # noqa: PLC0415

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(ids)).to(device)).float().cpu().numpy()

    return run


# ------------------------------------------------------------------ label sets, shared prefixes
class SharedPrefixEncoder:
    """open_clip ``CLIP.encode_text`` (unnormalised) for groups of prompts that share a token
    prefix, e.g. one template over all labels: the prefix is run through the transformer once and
    its per-layer keys/values are reused by every prompt of the group (exact under the causal
    mask; see the module docstring). ``encode_group(ids [n, 77]) -> float32 [n, D]``.

    Only for open_clip's ``CLIP`` with ``ResidualAttentionBlock`` text layers (every OpenAI-style
    CLIP); ``supports(clip)`` says whether a model qualifies.
    """

    def __init__(self, clip, *, device: str = "cpu", batch_size: int = LABEL_BATCH,
                 batch_tokens: int = LABEL_BATCH_TOKENS):
        self.clip = clip
        self.blocks = list(clip.transformer.resblocks)
        self.device = device
        self.batch_size = int(batch_size)
        self.batch_tokens = int(batch_tokens)
        self.cast = clip.transformer.get_cast_dtype()

    @staticmethod
    def supports(clip) -> bool:
        try:
            from open_clip.transformer import ResidualAttentionBlock  # noqa: PLC0415
        except ImportError:
            return False
        if not _is_causal_clip(clip) or not getattr(clip.transformer, "batch_first", True):
            return False
        return all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                   and getattr(b.attn, "batch_first", False) and b.attn._qkv_same_embed_dim
                   and b.attn.in_proj_bias is not None for b in clip.transformer.resblocks)

    # -- one residual block over x [B, S, D] given the keys/values of P earlier positions
    def _block(self, blk, x, past, mask):
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: N812,PLC0415

        attn = blk.attn
        b, s, d = x.shape
        h = attn.num_heads
        qkv = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, s, 3, h, d // h).permute(2, 0, 3, 1, 4)
        if past is not None:
            k = torch.cat([past[0].expand(b, -1, -1, -1), k], 2)
            v = torch.cat([past[1].expand(b, -1, -1, -1), v], 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + blk.ls_1(attn.out_proj(o.transpose(1, 2).reshape(b, s, d)))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return x, (k, v)

    def _last_block(self, blk, x, past, key_mask=None):
        """The final block, where only the end-of-text position (the last one: batches hold
        prompts of one length) is read: keys/values for all positions, attention and the MLP
        for that one. ``key_mask`` [B, 1, 1, P + S]: which keys it may see (padded prefixes)."""
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: N812,PLC0415

        attn = blk.attn
        b, s, d = x.shape
        h = attn.num_heads
        hn = blk.ln_1(x)
        kv = F.linear(hn, attn.in_proj_weight[d:], attn.in_proj_bias[d:])
        k, v = kv.view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4)
        k = torch.cat([past[0].expand(b, -1, -1, -1), k], 2)
        v = torch.cat([past[1].expand(b, -1, -1, -1), v], 2)
        q = F.linear(hn[:, -1], attn.in_proj_weight[:d], attn.in_proj_bias[:d]).view(b, h, 1, d // h)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask).reshape(b, d)
        xe = x[:, -1] + blk.ls_1(attn.out_proj(o))
        return xe + blk.ls_2(blk.mlp(blk.ln_2(xe)))

    def _prefix(self, ids: np.ndarray):
        import torch  # noqa: PLC0415

        c, n = self.clip, len(ids)
        x = (c.token_embedding(torch.from_numpy(ids).to(self.device)[None]).to(self.cast)
             + c.positional_embedding[:n].to(self.cast))
        mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        past = []
        for blk in self.blocks:
            x, kv = self._block(blk, x, None, mask)
            past.append(kv)
        return past

    def encode_group(self, ids: np.ndarray, *, report: RateReporter | None = None) -> np.ndarray:
        """One group (e.g. one template over all labels): ``encode_groups`` of that group."""
        return self.encode_groups([ids], report=report)[0]

    def encode_groups(self, groups: list[np.ndarray], *, report: RateReporter | None = None
                      ) -> list[np.ndarray]:
        """``encode_group`` for many groups at once (e.g. every template of a label set over all
        labels), with batches drawn across groups: prompts of equal suffix length from any
        group run together, each attending to its own group's cached prefix (prefixes padded to
        the batch's longest, padding masked out). One template's prompts of one length are only
        tens to hundreds, and the matrix products run near the CPU's peak only from ~1,000 rows
        on; across 80 templates every batch is full."""
        import torch  # noqa: PLC0415

        dev = self.device
        prepared = []
        for ids in groups:
            ids = np.asarray(ids, np.int64)
            uniq, inverse = np.unique(ids, axis=0, return_inverse=True)   # duplicates once
            lengths = uniq.argmax(axis=1) + 1          # up to and including end-of-text
            # shared prefix: the longest one common to the group, leaving each row its
            # end-of-text; batches then hold suffixes of one length, so no padding at all
            p = 0
            while p < int(lengths.min()) - 1 and (uniq[:, p] == uniq[0, p]).all():
                p += 1
            prepared.append((uniq, inverse.reshape(-1), lengths, p))
        outs: list[np.ndarray | None] = [None] * len(groups)
        with torch.inference_mode():
            pasts = [self._prefix(u[0, :p]) for u, _, _, p in prepared]
            pmax = max(p for *_, p in prepared)
            # per layer: every group's prefix keys/values [G, heads, pmax, head_dim], zero-padded
            kv_all = []
            for layer in range(len(self.blocks)):
                k0 = pasts[0][layer][0]
                kk = k0.new_zeros((len(groups), k0.shape[1], pmax, k0.shape[3]))
                vv = kk.clone()
                for g, past in enumerate(pasts):
                    p = prepared[g][3]
                    kk[g, :, :p] = past[layer][0][0]
                    vv[g, :, :p] = past[layer][1][0]
                kv_all.append((kk, vv))
            plen = torch.tensor([p for *_, p in prepared], device=dev)
            gid = np.concatenate([np.full(len(u), g) for g, (u, *_) in enumerate(prepared)])
            row = np.concatenate([np.arange(len(u)) for u, *_ in prepared])
            slen = np.concatenate([lens - p for _, _, lens, p in prepared])
            order = np.lexsort((row, gid, slen))
            c = self.clip
            for s in np.unique(slen):
                sel = order[slen[order] == s]
                s = int(s)
                step = max(1, min(self.batch_size, self.batch_tokens // s))
                for start in range(0, len(sel), step):
                    idx = sel[start:start + step]
                    g_np, r_np = gid[idx], row[idx]
                    ids = np.stack([prepared[g][0][r, prepared[g][3]:prepared[g][3] + s]
                                    for g, r in zip(g_np, r_np)])
                    g_t = torch.from_numpy(g_np).to(dev)
                    pb = plen[g_t]                                     # [B] prefix lengths
                    pc = int(pb.max())
                    pos = pb[:, None] + torch.arange(s, device=dev)    # absolute positions
                    x = (c.token_embedding(torch.from_numpy(ids).to(dev)).to(self.cast)
                         + c.positional_embedding[pos].to(self.cast))
                    keep = torch.arange(pc, device=dev)[None] < pb[:, None]          # [B, pc]
                    mask = torch.cat([keep[:, None, :].expand(-1, s, -1),
                                      torch.ones(s, s, dtype=torch.bool, device=dev).tril()
                                      .expand(len(idx), -1, -1)], 2)[:, None]    # [B,1,s,pc+s]
                    past = [(kk[g_t, :, :pc], vv[g_t, :, :pc]) for kk, vv in kv_all]
                    for blk, kv in zip(self.blocks[:-1], past[:-1]):
                        x, _ = self._block(blk, x, kv, mask)
                    xe = self._last_block(self.blocks[-1], x, past[-1], mask[:, :, -1:])
                    xe = c.ln_final(xe)
                    proj = c.text_projection
                    if proj is not None:
                        xe = proj(xe) if isinstance(proj, _torch_nn().Linear) else xe @ proj
                    y = xe.float().cpu().numpy()
                    for g in np.unique(g_np):
                        if outs[g] is None:
                            outs[g] = np.empty((len(prepared[g][0]), y.shape[1]), np.float32)
                        m = g_np == g
                        outs[g][r_np[m]] = y[m]
                    if report is not None:
                        report.add(len(idx))
        return [o[inv] for o, (_, inv, _, _) in zip(outs, prepared)]


def label_set_embeddings(encode_group: Callable[..., np.ndarray], tokenizer, labels: list[str],
                         templates: list[str], *, progress: Progress = None) -> np.ndarray:
    """[n_labels, D] float32: mean of the L2-normalised template embeddings, renormalised
    (open_clip's ``build_zero_shot_classifier``). ``encode_group(ids [n_labels, 77], report=)``
    encodes one template over all labels (``SharedPrefixEncoder.encode_group`` or a batch
    runner)."""
    groups = [tokenizer.encode([t.format(c) for c in labels]) for t in templates]
    unique = sum(len(np.unique(g, axis=0)) for g in groups)
    report = RateReporter(progress, unique, what="prompts")
    feats = np.stack([encode_group(g, report=report) for g in groups], axis=1)  # label-major
    return ensemble(feats.reshape(len(labels) * len(templates), -1), len(labels), len(templates))


def _batch_group_encoder(run, *, variable_length: bool, batch_size: int):
    """``encode_group`` over a plain text-tower runner (trimmed batches, duplicates once)."""
    def encode_group(ids: np.ndarray, *, report: RateReporter | None = None) -> np.ndarray:
        out = encode_token_ids(run, ids, variable_length=variable_length, batch_size=batch_size)
        if report is not None:
            report.add(len(np.unique(ids, axis=0)))
        return out

    return encode_group


# ------------------------------------------------------------------ ONNX export of the text tower
# the realistic prompts every text check uses, plus texts that stress the tokenizer and the
# lengths: empty, non-ASCII, emoji, longer than 77 tokens
PARITY_TEXTS = sample_prompts()[:8] + [
    "receipts", "Überraschung! 😀 café", "日本語のラベル", "", "a very long label " * 20,
    "shark, dolphin, lizard, giraffe", "itap of a goldfish."]


def _export_text_onnx(module, path: Path, *, context_length: int, variable_length: bool,
                      opset: int, exporter: str = "dynamo") -> None:
    """torch.export-based exporter (symbolic batch and sequence axes); the legacy TorchScript
    exporter bakes nn.MultiheadAttention's shapes into Reshape nodes, so it is used only as a
    fallback (fixed length) and the parity check then decides."""
    import io  # noqa: PLC0415

    import torch  # noqa: PLC0415

    example = torch.zeros(2, context_length, dtype=torch.long)
    example[:, 0] = SOT_TOKEN_ID
    example[:, 1:5] = 320
    example[:, 5] = EOT_TOKEN_ID
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
    cos = np.concatenate([cosine_per_row(g, ref) for g in got])
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


def _label_encoder(clip, variable: bool, onnx_path: Path, tok, names, tmpl_cfg, *,
                   device: str, progress: Progress):
    """(encode_group, engine description, check record) for the label sets: the shared-prefix
    torch encoder when the model qualifies and agrees with ``text.fp32.onnx`` on a sample of the
    label sets' own prompts, else ONNX Runtime on ``text.fp32.onnx`` (trimmed batches)."""
    import onnxruntime as ort  # noqa: PLC0415
    import torch  # noqa: PLC0415

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def ort_run(b: np.ndarray) -> np.ndarray:
        return sess.run(None, {TEXT_INPUT: b})[0]

    fallback = (_batch_group_encoder(ort_run, variable_length=variable, batch_size=256),
                "onnxruntime-cpu text.fp32.onnx", None)
    if not SharedPrefixEncoder.supports(clip):
        return fallback
    enc = SharedPrefixEncoder(clip, device=device)
    got, ref = [], []
    for name in names:
        labels, _, tlist = label_set_spec(name, tmpl_cfg.get(name))
        for t in tlist[:CHECK_TEMPLATES]:
            ids = tok.encode([t.format(c) for c in labels[:CHECK_LABELS]])
            got.append(enc.encode_group(ids))
            ref.append(encode_token_ids(ort_run, ids, variable_length=variable, batch_size=64))
    cos = cosine_per_row(np.concatenate(got), np.concatenate(ref)) if got else np.ones(1)
    check = {"prompts": int(sum(len(g) for g in got)), "cosine_min": float(cos.min()),
             "reference": "text.fp32.onnx (onnxruntime), parity-checked against open_clip"}
    if not check["cosine_min"] >= PARITY_COSINE_MIN:
        _say(progress, f"shared-prefix text encoder disagrees with text.fp32.onnx (cosine "
                       f"{check['cosine_min']:.6f}); encoding label sets with ONNX Runtime")
        return fallback
    threads = torch.get_num_threads() if device == "cpu" else None
    engine = (f"torch-{device} shared-prefix encoder"
              + (f" ({threads} threads)" if threads else ""))
    return (lambda ids, report=None: enc.encode_group(ids, report=report)), engine, check


def start_label_sets(built: BuiltModel, stage_dir: str | os.PathLike, *,
                     label_sets: list[str] | tuple[str, ...] | None = None,
                     templates: dict[str, str | list[str]] | None = None):
    """Start computing the label sets in a background process (``label_job``) while the export
    goes on; None when there is nothing to compute or the shared-prefix encoder does not fit the
    model (``add_text_tower`` then encodes them itself), or on a GPU (faster in-process)."""
    import torch  # noqa: PLC0415

    from .label_job import LabelSetJob  # noqa: PLC0415

    open_clip = _import_open_clip()
    clip = built.extra["clip_model"]
    cfg = dict(getattr(built.recipe, "clip", {}) or {})
    names, tmpl_cfg = _label_set_choice(cfg, label_sets, templates)
    if not names or torch.cuda.is_available() or not SharedPrefixEncoder.supports(clip):
        return None
    tok = built.extra.get("tokenizer") or open_clip.get_tokenizer(built.extra["model_name"])
    sets = {n: label_set_spec(n, tmpl_cfg.get(n)) for n in names}
    return LabelSetJob.start(clip, tok, sets, Path(stage_dir) / ".label-job")


def finish_label_sets(stage_dir: str | os.PathLike, manifest: dict, job, *,
                      progress: Progress = None) -> None:
    """Wait for ``job`` (``start_label_sets``), check a sample of its prompts against the
    parity-checked ``text.fp32.onnx`` and put the label sets into ``stage_dir`` and
    ``manifest["text"]``; on a failed check, encode them with ONNX Runtime instead."""
    import shutil  # noqa: PLC0415

    import onnxruntime as ort  # noqa: PLC0415

    stage = Path(stage_dir)
    text = manifest["text"]
    try:
        t1 = time.perf_counter()
        _say(progress, "waiting for the label sets (background process)")
        got = job.wait(progress)
        sess = ort.InferenceSession(str(stage / text["files"]["fp32"]["file"]),
                                    providers=["CPUExecutionProvider"])

        def ort_run(b: np.ndarray) -> np.ndarray:
            return sess.run(None, {TEXT_INPUT: b})[0]

        variable = bool(text.get("variable_length"))
        sets: dict[str, dict] = {}
        for name, r in got.items():
            ref = encode_token_ids(ort_run, r["check_ids"], variable_length=variable, batch_size=64)
            cos = cosine_per_row(r["check_features"], ref)
            check = {"prompts": int(len(ref)), "cosine_min": float(cos.min()),
                     "reference": "text.fp32.onnx (onnxruntime), parity-checked against open_clip"}
            labels, tname, tlist = job.sets[name]["labels"], job.sets[name]["template_set"], \
                job.sets[name]["templates"]
            emb, engine = r["embeddings"], r["engine"]
            if not check["cosine_min"] >= PARITY_COSINE_MIN:
                _say(progress, f"label set {name}: the background encoder disagrees with "
                               f"text.fp32.onnx (cosine {check['cosine_min']:.6f}); encoding it "
                               f"with ONNX Runtime")
                from ..runtime.tokenizer import ClipTokenizer  # noqa: PLC0415

                tok = ClipTokenizer(stage / TOKENIZER_FILE, context_length=text["context_length"])
                enc = _batch_group_encoder(ort_run, variable_length=variable, batch_size=256)
                emb = label_set_embeddings(enc, tok, labels, tlist, progress=progress)
                engine = "onnxruntime-cpu text.fp32.onnx"
            f = stage / f"labels.{name}.npy"
            with open(f, "wb") as fh:
                np.save(fh, np.asarray(emb, np.float32), allow_pickle=False)
            sets[name] = {"file": f.name, "sha256": sha256_file(f), "labels": labels,
                          "templates": len(tlist), "template_set": tname, "template_texts": tlist,
                          "shape": list(emb.shape), "computed_with": engine, "check": check,
                          "seconds": r["seconds"]}
        text["label_sets"] = sets
        text["default_label_set"] = next(iter(sets), None)
        text["label_sets_wait_seconds"] = round(time.perf_counter() - t1, 2)
        text["label_sets_process"] = job.timing
    finally:
        job.cancel()
        shutil.rmtree(job.work, ignore_errors=True)


def add_text_tower(built: BuiltModel, stage_dir: str | os.PathLike, manifest: dict, *,
                   progress: Progress = None, label_sets: list[str] | tuple[str, ...] | None = None,
                   templates: dict[str, str | list[str]] | None = None,
                   label_job=None) -> dict:
    """Export the text tower, tokenizer and label-set embeddings into ``stage_dir`` and fill
    ``manifest["text"]`` (also returned). Does not write the manifest file itself.

    ``label_sets`` / ``templates`` default to the recipe's ``[clip]`` table (``label_sets``,
    ``templates = {set = template set}``), else imagenet + cifar10 with their standard ensembles.
    With ``label_job`` (``start_label_sets``) the label sets are left to it and to
    ``finish_label_sets``.
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
    timings: dict[str, float] = {}

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
        if cosine_per_row(a, full_ref(ids)).min() < 1 - 1e-6:
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
    timings["tower_seconds"] = round(time.perf_counter() - t0, 2)

    # -- label sets (see the module docstring for why this is fast)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sets: dict[str, dict] = {}
    if names and label_job is None:
        t1 = time.perf_counter()
        clip.to(device)
        try:
            encode_group, engine, check = _label_encoder(clip, variable, out_path, tok, names, tmpl_cfg,
                                                         device=device, progress=progress)
            for name in names:
                labels, tname, tlist = label_set_spec(name, tmpl_cfg.get(name))
                _say(progress, f"label set {name}: {len(labels)} labels x {len(tlist)} templates "
                               f"({tname}) with {engine}")
                t2 = time.perf_counter()
                emb = label_set_embeddings(encode_group, tok, labels, tlist, progress=progress)
                f = stage / f"labels.{name}.npy"
                with open(f, "wb") as fh:
                    np.save(fh, emb.astype(np.float32), allow_pickle=False)
                sets[name] = {"file": f.name, "sha256": sha256_file(f), "labels": labels,
                              "templates": len(tlist), "template_set": tname,
                              "template_texts": tlist, "shape": list(emb.shape),
                              "computed_with": engine, "check": check,
                              "seconds": round(time.perf_counter() - t2, 2)}
        finally:
            clip.to("cpu")
        timings["label_sets_seconds"] = round(time.perf_counter() - t1, 2)

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
        "default_label_set": names[0] if names and label_job is None else None,
        "templates": list(prompt_data()["templates"]["custom"]),
        "export_seconds": round(time.perf_counter() - t0, 2),
        **timings,
    }
    manifest["text"] = text
    return text
