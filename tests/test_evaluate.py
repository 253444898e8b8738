"""Labelled metrics (cross-checked against scikit-learn), fidelity math, labelled datasets."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.evaluate import datasets, fidelity, metrics


@pytest.mark.parametrize("seed,n,c", [(0, 200, 10), (1, 50, 7), (2, 300, 30)])
def test_metrics_match_sklearn(seed, n, c):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    scores = rng.normal(size=(n, c))
    scores[np.arange(n), y] += rng.random(n) * 2.5      # partly right
    pred = scores.argmax(1)
    m = metrics.classification_metrics(scores, y)
    assert m["top1"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["top5"] == pytest.approx(sk.top_k_accuracy_score(y, scores, k=5, labels=np.arange(c)))
    for ours, avg in (("precision", sk.precision_score), ("recall", sk.recall_score),
                      ("f1", sk.f1_score)):
        assert m[ours] == pytest.approx(avg(y, pred, average="macro", zero_division=0)), ours
    assert m["mcc"] == pytest.approx(sk.matthews_corrcoef(y, pred))
    cm = sk.confusion_matrix(y, pred)
    assert np.array_equal(np.array(m["confusion"]["matrix"]), cm)


def test_metrics_edge_cases():
    # a class that is predicted but never true, and one that is true but never predicted
    y = np.array([0, 0, 1, 1])
    scores = np.eye(3)[[0, 2, 1, 2]]
    m = metrics.classification_metrics(scores, y)
    assert m["top1"] == 0.5 and m["confusion"]["labels"] == [0, 1, 2]
    sk = pytest.importorskip("sklearn.metrics")
    assert m["f1"] == pytest.approx(sk.f1_score(y, scores.argmax(1), average="macro", zero_division=0))
    assert metrics.matthews_corrcoef([1, 1, 1], [1, 1, 1]) == 0.0   # undefined -> 0 like sklearn
    assert metrics.topk_predictions(np.array([[0.1, 0.5, 0.3]]), 2).tolist() == [[1, 2]]


def test_fidelity_math():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(64, 100)).astype(np.float32)
    same = fidelity.fidelity(ref, ref.copy())
    assert same["top1_agreement"] == 1.0 and same["top5_overlap"] == 1.0
    assert same["cosine_min"] == pytest.approx(1.0) and same["max_abs_diff"] == 0.0
    neg = fidelity.fidelity(ref, -ref)
    assert neg["cosine_mean"] == pytest.approx(-1.0) and neg["top1_agreement"] == 0.0
    # swap the argmax of the first 16 rows with the 2nd best -> agreement 0.75, overlap unchanged
    cand = ref.copy()
    top2 = metrics.topk_predictions(ref, 2)
    for i in range(16):
        a, b = top2[i]
        cand[i, a], cand[i, b] = ref[i, b], ref[i, a]
    f = fidelity.fidelity(ref, cand)
    assert f["top1_agreement"] == pytest.approx(0.75) and f["top5_overlap"] == pytest.approx(1.0)
    assert 0.9 < f["cosine_min"] < 1.0
    emb = fidelity.fidelity(ref, ref * 2, kind="embedding")   # scale does not change cosine
    assert emb["top1_agreement"] is None and emb["cosine_mean"] == pytest.approx(1.0)
    assert fidelity.passes(same) and not fidelity.passes(f) and not fidelity.passes(None)
    with pytest.raises(ValueError):
        fidelity.fidelity(ref, ref[:3])


def _labels1000():
    return [f"class{i}" for i in range(1000)]


def test_synset_named_photos(tmp_path):
    from PIL import Image

    syn = datasets.imagenet_synsets()
    assert len(syn) == 1000 and syn[0] == "n01440764"
    for s, name in ((syn[0], "tench"), (syn[999], "toilet_tissue")):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{s}_{name}.JPEG")
    ds = datasets.image_folder(tmp_path, _labels1000())
    assert ds.source == "synset-names" and sorted(ds.targets) == [0, 999]
    # not named by synset -> clear error
    (tmp_path / "other.jpg").write_bytes((tmp_path / f"{syn[0]}_tench.JPEG").read_bytes())
    with pytest.raises(datasets.DatasetError, match="synset"):
        datasets.image_folder(tmp_path, _labels1000())


def test_image_folder_maps_class_names(tmp_path):
    from PIL import Image

    labels = ["tench, Tinca tinca", "goldfish", "great white shark"]
    for cls in ("Tench", "goldfish", "great_white_shark"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / cls / f"{i}.png")
    ds = datasets.image_folder(tmp_path, labels)
    assert ds.source == "imagefolder" and sorted(ds.targets) == [0, 0, 1, 1, 2, 2]
    (tmp_path / "zebra").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "zebra" / "z.png")
    with pytest.raises(datasets.DatasetError, match="zebra"):
        datasets.image_folder(tmp_path, labels)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(datasets.DatasetError, match="no images"):
        datasets.image_folder(tmp_path, _labels1000())


def test_evaluate_is_torch_free():
    from torch_blocked import run_without_torch

    # scikit-learn is only the tests' cross-check: evaluate must not need it either
    run_without_torch("sys.modules['sklearn'] = None\n"
                      "import edgeinfer.evaluate.metrics, edgeinfer.evaluate.fidelity, "
                      "edgeinfer.evaluate.datasets, edgeinfer.evaluate.synthetic")


CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar(d, n=20):
    import pickle

    d.mkdir()
    rng = np.random.default_rng(0)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                     b"labels": [i % 10 for i in range(n)]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR]}, f)
    return d


def test_cifar10_batches(tmp_path):
    d = _write_cifar(tmp_path / "cifar-10-batches-py")
    labels = list(reversed(CIFAR))                     # the model's order differs from CIFAR's
    ds = datasets.load_labelled(d, labels)
    assert ds.source == "cifar10" and len(ds) == 20 and ds.in_memory
    assert ds.paths[0].shape == (32, 32, 3) and ds.targets[:2] == [9, 8]
    assert len(datasets.load_labelled(d, labels, limit=5)) == 5
    with pytest.raises(datasets.DatasetError, match="airplane"):
        datasets.load_labelled(d, [f"class{i}" for i in range(1000)])


def test_fashion_mnist_idx(tmp_path):
    import gzip

    d = tmp_path / "fm"
    d.mkdir()
    n = 6
    imgs = np.arange(n * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(n, 28, 28)
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28)) + imgs.tobytes())
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes([0, 1, 2, 9, 9, 5]))
    ds = datasets.load_labelled(d, datasets.FASHION_MNIST_CLASSES)
    assert ds.source == "fashion-mnist" and ds.targets == [0, 1, 2, 9, 9, 5]
    assert ds.paths[1].shape == (28, 28, 3) and np.array_equal(ds.paths[1][:, :, 0], imgs[1])


def test_csv_pixel_table(tmp_path):
    p = tmp_path / "digits.csv"
    rows = ["label," + ",".join(f"p{i}" for i in range(16))]
    rows += [f"{k}," + ",".join(str((k * 16 + i) % 256) for i in range(16)) for k in range(3)]
    rows += ["goldfish," + ",".join("7" for _ in range(16))]
    p.write_text("\n".join(rows) + "\n")
    ds = datasets.load_labelled(p, ["tench", "goldfish", "shark"])
    assert ds.source == "csv" and ds.targets == [0, 1, 2, 1] and ds.paths[0].shape == (4, 4, 3)
    p.write_text("label,a,b,c,d,e\n0,1,2,3,4,5\n")
    with pytest.raises(datasets.DatasetError, match="square"):
        datasets.load_labelled(p, ["x"])
