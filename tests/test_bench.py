"""edgeinfer bench on a tiny artifact (onnx.helper graph, no torch): outputs, bad input, CLI."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from edgeinfer.bench import report, runner, timing
from edgeinfer.errors import EdgeInferError

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from bench_tiny import LABELS, make_tiny_artifact  # noqa: E402


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_artifact(tmp_path / "tiny", int8_noise=0.02)


FAST = dict(budget_s=0.05, torch_baseline=False)


def test_bench_writes_all_outputs_and_tuning(tiny, generated_images_dir, tmp_path):
    provs = "cpu,openvino" if _has_openvino() else "cpu"
    out = tmp_path / "out"
    res = runner.run_bench(tiny, providers=provs, precisions="all", batches="1,2",
                           images=generated_images_dir, out=out, memory=True, **FAST)
    ok = [r for r in res["rows"] if r["status"] == "ok"]
    assert len(ok) == len(provs.split(",")) * 2 * 2
    for r in ok:
        assert r["latency_median_ms"] > 0 and r["latency_p90_ms"] >= r["latency_median_ms"]
        assert r["latency_p99_ms"] >= r["latency_p90_ms"] and r["runs"] >= timing.MIN_RUNS
        assert r["throughput_ips"] == pytest.approx(r["batch"] * 1000 / r["latency_median_ms"])
        assert r["peak_rss_mb"] > 10 and r["cold_start_s"] > 0 and r["model_size_mb"] > 0
        assert r["cosine_mean"] is not None
    fp32 = [r for r in ok if r["precision"] == "fp32"]
    assert all(r["top1_agreement"] == 1.0 and r["cosine_min"] > 0.9999 for r in fp32)
    int8 = [r for r in ok if r["precision"] == "int8"]
    assert all(r["cosine_min"] < 1.0 for r in int8)          # the perturbed file differs
    if _has_openvino():                                      # OpenVINO has a model cache
        ov = [r for r in ok if r["provider"] == "openvino"]
        assert all(r["cold_start_cached_s"] is not None and r["cache_hit"] for r in ov)
    for name in ("results.json", "results.csv", "pareto.png", "report.html"):
        assert (out / name).stat().st_size > 100, name
    data = json.loads((out / "results.json").read_text())
    assert data["random_weights"] is True and data["accuracy_kind"] == "fidelity"
    assert data["machine"]["cpu"]["cores"] >= 1 and "onnxruntime" in data["machine"]["libraries"]
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(res["rows"])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "RANDOM WEIGHTS" in html and "data:image/png;base64," in html
    assert data["machine"]["cpu"]["model"] in html and "<script" not in html
    # tuning.json: every batch-1 configuration, keyed to the file it measured; auto picks the
    # fastest passing one, exactly as the bench marked it
    from edgeinfer.runtime.artifact import Artifact
    from edgeinfer.runtime.selection import read_tuning, select

    art = Artifact(tiny)
    measured = read_tuning(art)
    assert set(measured) == {f"{r['provider']}/{r['precision']}" for r in ok if r["batch"] == 1}
    assert all(m["sha256"] == art.entry(m["precision"])["sha256"] for m in measured.values())
    sel = [r for r in ok if r["selected"]]
    fastest = min((r for r in ok if r["batch"] == 1 and r["fidelity_pass"]),
                  key=lambda r: r["latency_median_ms"])
    assert len(sel) == 1 and sel[0] is fastest
    assert res["tuning"]["entry"]["provider"] == fastest["provider"]
    auto = select("auto", artifact=art)
    assert auto.tuned and (auto.provider, auto.precision) == (fastest["provider"], fastest["precision"])
    # latency rounds are kept per row: the ratios in the report come with their spread
    assert all(len(r["latency_round_medians_ms"]) == res["settings"]["rounds"] for r in ok)


def test_int8_failing_the_guard_is_never_picked(tmp_path, generated_images_dir):
    art = make_tiny_artifact(tmp_path / "bad", int8_noise=0.5)
    res = runner.run_bench(art, providers="cpu", images=generated_images_dir, memory=False,
                           out=tmp_path / "o", **FAST)
    int8 = [r for r in res["rows"] if r["precision"] == "int8"]
    assert int8 and all(r["fidelity_pass"] is False for r in int8)
    assert res["tuning"]["entry"]["precision"] == "fp32"
    assert any("fails the fidelity guard" in n for n in report.observations(res))


def test_missing_precision_and_engine_are_skipped_with_reason(tiny, tmp_path):
    res = runner.run_bench(tiny, providers="cpu,tensorrt", precisions="fp32,fp16", memory=False,
                           out=tmp_path / "o", **FAST)
    by = {(r["provider"], r["precision"]): r for r in res["rows"]}
    assert by[("cpu", "fp32")]["status"] == "ok"
    fp16 = by[("cpu", "fp16")]
    assert fp16["status"] == "skipped" and "no fp16 file" in fp16["error"] and "quantize" in fp16["error"]
    if not any(p["name"] == "tensorrt" and p["available"] for p in res["providers"]):
        assert by[("tensorrt", "fp32")]["status"] == "skipped" and by[("tensorrt", "fp32")]["error"]
    assert "skipped" in (tmp_path / "o" / "report.html").read_text()


def test_failing_engine_shows_error_and_others_complete(tiny, tmp_path, monkeypatch):
    import edgeinfer.backends as backends

    real = backends.create_session

    class Crashing:
        def __init__(self, s):
            self.s, self.n, self.device = s, 0, "CPU"

        def run(self, x):
            self.n += 1
            if self.n > 3:
                raise RuntimeError("engine crashed mid-run")
            return self.s.run(x)

        def close(self):
            self.s.close()

    def fake(path, *, provider, options=None, precision=None):
        s = real(path, provider=provider, options=options, precision=precision)
        return Crashing(s) if options.precision == "int8" else s

    monkeypatch.setattr(backends, "create_session", fake)
    res = runner.run_bench(tiny, providers="cpu", batches="1,2", memory=False, out=tmp_path / "o", **FAST)
    rows = {(r["precision"], r["batch"]): r for r in res["rows"]}
    assert rows[("fp32", 1)]["status"] == "ok" and rows[("fp32", 2)]["status"] == "ok"
    for b in (1, 2):
        assert rows[("int8", b)]["status"] == "error"
        assert "engine crashed mid-run" in rows[("int8", b)]["error"]
    assert "engine crashed mid-run" in (tmp_path / "o" / "report.html").read_text()


def test_empty_image_folder_is_a_clear_error(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgeInferError, match="no images in"):
        runner.run_bench(tiny, providers="cpu", images=empty, memory=False, out=tmp_path / "o", **FAST)


def test_unknown_provider_and_bad_batch(tiny, tmp_path):
    with pytest.raises(EdgeInferError, match="valid providers"):
        runner.run_bench(tiny, providers="cpu,gpuu", memory=False, **FAST)
    with pytest.raises(EdgeInferError, match="batch"):
        runner.run_bench(tiny, providers="cpu", batches="1,x", memory=False, **FAST)


def test_labelled_imagefolder_gives_labelled_metrics(tmp_path):
    from PIL import Image

    art = make_tiny_artifact(tmp_path / "tiny")
    # make the artifact's weights "real" so the report shows labelled accuracy
    m = json.loads((art / "manifest.json").read_text())
    m["weights"] = {"origin": "file", "path": "x.pt", "sha256": "0"}
    (art / "manifest.json").write_text(json.dumps(m))
    rng = np.random.default_rng(0)
    labels = tmp_path / "labelled"
    for c in LABELS[:4]:
        (labels / c.replace(" ", "_")).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                labels / c.replace(" ", "_") / f"{i}.png")
    res = runner.run_bench(art, providers="cpu", precisions="fp32", labels=labels, memory=False,
                           out=tmp_path / "o", **FAST)
    assert res["accuracy_kind"] == "labelled" and res["accuracy_metric"] == "top1"
    r = res["rows"][0]
    assert r["top1"] is not None and 0 <= r["top1"] <= 1 and r["mcc"] is not None
    conf = res["accuracy"]["cpu/fp32"]["labelled"]["confusion"]
    assert np.asarray(conf["matrix"]).sum() == 12
    assert "Confusions" in (tmp_path / "o" / "report.html").read_text()


def test_pareto_front():
    pts = [(1.0, 90.0), (2.0, 95.0), (3.0, 94.0), (0.5, 80.0), (2.0, 90.0)]
    assert report.pareto_front(pts) == [3, 0, 1]


def test_timing_respects_min_runs_and_budget():
    n = []
    t = timing.measure(lambda: n.append(1), warmup_runs=2, warmup_s=0.0, min_runs=15, budget_s=0.0)
    assert t["runs"] == 15 and len(n) >= 17 and t["p99_ms"] >= t["median_ms"] >= t["min_ms"]


def test_cli_bench(tiny, generated_images_dir, tmp_path, capsys):
    from edgeinfer.cli.main import main

    out = tmp_path / "cli"
    rc = main(["bench", str(tiny), "--provider", "cpu", "--precision", "fp32,int8", "--batch", "1",
               "--budget", "0.05", "--images", str(generated_images_dir), "--out", str(out),
               "--no-memory", "--no-torch", "--no-tuning", "--pipeline"])
    assert rc == 0
    assert (out / "report.html").exists() and not (tiny / "tuning.json").exists()
    text = capsys.readouterr().out
    assert "report:" in text and "images/s" in text
    assert max(len(line) for line in text.splitlines()) <= 80   # reads well in 80 columns
    rc = main(["bench", str(tiny), "--provider", "cpu", "--images", str(tmp_path / "nope")])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err


def test_bench_is_torch_free():
    from torch_blocked import assert_imports_without_torch

    assert_imports_without_torch("edgeinfer.bench", "edgeinfer.bench.runner", "edgeinfer.bench.report",
                                 "edgeinfer.bench.rows", "edgeinfer.bench.worker",
                                 "edgeinfer.bench.timing", "edgeinfer.bench.fingerprint")


def test_pick_and_partial_bench_keep_other_measurements(tiny, tmp_path):
    from edgeinfer.runtime.artifact import Artifact
    from edgeinfer.runtime.selection import read_tuning

    runner.run_bench(tiny, providers="cpu", precisions="fp32,int8", memory=False,
                     out=tmp_path / "o1", **FAST)
    first = read_tuning(Artifact(tiny))
    assert set(first) == {"cpu/fp32", "cpu/int8"}
    runner.run_bench(tiny, providers="cpu", precisions="fp32", memory=False,
                     out=tmp_path / "o2", **FAST)
    second = read_tuning(Artifact(tiny))
    assert set(second) == {"cpu/fp32", "cpu/int8"}
    assert second["cpu/int8"] == first["cpu/int8"]              # not re-measured: kept as it was
    assert second["cpu/fp32"]["measured"] >= first["cpu/fp32"]["measured"]


def test_eager_ratio_states_its_spread():
    slow = {"latency_median_ms": 40.0, "latency_round_medians_ms": [30.0, 40.0, 60.0]}
    fast = {"latency_median_ms": 10.0, "latency_round_medians_ms": [10.0, 10.0, 10.0]}
    assert report.ratio_spread(slow, fast) == (4.0, 3.0, 6.0)
    assert report.ratio_spread({**slow, "latency_round_medians_ms": None}, fast) == (4.0, None, None)
    note = report._eager_ratio_note(slow, fast, {"provider": "cpu", "precision": "int8"}, 1)
    assert "4.00x faster" in note and "3.00x to 6.00x over 3 rounds" in note


@pytest.mark.slow
def test_torch_baseline_row_matches_onnx(tmp_path):
    """The PyTorch eager row: same weights (random, manifest seed) -> fidelity ~1 vs ORT FP32."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from edgeinfer.export.pipeline import export_model

    art = export_model("timm:test_resnet", weights="random", out=tmp_path / "tres")
    res = runner.run_bench(art, providers="cpu", precisions="fp32", memory=False, budget_s=0.05,
                           max_images=8, out=tmp_path / "o")
    py = [r for r in res["rows"] if r["provider"] == "pytorch"]
    assert len(py) == 1 and py[0]["status"] == "ok", py
    assert py[0]["latency_median_ms"] > 0 and py[0]["peak_rss_mb"] > 50
    assert py[0]["top1_agreement"] == 1.0 and py[0]["cosine_min"] > 0.9999
    assert res["torch_baseline"]["included"] and not py[0]["selected"]


