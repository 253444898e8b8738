"""Few-shot user categories: prototypes + calibrated "none of these" thresholds, leave-one-out
report, model identity, file round trip, and tagging through a real (tiny) embedding artifact."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_image
from edgeinfer.categories import CategorySet, model_identity
from edgeinfer.errors import CategoryError, EmbeddingModelMismatchError

from test_runtime_helpers import tiny_artifact

IDENT = {"model": "emb", "precision": "fp32", "sha256": "a" * 64, "dim": 32}


def _cluster(rng, center, n, spread):
    x = center[None, :] + spread * rng.standard_normal((n, len(center)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _three_clusters(seed=0, n=5, spread=0.15, dim=32):
    rng = np.random.default_rng(seed)
    centers = np.eye(dim)[:3]
    return rng, {name: _cluster(rng, c, n, spread) for name, c in zip(("dog", "bird", "car"), centers)}


def test_separable_categories_tag_right_and_leave_strangers_untagged():
    rng, ex = _three_clusters()
    strangers = _cluster(rng, np.eye(32)[10], 20, 0.15)  # photos of none of the categories
    cs = CategorySet(IDENT, negatives=strangers[:10])
    for name, e in ex.items():
        cs.add(name, e)
    assert cs.names == ["dog", "bird", "car"]
    assert all(c.calibrated for c in cs.categories.values())
    new_dog = _cluster(rng, np.eye(32)[0], 3, 0.15)
    tags = cs.tag_embeddings(np.concatenate([new_dog, strangers[10:]]), identity=IDENT)
    assert [t[0][0] for t in tags[:3]] == ["dog"] * 3
    assert all(0.0 < t[0][1] <= 1.0 for t in tags[:3])
    assert tags[3:] == [[]] * 10  # unseen strangers stay untagged
    rep = cs.evaluate()
    assert rep["loo_accuracy"] == 1.0 and rep["nearest_prototype_accuracy"] == 1.0
    assert rep["false_positive_rate"] == 0.0 and rep["negatives"] == 10
    assert rep["per_category"]["bird"]["examples"] == 5


def test_report_measures_confusion_when_categories_overlap():
    rng = np.random.default_rng(1)
    base = np.eye(32)[0]
    near = base * 0.9 + np.eye(32)[1] * 0.1  # two nearly identical "categories"
    cs = CategorySet(IDENT)
    cs.add("a", _cluster(rng, base, 6, 0.3))
    cs.add("b", _cluster(rng, near, 6, 0.3))
    rep = cs.evaluate()
    assert rep["loo_accuracy"] < 0.9  # not separable: the report must say so
    assert rep["false_positive_rate"] is None and "no negative" in rep["note"]


def test_threshold_sits_between_positives_and_negatives():
    cs = CategorySet(IDENT)
    rng = np.random.default_rng(2)
    cs.add("only", _cluster(rng, np.eye(32)[0], 4, 0.1))
    c = cs.categories["only"]
    assert not c.calibrated  # one category and no negatives: fallback, and said so
    cs.set_negatives(_cluster(rng, np.eye(32)[5], 8, 0.1))
    c = cs.categories["only"]
    assert c.calibrated
    pos = cs.scores(c.examples)[:, 0]
    neg = cs.scores(cs.negatives)[:, 0]
    assert neg.max() < c.threshold < pos.min()


def test_too_few_examples_and_unknown_names_are_clear_errors():
    cs = CategorySet(IDENT)
    with pytest.raises(CategoryError, match="at least 3"):
        cs.add("rex", np.eye(32)[:2])
    with pytest.raises(CategoryError, match="no category 'rex'"):
        cs.remove("rex")
    with pytest.raises(EmbeddingModelMismatchError, match="dimensions"):
        cs.add("rex", np.ones((3, 16)))


def test_other_model_version_is_refused(tmp_path):
    _, ex = _three_clusters()
    cs = CategorySet(IDENT)
    cs.add("dog", ex["dog"])
    other = {**IDENT, "sha256": "b" * 64, "precision": "int8"}
    with pytest.raises(EmbeddingModelMismatchError, match="another model"):
        cs.tag_embeddings(ex["dog"], identity=other)
    p = cs.save(tmp_path / "cats.json")
    with pytest.raises(EmbeddingModelMismatchError):
        CategorySet.load(p, identity=other)
    back = CategorySet.load(p, identity=IDENT)
    assert back.names == ["dog"]
    np.testing.assert_allclose(back.categories["dog"].prototype, cs.categories["dog"].prototype,
                               atol=1e-6)
    assert back.categories["dog"].threshold == pytest.approx(cs.categories["dog"].threshold)


def test_file_is_small_and_removing_recalibrates(tmp_path):
    rng = np.random.default_rng(3)
    e = np.eye(512)
    ident = {**IDENT, "dim": 512}
    cs = CategorySet(ident, negatives=_cluster(rng, e[9], 50, 0.02))
    cs.add("dog", _cluster(rng, e[0], 5, 0.02))
    cs.add("wolf", _cluster(rng, 0.8 * e[0] + 0.6 * e[1], 5, 0.02))  # the dog's closest negatives
    cs.add("car", _cluster(rng, e[2], 5, 0.02))
    before = cs.categories["dog"].threshold
    p = cs.save(tmp_path / "c.json")
    assert p.stat().st_size < 150_000  # 15 examples + 50 negatives of 512 floats
    assert json.loads(p.read_text())["format"] == "edgeinfer.categories/1"
    cs.remove("wolf")
    assert cs.names == ["dog", "car"]
    # without the wolves the nearest negatives are far away: the threshold moves down
    assert cs.categories["dog"].threshold < before - 0.1


def test_bad_file_is_a_category_error(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"format": "something-else"}')
    with pytest.raises(CategoryError, match="not an edgeinfer categories file"):
        CategorySet.load(p)
    with pytest.raises(CategoryError, match="does not exist"):
        CategorySet.load(tmp_path / "missing.json")


def test_from_model_tags_photos_and_passes_failures_through(tmp_path, monkeypatch):
    import edgeinfer

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    art = tiny_artifact(tmp_path / "clip", kind="clip", classes=16)
    m = edgeinfer.load(art, provider="cpu")
    imgs = [make_image(i) for i in range(9)]
    cs = CategorySet.from_model(m, {"x": imgs[:3], "y": imgs[3:6]}, negatives=imgs[6:])
    assert cs.identity == model_identity(m) and cs.identity["sha256"]
    res = cs.tag(m, [imgs[0], b"not an image"])
    assert isinstance(res[0], list) and not res[1]
    assert "not an image" in str(res[1].error) or res[1].error
    with pytest.raises(CategoryError, match="cannot be used"):
        CategorySet.from_model(m, {"z": [imgs[0], imgs[1], b"junk"]})
    # the same set saved from another model version (another sha256) refuses this model
    d = cs.to_dict()
    d["identity"] = {**d["identity"], "sha256": "0" * 64}
    with pytest.raises(EmbeddingModelMismatchError, match="rebuild the categories"):
        CategorySet.from_dict(d).tag(m, imgs[0])


def test_cli_build_tag_report(tmp_path, monkeypatch, capsys):
    from edgeinfer.cli.main import main

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    art = tiny_artifact(tmp_path / "clip", kind="clip", classes=16)
    for name, seeds in (("a", range(0, 3)), ("b", range(3, 6)), ("neg", range(6, 10))):
        (tmp_path / name).mkdir()
        for s in seeds:
            make_image(s, size=(64, 48)).save(tmp_path / name / f"{s}.jpg")
    out = tmp_path / "cats.json"
    assert main(["categories", "build", str(art), "--category", f"a={tmp_path / 'a'}",
                 "--category", f"b={tmp_path / 'b'}", "--negatives", str(tmp_path / "neg"),
                 "--out", str(out), "--provider", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "leave-one-out accuracy" in text and "on 4 negatives" in text and out.is_file()
    assert main(["categories", "tag", str(out), str(art), str(tmp_path / "a" / "0.jpg"), "--json",
                 "--provider", "cpu"]) == 0
    tags = json.loads(capsys.readouterr().out)
    assert tags[0]["image"].endswith("0.jpg") and isinstance(tags[0]["categories"], list)
    assert main(["categories", "report", str(out)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["examples"] == 6 and rep["negatives"] == 4
    assert main(["categories", "build", str(art), "--category", "broken", "--out", str(out)]) == 1


def test_categories_are_torch_free():
    from torch_blocked import assert_imports_without_torch

    assert_imports_without_torch("edgeinfer.categories", "edgeinfer.library.categories",
                                 "edgeinfer.cli.categories")
