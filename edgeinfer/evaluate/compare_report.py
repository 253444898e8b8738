"""``compare`` outputs: results.json, results.csv, predictions.csv, scores.npz, PNGs (confusion
matrices, ROC, PR, accuracy vs time vs size) and one self-contained report.html.

predictions.csv has one row per image and model (file, true label, top-5 labels and scores over
the data set's classes) and scores.npz the full [N, K] score matrix per model, so every metric
can be recomputed elsewhere. matplotlib is imported at the point of use (``bench`` extra).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError
from ..runtime.artifact import atomic_write_bytes
from . import metrics

CSV_FIELDS = ("name", "status", "mode", "weights", "provider", "precision", "n", "n_scored",
              "top1", "top3", "top5", "macro_precision", "macro_recall", "macro_f1", "mcc",
              "roc_auc", "average_precision", "top1_all_classes", "time_mean_ms",
              "time_median_ms", "time_p90_ms", "images_per_s", "params", "macs", "size_bytes",
              "peak_rss_mb", "artifact", "reason")


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependencyError("matplotlib", "bench", "compare plots") from e
    return plt


def scored(results: dict) -> list[dict]:
    return [m for m in results["models"] if m.get("status") == "ok"]


def _label(m: dict) -> str:
    return f"{m['name']} ({m.get('precision', '?')})"


# ------------------------------------------------------------------ data files
def public(results: dict) -> dict:
    """The results without the in-memory score matrices, NaN/inf as null."""
    from ..bench.report import _clean

    out = dict(results)
    out["models"] = [{k: v for k, v in m.items() if not k.startswith("_")} for m in results["models"]]
    return _clean(out)


def write_json(results: dict, path: Path) -> Path:
    from ..bench.report import _json_default

    atomic_write_bytes(path, (json.dumps(public(results), indent=2, default=_json_default) + "\n").encode())
    return path


def _csv_bytes(header, rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def write_results_csv(results: dict, path: Path) -> Path:
    rows = []
    for m in results["models"]:
        r = []
        for f in CSV_FIELDS:
            v = m.get(f)
            if isinstance(v, float):
                v = "" if not math.isfinite(v) else f"{v:.6g}"
            r.append("" if v is None else v)
        rows.append(r)
    atomic_write_bytes(path, _csv_bytes(CSV_FIELDS, rows))
    return path


def write_predictions_csv(results: dict, path: Path, *, k: int = 5) -> Path:
    classes = results["data"]["classes"]
    header = ["model", "precision", "item", "true_label"]
    for j in range(1, k + 1):
        header += [f"pred_{j}", f"score_{j}"]
    rows = []
    for m in scored(results):
        probs = m["_probs"]
        kk = min(k, probs.shape[1])
        for i, (item, t) in enumerate(zip(results["items"], results["targets"])):
            r = [m["name"], m.get("precision"), item, classes[t]]
            if np.isnan(probs[i]).any():
                r += ["", ""] * k
            else:
                top = metrics.topk_predictions(probs[i:i + 1], kk)[0]
                for c in top:
                    r += [classes[int(c)], f"{probs[i, c]:.6g}"]
                r += ["", ""] * (k - kk)
            rows.append(r)
    atomic_write_bytes(path, _csv_bytes(header, rows))
    return path


def write_scores(results: dict, path: Path) -> Path:
    buf = io.BytesIO()
    arrays = {"targets": np.asarray(results["targets"], np.int64),
              "classes": np.asarray(results["data"]["classes"])}
    for i, m in enumerate(scored(results)):
        arrays[f"model{i}_{m['name']}"] = m["_probs"].astype(np.float32)
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


# ------------------------------------------------------------------ plots
def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_confusion(results: dict, path: Path) -> Path | None:
    ms = scored(results)
    if not ms:
        return None
    plt = _plt()
    classes = results["data"]["classes"]
    K = len(classes)
    cols = min(3, len(ms))
    rows = math.ceil(len(ms) / cols)
    side = 3.2 + 0.22 * min(K, 30)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False)
    for ax, m in zip(axes.flat, ms):
        cm = np.asarray(m["confusion"], np.float64)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{_label(m)}\nacc {m['top1']:.3f}", fontsize=9)
        ticks = range(K)
        names = [c[:12] for c in classes]
        ax.set_xticks(ticks, names if K <= 30 else [""] * K, rotation=90, fontsize=7)
        ax.set_yticks(ticks, names if K <= 30 else [""] * K, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        if K <= 15:
            for a in range(K):
                for b in range(K):
                    if cm[a, b]:
                        ax.text(b, a, int(cm[a, b]), ha="center", va="center", fontsize=6,
                                color="white" if norm[a, b] > 0.5 else "black")
    for ax in list(axes.flat)[len(ms):]:
        ax.axis("off")
    fig.suptitle("Confusion matrices (rows: true class, colour: share of the row)", fontsize=10)
    fig.tight_layout()
    p = _save(fig, path)
    plt.close(fig)
    return p


def micro_curves(m: dict, targets) -> dict:
    """Micro-averaged one-vs-rest ROC and PR curves of one model (every (image, class) pair is
    one binary decision)."""
    probs = m["_probs"]
    ok = ~np.isnan(probs).any(axis=1)
    t = np.asarray(targets)[ok]
    p = probs[ok]
    y = np.zeros_like(p, dtype=bool)
    y[np.arange(len(t)), t] = True
    fpr, tpr, _ = metrics.roc_curve(y.ravel(), p.ravel())
    prec, rec, _ = metrics.precision_recall_curve(y.ravel(), p.ravel())
    return {"fpr": fpr, "tpr": tpr, "precision": prec, "recall": rec,
            "roc_auc_micro": metrics.auc(fpr, tpr), "ap_micro": metrics.average_precision(y.ravel(), p.ravel())}


def plot_curves(results: dict, roc_path: Path, pr_path: Path) -> tuple[Path | None, Path | None]:
    ms = scored(results)
    if not ms:
        return None, None
    plt = _plt()
    out = []
    for kind, path in (("roc", roc_path), ("pr", pr_path)):
        fig, ax = plt.subplots(figsize=(5.6, 4.6))
        for m in ms:
            c = micro_curves(m, results["targets"])
            if kind == "roc":
                ax.plot(c["fpr"], c["tpr"], lw=1.6,
                        label=f"{_label(m)}: micro AUC {c['roc_auc_micro']:.3f}, "
                              f"macro {m.get('roc_auc', float('nan')):.3f}")
            else:
                ax.plot(c["recall"], c["precision"], lw=1.6, drawstyle="steps-post",
                        label=f"{_label(m)}: micro AP {c['ap_micro']:.3f}, "
                              f"macro {m.get('average_precision', float('nan')):.3f}")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_title("ROC, one-vs-rest, micro-averaged over classes", fontsize=10)
            ax.legend(loc="lower right", fontsize=7)
        else:
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_title("Precision-recall, one-vs-rest, micro-averaged over classes", fontsize=10)
            ax.legend(loc="lower left", fontsize=7)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.02)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out.append(_save(fig, path))
        plt.close(fig)
    return out[0], out[1]


def plot_scatter(results: dict, path: Path) -> Path | None:
    """Left: accuracy vs time per image (scored models; marker area ~ size on disk). Right: time
    per image vs size on disk for every model whose costs were measured, scored or not (the
    "custom CNN vs VGG16 vs ResNet50" cost view), labelled with the peak RSS."""
    ms = [m for m in scored(results) if m.get("time_mean_ms")]
    costs = [m for m in results["models"] if m.get("time_mean_ms") and m.get("size_bytes")]
    if not costs:
        return None
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    def log_axis(axis):
        # 1-2-5 ticks with plain numbers: a comparison often spans less than one decade
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 4.8))
    cmap = plt.get_cmap("tab10")
    color = {id(m): cmap(i % 10) for i, m in enumerate(results["models"])}
    if ms:
        sizes = np.asarray([(m.get("size_bytes") or 0) / 2**20 for m in ms])
        area = 40 + 900 * np.sqrt(sizes / max(sizes.max(), 1e-9))
        xs = [m["time_mean_ms"] for m in ms]
        ys = [m["top1"] for m in ms]
        for i, m in enumerate(ms):
            ax.scatter(xs[i], ys[i], s=area[i], alpha=0.55, color=color[id(m)], edgecolor="k", lw=0.6)
            ax.annotate(f"{_label(m)}\n{_mb(m.get('size_bytes'))} MB", (xs[i], ys[i]),
                        textcoords="offset points", xytext=(8, -18), fontsize=7)
        ax.set_xscale("log")
        log_axis(ax.xaxis)
        ax.set_ylim(min(0.0, min(ys) - 0.05), 1.08)
        ax.set_xlim(min(xs) / 2.0, max(xs) * 3.0)
    else:
        ax.text(0.5, 0.5, "no model could be scored on this data set", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("mean time per image, ms (decode + preprocess + inference)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("Accuracy vs time; marker area ~ size on disk", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    tx = [m["time_mean_ms"] for m in costs]
    sz = [m["size_bytes"] / 2**20 for m in costs]
    for m, x, y in zip(costs, tx, sz):
        hollow = m.get("status") != "ok"
        bx.scatter(x, y, s=70, color="none" if hollow else color[id(m)],
                   edgecolor=color[id(m)], lw=1.6, zorder=3)
        rss = m.get("peak_rss_mb")
        bx.annotate(f"{_label(m)}" + (f"\npeak RSS {rss:.0f} MB" if rss else "")
                    + (" (not scored)" if hollow else ""), (x, y), textcoords="offset points",
                    xytext=(7, 4), fontsize=7)
    bx.set_xscale("log")
    bx.set_yscale("log")
    log_axis(bx.xaxis)
    log_axis(bx.yaxis)
    bx.set_xlim(min(tx) / 2.0, max(tx) * 4.0)
    bx.set_ylim(min(sz) / 2.0, max(sz) * 3.0)
    bx.set_xlabel("mean time per image, ms")
    bx.set_ylabel("size on disk, MB")
    bx.set_title("Costs of every model (hollow: not scored on this data set)", fontsize=10)
    bx.grid(alpha=0.3, which="both")
    fig.tight_layout()
    p = _save(fig, path)
    plt.close(fig)
    return p


def read_results(out_dir) -> dict:
    """results.json + scores.npz of an earlier run, as ``compare`` returned them (to re-render
    the report and plots without running the models again)."""
    out = Path(out_dir)
    res = json.loads((out / "results.json").read_text())
    z = np.load(out / "scores.npz")
    keys = sorted((k for k in z.files if k.startswith("model")),
                  key=lambda k: int(k[5:].split("_", 1)[0]))
    for m, k in zip([m for m in res["models"] if m.get("status") == "ok"], keys):
        m["_probs"] = z[k].astype(np.float64)
    return res


# ------------------------------------------------------------------ HTML
def _fmt(v, nd=3, unit=""):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}{unit}"
    return f"{v}{unit}"


def _mb(n) -> str:
    if not n:
        return "—"
    mb = n / 2**20
    return f"{mb:.2f}" if mb < 10 else f"{mb:.1f}" if mb < 100 else f"{mb:.0f}"


def _short(n) -> str:
    if n is None:
        return "—"
    for s_, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= d:
            return f"{n / d:.3g}{s_}"
    return str(n)


def _human(n, unit=""):
    if n is None:
        return "—"
    for s, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= d:
            return f"{n / d:.2f} {s}{unit}"
    return f"{n} {unit}".strip()


def model_rows(results: dict) -> list[list[str]]:
    rows = []
    for m in results["models"]:
        ok = m.get("status") == "ok"
        rows.append([
            m["name"] + (" [random]" if m.get("random_weights") else ""),
            m.get("mode", "—") if ok else m.get("status", ""),
            f"{m.get('provider', '—')}/{m.get('precision', '—')}" if m.get("provider") else "—",
            _fmt(m.get("top1")), _fmt(m.get("top3")), _fmt(m.get("macro_precision")),
            _fmt(m.get("macro_recall")), _fmt(m.get("macro_f1")), _fmt(m.get("mcc")),
            _fmt(m.get("roc_auc")),
            _fmt(m.get("time_mean_ms"), 2), _fmt(m.get("time_p90_ms"), 2),
            _fmt(m.get("images_per_s"), 1), _human(m.get("params")), _human(m.get("macs")),
            _mb(m.get("size_bytes")),
            _fmt(m.get("peak_rss_mb"), 0)])
    return rows


HEADERS = ["model", "mode", "engine/precision", "top-1", "top-3", "precision (macro)",
           "recall (macro)", "F1 (macro)", "MCC", "ROC AUC (macro OvR)", "ms/image (mean)",
           "ms/image (p90)", "images/s", "params", "MACs", "size on disk (MB)", "peak RSS (MB)"]


def _machine_html(results: dict) -> str:
    from ..bench.report import _e, _table

    m = results["machine"]
    cpu = m["cpu"]
    isa = ", ".join(k for k, v in cpu.get("isa", {}).items() if v is True) or "none"
    gpus = "; ".join(f"{g['name']} ({g.get('memory_mb')} MB)" for g in m.get("gpus", [])) or "none"
    la = results.get("loadavg")
    kv = [["CPU", cpu["model"]], ["cores (usable)", f"{cpu['cores']} ({cpu.get('usable_cores')})"],
          ["INT8 tier", cpu.get("int8_tier")], ["ISA features", isa],
          ["memory", f"{m.get('memory_mb')} MB"], ["GPU", gpus], ["OS", m.get("os")],
          ["Python", m.get("python")],
          ["load average (1/5/15 min) at the end", " / ".join(f"{x:.2f}" for x in la) if la else "—"]]
    kv += [[k, v] for k, v in m.get("libraries", {}).items()]
    return "<h2>Machine</h2>" + _table(["", "value"], [[k, str(v)] for k, v in kv],
                                       left={0, 1}).replace("<table>", "<table class='kv'>") + \
        f"<p class='sub'>host id {_e(m.get('hostname_hash'))}</p>"


def write_html(results: dict, path: Path, pngs: dict) -> Path:
    from ..bench.report import CSS, _e, _table

    d = results["data"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>edgeinfer compare: "
             f"{_e(Path(d['spec']).name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Model comparison on {_e(Path(d['spec']).name)}</h1>",
             f"<p class='sub'>{_e(d['n'])} images drawn with seed {_e(d['seed'])} from "
             f"{_e(d['size'])} ({_e(d['source'])}: {_e(d['spec'])}); {len(d['classes'])} classes, "
             f"{len(d['classes_in_sample'])} present in the sample · edgeinfer "
             f"{_e(results['edgeinfer_version'])} · {_e(results['created'])}</p>"]
    rnd = [m["name"] for m in results["models"] if m.get("random_weights")]
    if rnd:
        parts.append("<div class='banner'>RANDOM WEIGHTS: " + _e(", ".join(rnd)) +
                     "<small>These models were exported with randomly initialised weights: their "
                     "accuracy is chance level by construction and says nothing about the "
                     "architecture. Their time, size and memory columns are real.</small></div>")
    if results.get("command"):
        parts.append(f"<p class='sub'>command: <code>{_e(results['command'])}</code></p>")
    parts.append("<h2>Models side by side</h2>")
    parts.append(_table(HEADERS, model_rows(results), left={0, 1, 2}))
    notes = [m for m in results["models"] if m.get("status") != "ok"]
    if notes:
        parts.append("<ul>" + "".join(f"<li><b>{_e(m['name'])}</b>: {_e(m.get('reason', m['status']))}</li>"
                                      for m in notes) + "</ul>")
    fails = [(m["name"], f) for m in scored(results) for f in m.get("failures", [])]
    if fails:
        parts.append("<p class='sub'>images that could not be read (left out of the metrics): " +
                     _e("; ".join(f"{n}: {f['item']} ({f['error']})" for n, f in fails[:10])) + "</p>")
    parts.append("<div class='info'>" + "<br>".join(_e(s) for s in results.get("metric_notes", []))
                 + "</div>")
    def img(key, title):
        p = pngs.get(key)
        if not p:
            return ""
        b64 = base64.b64encode(Path(p).read_bytes()).decode()
        return f"<img class='plot' alt='{_e(title)}' src='data:image/png;base64,{b64}'>"

    parts.append("<h2>Accuracy, time, size</h2>" + img("scatter", "accuracy vs time vs size"))
    parts.append("<h2>Confusion matrices</h2>" + img("confusion", "confusion matrices"))
    curves = img("roc", "ROC curves") + img("pr", "precision-recall curves")
    if curves:  # side by side: the same models, two views
        parts.append("<h2>ROC and precision-recall curves</h2><div style='display:flex;gap:16px;"
                     "flex-wrap:wrap;align-items:flex-start'>" + curves + "</div>")
    ms = scored(results)
    if ms:
        head = ["class", "support"] + [f"{_label(m)} AUC / AP" for m in ms]
        rows = []
        for c, name in enumerate(d["classes"]):
            r = [name, str(d["support"][c])]
            for m in ms:
                v = m.get("per_class", {}).get(name)
                r.append(f"{v['roc_auc']:.3f} / {v['average_precision']:.3f}" if v else "—")
            rows.append(r)
        parts.append("<h2>Per class (one-vs-rest)</h2>" + _table(head, rows, left={0}))
    parts.append("<h2>Engine selection</h2><ul>" + "".join(
        f"<li><b>{_e(m['name'])}</b>: {_e(m.get('provider'))}/{_e(m.get('precision'))} — "
        f"{_e(m.get('selection_reason', ''))}</li>" for m in results["models"] if m.get("provider"))
        + "</ul>")
    parts.append(_machine_html(results))
    parts.append("<p class='sub'>Files: results.json, results.csv, predictions.csv (top-5 per image "
                 "and model), scores.npz (all scores), *.png.</p></body></html>")
    atomic_write_bytes(path, "".join(parts).encode())
    return path


def write_all(results: dict, out_dir) -> dict:
    """Every output file into ``out_dir``; returns {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": write_json(results, out / "results.json"),
             "csv": write_results_csv(results, out / "results.csv"),
             "predictions": write_predictions_csv(results, out / "predictions.csv"),
             "scores": write_scores(results, out / "scores.npz")}
    pngs = {"confusion": plot_confusion(results, out / "confusion.png"),
            "scatter": plot_scatter(results, out / "scatter.png")}
    pngs["roc"], pngs["pr"] = plot_curves(results, out / "roc.png", out / "pr.png")
    files.update({k: v for k, v in pngs.items() if v})
    files["html"] = write_html(results, out / "report.html", pngs)
    return files


