"""CLIP end to end on a tiny open_clip config (fast): export of both towers, tokenizer data and
label-set embeddings; torch-free zero-shot with label sets and custom labels, bad labels, a
10,000-label list; weights handling. The real ViT-B-32 check is in test_clip_vit.py."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import make_image
from edgeinfer.errors import ArtifactError, LabelError, WeightsError

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from edgeinfer.export.clip import add_text_tower, build_clip, label_set_spec  # noqa: E402
from edgeinfer.export.recipes import Recipe  # noqa: E402

TINY = "edgeinfer-tiny-clip-test"
TINY_CFG = {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_recipe(**clip) -> Recipe:
    return Recipe(name="clip_tiny_test", family="clip", source="open_clip", source_name=TINY,
                  kind="clip", input_size=(3, 32, 32), crop_pct=1.0, interpolation="bicubic",
                  mean=MEAN, std=STD, opset=18, clip={"label_sets": ["cifar10"], **clip})


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    p = tmp_path_factory.mktemp("oc") / f"{TINY}.json"
    p.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(str(p))
    return TINY


def export_artifact(built, out):
    """Image tower via torch.onnx (the pipeline's job; kept local so this file tests E's part),
    then add_text_tower, as export_model does."""
    from edgeinfer.runtime.artifact import file_entry, new_manifest, staged_directory, write_manifest

    with staged_directory(out) as st:
        p = st / "model.fp32.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(built.module, (torch.randn(2, *built.recipe.input_size),), str(p),
                              input_names=["pixel_values"], output_names=["embedding"],
                              dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        m = new_manifest(name=built.recipe.name, source="open_clip", source_name=built.recipe.source_name,
                         family="clip", kind="clip", weights=built.weights_info,
                         preprocess=built.recipe.preprocess_dict(), output={"kind": "embedding", "dim": 32},
                         labels=None, opset=17)
        m["files"]["fp32"] = file_entry(p, precision="fp32")
        add_text_tower(built, st, m)
        write_manifest(st, m)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_config, tmp_path_factory):
    built = build_clip(tiny_recipe(), weights="random", seed=0)
    out = export_artifact(built, tmp_path_factory.mktemp("art") / "clip_tiny")
    return built, out


@pytest.fixture
def model(tiny):
    import edgeinfer

    m = edgeinfer.load(tiny[1], provider="cpu", precision="fp32")
    yield m
    m.close()


def probabilities(model, images, labels, templates=None):
    """(probs [N, L], label names) through the runtime's public text side."""
    names, emb = model.text.resolve(labels, templates=templates)
    return model.text.probabilities(model.embed_raw(images), emb), names


