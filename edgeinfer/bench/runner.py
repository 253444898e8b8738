"""``run_bench``: accuracy vs latency vs memory for every engine x precision x batch size.

Five stages, each a function a reader can follow:

1. ``plan``: what to run (engines, precisions, batch sizes, what is skipped and why) and on
   which images;
2. ``measure``: FP32 reference on ONNX Runtime CPU, then every configuration's outputs,
   interleaved latency rounds (engines compare as ratios from one run), and, in fresh
   subprocesses, cold start and peak memory; the PyTorch eager baseline in its own process;
3. ``score``: which accuracy the report shows (labelled or fidelity to FP32) and why;
4. ``pick``: the fastest configuration that passes the fidelity guard, recorded in
   ``tuning.json`` keyed to the files measured;
5. ``write``: results.json / results.csv / pareto.png / report.html.

Engine sessions are opened with ``edgeinfer.runtime.selection`` (the options ``edgeinfer.load``
uses) through ``edgeinfer.backends.create_session``; nothing here re-implements an engine.
Torch-free: the PyTorch baseline runs ``edgeinfer.export.eager_baseline`` in a subprocess.
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import (ArtifactError, BenchError, DatasetError, EdgeInferError, InvalidOptionError,
                      ProviderUnavailableError)
from ..evaluate import fidelity as fid
from ..evaluate.datasets import load_labelled, synset_labels
from ..evaluate.metrics import classification_metrics
from ..evaluate.synthetic import generated_images
from ..runtime.artifact import PRECISIONS, Artifact
from . import timing
from .fingerprint import machine_fingerprint
from .rows import (SCHEMA, fill_accuracy, fill_latency, guard_for, new_row, sort_rows)
from .worker import run_in_subprocess

EVAL_CHUNK = 8
TORCH_EVAL_IMAGES = 32
DEFAULT_MAX_IMAGES = 100
TORCH_WORKER = "edgeinfer.export.eager_baseline"

__all__ = ["run_bench", "plan", "measure", "score", "pick", "write", "BenchError"]


def _say(progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]


# ------------------------------------------------------------------ 1. plan
def _parse_list(value, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().lower() for v in value.split(",") if v.strip()]
    return [str(v).strip().lower() for v in value]


def detect_providers() -> list[dict]:
    """[{name, available, reason, devices}] from ``edgeinfer.backends.providers.detect``."""
    from ..backends.providers import detect

    return [{"name": s.name, "available": bool(s.available), "reason": s.reason,
             "devices": list(s.devices or [])} for s in detect()]


def auto_selection(artifact: Artifact) -> dict:
    """What ``provider="auto"`` / ``precision="auto"`` pick here before this bench, and why."""
    from ..runtime.selection import select

    try:
        return select("auto", artifact=artifact, precision="auto").to_dict()
    except EdgeInferError as e:
        return {"provider": None, "precision": None, "reason": f"selection failed: {e}"}


def resolve_providers(providers, status: list[dict], selection: dict) -> tuple[list[str], list[dict]]:
    """(providers to run, skipped [{provider, reason}])."""
    from ..backends.base import PROVIDERS

    avail = {s["name"]: s for s in status}
    req = _parse_list(providers, "provider") or ["auto"]
    skipped: list[dict] = []
    if req == ["all"]:
        run = [p for p in PROVIDERS if avail.get(p, {}).get("available")]
        skipped = [{"provider": p, "reason": avail[p]["reason"] if p in avail else "not detected"}
                   for p in PROVIDERS if p not in run]
        return run, skipped
    if req == ["auto"]:
        # the engine auto picks, plus ONNX Runtime CPU as the everywhere reference
        chosen = selection.get("provider")
        run = ["cpu"] + ([chosen] if chosen and chosen != "cpu" else [])
        return [p for p in run if avail.get(p, {}).get("available", p == "cpu")], skipped
    run = []
    for p in req:
        if p not in PROVIDERS:
            raise InvalidOptionError.choice("provider", p, (*PROVIDERS, "auto", "all"))
        if avail.get(p, {}).get("available"):
            if p not in run:
                run.append(p)
        else:
            skipped.append({"provider": p, "reason": avail.get(p, {}).get("reason", "not detected")})
    if not run:
        why = "; ".join(f"{s['provider']}: {s['reason']}" for s in skipped)
        have = ", ".join(n for n, s in avail.items() if s["available"]) or "none"
        raise ProviderUnavailableError(f"none of the requested engines is usable here ({why}). "
                                       f"Available: {have}. See `edgeinfer providers`.")
    return run, skipped


def resolve_precisions(precisions, artifact: Artifact) -> tuple[list[str], list[dict]]:
    have = artifact.precisions()
    req = _parse_list(precisions, "precision") or ["all"]
    if req in (["all"], ["auto"]):
        return have, []
    run, skipped = [], []
    for p in req:
        if p not in PRECISIONS:
            raise InvalidOptionError.choice("precision", p, (*PRECISIONS, "all"))
        if p in have:
            run.append(p)
        else:
            skipped.append({"precision": p, "reason": (
                f"the artifact has no {p} file (it has {', '.join(have) or 'none'}); create it "
                f"with `edgeinfer quantize {artifact.dir} --{p}`")})
    return run, skipped


def _parse_batches(batches) -> list[int]:
    if isinstance(batches, (int, np.integer)):
        batches = [int(batches)]
    if isinstance(batches, str):
        batches = [b for b in batches.split(",") if b.strip()]
    out = []
    for b in batches or (1,):
        try:
            v = int(b)
        except (TypeError, ValueError):
            raise InvalidOptionError(f"batch sizes must be positive integers, got {b!r}") from None
        if v < 1:
            raise InvalidOptionError(f"batch sizes must be positive integers, got {b!r}")
        if v not in out:
            out.append(v)
    return out


# ------------------------------------------------------------------ images
@dataclass
class EvalSet:
    """The evaluation inputs, preprocessed once for every engine."""
    x: np.ndarray                    # NCHW float32
    targets: np.ndarray | None       # class indices when labelled
    paths: list[str] | None          # the photo files (None: generated images or arrays)
    desc: dict                       # source, folder, labelled, n, failed


def eval_set(artifact: Artifact, *, images=None, labels=None,
             max_images: int | None = DEFAULT_MAX_IMAGES) -> EvalSet:
    """Labelled data (``labels``), a photo folder (``images``; <synset>_<label> names count as
    labelled) or generated images (fidelity only)."""
    from ..runtime.preprocess import list_images, preprocess_image

    spec = artifact.preprocess
    class_names = artifact.labels if artifact.kind != "clip" else None
    targets = None
    if labels is not None:
        ds = load_labelled(labels, class_names, limit=max_images)
        paths, targets = list(ds.paths), list(ds.targets)
        desc: dict[str, Any] = {"source": ds.source, "dir": str(labels), "labelled": True}
    elif images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise DatasetError(f"image folder {folder} does not exist or is not a directory")
        paths = list_images(folder)
        if not paths:
            raise DatasetError(f"no images in {folder} (looked for .jpg/.jpeg/.png/.bmp/.webp/"
                               f".tif/.gif, recursively); give a folder with photos")
        targets = synset_labels(paths, class_names)
        desc = {"source": "synset-names" if targets is not None else "photos", "dir": str(folder),
                "labelled": targets is not None}
    else:
        paths = None
        desc = {"source": "generated", "dir": None, "labelled": False}
    if paths is not None and max_images and len(paths) > max_images:
        # an even spread over the sorted list keeps every class of a sorted ImageFolder
        idx = np.linspace(0, len(paths) - 1, max_images).round().astype(int)
        paths = [paths[i] for i in idx]
        targets = [targets[i] for i in idx] if targets is not None else None
    items = paths if paths is not None else generated_images()
    arrays, kept_t, failed = [], [], []
    for i, src in enumerate(items):
        try:
            arrays.append(preprocess_image(src, spec))
            if targets is not None:
                kept_t.append(targets[i])
        except EdgeInferError as e:
            failed.append({"image": str(src) if isinstance(src, (str, Path)) else f"#{i}",
                           "error": str(e)})
    if not arrays:
        raise DatasetError(f"none of the {len(items)} images could be decoded "
                           f"(first error: {failed[0]['error'] if failed else '?'})")
    desc.update({"n": len(arrays), "failed": failed})
    files = ([str(p) for p in paths] if paths and isinstance(paths[0], (str, Path)) else None)
    return EvalSet(np.stack(arrays).astype(np.float32),
                   np.asarray(kept_t, np.int64) if targets is not None else None, files, desc)


@dataclass
class Plan:
    """What one bench run measures, decided before anything is timed."""
    artifact: Artifact
    out_dir: Path
    providers: list[str]
    precisions: list[str]
    batches: list[int]
    skipped_rows: list[dict]
    evalset: EvalSet
    guard: dict
    threads: int | None
    budget_s: float
    rounds: int
    memory: bool
    torch_baseline: bool
    pipeline: bool
    status: list[dict]
    selection_before: dict
    settings: dict = field(default_factory=dict)

    @property
    def output_kind(self) -> str:
        return self.artifact.manifest.get("output", {}).get("kind", "logits")

    @property
    def class_names(self) -> list[str] | None:
        return self.artifact.labels if self.artifact.kind != "clip" else None


def plan(artifact_dir, *, providers="auto", precisions="all", batches=(1,), threads=None,
         images=None, labels=None, out=None, pipeline=False, budget_s: float | None = None,
         max_images: int | None = DEFAULT_MAX_IMAGES, memory: bool = True,
         torch_baseline: bool = True, rounds: int = 3, progress=None) -> Plan:
    artifact = Artifact.open(artifact_dir)
    batches_l = _parse_batches(batches)
    budget = timing.BUDGET_S if budget_s is None else float(budget_s)
    if threads is not None and int(threads) < 1:
        raise InvalidOptionError(f"threads must be >= 1, got {threads}")
    _say(progress, "detecting engines")
    status = detect_providers()
    selection = auto_selection(artifact)
    prov_list, prov_skipped = resolve_providers(providers, status, selection)
    prec_list, prec_skipped = resolve_precisions(precisions, artifact)
    if "fp32" not in artifact.precisions():
        raise ArtifactError(f"artifact {artifact.dir} has no fp32 file; fidelity needs it. Re-export.")
    _say(progress, "preparing images")
    ev = eval_set(artifact, images=images, labels=labels, max_images=max_images)
    if pipeline and not ev.paths:
        raise BenchError("--pipeline needs a folder of photo files (--images DIR or an ImageFolder "
                         "--labels DIR): it measures decoding them")
    skipped = [new_row(s["provider"], p, b, status="skipped", error=s["reason"])
               for s in prov_skipped for p in prec_list for b in batches_l]
    skipped += [new_row(prov, s["precision"], b, status="skipped", error=s["reason"])
                for s in prec_skipped for prov in prov_list for b in batches_l]
    guard = guard_for(artifact.random_weights)
    settings = {"providers": providers, "precisions": precisions, "batches": batches_l,
                "threads": threads, "budget_s": budget, "min_runs": timing.MIN_RUNS,
                "warmup_runs": timing.WARMUP_RUNS, "rounds": rounds, "guard": guard,
                "memory": memory}
    return Plan(artifact, Path(out) if out is not None else artifact.dir / "bench", prov_list,
                prec_list, batches_l, skipped, ev, guard, threads, budget, max(1, int(rounds)),
                memory, torch_baseline, pipeline, status, selection, settings)


# ------------------------------------------------------------------ 2. measure
def _batch_of(x: np.ndarray, b: int) -> np.ndarray:
    if len(x) >= b:
        return np.ascontiguousarray(x[:b])
    reps = int(np.ceil(b / len(x)))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:b])


def _infer_all(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
               chunk: int = EVAL_CHUNK) -> np.ndarray:
    return np.concatenate([np.asarray(run(x[i:i + chunk]), np.float32)
                           for i in range(0, len(x), chunk)])


def open_session(artifact: Artifact, provider: str, precision: str, *, threads=None,
                 batch_size: int | None = None, cache_dir=None):
    """A session configured exactly as ``edgeinfer.load`` would configure it."""
    from .. import backends
    from ..runtime.selection import engine_options, select

    sel = select(provider, artifact=artifact, precision=precision)
    opts = engine_options(sel, artifact, threads=threads, batch_size=batch_size,
                          cache_dir=cache_dir)
    return backends.create_session(artifact.path(precision), provider=sel.provider, options=opts)


def _close(sess) -> None:
    try:
        sess.close()
    except Exception:  # closing a crashed engine must not hide the real error
        pass


@dataclass
class Measured:
    rows: list[dict]
    accuracy: dict[str, dict]        # "provider/precision" -> {"fidelity", "labelled"}
    torch_info: dict


def _accuracy_of(p: Plan, y: np.ndarray, ref: np.ndarray | None) -> tuple[dict | None, dict | None]:
    n = len(y)
    f = fid.fidelity(ref[:n], y, kind=p.output_kind) if ref is not None else None
    lab = None
    if p.evalset.targets is not None and p.output_kind == "logits":
        lab = classification_metrics(y, p.evalset.targets[:n], class_names=p.class_names)
    return f, lab


def _latency_rounds(p: Plan, open_sessions: dict, progress) -> list[dict]:
    """Latency of every open session, interleaved: ``rounds`` passes over all configurations,
    each taking a slice of the budget, so a burst of background load hits every configuration
    alike instead of skewing one (engines compare as ratios from one run)."""
    rounds = p.rounds
    times: dict[tuple[str, int], list[list[float]]] = {
        (k, b): [] for k in open_sessions for b in p.batches}
    errors: dict[tuple[str, int], str] = {}
    xb = {b: _batch_of(p.evalset.x, b) for b in p.batches}
    for rnd in range(rounds):
        for key, o in open_sessions.items():
            for b in p.batches:
                if (key, b) in errors:
                    continue
                _say(progress, f"latency round {rnd + 1}/{rounds}: {key} batch {b}")
                sess, xin = o["sess"], xb[b]
                try:
                    times[(key, b)].append(timing.measure_raw(
                        lambda: sess.run(xin), budget_s=p.budget_s / rounds,
                        min_runs=-(-timing.MIN_RUNS // rounds),
                        warmup_runs=timing.WARMUP_RUNS if rnd == 0 else 1,
                        warmup_s=timing.WARMUP_S if rnd == 0 else 0.05))
                except Exception as e:  # an engine failing mid-run: its rows show the error
                    errors[(key, b)] = _err(e)
    out = []
    for key, o in open_sessions.items():
        for b in p.batches:
            r = new_row(o["prov"], o["prec"], b, device=o["device"], model_size_mb=o["size_mb"])
            if (key, b) in errors:
                r.update(status="error", error=errors[(key, b)])
            else:
                per_round = times[(key, b)]
                fill_latency(r, timing.summarize([t for rt in per_round for t in rt]), b,
                             [float(np.median(rt)) for rt in per_round])
                fill_accuracy(r, o["fid"], o["lab"], p.guard)
            out.append(r)
    return out


def _engine_rows(p: Plan, ref: np.ndarray | None, accuracy: dict, progress) -> list[dict]:
    """Open every configuration, score its outputs, then time them all interleaved."""
    rows: list[dict] = []
    combos = [(prov, prec) for prov in p.providers for prec in p.precisions]
    open_sessions: dict[str, dict] = {}
    try:
        for i, (prov, prec) in enumerate(combos):
            key = f"{prov}/{prec}"
            size_mb = p.artifact.path(prec, verify=False).stat().st_size / 2**20
            _say(progress, f"[{i + 1}/{len(combos)}] {key}: loading")
            try:
                sess = open_session(p.artifact, prov, prec, threads=p.threads,
                                    batch_size=max(p.batches))
            except Exception as e:
                rows.extend(new_row(prov, prec, b, status="error", error=_err(e),
                                    model_size_mb=size_mb) for b in p.batches)
                continue
            device = getattr(sess, "device", "") or ""
            try:
                _say(progress, f"[{i + 1}/{len(combos)}] {key}: accuracy on {len(p.evalset.x)} images")
                f, lab = _accuracy_of(p, _infer_all(sess.run, p.evalset.x), ref)
                accuracy[key] = {"fidelity": f, "labelled": lab}
            except Exception as e:
                rows.extend(new_row(prov, prec, b, status="error", device=device, error=_err(e),
                                    model_size_mb=size_mb) for b in p.batches)
                _close(sess)
                continue
            open_sessions[key] = {"sess": sess, "prov": prov, "prec": prec, "device": device,
                                  "size_mb": size_mb, "fid": f, "lab": lab}
        rows.extend(_latency_rounds(p, open_sessions, progress))
    finally:
        for o in open_sessions.values():
            _close(o["sess"])
    return rows


def _memory(p: Plan, rows: list[dict], tmp: Path, progress) -> None:
    """Cold start (empty, then warm engine cache), peak RSS and GPU memory, each in a fresh
    process: a process that already ran other engines would report their memory too."""
    for r in rows:
        if r["status"] != "ok" or r["provider"] == "pytorch":
            continue
        _say(progress, f"memory + cold start {r['provider']}/{r['precision']} batch {r['batch']}"
                       " (fresh process)")
        spec = {"artifact": str(p.artifact.dir), "provider": r["provider"],
                "precision": r["precision"], "batch": r["batch"], "threads": p.threads,
                "cache_dir": str(tmp / f"cache-{r['provider']}-{r['precision']}-{r['batch']}"),
                "runs": 3}
        cold = run_in_subprocess(spec)
        if not cold.get("ok"):
            r["error"] = f"memory measurement failed: {cold.get('error')}"
            continue
        r.update(cold_start_s=cold["create_s"], peak_rss_mb=cold["peak_rss_mb"],
                 gpu_mem_mb=cold.get("gpu_mem_mb"), cache_hit=cold.get("cache_hit"))
        if cold.get("cache_hit") is not None:  # the engine has a cache: start again, warm
            warm = run_in_subprocess({**spec, "runs": 1})
            if warm.get("ok"):
                r["cold_start_cached_s"] = warm["create_s"]
                r["cache_hit"] = warm.get("cache_hit")


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _torch_rows(p: Plan, ref: np.ndarray | None, accuracy: dict, tmp: Path,
                progress) -> list[dict]:
    """PyTorch eager baseline, measured in its own process (this package never imports torch),
    in as many rounds as the engines so its ratio to them comes with a spread."""
    np.save(tmp / "eval_x.npy", p.evalset.x[:TORCH_EVAL_IMAGES])  # eager is slow: fewer images
    spec = {"artifact": str(p.artifact.dir), "eval_npy": str(tmp / "eval_x.npy"),
            "out_npy": str(tmp / "torch_out.npy"), "batches": p.batches, "threads": p.threads,
            "budget_s": p.budget_s, "rounds": p.rounds}
    _say(progress, "PyTorch eager baseline (separate process)")
    res = run_in_subprocess(spec, module=TORCH_WORKER, timeout=1800)
    if not res.get("ok"):
        return [new_row("pytorch", "fp32", b, status="error", device="cpu",
                        error=res.get("error", "failed")) for b in p.batches]
    f = lab = None
    if Path(spec["out_npy"]).exists():
        f, lab = _accuracy_of(p, np.load(spec["out_npy"]), ref)
        accuracy["pytorch/fp32"] = {"fidelity": f, "labelled": lab}
    rows = []
    for b in p.batches:
        r = new_row("pytorch", "fp32", b, device=res.get("device", "cpu"),
                    cold_start_s=res.get("build_s"), peak_rss_mb=res.get("peak_rss_mb"),
                    model_size_mb=res.get("params_mb"))
        lat = res["latency"][str(b)]
        fill_latency(r, lat, b, lat.get("round_medians_ms"))
        fill_accuracy(r, f, lab, p.guard)
        rows.append(r)
    return rows


def measure(p: Plan, *, progress=None) -> Measured:
    accuracy: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-"))
    try:
        _say(progress, "reference outputs: fp32 on ONNX Runtime CPU")
        ref = None
        try:
            with open_session(p.artifact, "cpu", "fp32", threads=p.threads) as s:
                ref = _infer_all(s.run, p.evalset.x)
        except Exception as e:
            _say(progress, f"reference failed ({_err(e)}); fidelity unavailable")
        rows = list(p.skipped_rows) + _engine_rows(p, ref, accuracy, progress)
        if p.memory:
            _memory(p, rows, tmp, progress)
        torch_info: dict = {"available": torch_available(), "included": False}
        if p.torch_baseline and torch_info["available"]:
            rows += _torch_rows(p, ref, accuracy, tmp, progress)
            torch_info["included"] = True
        elif not torch_info["available"]:
            torch_info["reason"] = "torch is not installed (pip install 'edgeinfer[export]')"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sort_rows(rows)
    return Measured(rows, accuracy, torch_info)


# ------------------------------------------------------------------ 3. score
def score(p: Plan) -> dict:
    """Which accuracy the report leads with, and a sentence saying why."""
    labelled = p.evalset.targets is not None and p.output_kind == "logits"
    random_w = p.artifact.random_weights
    if labelled and not random_w:
        kind, metric = "labelled", "top1"
    elif p.output_kind == "logits":
        kind, metric = "fidelity", "top1_agreement"
    else:
        kind, metric = "fidelity", "cosine_mean"
    return {"accuracy_kind": kind, "accuracy_metric": metric,
            "accuracy_note": _accuracy_note(kind, metric, labelled, random_w)}


# ------------------------------------------------------------------ 4. pick
def pick(p: Plan, rows: list[dict]) -> tuple[dict | None, list[dict]]:
    """(the fastest configuration at the smallest batch whose fidelity passes the guard,
    the tuning measurements of every configuration measured at that batch).

    Marks the picked row ``selected``. The measurements carry the sha256 of the file each one
    measured, so ``edgeinfer.load`` ignores one whose file has since been replaced.
    """
    ok = [r for r in rows if r["status"] == "ok" and r["provider"] != "pytorch"
          and r["latency_median_ms"] is not None]
    if not ok:
        return None, []
    bmin = min(r["batch"] for r in ok)
    at_b = [r for r in ok if r["batch"] == bmin]
    measurements = [{"provider": r["provider"], "precision": r["precision"],
                     "device": r.get("device"), "batch": bmin, "threads": p.threads,
                     "latency_ms": round(r["latency_median_ms"], 4),
                     "fidelity_pass": bool(r["precision"] == "fp32" or r["fidelity_pass"]),
                     "sha256": p.artifact.entry(r["precision"]).get("sha256"),
                     "by": "edgeinfer bench"} for r in at_b]
    cands = [r for r in at_b if r["precision"] == "fp32" or r["fidelity_pass"]]
    if not cands:
        return None, measurements
    best = min(cands, key=lambda r: r["latency_median_ms"])
    best["selected"] = True
    entry = next(m for m in measurements
                 if (m["provider"], m["precision"]) == (best["provider"], best["precision"]))
    return {**entry, "fidelity": {k: best[k] for k in ("top1_agreement", "top5_overlap",
                                                       "cosine_mean", "cosine_min")},
            "guard": p.guard}, measurements


# ------------------------------------------------------------------ 5. write
def write(results: dict, out_dir: Path, *, progress=None) -> dict:
    from .report import write_all

    _say(progress, f"writing report to {out_dir}")
    return write_all(results, out_dir)


# ------------------------------------------------------------------ pipeline (decode + infer)
def pipeline_rows(artifact: Artifact, paths: Sequence[str], combos: Iterable[tuple[str, str]], *,
                  threads=None, progress=None, repeats: int = 1) -> list[dict]:
    """Decode + preprocess + infer throughput over real files via ``edgeinfer.load``."""
    import edgeinfer

    rows = []
    for provider, precision in combos:
        r = {"provider": provider, "precision": precision, "images": len(paths), "status": "ok",
             "error": None}
        _say(progress, f"pipeline {provider}/{precision}: {len(paths)} photos")
        try:
            with edgeinfer.load(artifact.dir, provider=provider, precision=precision,
                                threads=threads) as m:
                call = m.embed if artifact.kind == "clip" else m.classify
                call(list(paths[:2]))  # warm-up (sessions, thread pools, page cache)
                best_total, best_pre = None, None
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    m.preprocess(list(paths))
                    pre = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    res = call(list(paths))
                    total = time.perf_counter() - t0
                    best_total = total if best_total is None else min(best_total, total)
                    best_pre = pre if best_pre is None else min(best_pre, pre)
                failures = sum(1 for x in res if not x) if isinstance(res, list) else 0
                r.update(seconds=best_total, images_per_s=len(paths) / best_total,
                         preprocess_seconds=best_pre, preprocess_images_per_s=len(paths) / best_pre,
                         failures=failures)
        except Exception as e:  # one engine failing must not stop the others
            r.update(status="error", error=_err(e))
        rows.append(r)
    return rows


# ------------------------------------------------------------------ the whole run
def run_bench(artifact_dir, *, providers="auto", precisions="all", batches=(1,), threads=None,
              images=None, labels=None, out=None, pipeline=False, progress=None,
              budget_s: float | None = None, max_images: int | None = DEFAULT_MAX_IMAGES,
              memory: bool = True, torch_baseline: bool = True, write_tuning_file: bool = True,
              report: bool = True, rounds: int = 3) -> dict:
    """Benchmark an artifact; returns the results dict (also written as results.json/csv,
    pareto.png and report.html under ``out``, default ``<artifact>/bench``).

    ``providers``: "auto" (the engine auto-selection picks, plus ONNX Runtime CPU), "all" (every
    available engine) or a list / comma string of cpu, cuda, tensorrt, openvino.
    ``precisions``: "all" (every file in the artifact) or a list of fp32, fp16, int8.
    ``budget_s``: timed seconds per configuration (default ``timing.BUDGET_S``), spread over
    ``rounds`` interleaved passes over all configurations.
    ``memory``: measure cold start / peak RSS in fresh subprocesses. ``torch_baseline``: add the
    PyTorch eager row when torch is installed.
    """
    from ..runtime.selection import record_tuning, tuning_key

    t_start = time.perf_counter()
    p = plan(artifact_dir, providers=providers, precisions=precisions, batches=batches,
             threads=threads, images=images, labels=labels, out=out, pipeline=pipeline,
             budget_s=budget_s, max_images=max_images, memory=memory,
             torch_baseline=torch_baseline, rounds=rounds, progress=progress)
    m = measure(p, progress=progress)
    picked, measurements = pick(p, m.rows)
    tuning_path = None
    if measurements and write_tuning_file:
        tuning_path = record_tuning(p.artifact, measurements,
                                    machine=machine_fingerprint()["cpu"].get("model", ""))
    ok_configs = list(dict.fromkeys((r["provider"], r["precision"]) for r in m.rows
                                    if r["status"] == "ok" and r["provider"] != "pytorch"))
    pipe = (pipeline_rows(p.artifact, p.evalset.paths, ok_configs, threads=threads,
                          progress=progress) if pipeline else [])
    text_rows = []
    if p.artifact.files("text"):
        from .text_tower import text_tower_rows

        text_rows = text_tower_rows(p.artifact, list(dict.fromkeys(pr for pr, _ in ok_configs)),
                                    threads=threads, budget_s=p.budget_s,
                                    progress=(lambda msg: _say(progress, msg)))
    results = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "artifact": str(p.artifact.dir.resolve()),
        "model": p.artifact.manifest.get("model", {}),
        "weights": p.artifact.manifest.get("weights", {}),
        "random_weights": p.artifact.random_weights,
        "output_kind": p.output_kind,
        **score(p),
        "images": p.evalset.desc,
        "settings": p.settings,
        "machine": machine_fingerprint(),
        "providers": p.status,
        "selection": p.selection_before,
        "torch_baseline": m.torch_info,
        "rows": m.rows,
        "accuracy": m.accuracy,
        "tuning": {"key": tuning_key(), "entry": picked,
                   "file": str(tuning_path) if tuning_path else None},
        "pipeline": pipe,
        "text_tower": text_rows,
        "elapsed_s": round(time.perf_counter() - t_start, 2),
        "files": {},
    }
    if report:
        results["files"] = write(results, p.out_dir, progress=progress)
    return results


def _accuracy_note(kind: str, metric: str, labelled: bool, random_w: bool) -> str:
    if kind == "labelled":
        return "labelled accuracy (top-1 on the given labels)"
    parts = ["fidelity to FP32 on ONNX Runtime CPU"]
    parts.append("top-1 agreement" if metric == "top1_agreement" else "output cosine similarity")
    if random_w:
        parts.append("weights are RANDOM: labelled accuracy would be meaningless, fidelity is "
                     "the honest measure" + (" (labelled numbers are still listed)" if labelled else ""))
    elif not labelled:
        parts.append("no labels given (use --labels DIR or <synset>_<label> photo names)")
    return "; ".join(parts)
