"""`edgeinfer compare`: every metric against scikit-learn (classes absent from the sample
included), the five data-set formats, the same seeded images for every model, class matching by
name (a model that does not cover the data set is reported, not scored), CLIP zero-shot over the
data set's class names, and the output files (JSON/CSV/PNG/HTML) recomputed from predictions."""
from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest

from bench_tiny import make_tiny_artifact
from conftest import make_image
from edgeinfer.evaluate import compare as C
from edgeinfer.evaluate import metrics as M
from edgeinfer.evaluate.dataset_spec import CIFAR10_CLASSES, match_classes, open_dataset
from test_evaluate import _write_cifar  # one CIFAR-10 batch writer for the tests
from edgeinfer.evaluate.datasets import FASHION_MNIST_CLASSES, DatasetError, imagenet_synsets

sk = pytest.importorskip("sklearn.metrics")


# ------------------------------------------------------------------ metrics vs scikit-learn
def _random_case(seed, n, c, present):
    rng = np.random.default_rng(seed)
    cls = rng.choice(c, present, replace=False)          # only some classes occur in the sample
    y = rng.choice(cls, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += rng.random(n) * 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


@pytest.mark.parametrize("seed,n,c,present", [(0, 200, 10, 10), (1, 60, 10, 6), (2, 300, 30, 17),
                                              (3, 25, 5, 2)])
def test_every_metric_matches_sklearn(seed, n, c, present):
    y, probs = _random_case(seed, n, c, present)
    pred = probs.argmax(1)
    m = M.classification_metrics(probs, y, ks=(1, 3, 5), with_curves=True)
    labels = np.arange(c)
    assert m["top1"] == pytest.approx(sk.accuracy_score(y, pred))
    for k in (3, 5):
        assert m[f"top{k}"] == pytest.approx(sk.top_k_accuracy_score(y, probs, k=k, labels=labels))
    for ours, fn in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert m[ours] == pytest.approx(fn(y, pred, average="macro", zero_division=0)), ours
    assert m["mcc"] == pytest.approx(sk.matthews_corrcoef(y, pred))
    cm, _ = M.confusion_matrix(y, pred, labels=labels)
    assert np.array_equal(cm, sk.confusion_matrix(y, pred, labels=labels))
    # one-vs-rest areas: sklearn's binary scores per class present, averaged
    per = M.per_class_curves(probs, y)
    aucs, aps = [], []
    for k in labels:
        yb = y == k
        if not yb.any():
            assert per[k] is None   # absent class: no curve, not a zero
            continue
        assert per[k]["roc_auc"] == pytest.approx(sk.roc_auc_score(yb, probs[:, k]))
        assert per[k]["average_precision"] == pytest.approx(sk.average_precision_score(yb, probs[:, k]))
        aucs.append(sk.roc_auc_score(yb, probs[:, k]))
        aps.append(sk.average_precision_score(yb, probs[:, k]))
    assert m["roc_auc"] == pytest.approx(np.mean(aucs))
    assert m["average_precision"] == pytest.approx(np.mean(aps))
    if present == c:  # with every class present sklearn's multiclass OvR macro AUC exists too
        assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(y, probs, multi_class="ovr",
                                                              average="macro"))


def test_curves_match_sklearn_with_ties():
    rng = np.random.default_rng(7)
    for _ in range(10):
        y = rng.random(80) < 0.3
        s = np.round(rng.random(80), 1)                 # many ties
        f, t, th = M.roc_curve(y, s)
        f2, t2, th2 = sk.roc_curve(y, s, drop_intermediate=False)
        assert np.allclose(f, f2) and np.allclose(t, t2) and np.allclose(th[1:], th2[1:])
        p, r, th = M.precision_recall_curve(y, s)
        p2, r2, th2 = sk.precision_recall_curve(y, s)
        assert np.allclose(p, p2) and np.allclose(r, r2) and np.allclose(th, th2)
        assert M.auc(f, t) == pytest.approx(sk.auc(f2, t2))
    assert np.isnan(M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))   # one class only: undefined


# ------------------------------------------------------------------ the five formats
LABELS = [f"class {i}" for i in range(10)]


def _imagefolder(d, classes=("class 0", "class 1", "class 2"), per=4):
    for ci, c in enumerate(classes):
        (d / c).mkdir(parents=True)
        for j in range(per):
            make_image(100 * ci + j, size=(40, 36)).save(d / c / f"{j}.png")
    return d


def _fashion(d, n=20):
    d.mkdir()
    imgs = np.random.default_rng(1).integers(0, 255, (n, 28, 28), dtype=np.uint8)
    labels = bytes(i % 10 for i in range(n))
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28)) + imgs.tobytes())
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels)
    return d