def torch_reference(built, images, classnames, templates):
    """open_clip's own zero-shot: its transform, encode_image, build_zero_shot_classifier."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    clip = built.extra["clip_model"]
    tf = open_clip.image_transform(built.recipe.input_size[1], is_train=False, mean=MEAN, std=STD,
                                   interpolation="bicubic", resize_mode="shortest")
    x = torch.stack([tf(im.convert("RGB")) for im in images])
    with torch.no_grad():
        w = build_zero_shot_classifier(clip, built.extra["tokenizer"], classnames, templates,
                                       num_classes_per_batch=None)
        f = clip.encode_image(x, normalize=True)
        return torch.softmax(clip.logit_scale.exp() * f @ w, dim=-1).double().numpy()


# ------------------------------------------------------------------ export
def test_manifest_text_section(tiny):
    built, out = tiny
    m = json.loads((out / "manifest.json").read_text())
    t = m["text"]
    assert set(t["files"]) == {"fp32"} and (out / t["files"]["fp32"]["file"]).exists()
    assert t["files"]["fp32"]["file"] == "text.fp32.onnx"
    assert t["files"]["fp32"]["parity"]["cosine_min"] >= 0.9999
    assert t["files"]["fp32"]["inputs"][0]["name"] == "input_ids"
    assert t["context_length"] == 77 and t["variable_length"] is True
    assert t["tokenizer"]["type"] == "clip_bpe" and (out / t["tokenizer"]["file"]).exists()
    assert t["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)  # random init: ln(1/0.07)
    cifar = t["label_sets"]["cifar10"]
    assert cifar["labels"][:3] == ["airplane", "automobile", "bird"] and cifar["templates"] == 18
    assert t["default_label_set"] == "cifar10" and t["templates"] == ["a photo of a {}."]
    assert m["weights"]["origin"] == "random" and m["weights"]["seed"] == 0


def test_label_set_embeddings_match_open_clip(tiny):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    built, out = tiny
    labels, _, templates = label_set_spec("cifar10")
    with torch.no_grad():
        ref = build_zero_shot_classifier(built.extra["clip_model"], built.extra["tokenizer"],
                                         labels, templates, num_classes_per_batch=None).T.numpy()
    ours = np.load(out / "labels.cifar10.npy")
    assert ours.shape == ref.shape == (10, 32)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_text_onnx_variable_length_matches_torch(tiny):
    import onnxruntime as ort

    from edgeinfer.runtime.tokenizer import ClipTokenizer

    built, out = tiny
    tok = ClipTokenizer.from_artifact(out)
    ids = tok.encode(["a photo of a cat", "déjà vu 😀", "x " * 90])
    sess = ort.InferenceSession(str(out / "text.fp32.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = built.extra["clip_model"].encode_text(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(sess.run(None, {"input_ids": ids})[0], ref, atol=1e-4)
    n = int(ids[:2].argmax(1).max()) + 1  # trimmed after the last end-of-text token
    np.testing.assert_allclose(sess.run(None, {"input_ids": ids[:2, :n]})[0], ref[:2], atol=1e-4)


# ------------------------------------------------------------------ zero-shot runtime
def test_zero_shot_label_set_matches_open_clip(tiny, model):
    built, _ = tiny
    images = [make_image(i) for i in range(6)]
    probs, names = probabilities(model, images, "cifar10")
    labels, _, templates = label_set_spec("cifar10")
    ref = torch_reference(built, images, labels, templates)
    assert names == labels
    assert np.abs(probs - ref).max() < 1e-4
    res = model.zero_shot(images, "cifar10", top_k=3)
    assert [r[0][0] for r in res] == [labels[i] for i in ref.argmax(1)]
    assert all(len(r) == 3 and r[0][1] >= r[1][1] >= r[2][1] for r in res)
    # classify() on a CLIP artifact is zero-shot over its default label set
    assert model.classify(images[0], top_k=2)[0][0] == labels[int(ref[0].argmax())]


def test_zero_shot_custom_labels_match_open_clip(tiny, model):
    built, _ = tiny
    images = [make_image(10 + i) for i in range(4)]
    labels = ["shark", "dolphin", "lizard", "giraffe", "Straße", "日本の猫"]
    probs, names = probabilities(model, images, labels)
    ref = torch_reference(built, images, labels, ["a photo of a {}."])
    assert names == labels and np.abs(probs - ref).max() < 1e-4
    # comma-separated string, one image in -> one result out
    one = model.zero_shot(images[0], "shark, dolphin, lizard, giraffe", top_k=10)
    assert len(one) == 4 and abs(sum(p for _, p in one) - 1) < 1e-6
    # a template ensemble for custom labels
    ens = ["a photo of a {}.", "a drawing of the {}."]
    probs2, _ = probabilities(model, images, labels, templates=ens)
    res = model.zero_shot(images, labels, top_k=1, templates=ens)
    assert [r[0][0] for r in res] == [labels[i] for i in probs2.argmax(1)]
    assert np.abs(probs2 - torch_reference(built, images, labels, ens)).max() < 1e-4


def test_custom_label_embeddings_cached(model, monkeypatch):
    from edgeinfer.runtime import zero_shot as zs

    calls = []
    session = model.tower_session("text")
    orig = session.run_feeds
    monkeypatch.setattr(session, "run_feeds", lambda feeds: calls.append(1) or orig(feeds))
    img = make_image(3)
    model.zero_shot(img, ["cat", "dog"])
    n = len(calls)
    assert n >= 1
    model.zero_shot([img, img], ["cat", "dog"])
    assert len(calls) == n                      # same label list: cached
    model.zero_shot(img, ["dog", "cat"])
    assert len(calls) > n                       # another list: encoded
    for i in range(zs.CACHE_SIZE + 3):          # LRU: bounded
        model.zero_shot(img, [f"label {i}", "other"])
    assert model.text.cached_label_lists() == zs.CACHE_SIZE


@pytest.mark.parametrize("labels, match", [
    ([], "empty"), ("", "empty"), (" , ,", "empty"), (["cat", ""], "empty"),
    (["cat", "dog", "Cat "], "duplicate.*'cat'"), (["a", "b", "a", "b"], "duplicate"),
    (["cat", 3], "strings"), (42, "list of strings"), ("imagenet", None),
])
def test_bad_labels(model, labels, match):
    if match is None:  # a label-set name the artifact lacks is a one-label custom list
        assert model.zero_shot(make_image(0), labels)[0] == ("imagenet", 1.0)
        return
    with pytest.raises(LabelError, match=match):
        model.zero_shot(make_image(0), labels)


def test_label_set_by_name_in_list_and_missing_set(model):
    assert model.zero_shot(make_image(0), ["cifar10"], top_k=10)[0][0] in label_set_spec("cifar10")[0]
    with pytest.raises(LabelError, match="no label set 'imagenet'"):
        model.text.label_set("imagenet")


def test_long_and_non_ascii_labels(model):
    long = "an extremely long label describing a photo " * 20
    with pytest.warns(UserWarning, match="truncated"):
        res = model.zero_shot(make_image(1), [long, "été", "猫", "🐶 dog"], top_k=4)
    assert {l for l, _ in res} == {long.strip(), "été", "猫", "🐶 dog"}


def test_ten_thousand_labels_batched(model, monkeypatch):
    from edgeinfer.runtime import zero_shot as zs

    labels = [f"thing number {i}" for i in range(10_000)]
    sizes = []
    session = model.tower_session("text")
    orig = session.run_feeds
    monkeypatch.setattr(session, "run_feeds",
                        lambda feeds: sizes.append(next(iter(feeds.values())).shape) or orig(feeds))
    res = model.zero_shot([make_image(0), make_image(1)], labels, top_k=5)
    assert len(res) == 2 and all(len(r) == 5 for r in res)
    assert len(sizes) == 10_000 // zs.DEFAULT_TEXT_BATCH + 1
    assert max(s[0] for s in sizes) == zs.DEFAULT_TEXT_BATCH
    assert max(s[1] for s in sizes) < 77     # trimmed after the end-of-text token
    p, _ = probabilities(model, [make_image(0)], labels)
    assert p.shape == (1, 10_000) and abs(p.sum() - 1) < 1e-6


def test_bad_image_gives_failure(model, tmp_path):
    from edgeinfer.runtime.model import Failure

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    res = model.zero_shot([make_image(0), bad, make_image(1)], ["cat", "dog"])
    assert isinstance(res[1], Failure) and not res[1] and res[1].error
    assert res[0] and res[2]


def test_zero_shot_without_torch(tiny):
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'open_clip', 'timm', 'ftfy', 'regex'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import numpy as np, edgeinfer
m = edgeinfer.load({str(tiny[1])!r}, provider='cpu')
img = np.full((40, 50, 3), 120, np.uint8)
print(m.zero_shot(img, ['cat', 'dog'])[0][0], m.zero_shot(img, 'cifar10')[0][0])
assert 'torch' not in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_corrupt_label_set_file(tiny, tmp_path):
    import shutil

    import edgeinfer

    d = tmp_path / "copy"
    shutil.copytree(tiny[1], d)
    arr = np.load(d / "labels.cifar10.npy")
    np.save(d / "labels.cifar10.npy", arr * 2)
    with edgeinfer.load(d, provider="cpu") as m, pytest.raises(ArtifactError, match="sha256"):
        m.zero_shot(make_image(0), "cifar10")


# ------------------------------------------------------------------ weights
def test_random_weights_are_seeded(tiny_config):
    a = build_clip(tiny_recipe(), weights="random", seed=3)
    b = build_clip(tiny_recipe(), weights="random", seed=3)
    c = build_clip(tiny_recipe(), weights="random", seed=4)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.module(x), b.module(x)) and not torch.equal(a.module(x), c.module(x))
    assert a.labels is None and a.extra["model_name"] == TINY and a.recipe.input_size == (3, 32, 32)


def test_weights_from_file_and_errors(tiny_config, tmp_path):
    src = build_clip(tiny_recipe(), weights="random", seed=5)
    p = tmp_path / "clip.pt"
    torch.save(src.extra["clip_model"].state_dict(), p)
    got = build_clip(tiny_recipe(), weights=p, seed=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got.module(x), src.module(x))
    assert got.weights_info["origin"] == "file" and len(got.weights_info["sha256"]) == 64
    with pytest.raises(WeightsError, match="does not exist"):
        build_clip(tiny_recipe(), weights=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot load"):
        build_clip(tiny_recipe(), weights=junk)
    other = dict(src.extra["clip_model"].state_dict())
    other.pop("logit_scale")
    torch.save(other, tmp_path / "partial.pt")
    with pytest.raises(WeightsError):
        build_clip(tiny_recipe(), weights=tmp_path / "partial.pt")


def test_pretrained_not_cached_is_a_clear_error(monkeypatch):
    from edgeinfer.export import clip as E
    from edgeinfer.export.recipes import get_recipe

    monkeypatch.setattr(E, "_local_pretrained_file", lambda *a: None)
    with pytest.raises(WeightsError, match="--weights PATH.*--weights random"):
        build_clip(get_recipe("clip_vit_b32"), weights="pretrained")


def test_text_feeds_for_bench(tiny):
    import onnxruntime as ort

    from edgeinfer.runtime.zero_shot import text_feeds

    feeds = text_feeds(tiny[1], 4)
    ids = feeds["input_ids"]
    assert ids.dtype == np.int64 and ids.shape[0] == 4 and ids.shape[1] < 77
    assert text_feeds(tiny[1], 2, trim=False)["input_ids"].shape == (2, 77)
    sess = ort.InferenceSession(str(tiny[1] / "text.fp32.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, feeds)[0].shape == (4, 32)


def test_pretrained_from_local_cache(tiny_config, tmp_path, monkeypatch):
    from dataclasses import replace

    from edgeinfer.export import clip as E

    src = build_clip(tiny_recipe(), weights="random", seed=7)
    p = tmp_path / "cached.bin"
    torch.save(src.extra["clip_model"].state_dict(), p)
    monkeypatch.setattr(E, "_local_pretrained_file", lambda oc, name, tag: str(p))
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: {"quick_gelu": False})
    got = build_clip(replace(tiny_recipe(), pretrained_tag="fake"), weights="pretrained")
    assert got.weights_info["origin"] == "pretrained" and got.weights_info["tag"] == "fake"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got.module(x), src.module(x))


def test_bad_templates(model):
    from edgeinfer.errors import InvalidOptionError

    for bad in (["no placeholder"], ["a {} of {kind}"]):
        with pytest.raises(InvalidOptionError, match="placeholder"):
            model.text.label_embeddings(["cat", "dog"], templates=bad)
    assert model.text.label_embeddings(["{x}", "dog"], templates=["a {{literal}} {}"]).shape == (2, 32)


def test_bench_measures_both_towers(tiny, tmp_path):
    """`edgeinfer bench` on a CLIP artifact has image rows and text-tower rows (issue 6)."""
    from edgeinfer.bench import run_bench

    _, art = tiny
    res = run_bench(art, providers="cpu", precisions="fp32", batches=(1,), out=tmp_path / "b",
                    memory=False, torch_baseline=False, write_tuning_file=False, budget_s=0.2,
                    rounds=1, max_images=4)
    assert any(r["status"] == "ok" for r in res["rows"])
    text = res["text_tower"]
    assert text and all(r["status"] == "ok" for r in text), text
    assert {r["batch"] for r in text} == {1, 16}
    assert all(r["latency_median_ms"] > 0 and r["cosine_min"] > 0.9999 for r in text)
    assert "CLIP text tower" in (tmp_path / "b" / "report.html").read_text()
    assert json.loads((tmp_path / "b" / "results.json").read_text())["text_tower"]


# ------------------------------------------------------------------ label-set encoder (issue 18)
def test_shared_prefix_encoder_equals_encode_text(tiny):
    """One template over many labels: prefix computed once, the rest attends to it; identical
    to open_clip's encode_text, duplicates and a prompt truncated at 77 tokens included."""
    from edgeinfer.export.clip import SharedPrefixEncoder
    from edgeinfer.runtime.tokenizer import ClipTokenizer

    built, out = tiny
    clip = built.extra["clip_model"]
    assert SharedPrefixEncoder.supports(clip)
    tok = ClipTokenizer.from_artifact(out)
    labels = ["cat", "golden retriever", "cat", "a very long label " * 20, "日本の猫", "x"]
    ids = tok.encode([f"a blurry photo of the {c}." for c in labels])
    got = SharedPrefixEncoder(clip, batch_size=2).encode_group(ids)   # several batches
    with torch.no_grad():
        ref = clip.encode_text(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-5)
    np.testing.assert_array_equal(got[0], got[2])


