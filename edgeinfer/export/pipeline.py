"""The export pipeline: recipe -> torch -> ONNX FP32 (checked, simplified, parity-checked)
-> artifact directory; optionally FP16 / INT8 files and, for CLIP, the text tower.

Everything is built in a staging directory next to the target (``staged_directory``) that
replaces the target only when every step succeeded: an error, a failed parity check or Ctrl-C
leaves the previous artifact (or nothing) exactly as it was.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Callable

from ..errors import (ArtifactError, CalibrationError, ExportError, InvalidOptionError, ParityError,
                      WeightsError)
from ..runtime.artifact import (check_writable_dir, file_entry, new_manifest, onnx_file_name,
                                remove_stale_staging, staged_directory, write_manifest)
from .recipes import Recipe, get_recipe

Progress = Callable[[str], None] | None
TARGETS = ("auto", "cpu", "openvino", "tensorrt")
INPUT_NAME = "pixel_values"
DEFAULT_ARTIFACTS = Path("artifacts")


def default_out(model_name: str) -> Path:
    """``artifacts/<model>`` with pass-through prefixes made file-name safe (timm:x -> timm_x)."""
    return DEFAULT_ARTIFACTS / re.sub(r"[^\w.\-]+", "_", model_name).strip("._")


def _say(progress: Progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _weights_label(weights) -> str:
    w = os.fspath(weights) if isinstance(weights, os.PathLike) else str(weights)
    return {"pretrained": "pretrained weights", "random": "RANDOM weights"}.get(w, f"weights from {w}")


def _recipe_dict(recipe: Recipe) -> dict:
    d = dataclasses.asdict(recipe)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _quantize_fn():
    try:
        from ..quantize import quantize_artifact
    except ImportError as e:
        raise ExportError(f"--int8/--fp16 need edgeinfer.quantize.quantize_artifact, which is "
                          f"not available here ({e}). Export FP32 first and add precisions later "
                          f"with `edgeinfer quantize`.") from e
    return quantize_artifact


def _check_replaceable(out: Path, *, force: bool = False) -> None:
    """The swap replaces ``out`` wholesale: only ever do that to an empty directory, or to an
    earlier artifact when ``force`` says so (it deletes its bench/ results and tuning.json too);
    never to a user's folder or file given by mistake."""
    from ..runtime.artifact import MANIFEST_NAME

    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise ArtifactError(f"--out {out} exists and is not a directory; refusing to replace it. "
                            f"Choose another --out DIR.")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST_NAME).is_file():
        raise ArtifactError(f"--out {out} is a non-empty directory that is not an edgeinfer "
                            f"artifact (no {MANIFEST_NAME}); refusing to replace its contents. "
                            f"Choose another --out DIR or remove it.")
    if not force:
        extra = sorted(p.name for p in out.iterdir() if p.name in ("bench", "tuning.json"))
        lost = f" (with its {' and '.join(extra)})" if extra else ""
        raise ArtifactError(f"--out {out} already holds an artifact{lost}; exporting would "
                            f"replace all of it. Pass --force to replace it, or choose another "
                            f"--out DIR.")


def _check_weights(weights) -> None:
    """A weights file must exist before the model is built (seconds to minutes)."""
    w = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    if w in (None, "pretrained", "random") or not isinstance(w, str):
        return
    p = Path(w).expanduser()
    if not p.exists():
        looks_like_word = p.suffix == "" and os.sep not in w
        hint = (" --weights takes 'pretrained', 'random' or the path of a state dict / "
                ".safetensors file." if looks_like_word else
                " Give an existing state dict / .safetensors file, or use `--weights pretrained` "
                "or `--weights random`.")
        raise WeightsError(f"weights file {p} does not exist.{hint}")
    if not p.is_file():
        raise WeightsError(f"weights path {p} is not a regular file; give a state dict file "
                           f"(.pt/.pth/.bin) or a .safetensors file.")


def _check_quantize_inputs(calib, calib_size, max_drop) -> None:
    """--calib / --calib-size / --max-drop problems are reported before the FP32 export and
    parity check (18 s for resnet50, minutes for CLIP), not after."""
    if calib_size is not None and int(calib_size) < 1:
        raise CalibrationError(f"--calib-size must be at least 1 (got {calib_size}).")
    if max_drop is not None and float(max_drop) < 0:
        raise InvalidOptionError(f"--max-drop must be >= 0 (got {max_drop}).")
    if calib is None:
        return
    from ..quantize.calib import calibration_images

    calibration_images(Path(calib))  # raises CalibrationError saying what is wrong


