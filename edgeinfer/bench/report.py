"""Bench outputs: results.json, results.csv, pareto.png and one self-contained report.html.

matplotlib is imported at the point of use (Agg backend, no display needed); a missing one
raises ``MissingDependencyError`` naming the ``bench`` extra.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path

from ..errors import MissingDependencyError
from ..runtime.artifact import atomic_write_bytes
from .rows import ROW_KEYS

COLORS = {"cpu": "#1f77b4", "openvino": "#7b3fb5", "cuda": "#2ca02c", "tensorrt": "#d62728",
          "pytorch": "#ff7f0e"}
MARKERS = {"fp32": "o", "fp16": "s", "int8": "D"}


# ------------------------------------------------------------------ helpers
def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o):
    """NaN/inf -> None (strict JSON)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def accuracy_value(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    return None if v is None else float(v)


def plot_rows(results: dict) -> list[dict]:
    """Rows shown in the plot: ok rows at the smallest measured batch size."""
    ok = [r for r in results["rows"] if r["status"] == "ok" and r.get("latency_median_ms")]
    if not ok:
        return []
    b = min(r["batch"] for r in ok)
    return [r for r in ok if r["batch"] == b]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (lower latency x and higher accuracy y are better)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def metric_label(results: dict) -> str:
    m = results["accuracy_metric"]
    return {"top1": "labelled top-1 accuracy (%)",
            "top1_agreement": "top-1 agreement with FP32 (%)",
            "cosine_mean": "mean cosine similarity to FP32"}.get(m, m)


def _metric_scale(results: dict) -> float:
    return 100.0 if results["accuracy_metric"] in ("top1", "top1_agreement") else 1.0


# ------------------------------------------------------------------ writers
def write_json(results: dict, path: Path) -> Path:
    atomic_write_bytes(path, (json.dumps(_clean(results), indent=2, default=_json_default) + "\n").encode())
    return path


def write_csv(results: dict, path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_KEYS, extrasaction="ignore")
    w.writeheader()
    for r in results["rows"]:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in ROW_KEYS})
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def plot_pareto(results: dict, path: Path) -> Path | None:
    """Accuracy vs latency, marker size = peak RSS, the Pareto front highlighted, labelled points."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependencyError("matplotlib", "bench", "the Pareto plot") from e
    rows = [r for r in plot_rows(results) if accuracy_value(r, results["accuracy_metric"]) is not None]
    scale = _metric_scale(results)
    fig, ax = plt.subplots(figsize=(10.5, 5.6), dpi=110)
    model = results["model"].get("name", "model")
    title = f"{model}: accuracy vs latency"
    if rows:
        title += f" (batch {rows[0]['batch']})"
    if results.get("random_weights"):
        title += "  [RANDOM WEIGHTS: fidelity to FP32]"
    ax.set_title(title, fontsize=11)
    if not rows:
        ax.text(0.5, 0.5, "no successful configuration to plot", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        xs = [r["latency_median_ms"] for r in rows]
        ys = [accuracy_value(r, results["accuracy_metric"]) * scale for r in rows]
        mems = [r.get("peak_rss_mb") or 0.0 for r in rows]
        mmax = max(mems) or 1.0
        sizes = [60 + 900 * (m / mmax) if m else 60 for m in mems]
        front = pareto_front(list(zip(xs, ys)))
        if len(front) > 1:
            fx = [xs[i] for i in front]
            fy = [ys[i] for i in front]
            ax.step(fx, fy, where="post", color="#444", lw=1.5, ls="--", zorder=1,
                    label="Pareto front")
        for i, r in enumerate(rows):
            on_front = i in front
            ax.scatter(xs[i], ys[i], s=sizes[i], c=COLORS.get(r["provider"], "#777"),
                       marker=MARKERS.get(r["precision"], "o"), alpha=0.75,
                       edgecolors="black" if on_front else "none", linewidths=2.0 if on_front else 0,
                       zorder=3)
        if max(xs) / max(min(xs), 1e-9) > 8:
            ax.set_xscale("log")
        ax.set_xlabel("median latency per batch (ms, lower is better)")
        ax.set_ylabel(metric_label(results) + " (higher is better)")
        lo, hi = min(ys), max(ys)
        pad = max((hi - lo) * 0.25, 0.5 if scale == 100 else 0.002)
        cap = 100.0 if scale == 100 else 1.0  # agreement / cosine cannot exceed it
        ax.set_ylim(lo - pad, min(hi + pad * 1.6, cap + pad * 0.6))
        xlo, xhi = min(xs), max(xs)
        if ax.get_xscale() == "linear":
            xpad = max((xhi - xlo) * 0.25, xhi * 0.1)
            ax.set_xlim(max(0, xlo - xpad), xhi + xpad * 1.8)
        else:
            ax.set_xlim(xlo / 1.4, xhi * 2.2)
        ax.grid(True, alpha=0.3)
        _label_points(fig, ax, rows, xs, ys, mems, front)
        # legends: colour = engine, shape = precision, size = memory
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", ls="", color=COLORS.get(p, "#777"), label=p, ms=8)
                   for p in dict.fromkeys(r["provider"] for r in rows)]
        handles += [Line2D([], [], marker=MARKERS.get(q, "o"), ls="", color="#999", label=q, ms=8)
                    for q in dict.fromkeys(r["precision"] for r in rows)]
        if len(front) > 1:
            handles.append(Line2D([], [], color="#444", ls="--", label="Pareto front"))
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec="black", mew=2,
                              label="on the front", ms=8))
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  framealpha=0.85, title="size = peak RSS" if any(mems) else "memory not measured",
                  title_fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _label_points(fig, ax, rows, xs, ys, mems, front) -> None:
    """Label every point; pick, per point, the offset whose label box overlaps least with the
    labels already placed (close points would otherwise print on top of each other)."""
    fig.canvas.draw()
    placed: list[tuple[float, float, float, float]] = []
    w, h = 105, 26  # label box in points (2 lines at 8 pt)
    cands = [(9, 6), (9, -30), (-w - 6, 6), (-w - 6, -30), (9, 26), (-w - 6, 26), (9, -50)]
    scale = fig.dpi / 72.0
    order = sorted(range(len(rows)), key=lambda i: (xs[i], -ys[i]))
    for i in order:
        px, py = ax.transData.transform((xs[i], ys[i]))
        best, best_cost = cands[0], None
        for dx, dy in cands:
            x0, y0 = px + dx * scale, py + dy * scale
            box = (x0, y0, x0 + w * scale, y0 + h * scale)
            cost = sum(max(0.0, min(box[2], b[2]) - max(box[0], b[0])) *
                       max(0.0, min(box[3], b[3]) - max(box[1], b[1])) for b in placed)
            # stay inside the axes
            ax_box = ax.get_window_extent()
            if box[0] < ax_box.x0 or box[2] > ax_box.x1 or box[1] < ax_box.y0 or box[3] > ax_box.y1:
                cost += 1e6
            if best_cost is None or cost < best_cost:
                best, best_cost = (dx, dy), cost
        x0, y0 = px + best[0] * scale, py + best[1] * scale
        placed.append((x0, y0, x0 + w * scale, y0 + h * scale))
        mem = f", {mems[i]:.0f} MB" if mems[i] else ""
        r = rows[i]
        ax.annotate(f"{r['provider']}/{r['precision']}\n{ms(xs[i])} ms{mem}", (xs[i], ys[i]),
                    textcoords="offset points", xytext=best, fontsize=8, va="bottom",
                    fontweight="bold" if i in front else "normal",
                    arrowprops=dict(arrowstyle="-", color="#999", lw=0.6) if best != cands[0] else None)


def write_all(results: dict, out_dir) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out_dir / "results.json"), "csv": str(out_dir / "results.csv"),
             "png": str(out_dir / "pareto.png"), "html": str(out_dir / "report.html")}
    results["files"] = files
    write_csv(results, Path(files["csv"]))
    plot_pareto(results, Path(files["png"]))
    write_html(results, Path(files["html"]), png=Path(files["png"]))
    write_json(results, Path(files["json"]))
    for f in files.values():  # mkstemp made them 0600; reports are meant to be shared
        try:
            os.chmod(f, 0o644)
        except OSError:
            pass
    return files


# ------------------------------------------------------------------ formatting
def fmt(v, nd: int = 2, pct: bool = False) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int,)) and not pct:
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return "–"
    if pct:
        return f"{f * 100:.{nd}f}%"
    return f"{f:.{nd}f}"


def ms(v) -> str:
    """A latency with enough digits to tell tiny ones apart."""
    if v is None:
        return "–"
    v = float(v)
    return f"{v:.3f}" if v < 1 else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def observations(results: dict) -> list[str]:
    """Plain-language findings: INT8/FP16 slower than FP32, the fastest, the smallest."""
    notes = []
    ok = [r for r in results["rows"] if r["status"] == "ok" and r.get("latency_median_ms")]
    by = {(r["provider"], r["precision"], r["batch"]): r for r in ok}
    for (prov, prec, b), r in sorted(by.items()):
        if prec == "fp32":
            continue
        base = by.get((prov, "fp32", b))
        if base:
            ratio = r["latency_median_ms"] / base["latency_median_ms"]
            if ratio > 1.02:
                notes.append(f"{prec.upper()} is SLOWER than FP32 on {prov} at batch {b}: "
                             f"{ms(r['latency_median_ms'])} ms vs {ms(base['latency_median_ms'])} ms "
                             f"({ratio:.2f}x).")
            else:
                notes.append(f"{prec.upper()} on {prov} at batch {b} is {1 / ratio:.2f}x the speed of FP32 "
                             f"({ms(r['latency_median_ms'])} ms vs {ms(base['latency_median_ms'])} ms).")
    for r in ok:
        if r["precision"] != "fp32" and r.get("fidelity_pass") is False and r["provider"] != "pytorch":
            notes.append(f"{r['provider']}/{r['precision']} fails the fidelity guard (cosine mean "
                         f"{fmt(r.get('cosine_mean'), 4)}, top-1 agreement "
                         f"{fmt(r.get('top1_agreement'), 1, pct=True)}): auto will not pick it.")
    py = [r for r in ok if r["provider"] == "pytorch"]
    t = (results.get("tuning") or {}).get("entry")
    if py and t:
        b = t.get("batch", 1)
        pr = next((r for r in py if r["batch"] == b), None)
        chosen = next((r for r in ok if r.get("selected")), None)
        if pr and chosen:
            notes.append(_eager_ratio_note(pr, chosen, t, b))
    return list(dict.fromkeys(notes))


def ratio_spread(slow: dict, fast: dict) -> tuple[float, float | None, float | None]:
    """slow/fast latency ratio of two rows: of the medians, and min/max over the rounds (round i
    of one row against round i of the other; None when the rounds were not recorded)."""
    ratio = slow["latency_median_ms"] / fast["latency_median_ms"]
    a, b = slow.get("latency_round_medians_ms") or [], fast.get("latency_round_medians_ms") or []
    per_round = [x / y for x, y in zip(a, b) if y]
    if len(per_round) < 2:
        return ratio, None, None
    return ratio, min(per_round), max(per_round)


def _eager_ratio_note(pr: dict, chosen: dict, t: dict, b: int) -> str:
    ratio, lo, hi = ratio_spread(pr, chosen)
    n = len(pr.get("latency_round_medians_ms") or [])
    spread = f" (from {lo:.2f}x to {hi:.2f}x over {n} rounds)" if lo is not None else ""
    caveat = (" PyTorch is timed in its own process, after the engines, so background load can "
              "differ between them; a wide spread means a busy machine.")
    if ratio >= 1:
        return (f"Chosen configuration ({t['provider']}/{t['precision']}) is {ratio:.2f}x faster "
                f"than PyTorch eager at batch {b}{spread}.{caveat}")
    return (f"PyTorch eager is FASTER than the chosen configuration ({t['provider']}/"
            f"{t['precision']}) at batch {b}: {ms(pr['latency_median_ms'])} ms vs "
            f"{ms(chosen['latency_median_ms'])} ms{spread}.{caveat}")


# ------------------------------------------------------------------ HTML
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px 32px;color:#222;
 max-width:1500px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;
 padding-bottom:4px}
.sub{color:#666;font-size:13px}
.banner{background:#c62828;color:#fff;padding:14px 18px;border-radius:6px;font-size:18px;
 font-weight:600;margin:16px 0}
.banner small{display:block;font-weight:400;font-size:13px;margin-top:4px}
.info{background:#e8f0fe;border-left:5px solid #1a73e8;padding:10px 14px;margin:12px 0;font-size:14px}
.pick{background:#e6f4ea;border-left:5px solid #188038;padding:10px 14px;margin:12px 0;font-size:14px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom} td.l,th.l{text-align:left}
.kv td{white-space:normal;max-width:1000px}
tr.selected td{background:#e6f4ea;font-weight:600}
tr.error td{background:#fdecea} tr.skipped td{color:#888;background:#fafafa}
td.msg{text-align:left;white-space:normal;max-width:520px;font-size:12px}
img.plot{max-width:100%;border:1px solid #ddd;border-radius:4px}
ul{margin:6px 0 6px 18px;font-size:14px} .kv td{text-align:left}
details{margin:8px 0} code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
"""


