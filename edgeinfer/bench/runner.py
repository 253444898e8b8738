"""``run_bench``: accuracy vs latency vs memory for every engine x precision x batch size.

All inference goes through ``edgeinfer.backends.create_session`` / ``edgeinfer.load``; nothing
here re-implements an engine. Per configuration:

- latency (median / p90 / p99 after warm-up, time budget with a minimum run count) and
  throughput, measured in this process, so engines compare as ratios from one run;
- cold start (session creation) with an empty and with a warm engine cache, peak RSS, and GPU
  memory, each measured in a fresh subprocess (``edgeinfer.bench.worker``);
- accuracy: labelled metrics when labels are known (``--labels`` ImageFolder or
  ``<synset>_<label>`` photo names), and always fidelity to FP32 on ONNX Runtime CPU.

The PyTorch eager model is a baseline row when torch is installed; it runs in its own
subprocess (this package never imports torch).
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import (ArtifactError, EdgeInferError, InvalidOptionError, ProviderUnavailableError)
from ..evaluate import fidelity as fid
from ..evaluate.datasets import DatasetError, load_labelled, synset_labels
from ..evaluate.metrics import classification_metrics
from ..runtime.artifact import PRECISIONS, Artifact, atomic_write_json
from . import timing
from .fingerprint import machine_fingerprint
from .worker import run_in_subprocess, session_options

SCHEMA = "edgeinfer-bench/1"
TUNING_FILE = "tuning.json"
#: fidelity guard for what ``auto`` may pick (INT8/FP16 only when they meet it)
GUARD = {"cosine_mean_min": 0.99, "top1_agreement_min": 0.95}
#: rows of the CSV / table, in order
ROW_KEYS = [
    "engine", "provider", "device", "precision", "batch", "status", "error",
    "latency_median_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "latency_iqr_ms",
    "runs", "throughput_ips", "cold_start_s", "cold_start_cached_s", "cache_hit", "peak_rss_mb",
    "gpu_mem_mb", "model_size_mb", "top1_agreement", "top5_overlap", "cosine_mean", "cosine_min",
    "max_abs_diff", "fidelity_pass", "top1", "top5", "macro_precision", "macro_recall",
    "macro_f1", "mcc", "selected",
]
ENGINE_NAMES = {"cpu": "ONNX Runtime CPU", "cuda": "ONNX Runtime CUDA",
                "tensorrt": "ONNX Runtime TensorRT", "openvino": "OpenVINO",
                "pytorch": "PyTorch eager"}
EVAL_CHUNK = 8
TORCH_EVAL_IMAGES = 32
DEFAULT_MAX_IMAGES = 100


class BenchError(EdgeInferError):
    """The benchmark cannot run at all (nothing to measure, no images...)."""


def _say(progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


# ------------------------------------------------------------------ what to run
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
             "devices": list(getattr(s, "devices", []) or [])} for s in detect()]


def auto_selection(artifact: Artifact) -> dict:
    """What ``provider="auto"`` / ``precision="auto"`` pick here, and why."""
    try:
        from ..backends.providers import select

        s = select("auto", artifact=artifact, precision="auto")
        return {"provider": s.provider, "device": getattr(s, "device", ""),
                "precision": getattr(s, "precision", None), "reason": getattr(s, "reason", "")}
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
def _generated_images(n: int = 16) -> list[np.ndarray]:
    """Deterministic smooth images with shapes: used when no photos are given (fidelity only)."""
    rng = np.random.default_rng(1234)
    imgs = []
    for _ in range(n):
        h, w = 240, 320
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([x / w * 255 * rng.random(), y / h * 255 * rng.random(),
                         (x + y) / (w + h) * 255 * rng.random()], -1)
        for _ in range(4):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(10, 80)
            base[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
        imgs.append(np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8))
    return imgs


def eval_set(artifact: Artifact, *, images=None, labels=None, max_images: int | None = DEFAULT_MAX_IMAGES,
             seed: int = 0) -> dict:
    """The evaluation inputs: preprocessed batch, targets (or None), description."""
    from ..runtime.preprocess import list_images, preprocess_image

    spec = artifact.preprocess
    class_names = artifact.labels if artifact.kind != "clip" else None
    targets = None
    source_desc: dict[str, Any]
    if labels is not None:
        ds = load_labelled(labels, class_names, limit=max_images)
        paths, targets = list(ds.paths), list(ds.targets)
        source_desc = {"source": ds.source, "dir": str(labels), "labelled": True}
    elif images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise DatasetError(f"image folder {folder} does not exist or is not a directory")
        paths = list_images(folder)
        if not paths:
            raise DatasetError(f"no images in {folder} (looked for .jpg/.jpeg/.png/.bmp/.webp/"
                               f".tif/.gif, recursively); give a folder with photos")
        t = synset_labels(paths, class_names)
        targets = t
        source_desc = {"source": "synset-names" if t is not None else "photos", "dir": str(folder),
                       "labelled": t is not None}
    else:
        paths = None
        source_desc = {"source": "generated", "dir": None, "labelled": False}
    if paths is not None and max_images and len(paths) > max_images:
        # an even spread over the sorted list keeps every class of a sorted ImageFolder
        idx = np.linspace(0, len(paths) - 1, max_images).round().astype(int)
        paths = [paths[i] for i in idx]
        targets = [targets[i] for i in idx] if targets is not None else None
    items = paths if paths is not None else _generated_images()
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
    source_desc.update({"n": len(arrays), "failed": failed})
    return {"x": np.stack(arrays).astype(np.float32),
            "targets": np.asarray(kept_t, np.int64) if targets is not None else None,
            "paths": ([str(p) for p in paths] if paths is not None and paths
                      and isinstance(paths[0], (str, Path)) else None),
            "desc": source_desc}


def _batch_of(x: np.ndarray, b: int) -> np.ndarray:
    if len(x) >= b:
        return np.ascontiguousarray(x[:b])
    reps = int(np.ceil(b / len(x)))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:b])


def _infer_all(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, chunk: int = EVAL_CHUNK) -> np.ndarray:
    return np.concatenate([np.asarray(run(x[i:i + chunk]), np.float32) for i in range(0, len(x), chunk)])


# ------------------------------------------------------------------ rows
def _row(provider: str, precision: str, batch: int, **kw) -> dict:
    r = {k: None for k in ROW_KEYS}
    r.update(engine=ENGINE_NAMES.get(provider, provider), provider=provider, precision=precision,
             batch=batch, status="ok", selected=False)
    r.update(kw)
    return r


def _fill_latency(row: dict, lat: dict, batch: int) -> None:
    row.update(latency_median_ms=lat.get("median_ms"), latency_p90_ms=lat.get("p90_ms"),
               latency_p99_ms=lat.get("p99_ms"), latency_mean_ms=lat.get("mean_ms"),
               latency_iqr_ms=lat.get("iqr_ms"), runs=lat.get("runs"))
    if lat.get("median_ms"):
        row["throughput_ips"] = batch * 1000.0 / lat["median_ms"]


def guard_for(random_weights: bool) -> dict:
    """The fidelity guard. With random weights the logits are near-uniform and top-1 flips on
    noise, so only the cosine counts (as in the quantizer's accuracy guard)."""
    return {**GUARD, "top1_agreement_min": 0.0} if random_weights else dict(GUARD)


def _fill_accuracy(row: dict, f: dict | None, lab: dict | None, guard: dict = GUARD) -> None:
    if f:
        row.update(top1_agreement=f.get("top1_agreement"), top5_overlap=f.get("top5_overlap"),
                   cosine_mean=f.get("cosine_mean"), cosine_min=f.get("cosine_min"),
                   max_abs_diff=f.get("max_abs_diff"),
                   fidelity_pass=fid.passes(f, **guard))
    if lab:
        row.update(top1=lab.get("top1"), top5=lab.get("top5"), macro_precision=lab.get("precision"),
                   macro_recall=lab.get("recall"), macro_f1=lab.get("f1"), mcc=lab.get("mcc"))


def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]


