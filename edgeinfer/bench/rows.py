"""The bench's row schema: one row per engine x precision x batch size (results.json / .csv).

Its own module so that the runner (which fills rows) and the report (which reads them) both
depend on it instead of on each other.
"""
from __future__ import annotations

from ..evaluate import fidelity as fid

SCHEMA = "edgeinfer-bench/1"
#: fidelity guard for what ``auto`` may pick (INT8/FP16 only when they meet it)
GUARD = {"cosine_mean_min": 0.99, "top1_agreement_min": 0.95}
#: columns of the CSV, in order (results.json rows carry them too, plus per-round medians)
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
#: display order of engines
ENGINE_ORDER = ("cpu", "openvino", "cuda", "tensorrt", "pytorch")


def new_row(provider: str, precision: str, batch: int, **values) -> dict:
    r = {k: None for k in ROW_KEYS}
    r.update(engine=ENGINE_NAMES.get(provider, provider), provider=provider, precision=precision,
             batch=batch, status="ok", selected=False, latency_round_medians_ms=None)
    r.update(values)
    return r


def fill_latency(row: dict, lat: dict, batch: int, round_medians: list[float] | None = None) -> None:
    row.update(latency_median_ms=lat.get("median_ms"), latency_p90_ms=lat.get("p90_ms"),
               latency_p99_ms=lat.get("p99_ms"), latency_mean_ms=lat.get("mean_ms"),
               latency_iqr_ms=lat.get("iqr_ms"), runs=lat.get("runs"),
               latency_round_medians_ms=round_medians)
    if lat.get("median_ms"):
        row["throughput_ips"] = batch * 1000.0 / lat["median_ms"]


def guard_for(random_weights: bool) -> dict:
    """The fidelity guard. With random weights the logits are near-uniform and top-1 flips on
    noise, so only the cosine counts (as in the quantizer's accuracy guard)."""
    return {**GUARD, "top1_agreement_min": 0.0} if random_weights else dict(GUARD)


def fill_accuracy(row: dict, fidelity: dict | None, labelled: dict | None, guard: dict) -> None:
    if fidelity:
        row.update(top1_agreement=fidelity.get("top1_agreement"),
                   top5_overlap=fidelity.get("top5_overlap"),
                   cosine_mean=fidelity.get("cosine_mean"), cosine_min=fidelity.get("cosine_min"),
                   max_abs_diff=fidelity.get("max_abs_diff"),
                   fidelity_pass=fid.passes(fidelity, **guard))
    if labelled:
        row.update(top1=labelled.get("top1"), top5=labelled.get("top5"),
                   macro_precision=labelled.get("precision"), macro_recall=labelled.get("recall"),
                   macro_f1=labelled.get("f1"), mcc=labelled.get("mcc"))


def sort_rows(rows: list[dict]) -> None:
    from ..runtime.artifact import PRECISIONS

    order = {p: i for i, p in enumerate(ENGINE_ORDER)}
    rows.sort(key=lambda r: (order.get(r["provider"], 9), PRECISIONS.index(r["precision"])
                             if r["precision"] in PRECISIONS else 9, r["batch"]))
