"""``finetune``: data set + model + strategy -> weights.safetensors, labels.txt, train_report.json/html,
curve PNGs, and optionally an exported (and quantized) artifact with the new labels."""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InvalidOptionError, MissingDependencyError
from ..runtime.artifact import usual_mode
from .data import load_train_data, preprocess_items, stratified_folds, stratified_split
from .loop import fit, pick_device
from .model import NORMALIZATIONS, STRATEGIES, build_train_model

WEIGHTS_FILE = "weights.safetensors"
LABELS_FILE = "labels.txt"
REPORT_JSON = "train_report.json"
CALIB_MAX = 256          # training images handed to the INT8 calibrator
SUMMARY_KEYS = ("accuracy", "top5", "precision", "recall", "f1", "mcc", "auc")


def _say(progress, msg: str) -> None:
    if progress:
        progress(msg)


def _spec(recipe, normalization: str | None) -> dict:
    spec = recipe.preprocess_dict()
    if normalization is not None:
        if normalization not in NORMALIZATIONS:
            raise InvalidOptionError.choice("normalization", normalization, NORMALIZATIONS)
        mean, std = NORMALIZATIONS[normalization]
        spec["mean"], spec["std"] = list(mean), list(std)
    return spec


def _mean_std(values: list) -> dict:
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    # sample standard deviation (ddof=1), the usual "mean ± std" of a k-fold report
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v))}


def _save_weights(module, path: Path, meta: dict) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise MissingDependencyError("safetensors", "export", "writing fine-tuned weights") from e
    sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)
    os.chmod(path, usual_mode())  # readable like any file the user writes


def _run_record(res, *, fold: int | None, n_train: int, n_val: int) -> dict:
    return {"fold": fold, "train_images": n_train, "val_images": n_val, "history": res.history,
            "metrics": res.metrics, "seconds": round(res.seconds, 3),
            "feature_cache_seconds": round(res.feature_seconds, 3),
            "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in res.history])), 4)
            if res.history else None,
            "peak_memory_mb": None if res.peak_memory_mb is None else round(res.peak_memory_mb, 1),
            "peak_memory_kind": res.memory_kind}