def _csv(p, n=24, side=8):
    rng = np.random.default_rng(2)
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label"] + [f"pixel{i + 1}" for i in range(side * side)])
        for i in range(n):
            w.writerow([i % 3 * 2] + rng.integers(0, 256, side * side).tolist())   # labels 0, 2, 4
    return p


def _synsets(d):
    """ImageNet validation naming, as in the real photos folder: <synset>_<label>.JPEG."""
    d.mkdir()
    syn = imagenet_synsets()
    for ci, (s, name) in enumerate(((syn[0], "tench"), (syn[1], "goldfish"), (syn[999], "toilet_tissue"))):
        make_image(10 * ci, size=(40, 40)).save(d / f"{s}_{name}.JPEG")
    return d


def test_open_dataset_five_formats(tmp_path):
    f = open_dataset(_imagefolder(tmp_path / "if"))
    assert f.source == "imagefolder" and f.classes == ["class 0", "class 1", "class 2"]
    assert sorted(set(f.targets)) == [0, 1, 2] and len(f) == 12
    c = open_dataset(_write_cifar(tmp_path / "cifar-10-batches-py", n=30))
    assert c.source == "cifar10" and c.classes == CIFAR10_CLASSES and c.items[0].shape == (32, 32, 3)
    assert c.targets[:3] == [0, 1, 2]
    fm = open_dataset(_fashion(tmp_path / "fm"))
    assert fm.source == "fashion-mnist" and fm.classes == FASHION_MNIST_CLASSES
    assert fm.items[0].shape == (28, 28, 3) and fm.targets[:3] == [0, 1, 2]
    t = open_dataset(_csv(tmp_path / "t.csv"))
    # integer labels with gaps: classes named "0", "2", "4", only those that occur
    assert t.source == "csv" and t.classes == ["0", "2", "4"] and t.items[0].shape == (8, 8, 3)
    assert [t.classes[i] for i in t.targets[:4]] == ["0", "2", "4", "0"]
    s = open_dataset(_synsets(tmp_path / "syn"))
    assert s.source == "synset-names" and s.display == ["tench", "goldfish", "toilet tissue"]
    assert s.classes[0] == "n01440764" and len(s) == 3
    with pytest.raises(DatasetError):
        open_dataset(tmp_path / "missing")


def test_sample_is_seeded_and_shared():
    from edgeinfer.evaluate.dataset_spec import DataSet

    ds = DataSet(list(range(100)), [i % 5 for i in range(100)], [str(i) for i in range(5)], "csv", "x")
    a, b, c = ds.sample(20, seed=0), ds.sample(20, seed=0), ds.sample(20, seed=1)
    assert a.items == b.items and a.items != c.items and len(a) == 20
    assert a.targets == [x % 5 for x in a.items]          # items and targets stay paired
    assert len(ds.sample(None)) == 100 and len(ds.sample(500)) == 100


def test_class_matching_by_name():
    ds = open_dataset.__globals__["DataSet"](["x"] * 3, [0, 1, 2], ["Class_0", "class-1", "n01440764"],
                                             "imagefolder", "x", ["Class_0", "class-1", "tench"])
    idx, missing = match_classes(ds, LABELS)
    assert idx == [0, 1, None] and missing == ["tench"]
    imagenet = ["tench, Tinca tinca"] + [f"c{i}" for i in range(999)]
    idx, missing = match_classes(ds, imagenet)
    assert idx[2] == 0 and missing == ["Class_0", "class-1"]


# ------------------------------------------------------------------ compare end to end
@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    d = tmp_path_factory.mktemp("arts")
    return {"a": make_tiny_artifact(d / "a", precisions=("fp32",), name="tiny_a"),
            "b": make_tiny_artifact(d / "b", precisions=("fp32",), name="tiny_b",
                                    labels=list(reversed(LABELS))),     # another class order
            "digits": make_tiny_artifact(d / "digits", precisions=("fp32",), name="tiny_digits",
                                         labels=[str(i) for i in range(10)]),
            "other": make_tiny_artifact(d / "other", precisions=("fp32",), name="tiny_other",
                                        labels=[f"other {i}" for i in range(10)])}


def _recompute_from_scores(res, out, i):
    z = np.load(out / "scores.npz")
    key = [k for k in z.files if k.startswith(f"model{i}_")][0]
    return z["targets"], z[key]