def _usual_permissions(directory: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600 entries; give the artifact the permissions a plain
    mkdir/open would (umask applied), so other users and services can read it."""
    from ..runtime.artifact import usual_mode

    os.chmod(directory, usual_mode(directory=True))
    for p in directory.iterdir():
        if p.is_file():
            os.chmod(p, usual_mode())


def export_model(model_name: str, *, weights: str | os.PathLike = "pretrained",
                 out: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                 opset: int | None = None, seed: int = 0, int8: bool = False, fp16: bool = False,
                 calib: str | os.PathLike | None = None, calib_size: int | None = None,
                 target: str = "auto", max_drop: float | None = None,
                 progress: Progress = None, exporter: str = "auto",
                 label_sets: list[str] | None = None, templates: dict[str, str] | None = None,
                 force: bool = False) -> Path:
    """Export ``model_name`` to an artifact directory and return its path.

    ``weights``: "pretrained" | "random" | a state-dict / safetensors path. ``out`` defaults to
    ``artifacts/<model>``. ``images``: folder for the parity check (generated images when None).
    ``opset``: None = the recipe's opset raised to the exporter's native one (18).
    ``label_sets`` / ``templates`` (CLIP only): label sets whose text embeddings are stored, and
    template set per label set (e.g. {"imagenet": "simple_imagenet"}); None = the recipe's.
    ``force``: replace an existing artifact at ``out`` (refused otherwise: it would delete the
    artifact with its bench results and tuning).
    """
    from .onnx_export import DYNAMO_OPSET, MIN_OPSET, onnx_from_torch
    from .parity import check_parity, check_tolerance, compare_outputs, onnx_outputs, parity_inputs
    from .torch_models import build_model

    t_start = time.perf_counter()
    # -- everything that can be checked cheaply is checked before the slow work
    recipe = get_recipe(model_name)
    if target not in TARGETS:
        raise InvalidOptionError.choice("target", target, TARGETS)
    if opset is not None and int(opset) < MIN_OPSET:
        raise InvalidOptionError(f"--opset {opset}: edgeinfer exports opset >= {MIN_OPSET}.")
    if images is not None and not Path(images).is_dir():
        raise InvalidOptionError(f"--images {images}: not a directory. Give a folder of images, "
                                 f"or leave it out to check parity on generated images.")
    quantize_artifact = _quantize_fn() if (int8 or fp16) else None
    if int8 or fp16:
        _check_quantize_inputs(calib, calib_size, max_drop)
    _check_weights(weights)
    out = Path(out) if out is not None else default_out(model_name)
    check_writable_dir(out)
    _check_replaceable(out, force=force)
    remove_stale_staging(out)  # leftovers of an export of this target that was killed
    opset = int(opset) if opset is not None else max(recipe.opset, DYNAMO_OPSET)

    _say(progress, f"building {recipe.name} ({_weights_label(weights)})")
    t0 = time.perf_counter()
    built = build_model(recipe, weights=weights, seed=seed)
    t_build = time.perf_counter() - t0
    recipe = built.recipe
    is_clip = recipe.kind == "clip"
    output_name = "embedding" if is_clip else "logits"
    spec = recipe.preprocess_dict()

    with staged_directory(out) as stage, contextlib.ExitStack() as cleanup:
        label_job = None
        if is_clip:  # the label sets' arithmetic runs beside everything below (label_job.py)
            from .clip import start_label_sets

            label_job = start_label_sets(built, stage, label_sets=label_sets, templates=templates)
            if label_job is not None:
                cleanup.callback(label_job.cancel)   # an error or Ctrl-C stops the child too
                if hasattr(progress, "background"):
                    progress.background = label_job.status
        onnx_path = stage / onnx_file_name("fp32")
        _say(progress, f"exporting to ONNX (opset {opset})")
        exp = onnx_from_torch(built.module, onnx_path, input_shape=tuple(recipe.input_size),
                              opset=opset, input_name=INPUT_NAME, output_name=output_name,
                              exporter=exporter)

        _say(progress, "parity check: PyTorch vs ONNX Runtime"
             + (f" on images from {images}" if images else " on generated images"))
        t0 = time.perf_counter()
        batch, info, reference = parity_inputs(built.module, spec, images)
        kind = "embedding" if is_clip else "logits"
        try:
            parity = check_parity(built.module, onnx_path, spec, kind=kind, batch=batch,
                                  batch_info=info, reference=reference)
        except ParityError as e:
            if exp.raw_path is None:
                raise
            # the simplifier may be at fault: the unsimplified graph is an honest fallback
            raw_metrics = compare_outputs(reference, onnx_outputs(exp.raw_path, batch), kind=kind)
            try:
                check_tolerance(dict(raw_metrics))
            except ParityError:
                raise e from None
            exp.use_raw(f"onnxslim broke parity ({e}); kept the unsimplified graph")
            parity = check_parity(built.module, onnx_path, spec, kind=kind, batch=batch,
                                  batch_info=info, reference=reference)
        exp.discard_raw()
        t_parity = time.perf_counter() - t0
        out_dim = int(reference.reshape(len(reference), -1).shape[1])

        manifest = new_manifest(
            name=recipe.name, source=recipe.source, source_name=recipe.source_name,
            family=recipe.family, kind=recipe.kind, weights=built.weights_info, preprocess=spec,
            output={"kind": kind, "dim": out_dim, **({"normalized": False} if is_clip else {})},
            labels=built.labels, opset=exp.opset, recipe=_recipe_dict(recipe))
        if built.extra.get("label_ids"):
            manifest["label_ids"] = built.extra["label_ids"]
        warnings = list(built.extra.get("warnings") or []) + exp.warnings
        if info.get("skipped"):
            warnings.append(f"{info['skipped']} undecodable images skipped in the parity check")
        if built.weights_info.get("origin") == "random":
            warnings.insert(0, "RANDOM WEIGHTS: outputs are meaningless; use only to test the "
                               "pipeline, latency and fidelity between precisions")
        manifest["warnings"] = warnings
        io_spec = {
            "inputs": [{"name": INPUT_NAME, "shape": ["batch", *recipe.input_size], "dtype": "float32"}],
            "outputs": [{"name": output_name, "shape": ["batch", out_dim], "dtype": "float32"}],
        }
        manifest["files"]["fp32"] = file_entry(onnx_path, precision="fp32", **io_spec,
                                               parity=parity, export=exp.manifest_info())
        manifest["export"] = {"build_seconds": round(t_build, 2),
                              "onnx_seconds": round(exp.seconds + exp.simplify_seconds, 2),
                              "parity_seconds": round(t_parity, 2)}
        write_manifest(stage, manifest)

        if is_clip:
            from .clip import add_text_tower

            _say(progress, "exporting the CLIP text tower and label embeddings")
            t0 = time.perf_counter()
            add_text_tower(built, stage, manifest, progress=progress, label_sets=label_sets,
                           templates=templates, label_job=label_job)
            manifest["export"]["text_seconds"] = round(time.perf_counter() - t0, 2)
            write_manifest(stage, manifest)

        if quantize_artifact is not None:
            _say(progress, "quantizing: " + " + ".join(p for p, on in (("INT8", int8), ("FP16", fp16)) if on))
            quantize_artifact(stage, int8=int8, fp16=fp16, calib=calib, calib_size=calib_size,
                              target=target, max_drop=max_drop, progress=progress, keep_going=True)
        # quantize_artifact rewrote the manifest on disk; record the total time on top of it
        from ..runtime.artifact import read_manifest

        m = read_manifest(stage)
        if label_job is not None:
            from .clip import finish_label_sets

            t0 = time.perf_counter()
            finish_label_sets(stage, m, label_job, progress=progress)
            m["export"]["text_seconds"] = round(m["export"].get("text_seconds", 0)
                                                + time.perf_counter() - t0, 2)
            if hasattr(progress, "background"):
                progress.background = None
        m.setdefault("export", {})["total_seconds"] = round(time.perf_counter() - t_start, 2)
        write_manifest(stage, m)
        _usual_permissions(stage)
    _say(progress, f"wrote {out}")
    return out
