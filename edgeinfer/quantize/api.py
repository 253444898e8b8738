"""``quantize_artifact``: add INT8 / FP16 files to an artifact, every tower, atomically."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ArtifactError, InvalidOptionError
from . import guard

# the text tower's fidelity is measured on runtime.zero_shot.sample_prompts() (one list)
TEXT_CHECK_PROMPTS = 16


def _recipe_quantize_cfg(manifest: dict) -> dict:
    rq = (manifest.get("recipe") or {}).get("quantize")
    if isinstance(rq, dict) and rq:
        return rq
    try:
        from ..catalog import get_recipe

        return dict(get_recipe(manifest["model"]["name"]).quantize)
    except Exception:  # unknown / pass-through model: no transformer-specific rules
        return {}


def _budget_kind(manifest: dict, max_drop: float | None) -> tuple[str, str]:
    """Which fidelity the guard budgets, and why."""
    out_kind = manifest.get("output", {}).get("kind", "logits")
    random = manifest.get("weights", {}).get("origin") == "random"
    if out_kind != "logits":
        kind, why = "embedding", "embedding model: cosine similarity to FP32"
    elif random:
        kind, why = "embedding", ("random weights: near-uniform logits make top-1 flip on noise, "
                                  "so the guard budgets cosine similarity to FP32")
    else:
        kind, why = "classifier", "classifier: top-1 agreement with FP32 on held-out images"
    if max_drop is not None:
        if max_drop < 0:
            raise InvalidOptionError(f"--max-drop must be >= 0 (got {max_drop}).")
        if kind == "embedding" and max_drop >= 0.5:
            raise InvalidOptionError(
                f"--max-drop {max_drop} is in cosine units for this artifact ({why}); use a "
                f"value like 0.01 (cosine >= 0.99).")
    return kind, why


def _tokens(art, n: int) -> tuple[np.ndarray, str]:
    """Token ids for the text tower: the artifact's tokenizer, else synthetic valid sequences."""
    try:
        from ..runtime.tokenizer import tokenize
        from ..runtime.zero_shot import sample_prompts

        prompts = sample_prompts()
        return np.asarray(tokenize([prompts[i % len(prompts)] for i in range(n)], art),
                          dtype=np.int64), "prompts"
    except Exception:  # noqa: BLE001 - tokenizer data absent: synthetic but valid sequences
        from ..runtime.tokenizer import EOT_TOKEN_ID, SOT_TOKEN_ID

        ctx = int((art.manifest.get("text") or {}).get("context_length", 77))
        rng = np.random.default_rng(0)
        ids = np.zeros((n, ctx), np.int64)
        for i in range(n):
            L = int(rng.integers(4, 16))
            ids[i, 0] = SOT_TOKEN_ID
            ids[i, 1:L - 1] = rng.integers(300, 40000, L - 2)
            ids[i, L - 1] = EOT_TOKEN_ID  # end of text: the highest id, where CLIP pools
        return ids, "synthetic-token-ids"


def _parity_summary(fid: dict, images: int, source: str) -> dict:
    return {"images": images, "source": source, "max_abs_diff": fid.get("max_abs_diff"),
            "cosine_min": fid.get("cosine_min"), "cosine_mean": fid.get("cosine_mean"),
            "top1_agreement": fid.get("top1_agreement"), "reference": "fp32"}


_TMP_LOCK = threading.Lock()


@contextlib.contextmanager
def _temp_files_in(directory: Path):
    """ONNX Runtime's quantizer (``ort.quant.*`` augmented models) and the FP16 check's
    subprocess create temporary files through tempfile / $TMPDIR: point both into ``directory``
    (inside the artifact, or the export's staging dir), so a killed run leaves nothing in /tmp
    and its leftovers go with the directory."""
    with _TMP_LOCK:
        old_dir, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
        tempfile.tempdir = os.environ["TMPDIR"] = str(directory)
        try:
            yield
        finally:
            tempfile.tempdir = old_dir
            if old_env is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = old_env


def _remove_stale_work(artifact_dir: Path) -> None:
    """Work directories of quantize runs that were killed (their process is gone)."""
    from ..runtime.artifact import _pid_alive

    for d in artifact_dir.glob(".quantize-*"):
        m = re.match(r"\.quantize-(\d+)-", d.name)
        if d.is_dir() and not d.is_symlink() and not (m and _pid_alive(int(m.group(1)))):
            shutil.rmtree(d, ignore_errors=True)