def _e(s) -> str:
    return html.escape(str(s))


def _table(headers: list[str], rows: list[list[str]], *, row_classes: list[str] | None = None,
           left: set[int] = frozenset()) -> str:
    h = "".join(f"<th class='l'>{_e(c)}</th>" if i in left else f"<th>{_e(c)}</th>"
                for i, c in enumerate(headers))
    body = []
    for k, r in enumerate(rows):
        cls = f" class='{row_classes[k]}'" if row_classes and row_classes[k] else ""
        cells = "".join(c if c.startswith("<td") else
                        (f"<td class='l'>{_e(c)}</td>" if i in left else f"<td>{_e(c)}</td>")
                        for i, c in enumerate(r))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def results_table_html(results: dict) -> str:
    labelled = any(r.get("top1") is not None for r in results["rows"])
    heads = ["engine", "device", "precision", "batch", "median ms", "p90 ms", "p99 ms", "img/s",
             "cold start s", "cold (cache) s", "peak RSS MB", "GPU MB", "file MB",
             "top-1 agree", "top-5 overlap", "cos mean", "cos min"]
    if labelled:
        heads += ["top-1", "top-5", "macro F1", "MCC"]
    rows, classes = [], []
    n = len(heads)
    for r in results["rows"]:
        base = [r["engine"], r.get("device") or "", r["precision"], str(r["batch"])]
        if r["status"] != "ok":
            rows.append(base + [f"<td class='msg' colspan='{n - 4}'><b>{_e(r['status'])}</b>: "
                                f"{_e(r.get('error') or '')}</td>"])
            classes.append(r["status"])
            continue
        cells = base + [ms(r["latency_median_ms"]), ms(r["latency_p90_ms"]),
                        ms(r["latency_p99_ms"]), fmt(r["throughput_ips"], 1),
                        fmt(r["cold_start_s"], 3), fmt(r["cold_start_cached_s"], 3),
                        fmt(r["peak_rss_mb"], 0), fmt(r["gpu_mem_mb"], 0), fmt(r["model_size_mb"], 1),
                        fmt(r["top1_agreement"], 1, True), fmt(r["top5_overlap"], 1, True),
                        fmt(r["cosine_mean"], 5), fmt(r["cosine_min"], 5)]
        if labelled:
            cells += [fmt(r["top1"], 1, True), fmt(r["top5"], 1, True), fmt(r["macro_f1"], 3),
                      fmt(r["mcc"], 3)]
        if r.get("error"):  # ok row with a partial failure (memory measurement)
            cells[-1] = cells[-1]
        rows.append(cells)
        classes.append("selected" if r.get("selected") else "")
    return _table(heads, rows, row_classes=classes, left={0, 1, 2})


