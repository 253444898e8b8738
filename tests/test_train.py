"""Fine-tuning: seeded splits and folds, AUC, strategies' trainable parts, a real training run on
scikit-learn's digits (simple_cnn), head fine-tuning from it, k-fold reports, the CLI, and export
of the fine-tuned weights with their labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from edgeinfer.errors import InvalidOptionError  # noqa: E402
from edgeinfer.train.data import stratified_folds, stratified_split  # noqa: E402
from edgeinfer.train.loop import auc_ovr_macro  # noqa: E402


def write_digits_csv(path: Path, *, per_class: int, classes=range(10), names=None, seed=0) -> Path:
    """scikit-learn's real handwritten digits (8x8, 0..16) as a CSV pixel table (0..255)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    rows = []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(d.target == c))[:per_class]
        for i in idx:
            pix = np.clip(np.round(d.images[i] * 255 / 16), 0, 255).astype(int).ravel()
            lab = names[c] if names else str(c)
            rows.append(lab + "," + ",".join(map(str, pix)))
    path.write_text("label," + ",".join(f"p{i}" for i in range(64)) + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One PyTorch thread: on a shared 2-core machine two OpenMP threads per process spin against
    other processes and make training several times slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------ pure parts
def test_stratified_split_is_seeded_disjoint_and_per_class():
    y = np.repeat(np.arange(4), [10, 20, 5, 2])
    tr, va = stratified_split(y, val_fraction=0.2, seed=1)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert np.bincount(y[va], minlength=4).tolist() == [2, 4, 1, 1]
    tr2, va2 = stratified_split(y, val_fraction=0.2, seed=1)
    assert (va == va2).all()
    assert not np.array_equal(va, stratified_split(y, val_fraction=0.2, seed=2)[1])
    with pytest.raises(InvalidOptionError):
        stratified_split(y, val_fraction=1.5, seed=0)


def test_folds_cover_every_image_once_with_balanced_classes():
    y = np.repeat(np.arange(3), [30, 31, 29])
    folds = stratified_folds(y, folds=5, seed=0)
    val = np.concatenate([v for _, v in folds])
    assert sorted(val.tolist()) == list(range(len(y)))
    for tr, va in folds:
        assert len(np.intersect1d(tr, va)) == 0
        assert abs(len(va) - len(y) / 5) <= 1
        assert np.bincount(y[va], minlength=3).min() >= 5
    with pytest.raises(InvalidOptionError, match="smallest class"):
        stratified_folds(np.array([0, 0, 1]), folds=2, seed=0)


def test_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    s = rng.random((200, 4)) + np.eye(4)[y] * 0.4
    s = np.round(s, 1)  # many ties
    # sklearn's macro one-vs-rest AUC is the mean of the per-class binary AUCs
    want = np.mean([roc_auc_score(y == c, s[:, c]) for c in range(4)])
    assert auc_ovr_macro(s, y) == pytest.approx(want, abs=1e-12)


def test_strategies_choose_the_trainable_parts():
    from edgeinfer.train.model import apply_strategy, build_train_model

    _, tm = build_train_model("simple_cnn", weights="random", num_classes=4, seed=0)
    assert [n for n, _ in tm.blocks] == ["blocks.0", "blocks.1", "blocks.2"]
    assert tm.head.out_features == 4
    apply_strategy(tm, "head")
    assert tm.param_counts()["trainable"] == 128 * 4 + 4
    apply_strategy(tm, "partial", unfreeze=1)
    assert tm.trainable == ["blocks.2", "head"]
    assert all(p.requires_grad for p in tm.module.blocks[2].parameters())
    assert not any(p.requires_grad for p in tm.module.blocks[1].parameters())
    apply_strategy(tm, "full")
    counts = tm.param_counts()
    assert counts["trainable"] == counts["total"]
    with pytest.raises(InvalidOptionError, match="strategy"):
        apply_strategy(tm, "everything")


def test_torchvision_and_timm_heads_are_replaced():
    from edgeinfer.train.model import backbone_blocks, replace_head

    import timm
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    head = replace_head(tv, 3)
    assert tv.fc is head and head.out_features == 3
    assert backbone_blocks(tv, head)[-1][0] == "layer4.1"
    tm = timm.create_model("mobilenetv3_small_050", pretrained=False)
    head = replace_head(tm, 5)
    assert tm.get_classifier() is head and head.out_features == 5


# ------------------------------------------------------------------ training runs
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """simple_cnn trained from scratch on 200 real digits (20 per class)."""
    from edgeinfer.train import finetune

    d = tmp_path_factory.mktemp("digits")
    csv = write_digits_csv(d / "digits.csv", per_class=20)
    out = d / "full"
    report = finetune("simple_cnn", data=csv, out=out, weights="random", strategy="full",
                      epochs=5, batch_size=16, lr=3e-3, val_split=0.2, seed=0, show_bars=False)
    return d, csv, out, report


def test_full_training_learns_digits_and_writes_every_file(digits_run):
    _, _, out, r = digits_run
    for f in ("weights.safetensors", "labels.txt", "train_report.json", "train_report.html", "curves.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    j = json.loads((out / "train_report.json").read_text())
    assert j["random_init"] and j["strategy"] == "full" and j["data"]["images"] == 200
    hist = j["runs"][0]["history"]
    assert len(hist) == 5 and all({"train_loss", "val_loss", "train_acc", "val_acc", "seconds"} <= set(h) for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    m = j["runs"][0]["metrics"]
    assert m["n"] == 40
    # 10 balanced classes: chance is 10%; a CNN on real digits must be far above it
    assert m["accuracy"] > 0.6, m["accuracy"]
    assert 0 < m["f1"] <= 1 and -1 <= m["mcc"] <= 1 and 0.5 < m["auc"] <= 1
    assert j["weights_bytes"] == (out / "weights.safetensors").stat().st_size
    assert j["environment"]["loadavg"] is not None and j["runs"][0]["peak_memory_mb"] > 0
    html = (out / "train_report.html").read_text()
    assert "curves.png" in html and "RANDOM" in html and "macro F1" in html


def test_head_strategy_trains_only_the_head_and_is_reproducible(digits_run, tmp_path):
    from safetensors.torch import load_file

    from edgeinfer.train import finetune

    d, _, full, _ = digits_run
    csv = write_digits_csv(tmp_path / "five.csv", per_class=8, classes=range(5, 10),
                           names={c: f"digit {c}" for c in range(10)}, seed=1)
    outs = []
    for run in ("a", "b"):
        r = finetune("simple_cnn", data=csv, out=tmp_path / run, weights=str(full / "weights.safetensors"),
                     strategy="head", epochs=3, batch_size=8, val_split=0.25, seed=5, show_bars=False)
        outs.append(load_file(str(tmp_path / run / "weights.safetensors")))
    assert r["feature_cache"] and r["trainable_blocks"] == ["head"]
    assert r["data"]["classes"] == [f"digit {c}" for c in range(5, 10)]
    base = load_file(str(full / "weights.safetensors"))
    a, b = outs
    assert a["fc.weight"].shape == (5, 128)
    for k in base:
        if not k.startswith("fc."):
            assert (a[k] == base[k]).all(), f"frozen {k} changed"
    for k in a:
        assert (a[k] == b[k]).all(), f"same seed, different {k}"


def test_kfold_reports_mean_and_std_of_every_metric(tmp_path):
    from edgeinfer.train import finetune

    csv = write_digits_csv(tmp_path / "d.csv", per_class=6, classes=range(3))
    r = finetune("simple_cnn", data=csv, out=tmp_path / "kf", weights="random", strategy="full",
                 epochs=2, batch_size=8, folds=3, seed=0, show_bars=False)
    assert [x["fold"] for x in r["runs"]] == [1, 2, 3]
    assert sum(x["val_images"] for x in r["runs"]) == 18
    for k in ("accuracy", "f1", "mcc", "auc"):
        vals = [x["metrics"][k] for x in r["runs"]]
        assert r["summary"][k]["mean"] == pytest.approx(np.mean(vals))
        assert r["summary"][k]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert r["final_run"]["train_images"] == 18  # the saved weights saw every image
    html = (tmp_path / "kf" / "train_report.html").read_text()
    assert "±" in html and "Folds" in html


def test_cli_finetune_and_export_reads_classes_and_labels_from_the_weights(digits_run, tmp_path, capsys):
    from edgeinfer.cli.main import main
    from edgeinfer.runtime.artifact import read_manifest

    _, csv, full, _ = digits_run
    rc = main(["finetune", "--model", "simple_cnn", "--weights", str(full / "weights.safetensors"),
               "--data", str(csv), "--strategy", "partial", "--unfreeze", "1", "--epochs", "1",
               "--out", str(tmp_path / "p"), "--quiet"])
    assert rc == 0
    assert "validation: accuracy" in capsys.readouterr().out
    r = json.loads((tmp_path / "p" / "train_report.json").read_text())
    assert r["trainable_blocks"] == ["blocks.2", "head"] and r["command"].startswith("edgeinfer finetune")
    # a fine-tuned file exports like any weights file; its class count and labels come along
    (tmp_path / "p" / "labels.txt").write_text("".join(f"d{i}\n" for i in range(10)))
    rc = main(["export", "--model", "simple_cnn", "--weights", str(tmp_path / "p" / "weights.safetensors"),
               "--out", str(tmp_path / "art"), "--json"])
    assert rc == 0
    m = read_manifest(tmp_path / "art")
    assert m["labels"] == [f"d{i}" for i in range(10)] and m["output"]["dim"] == 10
    assert m["weights"]["origin"] == "file"


def test_option_errors_are_typed(tmp_path):
    from edgeinfer.train import finetune
    from edgeinfer.evaluate.datasets import DatasetError

    with pytest.raises(InvalidOptionError, match="need --export"):
        finetune("simple_cnn", data=tmp_path, out=tmp_path / "o", int8=True)
    with pytest.raises(DatasetError, match="does not exist"):
        finetune("simple_cnn", data=tmp_path / "nope", out=tmp_path / "o", weights="random")
    with pytest.raises(InvalidOptionError, match="folds"):
        finetune("simple_cnn", data=tmp_path, out=tmp_path / "o", folds=1)


def test_simple_cnn_has_no_pretrained_weights():
    from edgeinfer.errors import WeightsError
    from edgeinfer.export.torch_models import build_model

    with pytest.raises(WeightsError, match="finetune"):
        build_model("simple_cnn", weights="pretrained")


@pytest.mark.slow
def test_export_int8_records_labelled_accuracy_of_every_precision(digits_run, tmp_path):
    from edgeinfer.runtime.artifact import read_manifest
    from edgeinfer.train import finetune

    _, csv, full, _ = digits_run
    r = finetune("simple_cnn", data=csv, out=tmp_path / "x", weights=str(full / "weights.safetensors"),
                 strategy="head", epochs=2, val_split=0.2, seed=0, show_bars=False,
                 export=True, int8=True, fp16=True)
    m = read_manifest(tmp_path / "x" / "artifact")
    assert m["labels"] == [str(i) for i in range(10)]
    assert {"fp32", "fp16", "int8"} <= set(m["files"])
    lab = m["finetune"]["labelled_val"]
    assert lab["images"] == 40 and lab["calibrated_on"] == "training images only"
    accs = {p: v["accuracy"] for p, v in lab["precisions"].items()}
    assert set(accs) == {"fp32", "fp16", "int8"}
    assert accs["fp32"] == pytest.approx(r["summary"]["accuracy"], abs=0.02)  # ORT vs PyTorch
    assert r["export"]["calibration"]["images"] > 0


def test_separate_validation_set(digits_run, tmp_path):
    from edgeinfer.evaluate.datasets import DatasetError
    from edgeinfer.train import finetune

    _, _, full, _ = digits_run
    names = {c: f"digit {c}" for c in range(10)}
    tr = write_digits_csv(tmp_path / "tr.csv", per_class=5, classes=range(5, 8), names=names, seed=1)
    te = write_digits_csv(tmp_path / "te.csv", per_class=12, classes=range(5, 8), names=names, seed=2)
    r = finetune("simple_cnn", data=tr, val_data=te, out=tmp_path / "o", strategy="head",
                 weights=str(full / "weights.safetensors"), epochs=2, batch_size=5, show_bars=False)
    assert r["runs"][0]["train_images"] == 15 and r["runs"][0]["val_images"] == 36
    assert r["data"]["val_data"] == str(te) and r["summary"]["accuracy"] is not None
    other = write_digits_csv(tmp_path / "x.csv", per_class=3, classes=range(0, 3), names=names)
    with pytest.raises(DatasetError, match="match none"):
        finetune("simple_cnn", data=tr, val_data=other, out=tmp_path / "o2", strategy="head",
                 weights="random", epochs=1, show_bars=False)