def quantize_artifact(artifact_dir: str | Path, *, int8: bool = False, fp16: bool = False,
                      calib: str | Path | None = None, calib_size: int | None = None,
                      target: str = "auto", max_drop: float | None = None,
                      progress: Callable[[str], None] | None = None,
                      keep_going: bool = False) -> dict[str, dict]:
    """Add ``model.int8.onnx`` and/or ``model.fp16.onnx`` (and the CLIP text tower's) to an artifact.

    Returns {precision: manifest file entry} ("int8", "fp16", and "text.int8" / "text.fp16" for
    CLIP). Every file is built in a temporary path inside the artifact and only moved into place
    (and into the manifest) once all requested conversions passed their checks; a failure leaves
    the artifact exactly as it was.

    ``keep_going`` (what ``edgeinfer export --int8`` uses): an INT8 file the accuracy guard
    rejects is left out, with the reason in the manifest (``quantization_rejected`` and
    ``warnings``), and the other precisions are still added, instead of failing the whole call
    (and, in an export, losing the FP32 export done before it).
    """
    from ..runtime.artifact import Artifact
    from ..backends.hw import cpu_info
    from .calib import load_calibration
    from .settings import choose_int8_settings, resolve_target

    if not (int8 or fp16):
        raise InvalidOptionError("nothing to do: ask for --int8 and/or --fp16.")
    say = progress or (lambda _m: None)
    art = Artifact(artifact_dir)
    try:
        fp32 = art.path("fp32")
    except ArtifactError as e:
        raise ArtifactError(f"cannot quantize: {e}") from e
    manifest = art.manifest
    fp32_entry = art.entry("fp32")
    out_kind = manifest.get("output", {}).get("kind", "logits")
    fkind = "classifier" if out_kind == "logits" else "embedding"
    bkind, why = _budget_kind(manifest, max_drop)
    budget = guard.DEFAULT_MAX_DROP[bkind] if max_drop is None else float(max_drop)
    target_engine = resolve_target(target)
    quantize_rules = _recipe_quantize_cfg(manifest)
    cpu = cpu_info()

    calib_set = load_calibration(calib, art.preprocess, calib_size=calib_size, labels=art.labels,
                          progress=say)
    from .graph import run_model

    say(f"FP32 reference on {len(calib_set.holdout)} hold-out images")
    ref = run_model(fp32, calib_set.holdout)
    acc32 = guard.labelled_accuracy(ref, calib_set.holdout_labels) if (calib_set.labelled and fkind == "classifier") else None

    def labelled(out) -> dict:
        """Labelled top-1 of a converted model's outputs vs FP32's on the held-out images."""
        acc = guard.labelled_accuracy(out, calib_set.holdout_labels)
        return {"images": sum(y is not None for y in calib_set.holdout_labels), "fp32_top1": acc32,
                "top1": acc, "drop_points": round((acc32 - acc) * 100, 3),
                "random_weights": art.random_weights}

    _remove_stale_work(art.dir)
    work = Path(tempfile.mkdtemp(prefix=f".quantize-{os.getpid()}-", dir=art.dir))
    pending: list[tuple[Path, str, str, dict]] = []   # (tmp file, precision, tower, extra)
    tmp_ctx = _temp_files_in(work)
    tmp_ctx.__enter__()
    try:
        common = {"isa_tier": cpu["int8_tier"], "cpu_model": cpu["model"],
                  "budget_metric_reason": why}
        rejected: dict[str, str] = {}
        if int8:
            tmp = work / "model.int8.onnx"
            from ..errors import AccuracyBudgetError

            try:
                if target_engine == "openvino":
                    from .openvino import quantize_for_openvino

                    info, out = quantize_for_openvino(
                        fp32, tmp, calib=calib_set, quantize_cfg=quantize_rules,
                        output_kind=out_kind, budget_kind=bkind, max_drop=budget, workdir=work,
                        ref=ref, progress=say)
                else:
                    from .int8 import quantize_int8

                    info, out = quantize_int8(
                        fp32, tmp, settings=choose_int8_settings(target_engine, cpu),
                        calib=calib_set, quantize_cfg=quantize_rules, output_kind=out_kind,
                        budget_kind=bkind, max_drop=budget, workdir=work, progress=say,
                        ref_holdout=ref)
            except AccuracyBudgetError as e:
                if not keep_going:
                    raise
                rejected["int8"] = str(e)
                say("INT8 rejected by the accuracy guard; going on without it")
            else:
                extra = {"quantization": {**info, **common}, "fidelity": info["fidelity"],
                         "parity": _parity_summary(info["fidelity"], len(calib_set.holdout),
                                                   calib_set.source)}
                if acc32 is not None:
                    extra["labelled"] = labelled(out)
                pending.append((tmp, "int8", "image", extra))
        if fp16:
            from .fp16 import convert_fp16

            tmp = work / "model.fp16.onnx"
            info, out = convert_fp16(fp32, tmp, holdout=calib_set.holdout, ref=ref, output_kind=out_kind,
                                budget_kind=bkind, max_drop=budget, progress=say,
                                float_ops=quantize_rules.get("fp16_keep_float_ops") or ())
            extra = {"conversion": {**info, **common}, "fidelity": info["fidelity"],
                     "parity": _parity_summary(info["fidelity"], len(calib_set.holdout), calib_set.source)}
            if acc32 is not None:
                extra["labelled"] = labelled(out)
            pending.append((tmp, "fp16", "image", extra))
        if "fp32" in art.files("text"):
            pending.extend(_text_tower(art, work, int8=int8, fp16=fp16, progress=say,
                                       rejected=rejected if keep_going else None,
                                       fp16_float_ops=quantize_rules.get("fp16_keep_float_ops") or ()))
        # everything passed: move the files into place (atomic renames + manifest rewrite)
        results: dict[str, dict] = {}
        for tmp, prec, tower, extra in pending:
            fe = fp32_entry if tower == "image" else art.entry("fp32", "text")
            kw = {k: fe[k] for k in ("inputs", "outputs") if k in fe}
            entry = art.add_file(tmp, precision=prec, tower=tower, **kw, **extra)
            results[prec if tower == "image" else f"{tower}.{prec}"] = entry
            say(f"added {entry['file']}")
        if rejected:
            from ..runtime.artifact import read_manifest, write_manifest

            m = read_manifest(art.dir)
            m["quantization_rejected"] = {**(m.get("quantization_rejected") or {}), **rejected}
            m.setdefault("warnings", []).extend(
                f"{'text tower INT8' if k.startswith('text') else 'INT8'} not written: {v}"
                for k, v in rejected.items())
            write_manifest(art.dir, m)
            art.manifest = m
        return results
    finally:
        tmp_ctx.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