def test_embedding_output_uses_cosine(tmp_path):
    art = make_tiny_artifact(tmp_path / "emb")
    m = json.loads((art / "manifest.json").read_text())
    m["output"] = {"kind": "embedding", "dim": 10}
    (art / "manifest.json").write_text(json.dumps(m))
    res = runner.run_bench(art, providers="cpu", memory=False, out=tmp_path / "o", **FAST)
    assert res["accuracy_metric"] == "cosine_mean"
    ok = [r for r in res["rows"] if r["status"] == "ok"]
    assert ok and all(r["top1_agreement"] is None and r["cosine_mean"] is not None for r in ok)
    assert (tmp_path / "o" / "pareto.png").stat().st_size > 1000


def test_cifar10_labels_give_labelled_metrics(tmp_path):
    import pickle

    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    art = make_tiny_artifact(tmp_path / "tiny", labels=cifar)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 255, (30, 3072), dtype=np.uint8),
                     b"labels": [i % 10 for i in range(30)]}, f)
    res = runner.run_bench(art, providers="cpu", precisions="fp32", labels=d, memory=False,
                           out=tmp_path / "o", **FAST)
    assert res["images"]["source"] == "cifar10" and res["images"]["n"] == 30
    r = res["rows"][0]
    assert r["status"] == "ok" and r["top1"] is not None and r["macro_f1"] is not None
    with pytest.raises(EdgeInferError, match="photo files"):   # no files: no pipeline
        runner.run_bench(art, providers="cpu", precisions="fp32", labels=d, memory=False,
                         pipeline=True, out=tmp_path / "o2", **FAST)
