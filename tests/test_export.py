"""Export pipeline: bad input, atomicity, weights handling, parity maths (fast; no network).

The slow real-architecture exports are in test_export_models.py. Here a tiny conv net stands in
for the model (``tiny`` fixture) so atomicity / parity-failure paths run in seconds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnx")

from edgeinfer.cli.main import main  # noqa: E402
from edgeinfer.errors import (ArtifactError, ImageError, InvalidOptionError,  # noqa: E402
                              ParityError, UnknownModelError, WeightsError)
from edgeinfer.export import parity as parity_mod  # noqa: E402
from edgeinfer.export import pipeline, torch_models  # noqa: E402
from edgeinfer.export.recipes import get_recipe  # noqa: E402
from edgeinfer.export.torch_models import BuiltModel, build_model, read_state_dict  # noqa: E402
from edgeinfer.runtime.artifact import Artifact, read_manifest  # noqa: E402

from conftest import make_image  # noqa: E402


# ---------------------------------------------------------------- a tiny stand-in model
class Tiny(torch.nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def tiny(monkeypatch):
    """Make the pipeline export a 32x32 tiny conv net instead of a real architecture."""
    calls = {}

    def fake_build(recipe, *, weights="pretrained", seed=0):
        torch.manual_seed(seed)
        calls["weights"] = weights
        r = get_recipe(recipe) if isinstance(recipe, str) else recipe
        r = r.with_preprocess(input_size=(3, 32, 32), crop_pct=1.0)
        return BuiltModel(module=Tiny().eval(), recipe=r, weights_info={"origin": "random", "seed": seed},
                          labels=[f"c{i}" for i in range(1000)], extra={"num_classes": 1000})

    monkeypatch.setattr(torch_models, "build_model", fake_build)
    return calls


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------- the happy path, tiny
def test_tiny_export_writes_a_verified_artifact(tiny, tmp_path):
    out = pipeline.export_model("resnet18", weights="random", out=tmp_path / "a")
    m = read_manifest(out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.fp32.onnx"]
    e = m["files"]["fp32"]
    assert e["parity"]["cosine_min"] >= 0.9999 and e["parity"]["source"] == "generated"
    assert e["parity"]["reference"] == "torch" and e["parity"]["top1_agreement"] == 1.0
    assert e["inputs"][0]["name"] == "pixel_values" and e["outputs"][0]["name"] == "logits"
    assert m["output"] == {"kind": "logits", "dim": 1000}
    assert m["weights"] == {"origin": "random", "seed": 0}
    assert m["warnings"][0].startswith("RANDOM WEIGHTS")
    assert m["opset"] >= 17
    Artifact(out).path("fp32")  # sha256 matches
    assert _leftovers(tmp_path) == []


def test_opset_17_uses_the_legacy_exporter(tiny, tmp_path):
    out = pipeline.export_model("resnet18", weights="random", out=tmp_path / "a", opset=17)
    m = read_manifest(out)
    assert m["opset"] == 17 and m["files"]["fp32"]["export"]["exporter"] == "torchscript"
    assert m["files"]["fp32"]["parity"]["cosine_min"] >= 0.9999


def test_existing_artifact_is_replaced_atomically(tiny, tmp_path):
    out = tmp_path / "a"
    pipeline.export_model("resnet18", weights="random", out=out, seed=1)
    pipeline.export_model("resnet18", weights="random", out=out, seed=2, force=True)
    assert read_manifest(out)["weights"]["seed"] == 2
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- bad input
def test_unknown_model_lists_close_matches(tmp_path):
    with pytest.raises(UnknownModelError) as ei:
        pipeline.export_model("mobilevit_ss", weights="random", out=tmp_path / "x")
    assert "mobilevit_s" in str(ei.value)
    assert not (tmp_path / "x").exists()


def test_unknown_pass_through_model_lists_close_matches():
    with pytest.raises(UnknownModelError) as ei:
        build_model("timm:resnet1888", weights="random")
    assert "timm:resnet18" in ei.value.close_matches
    with pytest.raises(UnknownModelError) as ei:
        build_model("timm:resnet18.a1_in1kk", weights="random")  # a bad pretrained tag
    assert "timm:resnet18.a1_in1k" in ei.value.close_matches
    with pytest.raises(UnknownModelError) as ei:
        build_model("torchvision:resnet1888", weights="random")
    assert "torchvision:resnet18" in ei.value.close_matches


def test_cli_unknown_model(capsys):
    rc = main(["export", "--model", "resnet5O", "--weights", "random"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "unknown model 'resnet5O'" in err and "resnet50" in err


def test_unwritable_output_dir(tiny, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(ArtifactError, match="--out"):
        pipeline.export_model("resnet18", weights="random", out=blocker / "art")
    assert "weights" not in tiny  # failed before building the model
    rc = main(["export", "--model", "resnet18", "--weights", "random", "--out", str(blocker / "art")])
    assert rc == 1 and "cannot create output directory" in capsys.readouterr().err


def test_refuses_to_replace_a_foreign_directory_or_file(tiny, tmp_path):
    user_dir = tmp_path / "Documents"
    user_dir.mkdir()
    (user_dir / "thesis.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="not an edgeinfer artifact"):
        pipeline.export_model("resnet18", weights="random", out=user_dir)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    with pytest.raises(ArtifactError, match="not a directory"):
        pipeline.export_model("resnet18", weights="random", out=a_file)
    assert (user_dir / "thesis.txt").read_text() == "precious" and a_file.read_text() == "precious"
    assert "weights" not in tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    pipeline.export_model("resnet18", weights="random", out=empty)  # an empty dir is fine
    assert (empty / "manifest.json").is_file()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_output_dir(tiny, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ArtifactError, match="not writable"):
            pipeline.export_model("resnet18", weights="random", out=ro / "art")
    finally:
        ro.chmod(0o700)


def test_output_location_that_cannot_be_created(tiny, tmp_path):
    """Runs as root too (CI): a path below a regular file can never be created."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ArtifactError, match="--out"):
        pipeline.export_model("resnet18", weights="random", out=blocker / "sub" / "art")
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_bad_options_fail_before_work(tiny, tmp_path):
    with pytest.raises(InvalidOptionError, match="target"):
        pipeline.export_model("resnet18", weights="random", out=tmp_path / "a", target="gpu9")
    with pytest.raises(InvalidOptionError, match="opset"):
        pipeline.export_model("resnet18", weights="random", out=tmp_path / "a", opset=11)
    with pytest.raises(InvalidOptionError, match="--images"):
        pipeline.export_model("resnet18", weights="random", out=tmp_path / "a",
                              images=tmp_path / "missing")
    assert "weights" not in tiny and not (tmp_path / "a").exists()