def test_compare_outputs_and_recomputation(arts, tmp_path):
    from edgeinfer.evaluate.compare_report import write_all

    data = _imagefolder(tmp_path / "data", classes=("class 0", "class 1", "class 2", "class 3"), per=5)
    (data / "class 1" / "broken.png").write_bytes(b"not a png")
    res = C.compare([arts["a"], arts["b"], arts["other"]], data, n=16, seed=3, provider="cpu",
                    precision="fp32", measure_memory=False)
    a, b, other = res["models"]
    assert len(res["items"]) == 16 and a["n"] == b["n"] == 16
    assert other["status"] == "classes-not-covered" and "top1" not in other
    assert other["missing_classes"] == ["class 0", "class 1", "class 2", "class 3"]
    assert other["time_mean_ms"] > 0                  # costs are still measured
    assert a["status"] == b["status"] == "ok" and a["mode"] == "classifier"
    broken = [i for i, x in enumerate(res["items"]) if x.endswith("broken.png")]
    assert a["n_scored"] == 16 - len(broken) and len(a["failures"]) == len(broken)
    assert a["params"] == 314 and a["macs"] > 0 and a["size_bytes"] > 0
    out = tmp_path / "out"
    files = write_all(res, out)
    for k in ("json", "csv", "predictions", "scores", "confusion", "roc", "pr", "scatter", "html"):
        assert files[k].exists() and files[k].stat().st_size > 0, k
    for k in ("confusion", "roc", "pr", "scatter"):
        assert files[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the metrics can be recomputed from scores.npz with scikit-learn
    for i, m in enumerate((a, b)):
        t, p = _recompute_from_scores(res, out, i)
        ok = ~np.isnan(p).any(1)
        assert m["top1"] == pytest.approx(sk.accuracy_score(t[ok], p[ok].argmax(1)))
        assert m["macro_f1"] == pytest.approx(sk.f1_score(t[ok], p[ok].argmax(1), average="macro",
                                                          zero_division=0))
        assert m["mcc"] == pytest.approx(sk.matthews_corrcoef(t[ok], p[ok].argmax(1)))
    # and top-1 from predictions.csv
    with open(files["predictions"]) as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == "tiny_a" and r["pred_1"]]
    assert len(rows) == a["n_scored"]
    assert np.mean([r["pred_1"] == r["true_label"] for r in rows]) == pytest.approx(a["top1"])
    j = json.loads(files["json"].read_text())
    assert j["models"][0]["name"] == "tiny_a" and "_probs" not in j["models"][0]
    assert j["machine"]["cpu"]["model"] and j["loadavg"] is not None
    from edgeinfer.evaluate.compare_report import read_results

    again = read_results(out)   # re-render later without running the models again
    assert np.allclose(again["models"][1]["_probs"], b["_probs"], equal_nan=True)
    html = files["html"].read_text()
    assert "RANDOM WEIGHTS" in html and j["machine"]["cpu"]["model"] in html
    assert "not covered" in html or "are not among" in html
    assert "data:image/png;base64," in html and "<img" in html and "src='confusion" not in html


def test_models_see_the_same_images_whatever_their_class_order(arts, tmp_path):
    data = _imagefolder(tmp_path / "d", classes=tuple(LABELS[:5]), per=3)
    res = C.compare([arts["a"], arts["b"]], data, n=None, provider="cpu", precision="fp32",
                    measure_memory=False)
    a, b = res["models"]
    # b is the same network with its labels reversed: class k of the data is b's output 9-k, so
    # its scores differ (a real check that the mapping is by name, not by index)
    assert a["n"] == b["n"] == 15
    assert not np.allclose(a["_probs"], b["_probs"])
    ia = C.match_classes(open_dataset(data), LABELS)[0]
    ib = C.match_classes(open_dataset(data), list(reversed(LABELS)))[0]
    assert ia == [0, 1, 2, 3, 4] and ib == [9, 8, 7, 6, 5]


@pytest.mark.parametrize("fmt", ["cifar10", "fashion-mnist", "csv", "synset-names"])
def test_compare_in_memory_and_synset_formats(fmt, arts, tmp_path):
    if fmt == "cifar10":
        data, labels = _write_cifar(tmp_path / "cifar-10-batches-py", n=30), list(reversed(CIFAR10_CLASSES))
    elif fmt == "fashion-mnist":
        data, labels = _fashion(tmp_path / "fm"), list(FASHION_MNIST_CLASSES)
    elif fmt == "csv":
        data, labels = _csv(tmp_path / "t.csv"), [str(i) for i in range(10)]
    else:
        data, labels = _synsets(tmp_path / "syn"), ["tench, Tinca tinca"] + [f"c{i}" for i in range(999)]
    art = make_tiny_artifact(tmp_path / "art", precisions=("fp32",), labels=labels, name=f"tiny_{fmt}")
    res = C.compare([art], data, n=12, provider="cpu", precision="fp32", measure_memory=False)
    m = res["models"][0]
    assert res["data"]["source"] == fmt
    if fmt == "synset-names":
        # a 1000-class model matches synsets by ImageNet index; a small one by the names in the
        # files, and this one lacks two of them
        small = make_tiny_artifact(tmp_path / "small", precisions=("fp32",), name="tiny_small",
                                   labels=["tench", "shark"] + [f"x{i}" for i in range(8)])
        r2 = C.compare([small], data, n=12, provider="cpu", precision="fp32", measure_memory=False)
        s = r2["models"][0]
        assert s["status"] == "classes-not-covered"
        assert set(s["missing_classes"]) == {"goldfish", "toilet tissue"}
    assert m["status"] == "ok" and m["n_scored"] == len(res["items"]) == m["n"]
    assert 0 <= m["top1"] <= m["top3"] <= 1


