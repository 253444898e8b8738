"""train_report.json / train_report.html and the curve PNGs of a fine-tuning run."""
from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

import numpy as np

CURVES_PNG = "curves.png"


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and o != o:
        return None
    return o


def plot_curves(runs: list[dict], path: Path, *, title: str) -> bool:
    """Loss and accuracy per epoch (train solid, val dashed), one colour per fold. False when
    matplotlib is missing (the JSON/HTML still carry every number)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        warnings.warn("matplotlib is not installed (pip install 'edgeinfer[bench]'): no curve PNG",
                      stacklevel=2)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    many = len(runs) > 1
    for i, r in enumerate(runs):
        h = r["history"]
        ep = [x["epoch"] for x in h]
        c = cmap(i % 10)
        cv = c if many else cmap(1)  # one run: train and val in two colours
        tag = f"fold {r['fold']} " if r.get("fold") else ""
        for ax, key, name in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
            ax.plot(ep, [x[f"train_{key}"] for x in h], "-", color=c, lw=1.0 if many else 1.8,
                    label=f"{tag}train" if not many or i == 0 else None, alpha=0.85)
            if "val_" + key in (h[0] if h else {}):
                ax.plot(ep, [x[f"val_{key}"] for x in h], "--", color=cv, lw=1.0 if many else 1.8,
                        label=f"{tag}val" if not many or i == 0 else None, alpha=0.85)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
    axes[0].set_title("loss (cross-entropy)")
    axes[1].set_title("accuracy")
    axes[1].set_ylim(-0.02, 1.02)
    if many:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color="k", ls="-", label="train"),
                   Line2D([], [], color="k", ls="--", label="val")]
        handles += [Line2D([], [], color=cmap(i % 10), label=f"fold {r['fold']}")
                    for i, r in enumerate(runs)]
        axes[1].legend(handles=handles, fontsize=7, ncol=2, loc="lower right")
    else:
        axes[1].legend(loc="lower right")
        axes[0].legend(loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):  # mean ± std
        if v.get("mean") is None:
            return "–"
        if pct:
            return f"{v['mean'] * 100:.2f} ± {v['std'] * 100:.2f} %"
        return f"{v['mean']:.4f} ± {v['std']:.4f}"
    if isinstance(v, float):
        return f"{v * 100:.2f} %" if pct else f"{v:.4f}"
    return html.escape(str(v))


def _table(rows: list[list[str]], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def render_html(r: dict, *, curves: str | None) -> str:
    e = html.escape
    w = r["initial_weights"]
    origin = w.get("origin")
    wtxt = ("RANDOM initialisation (seed %s): trained from scratch" % w.get("seed") if origin == "random"
            else f"file {w.get('path')}" if origin == "file" else f"pretrained {w.get('tag')}")
    folds = r["data"].get("folds")
    settings = [
        ["model", e(r["model"])], ["initial weights", e(wtxt)],
        ["strategy", e(r["strategy"] + (f" (last {r['unfreeze']} blocks + head)" if r.get("unfreeze") else ""))],
        ["trainable", e(", ".join(r.get("trainable_blocks") or []))
         + f" — {r['params']['trainable']:,} of {r['params']['total']:,} parameters"],
        ["data", e(f"{r['data']['spec']} ({r['data']['source']}): {r['data']['images']} images, "
                   f"{len(r['data']['classes'])} classes")],
        ["evaluation", e(f"{folds}-fold cross-validation (stratified)" if folds else
                         f"separate validation set {r['data']['val_data']}" if r["data"].get("val_data") else
                         f"stratified hold-out split, val fraction {r['data'].get('val_split')}")],
        ["epochs / batch / lr", e(f"{r['epochs']} / {r['batch_size']} / {r['lr']} ({r['optimizer']})")],
        ["normalization", e(f"{r['normalization']}: mean {r['preprocess']['mean']}, std {r['preprocess']['std']}")],
        ["input", e(f"{r['preprocess']['input_size']}, {r['preprocess']['interpolation']}")],
        ["device / seed", e(f"{r['device']} / {r['seed']}")],
        ["weights on disk", e(f"{r['weights_bytes'] / 1e6:.2f} MB ({r['weights_file']})")],
        ["total time", e(f"{r.get('total_seconds', '?')} s")],
        ["load average", e(", ".join(f"{v:.2f}" for v in r["environment"].get("loadavg") or []))],
    ]
    names = {"accuracy": "accuracy (top-1)", "top5": "top-5", "precision": "macro precision",
             "recall": "macro recall", "f1": "macro F1", "mcc": "MCC", "auc": "macro AUC (OvR)"}
    summ = r.get("summary") or {}
    metric_rows = [[names[k], _fmt(summ.get(k), pct=k in ("accuracy", "top5"))]
                   for k in names if k in summ]
    parts = [f"<h1>Fine-tuning report: {e(r['model'])} ({e(r['strategy'])})</h1>"]
    if r.get("random_init"):
        parts.append("<p class=warn>Initial weights were random: this model learned only from "
                     "the data set shown here.</p>")
    parts.append(_table(settings, ["setting", "value"]))
    parts.append(f"<h2>Validation metrics{' (mean ± std over folds)' if folds else ''}</h2>")
    parts.append(_table(metric_rows, ["metric", "value"]) if metric_rows else
                 "<p>No validation data (trained on everything).</p>")
    if curves:
        parts.append(f"<h2>Curves</h2><img src='{e(curves)}' alt='loss and accuracy per epoch'>")
    runs = r["runs"]
    if folds:
        rows = [[str(x["fold"]), _fmt(x["metrics"].get("accuracy"), True), _fmt(x["metrics"].get("f1")),
                 _fmt(x["metrics"].get("mcc")), _fmt(x["metrics"].get("auc")),
                 f"{x['seconds_per_epoch']:.2f} s"] for x in runs]
        parts.append("<h2>Folds</h2>" + _table(rows, ["fold", "accuracy", "macro F1", "MCC", "AUC",
                                                      "time / epoch"]))
    run = runs[-1] if not folds else runs[0]
    rows = [[str(h["epoch"]), f"{h['train_loss']:.4f}", _fmt(h["train_acc"], True),
             _fmt(h.get("val_loss")), _fmt(h.get("val_acc"), True), f"{h['seconds']:.2f} s"]
            for h in run["history"]]
    parts.append(f"<h2>Per epoch{' (fold 1)' if folds else ''}</h2>"
                 + _table(rows, ["epoch", "train loss", "train acc", "val loss", "val acc", "time"]))
    mem = run.get("peak_memory_mb")
    parts.append(f"<p>Peak memory: {mem} MB ({e(run.get('peak_memory_kind', ''))}). "
                 f"Time per epoch: {run.get('seconds_per_epoch') or 0:.2f} s"
                 + (f"; feature cache built once in {run['feature_cache_seconds']} s" if r.get("feature_cache") else "")
                 + ".</p>")
    conf = (run.get("metrics") or {}).get("confusion")
    if conf and len(conf["names"]) <= 30:
        rows = [[e(n)] + [str(v) for v in row] for n, row in zip(conf["names"], conf["matrix"])]
        parts.append("<h2>Confusion matrix" + (" (fold 1)" if folds else "") + "</h2><p>rows: true class, "
                     "columns: predicted</p>" + _table(rows, ["true \\ pred"] + conf["names"]))
    ex = r.get("export")
    if ex:
        parts.append(f"<h2>Exported artifact</h2><p>{e(ex['artifact'])}: {e(', '.join(ex['precisions']))}"
                     + (f"; calibrated on {ex['calibration']['images']} training images only"
                        if ex.get("calibration") else "") + "</p>")
        lab = ex.get("labelled_val")
        if lab:
            rows = [[e(p), _fmt(m["accuracy"], True), _fmt(m.get("f1")), _fmt(m.get("mcc")),
                     f"{m.get('drop_points_vs_fp32', 0):+.2f}"]
                    for p, m in sorted(lab["precisions"].items(),
                                       key=lambda kv: ("fp32", "fp16", "int8").index(kv[0])
                                       if kv[0] in ("fp32", "fp16", "int8") else 9)]
            parts.append(f"<p>Labelled accuracy on the {lab['images']} validation images "
                         f"(ONNX Runtime CPU):</p>"
                         + _table(rows, ["precision", "accuracy", "macro F1", "MCC", "points lost vs FP32"]))
    if r.get("command"):
        parts.append(f"<p>Command: <code>{e(r['command'])}</code></p>")
    css = ("body{font:14px system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
           "text-align:left}th{background:#f3f3f3}img{max-width:100%}.warn{color:#a40;font-weight:600}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>finetune {e(r['model'])}</title>"
            f"<style>{css}</style></head><body>{''.join(parts)}</body></html>")


def write_report(out: Path, report: dict) -> None:
    """train_report.json, curves.png and train_report.html in ``out``."""
    out = Path(out)
    runs = [x for x in report["runs"] if x["history"]]
    title = (f"{report['model']} — {report['strategy']} — "
             f"{report['data']['images']} images, {len(report['data']['classes'])} classes"
             + (f", {report['data']['folds']}-fold" if report['data'].get('folds') else ""))
    ok = plot_curves(runs, out / CURVES_PNG, title=title) if runs else False
    report["files"] = {"weights": report["weights_file"], "labels": report["labels_file"],
                       "report_json": "train_report.json", "report_html": "train_report.html",
                       "curves_png": CURVES_PNG if ok else None}
    (out / "train_report.json").write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    (out / "train_report.html").write_text(render_html(_jsonable(report), curves=CURVES_PNG if ok else None))