def finetune(model: str, *, data: str | os.PathLike, out: str | os.PathLike,
             weights: str = "pretrained", strategy: str = "head", unfreeze: int = 1,
             epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
             normalization: str | None = None, val_split: float | None = 0.2,
             val_data: str | os.PathLike | None = None, folds: int | None = None, seed: int = 0, device: str = "auto",
             export: bool = False, int8: bool = False, fp16: bool = False,
             threads: int | None = None, progress: Callable[[str], None] | None = None,
             show_bars: bool = True, command: str | None = None) -> dict:
    """Fine-tune ``model`` on ``data`` and write the results to ``out``; returns the report dict.

    ``strategy``: head | partial (last ``unfreeze`` blocks + head) | full. ``val_split``: fraction
    held out per class (None or 0: train on everything, no validation). ``val_data``: a separate
    validation set SPEC with the same classes instead (all of ``data`` trains). ``folds``: K-fold cross
    validation instead (every fold from the same initial weights; the saved weights are a final
    run on all the data). ``normalization``: None (the recipe's), "imagenet" or "half" (0.5/0.5).
    ``export``: also write ``out/artifact`` (``int8`` / ``fp16`` add those files, calibrated on
    training images only, with every precision's labelled accuracy on the validation split).
    ``threads``: PyTorch CPU threads for this run (None: PyTorch's default, one per core; on a
    busy machine fewer threads avoid OpenMP oversubscription, which costs several times the time).
    """
    import torch

    if threads is not None:
        if int(threads) < 1:
            raise InvalidOptionError(f"--threads must be >= 1 (got {threads})")
        old = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return finetune(model, data=data, out=out, weights=weights, strategy=strategy,
                            unfreeze=unfreeze, epochs=epochs, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, normalization=normalization,
                            val_split=val_split, val_data=val_data, folds=folds, seed=seed, device=device,
                            export=export, int8=int8, fp16=fp16, threads=None, progress=progress,
                            show_bars=show_bars, command=command)
        finally:
            torch.set_num_threads(old)

    from ..export.recipes import get_recipe

    if strategy not in STRATEGIES:
        raise InvalidOptionError.choice("strategy", strategy, STRATEGIES)
    for name, v in (("epochs", epochs), ("batch-size", batch_size)):
        if int(v) < 1:
            raise InvalidOptionError(f"--{name} must be >= 1 (got {v})")
    if lr <= 0:
        raise InvalidOptionError(f"--lr must be > 0 (got {lr})")
    if (int8 or fp16) and not export:
        raise InvalidOptionError("--int8/--fp16 need --export")
    if folds and val_data is not None:
        raise InvalidOptionError("--folds and --val-data exclude each other (k-fold validates on "
                                 "its own folds)")
    if folds is not None and folds < 2:
        raise InvalidOptionError(f"--folds must be at least 2 (got {folds})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    get_recipe(model)  # an unknown model name fails here, before any data is read
    dev = pick_device(device)
    t_all = time.perf_counter()

    _say(progress, f"reading {data}")
    td = load_train_data(data)
    classes = td.classes
    # the recipe's preprocessing is resolved when the model is built (timm/torchvision pass-through)
    built, tm = build_train_model(model, weights=weights, num_classes=len(classes), seed=seed)
    spec = _spec(built.recipe, normalization)
    _say(progress, f"preprocessing {len(td)} images to {spec['input_size'][1]}x{spec['input_size'][2]}")
    x_all, kept = preprocess_items(td.items, spec)
    skipped = len(td) - len(kept)
    y_all = td.targets[kept]
    items = [td.items[i] for i in kept]
    if val_data is not None:
        from ..evaluate.datasets import load_labelled

        vd = load_labelled(val_data, classes)  # class names must match the training set's
        _say(progress, f"preprocessing {len(vd.paths)} validation images from {val_data}")
        x_extra, vkept = preprocess_items(list(vd.paths), spec)
        n_train = len(y_all)
        x_all = np.concatenate([x_all, x_extra])
        y_all = np.concatenate([y_all, np.asarray(vd.targets, np.int64)[vkept]])
    init_state = {k: v.clone() for k, v in tm.module.state_dict().items()}

    def fresh_model():
        tm.module.load_state_dict(init_state)  # every fold / final run starts from the same point
        return tm

    common = dict(classes=classes, strategy=strategy, unfreeze=unfreeze, epochs=epochs,
                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, device=dev,
                  progress=show_bars)
    runs: list[dict] = []
    val_idx = np.arange(0)
    train_idx = np.arange(len(y_all))
    if folds:
        for k, (tr, va) in enumerate(stratified_folds(y_all, folds=folds, seed=seed)):
            _say(progress, f"fold {k + 1}/{folds}: {len(tr)} train / {len(va)} val images")
            res = fit(fresh_model(), x_all[tr], y_all[tr], x_all[va], y_all[va], seed=seed,
                      label=f"fold {k + 1}/{folds}", **common)
            runs.append(_run_record(res, fold=k + 1, n_train=len(tr), n_val=len(va)))
        _say(progress, f"final run on all {len(y_all)} images (the saved weights)")
        res = fit(fresh_model(), x_all, y_all, None, None, seed=seed, label="final", **common)
        final = _run_record(res, fold=None, n_train=len(y_all), n_val=0)
    else:
        if val_data is not None:
            train_idx, val_idx = np.arange(n_train), np.arange(n_train, len(y_all))
        elif val_split:
            train_idx, val_idx = stratified_split(y_all, val_fraction=val_split, seed=seed)
        _say(progress, f"training on {len(train_idx)} images, validating on {len(val_idx)}")
        res = fit(fresh_model(), x_all[train_idx], y_all[train_idx],
                  x_all[val_idx] if len(val_idx) else None,
                  y_all[val_idx] if len(val_idx) else None, seed=seed, label="", **common)
        final = _run_record(res, fold=None, n_train=len(train_idx), n_val=len(val_idx))
        runs.append(final)

    wpath = out / WEIGHTS_FILE
    _save_weights(tm.module, wpath, {"model": model, "classes": json.dumps(classes),
                                     "strategy": strategy, "seed": seed})
    (out / LABELS_FILE).write_text("".join(c + "\n" for c in classes), encoding="utf-8")
    counts = tm.param_counts()
    report = {
        "model": model, "recipe_source": built.recipe.source,
        "initial_weights": built.weights_info,
        "random_init": built.weights_info.get("origin") == "random",
        "strategy": strategy, "unfreeze": unfreeze if strategy == "partial" else None,
        "trainable_blocks": tm.trainable, "params": counts,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "optimizer": "AdamW + cosine decay per step", "loss": "cross-entropy",
        "seed": seed, "device": dev, "torch_threads": torch.get_num_threads(),
        "feature_cache": strategy == "head",
        "preprocess": spec, "normalization": normalization or "recipe",
        "data": {"spec": str(data), "source": td.source, "classes": classes,
                 "images": len(y_all), "skipped_undecodable": skipped,
                 "per_class": np.bincount(y_all, minlength=len(classes)).tolist(),
                 "val_split": None if (folds or val_data is not None) else val_split,
                 "val_data": None if val_data is None else str(val_data), "folds": folds},
        "runs": runs,
        "weights_file": WEIGHTS_FILE, "weights_bytes": wpath.stat().st_size,
        "labels_file": LABELS_FILE,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "cpu": platform.processor() or platform.machine(),
                        "cuda": torch.cuda.get_device_name(0) if dev == "cuda" else None,
                        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "command": command,
    }
    if folds:
        report["final_run"] = final
        report["summary"] = {k: _mean_std([r["metrics"].get(k) for r in runs]) for k in SUMMARY_KEYS}
        report["summary"]["seconds_per_epoch"] = _mean_std([r["seconds_per_epoch"] for r in runs])
    else:
        report["summary"] = {k: final["metrics"].get(k) for k in SUMMARY_KEYS} if final["metrics"] else {}
    report["data"]["images"] = int(len(train_idx) + len(val_idx)) if not folds else len(y_all)
    report["data"]["per_class"] = np.bincount(y_all, minlength=len(classes)).tolist()
    if export:
        report["export"] = export_finetuned(
            out, model=model, weights_path=wpath, spec=spec, normalization=normalization,
            classes=classes, calib_items=[items[i] for i in train_idx],  # training images only
            calib_targets=y_all[train_idx], x_val=x_all[val_idx] if len(val_idx) else None,
            y_val=y_all[val_idx] if len(val_idx) else None, int8=int8, fp16=fp16, seed=seed,
            train_info={k: report[k] for k in ("strategy", "epochs", "seed", "initial_weights")},
            progress=progress)
    report["total_seconds"] = round(time.perf_counter() - t_all, 2)
    from .report import write_report

    write_report(out, report)
    return report


# ---------------------------------------------------------------- export
def _write_calib_folder(folder: Path, items: list, targets: np.ndarray, classes: list[str],
                        seed: int) -> int:
    """Training images as an ImageFolder (class -> PNG/link) for the INT8 calibrator; up to
    CALIB_MAX of them, spread over the classes."""
    import re

    from PIL import Image

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    per = max(1, CALIB_MAX // max(1, len(classes)))
    taken: dict[int, int] = {}
    n = 0
    for i in order:
        c = int(targets[i])
        if taken.get(c, 0) >= per:
            continue
        taken[c] = taken.get(c, 0) + 1
        d = folder / (re.sub(r"[^\w.\-]+", "_", classes[c]) or f"class{c}")
        d.mkdir(parents=True, exist_ok=True)
        it = items[i]
        if isinstance(it, (str, Path)):
            dst = d / f"{n:05d}{Path(it).suffix.lower()}"
            try:
                os.symlink(Path(it).absolute(), dst)
            except OSError:
                shutil.copyfile(it, dst)
        else:
            Image.fromarray(np.asarray(it, np.uint8)).save(d / f"{n:05d}.png")
        n += 1
    return n


def _labelled_per_precision(art_dir: Path, x_val: np.ndarray, y_val: np.ndarray,
                            classes: list[str]) -> dict:
    """Labelled metrics of every precision file on the validation tensors (ONNX Runtime CPU)."""
    from ..runtime.artifact import Artifact
    from .loop import val_metrics

    import edgeinfer

    out = {}
    for prec in Artifact(art_dir).precisions():
        with edgeinfer.load(art_dir, precision=prec, provider="cpu") as m:
            logits = np.concatenate([m.infer(x_val[s:s + 64]) for s in range(0, len(x_val), 64)])
        z = logits - logits.max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        met = val_metrics(probs, y_val, classes)
        met.pop("confusion", None)
        out[prec] = {k: met.get(k) for k in ("accuracy", "top5", "f1", "mcc", "auc", "n")}
    if "fp32" in out:
        for prec, met in out.items():
            met["drop_points_vs_fp32"] = round((out["fp32"]["accuracy"] - met["accuracy"]) * 100, 3)
    return out


def export_finetuned(out: Path, *, model: str, weights_path: Path, spec: dict,
                     normalization: str | None, classes: list[str], calib_items: list,
                     calib_targets: np.ndarray, x_val, y_val, int8: bool, fp16: bool, seed: int,
                     train_info: dict, progress=None) -> dict:
    """``out/artifact``: the exporter's FP32 artifact of the fine-tuned weights (labels from
    labels.txt), the training preprocessing, then INT8/FP16 calibrated on training images only,
    and the labelled accuracy of every precision on the validation split in the manifest."""
    from ..export.pipeline import export_model
    from ..runtime.artifact import read_manifest, write_manifest

    art = out / "artifact"
    _say(progress, f"exporting {model} with the fine-tuned weights to {art}")
    export_model(model, weights=weights_path, out=art, seed=seed, progress=progress)
    m = read_manifest(art)
    if m.get("labels") != classes:
        m["labels"] = list(classes)
    if normalization is not None:  # the model was trained with another mean/std than the recipe's
        m["preprocess"]["mean"], m["preprocess"]["std"] = spec["mean"], spec["std"]
    m["finetune"] = {**train_info, "classes": len(classes)}
    write_manifest(art, m)
    info: dict = {"artifact": str(art), "precisions": ["fp32"]}
    if int8 or fp16:
        from ..quantize import quantize_artifact

        with tempfile.TemporaryDirectory(prefix="edgeinfer-calib-") as tmp:
            n = _write_calib_folder(Path(tmp), calib_items, calib_targets, classes, seed)
            _say(progress, f"quantizing ({'INT8 ' if int8 else ''}{'FP16' if fp16 else ''}) "
                           f"calibrated on {n} training images")
            quantize_artifact(art, int8=int8, fp16=fp16, calib=tmp, progress=progress)
        info["calibration"] = {"images": n, "source": "training split only"}
    m = read_manifest(art)
    if x_val is not None and len(x_val):
        _say(progress, f"labelled accuracy of every precision on {len(x_val)} validation images")
        lab = _labelled_per_precision(art, x_val, y_val, classes)
        m["finetune"]["labelled_val"] = {"images": int(len(x_val)), "split": "validation",
                                         "calibrated_on": "training images only",
                                         "precisions": lab}
        info["labelled_val"] = m["finetune"]["labelled_val"]
    else:
        m["finetune"]["labelled_val"] = None
        info["labelled_val"] = None
        info["note"] = "no validation split (--folds or --val-split 0): no labelled accuracy"
    write_manifest(art, m)
    info["precisions"] = sorted(m.get("files", {}))
    return info