def test_peak_rss_of_a_serving_process(arts, tmp_path):
    data = _csv(tmp_path / "t.csv")
    res = C.compare([arts["digits"]], data, n=8, provider="cpu", precision="fp32")
    m = res["models"][0]
    assert m["status"] == "ok" and m.get("memory_error") is None
    # a fresh interpreter with onnxruntime loaded: tens of MB at least, far below a GB
    assert 20 < m["peak_rss_mb"] < 2000


def test_cli_compare_fits_80_columns(arts, tmp_path, capsys):
    from edgeinfer.cli.main import main

    data = _imagefolder(tmp_path / "d", classes=("class 0", "class 1"), per=3)
    out = tmp_path / "out"
    rc = main(["compare", str(arts["a"]), str(arts["other"]), "--data", str(data), "--n", "6",
               "--out", str(out), "--no-memory", "--provider", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and (out / "report.html").exists() and (out / "results.csv").exists()
    assert "tiny_a" in text and "tiny_other" in text and "not scored" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["name"] for r in rows] == ["tiny_a", "tiny_other"] and rows[1]["top1"] == ""


def test_no_artifact_and_bad_data(arts, tmp_path):
    from edgeinfer.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError):
        C.compare([], tmp_path)
    with pytest.raises(DatasetError):
        C.compare([arts["a"]], tmp_path / "nothing-here")


# ------------------------------------------------------------------ CLIP zero-shot
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    import json as _json

    import open_clip

    from edgeinfer.export.clip import build_clip
    from test_clip import TINY, TINY_CFG, export_artifact, tiny_recipe

    p = tmp_path_factory.mktemp("oc") / f"{TINY}.json"
    p.write_text(_json.dumps(TINY_CFG))
    open_clip.add_model_config(str(p))
    built = build_clip(tiny_recipe(), weights="random", seed=0)
    return export_artifact(built, tmp_path_factory.mktemp("art") / "clip_tiny")


@pytest.mark.slow  # exporting the tiny CLIP towers takes ~50 s on a busy 2-core machine
def test_clip_zero_shot_over_the_data_set_classes(tiny_clip, arts, tmp_path):
    import edgeinfer

    data = _imagefolder(tmp_path / "d", classes=("cat", "dog", "ship"), per=3)
    res = C.compare([tiny_clip, arts["a"]], data, n=None, provider="cpu", precision="fp32",
                    measure_memory=False)
    clip, tiny = res["models"]
    assert clip["mode"] == "zero-shot" and clip["status"] == "ok" and clip["n_scored"] == 9
    assert tiny["status"] == "classes-not-covered"        # 'class k' labels: no cat/dog/ship
    # the scores are CLIP's zero-shot probabilities over the data set's names
    m = edgeinfer.load(tiny_clip, provider="cpu", precision="fp32")
    try:
        ds = open_dataset(data).sample(None)
        zs = m.zero_shot(ds.items[:2], ["cat", "dog", "ship"], top_k=3)
    finally:
        m.close()
    for row, p in zip(zs, clip["_probs"][:2]):
        got = dict(row)
        assert [got[c] for c in ("cat", "dog", "ship")] == pytest.approx(p.tolist(), abs=1e-5)


def test_compare_and_inspect_modules_are_torch_free():
    from torch_blocked import assert_imports_without_torch

    assert_imports_without_torch("edgeinfer.evaluate.compare", "edgeinfer.evaluate.compare_report",
                                 "edgeinfer.evaluate.dataset_spec", "edgeinfer.evaluate.layers",
                                 "edgeinfer.evaluate.serve_worker", "edgeinfer.cli.compare",
                                 "edgeinfer.cli.inspect")


def test_one_artifact_at_two_precisions(arts, tmp_path):
    art = make_tiny_artifact(tmp_path / "two", precisions=("fp32", "int8"), name="tiny_two")
    assert C.split_precision(f"{art}@int8") == (art, "int8")
    assert C.split_precision(str(art)) == (art, None)
    data = _imagefolder(tmp_path / "d", classes=("class 0", "class 1"), per=3)
    res = C.compare([f"{art}@fp32", f"{art}@int8"], data, n=None, provider="cpu",
                    measure_memory=False)
    a, b = res["models"]
    assert (a["precision"], b["precision"]) == ("fp32", "int8")
    assert not np.allclose(a["_probs"], b["_probs"])      # the int8 file's weights differ