def test_label_sets_record_engine_and_check(tiny):
    m = json.loads((tiny[1] / "manifest.json").read_text())
    cifar = m["text"]["label_sets"]["cifar10"]
    assert "shared-prefix" in cifar["computed_with"]
    assert cifar["check"]["prompts"] > 0 and cifar["check"]["cosine_min"] >= 0.9999
    assert m["text"]["label_sets_seconds"] >= 0 and cifar["seconds"] >= 0


def test_fallback_encoder_gives_the_same_label_set(tiny_config, tiny, tmp_path, monkeypatch):
    """A text tower the shared-prefix encoder does not fit is encoded by text.fp32.onnx in ONNX
    Runtime: same embeddings."""
    from edgeinfer.export import clip as E

    monkeypatch.setattr(E.SharedPrefixEncoder, "supports", staticmethod(lambda clip: False))
    built = build_clip(tiny_recipe(), weights="random", seed=0)
    stage = tmp_path / "stage"
    stage.mkdir()
    text = add_text_tower(built, stage, {"opset": 18})
    assert "onnxruntime" in text["label_sets"]["cifar10"]["computed_with"]
    np.testing.assert_allclose(np.load(stage / "labels.cifar10.npy"),
                               np.load(tiny[1] / "labels.cifar10.npy"), atol=2e-5)