@pytest.mark.parametrize("step", ["onnx_from_torch", "check_parity"])
def test_interrupted_export_leaves_nothing(tiny, tmp_path, monkeypatch, step):
    from edgeinfer.export import onnx_export

    target = onnx_export if step == "onnx_from_torch" else parity_mod
    real = getattr(target, step)

    def interrupted(*a, **k):
        if step == "check_parity":  # the ONNX file exists in the staging dir by now
            assert any(tmp_path.glob(".a.staging-*/model.fp32.onnx"))
        raise KeyboardInterrupt

    monkeypatch.setattr(target, step, interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.export_model("resnet18", weights="random", out=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    assert _leftovers(tmp_path) == []
    # an existing artifact survives an interrupted re-export byte for byte
    monkeypatch.setattr(target, step, real)
    out = pipeline.export_model("resnet18", weights="random", out=tmp_path / "a")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(target, step, interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.export_model("resnet18", weights="random", out=tmp_path / "a", seed=5, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_cli_interrupt_returns_130(tiny, tmp_path, monkeypatch, capsys):
    from edgeinfer.export import onnx_export

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "onnx_from_torch", boom)
    rc = main(["export", "--model", "resnet18", "--weights", "random", "--out", str(tmp_path / "a")])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_writes_nothing(tiny, tmp_path, monkeypatch):
    real = parity_mod.onnx_outputs
    monkeypatch.setattr(parity_mod, "onnx_outputs",
                        lambda path, batch, **k: real(path, batch, **k) * 1.01 + 0.05)
    with pytest.raises(ParityError, match="Nothing was written"):
        pipeline.export_model("resnet18", weights="random", out=tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def test_simplifier_breaking_parity_falls_back_to_raw_graph(tiny, tmp_path, monkeypatch):
    import onnx
    import onnxslim
    from onnx import numpy_helper

    def bad_slim(model, *a, **k):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        init = m.graph.initializer[0]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3.0, init.name))
        return m

    monkeypatch.setattr(onnxslim, "slim", bad_slim)
    out = pipeline.export_model("resnet18", weights="random", out=tmp_path / "a")
    m = read_manifest(out)
    assert m["files"]["fp32"]["export"]["simplified"] is False
    assert any("onnxslim broke parity" in w for w in m["warnings"])
    assert m["files"]["fp32"]["parity"]["cosine_min"] >= 0.9999
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.fp32.onnx"]


def test_simplifier_failure_keeps_unsimplified_graph(tiny, tmp_path, monkeypatch):
    import onnxslim

    def broken(*a, **k):
        raise RuntimeError("slim exploded")

    monkeypatch.setattr(onnxslim, "slim", broken)
    out = pipeline.export_model("resnet18", weights="random", out=tmp_path / "a")
    m = read_manifest(out)
    assert m["files"]["fp32"]["export"]["simplified"] is False
    assert any("slim exploded" in w for w in m["warnings"])


# ---------------------------------------------------------------- weights
def _isolated_caches(monkeypatch, tmp_path):
    """Empty HF / torch hub caches so nothing pretrained is found, whatever this machine has."""
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torchhub"))


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18"])
def test_pretrained_offline_names_alternatives(monkeypatch, tmp_path, name):
    _isolated_caches(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*a, **k):
        raise AssertionError("must not probe the network in offline mode")

    monkeypatch.setattr(torch_models, "_host_reachable", no_network)
    with pytest.raises(WeightsError) as ei:
        build_model(name, weights="pretrained")
    msg = str(ei.value)
    assert "--weights PATH" in msg and "--weights random" in msg


def test_pretrained_unreachable_host_fails_fast(monkeypatch, tmp_path, capsys):
    _isolated_caches(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("EDGEINFER_OFFLINE", raising=False)
    probed = []
    monkeypatch.setattr(torch_models, "_host_reachable", lambda host, *a, **k: probed.append(host) or False)
    rc = main(["export", "--model", "mobilenetv3_small_100", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 1 and "--weights random" in err and "not reachable" in err
    assert probed == ["huggingface.co"]
    assert not (tmp_path / "a").exists()


def test_wrong_architecture_weights_file(tmp_path):
    import timm

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(WeightsError) as ei:
        build_model("mobilenetv3_small_100", weights=str(path))
    msg = str(ei.value)
    assert "missing keys" in msg and "unexpected keys" in msg
    assert "layer1.0.conv1.weight" in msg or "fc.weight" in msg or "conv1.weight" in msg


def test_weights_file_problems(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("resnet18", weights=str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="'pretrained', 'random'"):
        build_model("resnet18", weights="pretraind")  # a typo, not a path
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(junk)
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled module: refused by weights_only
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(pickled)
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(WeightsError, match="state dict"):
        read_state_dict(notdict)


def test_weights_file_wrappers_prefix_and_safetensors(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    ref = timm.create_model("mobilenetv3_small_100").eval()
    sd = ref.state_dict()
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, wrapped)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want = ref(x)
    for path in (wrapped, st):
        b = build_model("mobilenetv3_small_100", weights=str(path), seed=0)
        assert b.weights_info["origin"] == "file" and len(b.weights_info["sha256"]) == 64
        with torch.no_grad():
            torch.testing.assert_close(b.module(x), want)


def test_fine_tuned_head_rebuilds_with_its_class_count(tmp_path):
    import timm

    path = tmp_path / "ft.pt"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), path)
    b = build_model("resnet18", weights=str(path))
    assert b.extra["num_classes"] == 10 and b.labels is None


def test_random_weights_are_seeded():
    a = build_model("mobilenetv3_small_100", weights="random", seed=3)
    b = build_model("mobilenetv3_small_100", weights="random", seed=3)
    c = build_model("mobilenetv3_small_100", weights="random", seed=4)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(a.module(x), b.module(x))
        assert not torch.allclose(a.module(x), c.module(x))
    assert a.weights_info == {"origin": "random", "seed": 3}
    assert a.labels[0] == "tench" and a.extra["label_ids"][0] == "n01440764" and len(a.labels) == 1000


def test_pass_through_preprocessing_is_resolved():
    tv = build_model("torchvision:resnet50", weights="random")
    p = tv.recipe.preprocess_dict()
    assert p["input_size"] == [3, 224, 224] and p["resize_size"] == 232  # ResNet50 V2 transforms
    assert p["interpolation"] == "bilinear" and tv.labels[0] == "tench"
    tm = build_model("timm:mobilevit_xxs.cvnets_in1k", weights="random")
    p = tm.recipe.preprocess_dict()
    assert p["input_size"] == [3, 256, 256] and p["mean"] == [0.0, 0.0, 0.0] and p["crop_pct"] == 0.9


def test_default_out_is_file_name_safe():
    assert pipeline.default_out("mobilevit_s") == Path("artifacts/mobilevit_s")
    assert pipeline.default_out("timm:resnet18.a1_in1k") == Path("artifacts/timm_resnet18.a1_in1k")
    assert pipeline.default_out("torchvision:vit_b_16") == Path("artifacts/torchvision_vit_b_16")


# ---------------------------------------------------------------- parity maths and images
def test_compare_outputs_and_tolerance():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 1000)).astype(np.float32) * 5
    m = parity_mod.compare_outputs(ref, ref + 1e-6)
    assert m["cosine_min"] > 0.999999 and m["top1_agreement"] == 1.0
    parity_mod.check_tolerance(m)
    bad = ref.copy()
    bad[2] = rng.normal(size=1000)
    m = parity_mod.compare_outputs(ref, bad)
    assert m["cosine_min"] < 0.5
    with pytest.raises(ParityError, match="cosine"):
        parity_mod.check_tolerance(m)
    # a uniform offset keeps cosine high but breaks the max-abs bound
    m = parity_mod.compare_outputs(ref, ref + 0.2)
    with pytest.raises(ParityError, match="max abs diff"):
        parity_mod.check_tolerance(m)
    with pytest.raises(ParityError, match="NaN"):
        parity_mod.compare_outputs(ref, np.full_like(ref, np.nan))
    with pytest.raises(ParityError, match="shapes"):
        parity_mod.compare_outputs(ref, ref[:, :10])
    emb = parity_mod.compare_outputs(ref, ref, kind="embedding")
    assert emb["top1_agreement"] is None


def test_parity_images_skip_corrupt_and_cap(tmp_path):
    spec = get_recipe("resnet18").preprocess_dict()
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        make_image(i).save(d / f"ok{i}.jpg")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (d / "empty.png").write_bytes(b"")
    batch, info = parity_mod.parity_batch(spec, d)
    assert batch.shape == (3, 3, 224, 224) and info == {
        "source": "photos", "images": 3, "skipped": 2, "folder": str(d.absolute())}
    batch, info = parity_mod.parity_batch(spec, d, max_images=2)
    assert len(batch) == 2
    batch, info = parity_mod.parity_batch(spec, None)
    assert info["source"] == "generated" and len(batch) == parity_mod.N_GENERATED
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no image files"):
        parity_mod.parity_batch(spec, empty)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"nope")
    with pytest.raises(ImageError, match="none of the 1"):
        parity_mod.parity_batch(spec, only_bad)


def test_cli_json_is_clean_stdout(tiny, tmp_path, capsys):
    rc = main(["export", "--model", "resnet18", "--weights", "random", "--out", str(tmp_path / "a"),
               "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["random_weights"] is True and s["files"]["fp32"]["parity"]["cosine_min"] >= 0.9999
    assert s["artifact"] == str(tmp_path / "a")


def test_cli_clip_label_set_and_template_options():
    from edgeinfer.cli.export import _label_sets, _templates
    from edgeinfer.errors import InvalidOptionError

    assert _label_sets(None) is None and _label_sets("") == []
    assert _label_sets("imagenet, cifar10") == ["imagenet", "cifar10"]
    assert _templates("imagenet=simple_imagenet") == {"imagenet": "simple_imagenet"}
    assert _templates(None) is None
    with pytest.raises(InvalidOptionError, match="LABEL_SET=TEMPLATE_SET"):
        _templates("imagenet")