def _text_tower(art, work: Path, *, int8: bool, fp16: bool, progress,
                rejected: dict | None = None, fp16_float_ops=()) -> list:
    """``rejected``: record an INT8 the guard rejects there instead of raising."""
    """CLIP text tower: dynamic (weight-only) INT8 of MatMul/Gemm, and FP16; cosine on prompts."""
    from .graph import run_model

    say = progress
    src = art.path("fp32", "text")
    tokens, tok_src = _tokens(art, TEXT_CHECK_PROMPTS)
    ref = run_model(src, tokens)
    out: list = []
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from .int8 import prepare

        say("text tower: dynamic INT8 (weight-only MatMul/Gemm)")
        t0 = time.perf_counter()
        pre = work / "text.pre.onnx"
        prep = prepare(src, pre)
        tmp = work / "text.int8.onnx"
        quantize_dynamic(str(pre), str(tmp), op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=False, weight_type=QuantType.QInt8)
        q = run_model(tmp, tokens)
        fid = guard.fidelity(ref, q, "embedding")
        info = {"method": "dynamic-weight-only", "engine": "onnxruntime.quantization",
                "op_types": ["MatMul", "Gemm"], "weight_type": "QInt8", "per_channel": False,
                "inputs": tok_src, "graph": prep, "seconds": round(time.perf_counter() - t0, 2)}
        if guard.within(fid, "embedding", guard.DEFAULT_MAX_DROP["embedding"]):
            out.append((tmp, "int8", "text", {"quantization": info, "fidelity": {
                **fid, "prompts": len(tokens), "inputs": tok_src, "reference": "fp32"}}))
        else:
            msg = (f"CLIP text tower INT8 (dynamic, weight-only) cosine to FP32 is "
                   f"{fid['cosine_mean']:.4f} < 0.99 on {len(tokens)} prompts; use --fp16.")
            if rejected is None:
                from ..errors import AccuracyBudgetError

                raise AccuracyBudgetError(msg)
            rejected["text.int8"] = msg
    if fp16:
        from .fp16 import convert_fp16

        say("text tower: FP16")
        tmp = work / "text.fp16.onnx"
        info, _ = convert_fp16(src, tmp, holdout=tokens, ref=ref, output_kind="embedding",
                               progress=say, float_ops=fp16_float_ops)
        out.append((tmp, "fp16", "text", {"conversion": info, "fidelity": info["fidelity"]}))
    return out