def test_progress_reports_rate_and_eta():
    from edgeinfer.runtime.zero_shot import RateReporter

    lines: list[str] = []
    r = RateReporter(lines.append, 3000, every_s=0)
    r.add(1000)
    r.add(2000)
    assert "1,000/3,000 prompts" in lines[0] and "prompts/s" in lines[0] and "ETA" in lines[0]
    assert "3,000/3,000" in lines[-1] and "ETA" not in lines[-1]
    quiet: list[str] = []
    RateReporter(quiet.append, 10, every_s=0).add(10)   # small jobs say nothing
    assert quiet == []


def test_embed_text_matches_open_clip(tiny, model):
    built, _ = tiny
    texts = ["a dog on the beach", "receipts from 2019", "猫"]
    got = model.embed_text(texts)
    with torch.no_grad():
        ref = built.extra["clip_model"].encode_text(built.extra["tokenizer"](texts),
                                                    normalize=True).numpy()
    assert got.shape == (3, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-5)
    one = model.embed_text("a dog on the beach")
    assert one.shape == (32,) and np.allclose(one, got[0], atol=1e-6)
    with pytest.raises(LabelError):
        model.embed_text([])


def test_encode_groups_equals_encode_group_across_templates(tiny):
    """Batches drawn across templates (prefixes of different lengths, padded and masked) give
    what one template at a time gives, and open_clip's encode_text."""
    from edgeinfer.export.clip import SharedPrefixEncoder
    from edgeinfer.runtime.tokenizer import ClipTokenizer

    built, out = tiny
    clip = built.extra["clip_model"]
    tok = ClipTokenizer.from_artifact(out)
    labels = ["cat", "golden retriever", "cat", "日本の猫", "x", "a very long label " * 20]
    templates = ["a photo of a {}.", "itap of the {}.", "{}", "a low resolution photo of my {}."]
    groups = [tok.encode([t.format(c) for c in labels]) for t in templates]
    enc = SharedPrefixEncoder(clip, batch_size=3)
    got = enc.encode_groups(groups)
    with torch.no_grad():
        for g, ids in zip(got, groups):
            np.testing.assert_allclose(g, enc.encode_group(ids), atol=2e-5)
            np.testing.assert_allclose(g, clip.encode_text(torch.from_numpy(ids)).numpy(), atol=2e-5)