def _close(sess) -> None:
    try:
        sess.close()
    except Exception:  # closing a crashed engine must not hide the real error
        pass


def _latency_rounds(open_sessions: dict, x: np.ndarray, batches: list[int], *, budget: float,
                    rounds: int, guard: dict, progress) -> list[dict]:
    """Latency of every open session, interleaved: ``rounds`` passes over all configurations,
    each taking a slice of the budget, so a burst of background load hits every configuration
    alike instead of skewing one (DESIGN.md: compare engines as ratios from one run)."""
    rounds = max(1, int(rounds))
    times: dict[tuple[str, int], list[float]] = {(k, b): [] for k in open_sessions for b in batches}
    errors: dict[tuple[str, int], str] = {}
    xb = {b: _batch_of(x, b) for b in batches}
    for rnd in range(rounds):
        for key, o in open_sessions.items():
            for b in batches:
                if (key, b) in errors:
                    continue
                _say(progress, f"latency round {rnd + 1}/{rounds}: {key} batch {b}")
                sess, xin = o["sess"], xb[b]
                try:
                    times[(key, b)] += timing.measure_raw(
                        lambda: sess.run(xin), budget_s=budget / rounds,
                        min_runs=-(-timing.MIN_RUNS // rounds),
                        warmup_runs=timing.WARMUP_RUNS if rnd == 0 else 1,
                        warmup_s=timing.WARMUP_S if rnd == 0 else 0.05)
                except Exception as e:  # an engine failing mid-run: its rows show the error
                    errors[(key, b)] = _err(e)
    out = []
    for key, o in open_sessions.items():
        for b in batches:
            r = _row(o["prov"], o["prec"], b, device=o["device"], model_size_mb=o["size_mb"])
            if (key, b) in errors:
                r.update(status="error", error=errors[(key, b)])
            else:
                _fill_latency(r, timing.summarize(times[(key, b)]), b)
                _fill_accuracy(r, o["fid"], o["lab"], guard)
            out.append(r)
    return out


# ------------------------------------------------------------------ the torch baseline
def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _torch_rows(artifact: Artifact, ev: dict, batches: list[int], *, threads, budget_s, tmp: Path,
                progress) -> tuple[list[dict], np.ndarray | None]:
    """PyTorch eager baseline, measured in its own subprocess (``edgeinfer.cli.bench``)."""
    np.save(tmp / "eval_x.npy", ev["x"][:TORCH_EVAL_IMAGES])  # eager is slow: fidelity on fewer
    spec = {"artifact": str(artifact.dir), "eval_npy": str(tmp / "eval_x.npy"),
            "out_npy": str(tmp / "torch_out.npy"), "batches": batches, "threads": threads,
            "budget_s": budget_s}
    _say(progress, "PyTorch eager baseline (separate process)")
    res = run_in_subprocess(spec, module="edgeinfer.cli.bench", timeout=1800)
    if not res.get("ok"):
        return [_row("pytorch", "fp32", b, status="error", device="cpu",
                     error=res.get("error", "failed")) for b in batches], None
    rows = []
    for b in batches:
        r = _row("pytorch", "fp32", b, device=res.get("device", "cpu"),
                 cold_start_s=res.get("build_s"), peak_rss_mb=res.get("peak_rss_mb"),
                 model_size_mb=res.get("params_mb"))
        _fill_latency(r, res["latency"][str(b)], b)
        rows.append(r)
    out = np.load(spec["out_npy"]) if Path(spec["out_npy"]).exists() else None
    return rows, out


# ------------------------------------------------------------------ tuning
def engine_versions() -> list[str]:
    """Engine versions that go into ``hw.machine_key`` for tuning.json (onnxruntime, openvino)."""
    from importlib import metadata

    out = []
    for name in ("onnxruntime", "onnxruntime-gpu", "openvino"):
        try:
            out.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def tuning_key() -> str:
    """The machine key for tuning.json; the runtime's reader may provide its own (preferred)."""
    try:
        from ..backends import providers as _p

        fn = getattr(_p, "tuning_key", None) or getattr(_p, "machine_tuning_key", None)
        if fn is not None:
            return fn()
    except ImportError:
        pass
    from ..backends.hw import machine_key

    return machine_key(*engine_versions())


def choose_tuning(rows: list[dict], threads, guard: dict = GUARD) -> dict | None:
    """Fastest batch-1 (smallest batch) configuration whose fidelity passes the guard."""
    ok = [r for r in rows if r["status"] == "ok" and r["provider"] != "pytorch"
          and r["latency_median_ms"] is not None]
    if not ok:
        return None
    bmin = min(r["batch"] for r in ok)
    cands = [r for r in ok if r["batch"] == bmin and (r["precision"] == "fp32" or r["fidelity_pass"])]
    if not cands:
        return None
    best = min(cands, key=lambda r: r["latency_median_ms"])
    best["selected"] = True
    return {"provider": best["provider"], "precision": best["precision"], "threads": threads,
            "latency_ms": round(best["latency_median_ms"], 4),
            "fidelity": {k: best[k] for k in ("top1_agreement", "top5_overlap", "cosine_mean",
                                              "cosine_min")},
            "device": best.get("device"), "batch": bmin,
            "measured": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "by": "edgeinfer bench", "guard": guard}


def write_tuning(artifact_dir: Path, entry: dict) -> Path:
    import json

    path = Path(artifact_dir) / TUNING_FILE
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
    data[tuning_key()] = entry
    atomic_write_json(path, data)
    return path


# ------------------------------------------------------------------ pipeline
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


# ------------------------------------------------------------------ main entry
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
    t_start = time.perf_counter()
    artifact = Artifact.open(artifact_dir)
    out_dir = Path(out) if out is not None else artifact.dir / "bench"
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
    if pipeline and not ev["paths"]:
        raise BenchError("--pipeline needs a folder of photo files (--images DIR or an ImageFolder "
                         "--labels DIR): it measures decoding them")
    x = ev["x"]
    targets = ev["targets"]
    out_kind = artifact.manifest.get("output", {}).get("kind", "logits")
    class_names = artifact.labels if artifact.kind != "clip" else None

    rows: list[dict] = []
    for s in prov_skipped:
        for p in prec_list:
            for b in batches_l:
                rows.append(_row(s["provider"], p, b, status="skipped", error=s["reason"]))
    for s in prec_skipped:
        for prov in prov_list:
            for b in batches_l:
                rows.append(_row(prov, s["precision"], b, status="skipped", error=s["reason"]))

    guard = guard_for(artifact.random_weights)
    outputs: dict[str, np.ndarray] = {}
    accuracy: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-"))
    try:
        # the reference: FP32 on ONNX Runtime CPU (always available)
        _say(progress, "reference outputs: fp32 on ONNX Runtime CPU")
        ref = None
        try:
            from ..backends import create_session

            with create_session(artifact.path("fp32"), provider="cpu",
                                options=session_options("cpu", "fp32", threads=threads),
                                precision="fp32") as s:
                ref = _infer_all(s.run, x)
        except Exception as e:
            _say(progress, f"reference failed ({_err(e)}); fidelity unavailable")

        combos = [(p, q) for p in prov_list for q in prec_list]
        open_sessions: dict[str, dict] = {}
        try:
            for i, (prov, prec) in enumerate(combos):
                key = f"{prov}/{prec}"
                path = artifact.path(prec)
                size_mb = path.stat().st_size / 2**20
                try:
                    from ..backends import create_session

                    _say(progress, f"[{i + 1}/{len(combos)}] {key}: loading")
                    sess = create_session(path, provider=prov,
                                          options=session_options(
                                              prov, prec, threads=threads,
                                              input_shape=artifact.preprocess["input_size"],
                                              model_sha256=artifact.entry(prec).get("sha256")),
                                          precision=prec)
                except Exception as e:
                    rows.extend(_row(prov, prec, b, status="error", error=_err(e), model_size_mb=size_mb)
                                for b in batches_l)
                    continue
                device = getattr(sess, "device", "") or ""
                f_res = lab = None
                try:
                    _say(progress, f"[{i + 1}/{len(combos)}] {key}: accuracy on {len(x)} images")
                    y = _infer_all(sess.run, x)
                    outputs[key] = y
                    if ref is not None:
                        f_res = fid.fidelity(ref, y, kind=out_kind)
                    if targets is not None and out_kind == "logits":
                        lab = classification_metrics(y, targets, class_names=class_names)
                    accuracy[key] = {"fidelity": f_res, "labelled": lab}
                except Exception as e:
                    rows.extend(_row(prov, prec, b, status="error", device=device, error=_err(e),
                                     model_size_mb=size_mb) for b in batches_l)
                    _close(sess)
                    continue
                open_sessions[key] = {"sess": sess, "prov": prov, "prec": prec, "device": device,
                                      "size_mb": size_mb, "fid": f_res, "lab": lab}
            rows.extend(_latency_rounds(open_sessions, x, batches_l, budget=budget, rounds=rounds,
                                        guard=guard, progress=progress))
        finally:
            for o in open_sessions.values():
                _close(o["sess"])

        # fresh-process measurements: cold start (empty / warm engine cache), peak RSS, GPU memory
        if memory:
            c, h, w = artifact.preprocess["input_size"]
            for r in rows:
                if r["status"] != "ok" or r["provider"] == "pytorch":
                    continue
                _say(progress, f"memory + cold start {r['provider']}/{r['precision']} batch {r['batch']}"
                               " (fresh process)")
                cache_root = tmp / f"cache-{r['provider']}-{r['precision']}-{r['batch']}"
                spec = {"onnx": str(artifact.path(r["precision"])), "provider": r["provider"],
                        "precision": r["precision"], "batch": r["batch"], "threads": threads,
                        "cache_dir": str(cache_root), "input_shape": [c, h, w], "runs": 3}
                res = run_in_subprocess(spec)
                if not res.get("ok"):
                    r["error"] = f"memory measurement failed: {res.get('error')}"
                    continue
                r.update(cold_start_s=res["create_s"], peak_rss_mb=res["peak_rss_mb"],
                         gpu_mem_mb=res.get("gpu_mem_mb"), cache_hit=res.get("cache_hit"))
                if res.get("cache_hit") is not None:  # the engine has a cache: start again warm
                    res2 = run_in_subprocess({**spec, "runs": 1})
                    if res2.get("ok"):
                        r["cold_start_cached_s"] = res2["create_s"]
                        r["cache_hit"] = res2.get("cache_hit")

        torch_info = {"available": torch_available(), "included": False}
        if torch_baseline and torch_available():
            trows, tout = _torch_rows(artifact, ev, batches_l, threads=threads, budget_s=budget,
                                      tmp=tmp, progress=progress)
            if tout is not None:
                key = "pytorch/fp32"
                outputs[key] = tout
                n_t = len(tout)
                f_res = fid.fidelity(ref[:n_t], tout, kind=out_kind) if ref is not None else None
                lab = (classification_metrics(tout, targets[:n_t], class_names=class_names)
                       if targets is not None and out_kind == "logits" else None)
                accuracy[key] = {"fidelity": f_res, "labelled": lab}
                for r in trows:
                    _fill_accuracy(r, f_res, lab, guard)
            rows.extend(trows)
            torch_info["included"] = True
        elif not torch_available():
            torch_info["reason"] = "torch is not installed (pip install 'edgeinfer[export]')"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    order = {p: i for i, p in enumerate(("cpu", "openvino", "cuda", "tensorrt", "pytorch"))}
    rows.sort(key=lambda r: (order.get(r["provider"], 9), PRECISIONS.index(r["precision"])
                             if r["precision"] in PRECISIONS else 9, r["batch"]))
    tuning = choose_tuning(rows, threads, guard)
    tuning_path = None
    if tuning and write_tuning_file:
        tuning_path = write_tuning(artifact.dir, tuning)

    pipe = []
    if pipeline:
        if not ev["paths"]:
            raise BenchError("--pipeline needs a folder of photos (--images DIR or --labels DIR)")
        ok_combos = []
        for r in rows:
            k = (r["provider"], r["precision"])
            if r["status"] == "ok" and r["provider"] != "pytorch" and k not in ok_combos:
                ok_combos.append(k)
        pipe = pipeline_rows(artifact, ev["paths"], ok_combos, threads=threads, progress=progress)

    text_rows = []
    if artifact.files("text"):
        from .text_tower import text_tower_rows

        ok_provs = list(dict.fromkeys(r["provider"] for r in rows
                                      if r["status"] == "ok" and r["provider"] != "pytorch"))
        text_rows = text_tower_rows(artifact, ok_provs, threads=threads, budget_s=budget,
                                    progress=(lambda m: _say(progress, m)))

    labelled = targets is not None and out_kind == "logits"
    random_w = artifact.random_weights
    if labelled and not random_w:
        acc_kind, acc_metric = "labelled", "top1"
    elif out_kind == "logits":
        acc_kind, acc_metric = "fidelity", "top1_agreement"
    else:
        acc_kind, acc_metric = "fidelity", "cosine_mean"
    results = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "artifact": str(artifact.dir.resolve()),
        "model": artifact.manifest.get("model", {}),
        "weights": artifact.manifest.get("weights", {}),
        "random_weights": random_w,
        "output_kind": out_kind,
        "accuracy_kind": acc_kind,
        "accuracy_metric": acc_metric,
        "accuracy_note": _accuracy_note(acc_kind, acc_metric, labelled, random_w),
        "images": ev["desc"],
        "settings": {"providers": providers, "precisions": precisions, "batches": batches_l,
                     "threads": threads, "budget_s": budget, "min_runs": timing.MIN_RUNS,
                     "warmup_runs": timing.WARMUP_RUNS, "rounds": rounds, "guard": guard,
                     "memory": memory},
        "machine": machine_fingerprint(),
        "providers": status,
        "selection": selection,
        "torch_baseline": torch_info,
        "rows": rows,
        "accuracy": accuracy,
        "tuning": {"key": tuning_key(), "entry": tuning,
                   "file": str(tuning_path) if tuning_path else None},
        "pipeline": pipe,
        "text_tower": text_rows,
        "elapsed_s": None,
        "files": {},
    }
    results["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    if report:
        from .report import write_all

        _say(progress, f"writing report to {out_dir}")
        results["files"] = write_all(results, out_dir)
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