# ------------------------------------------------------------------ terminal
def console_tables(results: dict):
    """Two rich tables that fit 80 columns: quality, then cost."""
    from rich import box
    from rich.table import Table

    def tbl(title):  # no vertical rules: nine columns and a model name fit in 80 characters
        return Table(title=title, title_style="bold", pad_edge=False, box=box.SIMPLE_HEAD)

    q = tbl("accuracy (macro P/R/F1; AUC one-vs-rest)")
    for c in ("model", "prec", "top1", "top3", "F1", "MCC", "AUC", "P", "R"):
        q.add_column(c, justify="left" if c == "model" else "right", no_wrap=c != "model",
                     min_width=14 if c == "model" else None, overflow="fold")
    c_ = tbl("cost per image (decode+preprocess+inference)")
    for c in ("model", "engine", "ms", "p90", "img/s", "params", "MACs", "MB", "RSS"):
        c_.add_column(c, justify="left" if c == "model" else "right", no_wrap=c != "model",
                      min_width=14 if c == "model" else None, overflow="fold")
    for m in results["models"]:
        name = m["name"] + ("*" if m.get("random_weights") else "")   # * = random weights
        if m.get("status") != "ok":
            q.add_row(name, "[yellow]skip[/]", *(["—"] * 7))  # the reason is printed below
            if m.get("time_mean_ms"):  # not scored, but its costs were measured
                c_.add_row(name, m.get("provider"), _fmt(m.get("time_mean_ms"), 1),
                           _fmt(m.get("time_p90_ms"), 1), _fmt(m.get("images_per_s"), 1),
                           _short(m.get("params")), _short(m.get("macs")),
                           _mb(m.get("size_bytes")), _fmt(m.get("peak_rss_mb"), 0))
            continue
        q.add_row(name, m.get("precision"), _fmt(m.get("top1")), _fmt(m.get("top3")),
                  _fmt(m.get("macro_f1")), _fmt(m.get("mcc")), _fmt(m.get("roc_auc")),
                  _fmt(m.get("macro_precision")), _fmt(m.get("macro_recall")))
        c_.add_row(name, m.get("provider"), _fmt(m.get("time_mean_ms"), 1),
                   _fmt(m.get("time_p90_ms"), 1), _fmt(m.get("images_per_s"), 1),
                   _short(m.get("params")), _short(m.get("macs")),
                   _mb(m.get("size_bytes")), _fmt(m.get("peak_rss_mb"), 0))
    return q, c_