def test_background_label_job_matches_open_clip(tiny_config, tmp_path):
    """The export's background process computes the label sets (exactly open_clip's
    build_zero_shot_classifier), its sample is checked against text.fp32.onnx, and its work
    directory is gone afterwards."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from edgeinfer.export.clip import finish_label_sets, start_label_sets

    built = build_clip(tiny_recipe(), weights="random", seed=0)
    stage = tmp_path / "stage"
    stage.mkdir()
    job = start_label_sets(built, stage)
    assert job is not None and len(job.workers) >= 1
    m = {"opset": 18}
    text = add_text_tower(built, stage, m, label_job=job)
    assert text["label_sets"] == {} and text["default_label_set"] is None
    lines: list[str] = []
    finish_label_sets(stage, m, job, progress=lines.append)
    cifar = m["text"]["label_sets"]["cifar10"]
    assert "background process" in cifar["computed_with"]
    assert cifar["check"]["prompts"] > 0 and cifar["check"]["cosine_min"] >= 0.9999
    assert m["text"]["default_label_set"] == "cifar10"
    labels, _, templates = label_set_spec("cifar10")
    with torch.no_grad():
        ref = build_zero_shot_classifier(built.extra["clip_model"], built.extra["tokenizer"],
                                         labels, templates, num_classes_per_batch=None).T.numpy()
    np.testing.assert_allclose(np.load(stage / cifar["file"]), ref, atol=2e-5)
    assert not (stage / ".label-job").exists()
    assert job.status().startswith("label sets in the background")


def test_background_label_job_killed_is_an_export_error(tiny_config, tmp_path):
    from edgeinfer.errors import ExportError
    from edgeinfer.export.clip import finish_label_sets, start_label_sets

    built = build_clip(tiny_recipe(), weights="random", seed=0)
    stage = tmp_path / "stage"
    stage.mkdir()
    job = start_label_sets(built, stage)
    job.workers[-1].proc.kill()
    m = {"opset": 18}
    add_text_tower(built, stage, m, label_job=job)
    with pytest.raises(ExportError, match="label-set encoder process was killed by signal 9"):
        finish_label_sets(stage, m, job)
    assert not (stage / ".label-job").exists()
    assert not list(stage.glob("labels.*.npy"))


def test_text_tower_engine_picked_for_queries_unless_precision_requested(tiny, monkeypatch):
    """With precision "auto" the text tower's engine/precision come from
    selection.text_tower_pick (batch-1 queries); a requested precision is kept for both towers."""
    import edgeinfer
    from edgeinfer.runtime import selection

    calls: list[str] = []

    def pick(sel, art, **kw):
        calls.append(sel.precision)
        return "cpu", "fp32", "picked for one-prompt queries"

    monkeypatch.setattr(selection, "text_tower_pick", pick)
    with edgeinfer.load(tiny[1], provider="cpu") as m:
        m.embed_text(["a dog on the beach"])
        assert m.text_reason == "picked for one-prompt queries" and calls
    calls.clear()
    with edgeinfer.load(tiny[1], provider="cpu", precision="fp32") as m:
        m.embed_text(["a dog on the beach"])
        assert m.text_reason is None and not calls