def _confusion_html(results: dict) -> str:
    acc = results.get("accuracy") or {}
    key = "cpu/fp32" if "cpu/fp32" in acc else next(iter(acc), None)
    lab = (acc.get(key) or {}).get("labelled") if key else None
    if not lab or "confusion" not in lab or results.get("random_weights"):
        return ""  # confusions of a random model are noise
    conf = lab["confusion"]
    m, names = conf["matrix"], conf["names"]
    pairs = []
    for i, row in enumerate(m):
        for j, c in enumerate(row):
            if i != j and c:
                pairs.append((c, names[i], names[j]))
    pairs.sort(key=lambda t: -t[0])
    rows = [[str(c), a, b] for c, a, b in pairs[:15]]
    diag = sum(m[i][i] for i in range(len(m)))
    return (f"<h2>Confusions ({_e(key)})</h2><p class='sub'>{len(names)} classes present, "
            f"{diag} of {lab['n']} correct. Full matrix in results.json "
            f"(<code>accuracy[key].labelled.confusion</code>). Most frequent confusions:</p>"
            + (_table(["count", "true", "predicted"], rows, left={1, 2}) if rows else "<p>none</p>"))


def write_html(results: dict, path: Path, *, png: Path | None = None) -> Path:
    model = results["model"]
    w = results.get("weights", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgeinfer bench: "
             f"{_e(model.get('name'))}</title><style>{CSS}</style></head><body>"]
    parts.append(f"<h1>edgeinfer bench: {_e(model.get('name'))}</h1>")
    parts.append(f"<div class='sub'>{_e(model.get('source'))}:{_e(model.get('source_name'))} · "
                 f"{_e(model.get('kind'))} · artifact <code>{_e(results['artifact'])}</code> · "
                 f"{_e(results['created'])} · took {fmt(results.get('elapsed_s'), 1)} s</div>")
    if results.get("random_weights"):
        parts.append("<div class='banner'>RANDOM WEIGHTS — this model was exported with randomly "
                     "initialised weights (seed " + _e(w.get("seed", "?")) + ")."
                     "<small>Its predictions are meaningless; the accuracy shown is fidelity to the "
                     "FP32 model (does INT8/FP16 compute the same thing?), not real-world accuracy. "
                     "Re-export with pretrained weights for labelled accuracy.</small></div>")
    imgs = results["images"]
    parts.append(f"<div class='info'><b>Accuracy shown:</b> {_e(results['accuracy_note'])}.<br>"
                 f"<b>Images:</b> {imgs.get('n')} from {_e(imgs.get('source'))}"
                 f"{' (' + _e(imgs['dir']) + ')' if imgs.get('dir') else ''}"
                 f"{'; labelled' if imgs.get('labelled') else '; unlabelled'}"
                 f"{'; ' + str(len(imgs['failed'])) + ' could not be decoded' if imgs.get('failed') else ''}."
                 f"</div>")
    sel = results.get("selection") or {}
    tun = (results.get("tuning") or {}).get("entry")
    pick = [f"<b>provider=\"auto\" selection before this run:</b> {_e(sel.get('provider'))}"
            f"{'/' + _e(sel.get('precision')) if sel.get('precision') else ''} — {_e(sel.get('reason', ''))}"]
    if tun:
        pick.append(f"<b>Measured pick</b> (fastest configuration at batch {tun.get('batch')} whose "
                    f"fidelity meets the guard: cosine mean ≥ {results['settings']['guard']['cosine_mean_min']}"
                    + (f", top-1 agreement ≥ {results['settings']['guard']['top1_agreement_min']:.0%}"
                       if results['settings']['guard']['top1_agreement_min'] else
                       " (random weights: top-1 flips on noise, so only the cosine counts)") + "): "
                    f"<b>{_e(tun['provider'])}/{_e(tun['precision'])}</b>, {ms(tun['latency_ms'])} ms. "
                    f"Written to <code>{_e(results['tuning'].get('file') or 'not written')}</code> "
                    f"(machine key <code>{_e(results['tuning']['key'])}</code>, with the sha256 of each "
                    f"file measured); <code>edgeinfer.load(provider=\"auto\")</code> uses it on this "
                    f"machine until a file is replaced or the engines are upgraded.")
    parts.append("<div class='pick'>" + "<br>".join(pick) + "</div>")
    notes = observations(results)
    if notes:
        parts.append("<h2>Observations</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    if png is not None and Path(png).exists():
        b64 = base64.b64encode(Path(png).read_bytes()).decode()
        parts.append(f"<h2>Accuracy vs latency</h2><img class='plot' alt='Pareto plot' "
                     f"src='data:image/png;base64,{b64}'>")
    parts.append("<h2>Results</h2>" + results_table_html(results))
    parts.append("<p class='sub'>Latency: median / p90 / p99 of ≥"
                 f"{results['settings']['min_runs']} timed runs over ≥{results['settings']['budget_s']} s "
                 "after warm-up, in one process. Cold start, peak RSS and GPU memory: a fresh "
                 "subprocess per configuration (cold = empty engine cache, cache = second start with "
                 "the cache filled; engines without a cache show –). Highlighted row: the measured pick. "
                 "Fidelity is against FP32 on ONNX Runtime CPU.</p>")
    if results.get("pipeline"):
        prow = []
        for p in results["pipeline"]:
            if p["status"] != "ok":
                prow.append([p["provider"], p["precision"], str(p["images"]),
                             f"<td class='msg' colspan='3'>error: {_e(p['error'])}</td>"])
            else:
                prow.append([p["provider"], p["precision"], str(p["images"]), fmt(p["images_per_s"], 1),
                             fmt(p["preprocess_images_per_s"], 1), str(p.get("failures", 0))])
        parts.append("<h2>Pipeline: decode + preprocess + infer</h2>"
                     "<p class='sub'>Throughput over the photo files with <code>edgeinfer.load(...)"
                     ".classify(paths)</code> (one timed pass after a warm-up); the decode+preprocess-only rate is "
                     "shown separately.</p>"
                     + _table(["engine", "precision", "images", "images/s (end to end)",
                               "images/s (decode+preprocess)", "failures"], prow, left={0, 1}))
    if results.get("text_tower"):
        trow = []
        for r in results["text_tower"]:
            if r["status"] != "ok":
                trow.append([r["provider"], r["precision"], "–",
                             f"<td class='msg' colspan='3'>error: {_e(r.get('error') or '')}</td>"])
            else:
                trow.append([r["provider"], r["precision"], str(r["batch"]), ms(r["latency_median_ms"]),
                             fmt(r["prompts_per_s"], 1), fmt(r.get("cosine_min"), 5)])
        parts.append("<h2>CLIP text tower</h2><p class='sub'>Encoding label prompts (runs once per "
                     "label list; the embeddings are cached). Cosine min is against the FP32 text "
                     "tower on 16 prompts.</p>"
                     + _table(["engine", "precision", "prompts per batch", "median ms",
                               "prompts/s", "cosine min"], trow, left={0, 1}))
    parts.append(_confusion_html(results))
    parts.append(_machine_html(results))
    parts.append("<h2>Settings</h2><pre>" + _e(json.dumps(results["settings"], indent=1)) + "</pre>")
    parts.append("<p class='sub'>Generated by <code>edgeinfer bench</code>. Files: results.json, "
                 "results.csv, pareto.png.</p></body></html>")
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path


def _machine_html(results: dict) -> str:
    m = results["machine"]
    cpu = m["cpu"]
    isa = ", ".join(k for k, v in cpu.get("isa", {}).items() if v is True) or "none"
    gpus = "; ".join(f"{g['name']} ({fmt(g.get('memory_mb'), 0)} MB, driver {g.get('driver')})"
                     for g in m.get("gpus", [])) or "none"
    kv = [["CPU", cpu["model"]], ["cores (usable)", f"{cpu['cores']} ({cpu.get('usable_cores')})"],
          ["INT8 tier", cpu.get("int8_tier")], ["ISA features", isa],
          ["flags", " ".join(cpu.get("flags", []))], ["memory", f"{fmt(m.get('memory_mb'), 0)} MB"],
          ["GPU", gpus], ["OS", m.get("os")], ["Python", m.get("python")]]
    kv += [[f"{k}", v] for k, v in m.get("libraries", {}).items()]
    rows = [[k, str(v)] for k, v in kv]
    prov = [[p["name"], "yes" if p["available"] else "no", p.get("reason", ""),
             ", ".join(p.get("devices") or [])] for p in results.get("providers", [])]
    tb = results.get("torch_baseline", {})
    extra = "" if tb.get("included") else f"<p class='sub'>PyTorch baseline: {_e(tb.get('reason', 'not run'))}</p>"
    return ("<h2>Machine</h2>" + _table(["", "value"], rows, left={0, 1}).replace("<table>", "<table class='kv'>")
            + "<h2>Engines</h2>" + _table(["engine", "available", "reason", "devices"], prov, left={0, 1, 2, 3})
            + extra)


# ------------------------------------------------------------------ terminal
def console_table(results: dict):
    """A rich Table of the results that fits 80 columns: one accuracy column (the one the run
    leads with); p99, cold start with a warm cache and the labelled extras are in report.html."""
    from rich.table import Table

    metric = results.get("accuracy_metric", "cosine_mean")
    acc_head, acc_pct = {"top1": ("top-1", True), "top1_agreement": ("agree", True),
                         "cosine_mean": ("cosine", False)}.get(metric, (metric, False))
    t = Table(title=f"edgeinfer bench: {results['model'].get('name')}"
                    + ("  [RANDOM WEIGHTS]" if results.get("random_weights") else ""),
              caption=results["accuracy_note"], caption_justify="left", pad_edge=False)
    for c in ("engine", "prec", "b", "median ms", "p90 ms", "img/s", "cold s", "RSS MB", acc_head):
        t.add_column(c, justify="left" if c in ("engine", "prec") else "right",
                     overflow="fold")
    unavailable: dict[tuple, list[str]] = {}  # (provider, reason) -> precisions: one line each
    for r in results["rows"]:
        name = r["provider"] + (" *" if r.get("selected") else "")
        if r["status"] == "skipped":
            unavailable.setdefault((r["provider"], r.get("error") or ""), []).append(r["precision"])
            continue
        if r["status"] != "ok":
            t.add_row(name, r["precision"], str(r["batch"]),
                      f"[red]{r['status']}[/red]: {r.get('error') or ''}")
            continue
        acc = r.get(metric)
        t.add_row(name, r["precision"], str(r["batch"]), ms(r["latency_median_ms"]),
                  ms(r["latency_p90_ms"]), fmt(r["throughput_ips"], 1), fmt(r["cold_start_s"], 2),
                  fmt(r["peak_rss_mb"], 0), fmt(acc, 1, True) if acc_pct else fmt(acc, 4),
                  style="bold green" if r.get("selected") else None)
    lines = ["* the measured pick (saved to tuning.json for provider=auto)"] \
        if any(r.get("selected") for r in results["rows"]) else []
    lines += [f"skipped {prov} ({', '.join(sorted(set(precs)))}): {why}"
              for (prov, why), precs in unavailable.items()]
    if lines:
        t.caption = (t.caption or "") + "\n" + "\n".join(lines)
    return t
