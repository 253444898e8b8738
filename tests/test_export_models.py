"""Real architectures, one small model per family, exported end to end (no network).

Parity uses the real photos when present (../shared/data/photos), generated images otherwise.
Each export takes several seconds on a small CPU, hence ``slow`` (still in the default run).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnx")

from conftest import _photos_dir  # noqa: E402
from edgeinfer.cli.main import main  # noqa: E402
from edgeinfer.export.parity import onnx_outputs, parity_batch  # noqa: E402
from edgeinfer.export.pipeline import export_model  # noqa: E402
from edgeinfer.export.recipes import get_recipe  # noqa: E402
from edgeinfer.runtime.artifact import Artifact, read_manifest  # noqa: E402
from edgeinfer.runtime.preprocess import list_images  # noqa: E402

pytestmark = pytest.mark.slow
PHOTOS = _photos_dir()


def _check_artifact(out, name: str, *, origin: str) -> dict:
    import onnx

    m = read_manifest(out)
    recipe = get_recipe(name)
    assert m["model"]["name"] == name and m["model"]["kind"] == "classifier"
    assert m["weights"]["origin"] == origin
    assert m["preprocess"] == recipe.preprocess_dict()
    assert m["output"] == {"kind": "logits", "dim": 1000}
    assert len(m["labels"]) == 1000 and m["labels"][0] == "tench"
    assert m["label_ids"][0] == "n01440764"
    assert m["opset"] >= 17
    e = m["files"]["fp32"]
    par = e["parity"]
    assert par["cosine_min"] >= 0.9999 and par["max_abs_diff"] <= par["tolerance"]["max_abs_diff"]
    assert par["source"] == ("photos" if PHOTOS else "generated")
    assert par["images"] == (min(32, len(list_images(PHOTOS))) if PHOTOS else 16)
    assert par["top1_agreement"] >= 0.97 and par["reference"] == "torch"
    path = Artifact(out).path("fp32")  # exists, sha256 matches
    model = onnx.load(str(path))
    inp, outp = model.graph.input[0], model.graph.output[0]
    assert inp.name == "pixel_values" and outp.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert not list(out.glob("*.unsimplified*")) and not list(out.glob("*.data"))
    return m


def test_export_mobilevit_family(tmp_path):
    out = export_model("mobilevit_xxs", weights="random", seed=1, out=tmp_path / "mvit", images=PHOTOS)
    m = _check_artifact(out, "mobilevit_xxs", origin="random")
    assert m["weights"]["seed"] == 1
    assert m["preprocess"]["input_size"] == [3, 256, 256] and m["preprocess"]["mean"] == [0.0, 0.0, 0.0]
    # the transformer blocks keep LayerNorm as one node (the quantizer's keep-in-float rules match it)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.fp32.onnx")).graph.node}
    assert "LayerNormalization" in ops


def test_weights_file_round_trip_resnet(tmp_path):
    """--weights PATH with a saved state dict reproduces that model's outputs (resnet family)."""
    import timm

    torch.manual_seed(123)
    ref = timm.create_model("resnet18").eval()
    path = tmp_path / "resnet18_ft.pth"
    torch.save(ref.state_dict(), path)
    out = export_model("resnet18", weights=str(path), out=tmp_path / "r18", images=PHOTOS)
    m = _check_artifact(out, "resnet18", origin="file")
    assert m["weights"]["path"] == str(path) and len(m["weights"]["sha256"]) == 64
    batch, _ = parity_batch(m["preprocess"], PHOTOS, max_images=6)
    got = onnx_outputs(out / "model.fp32.onnx", batch)
    with torch.inference_mode():
        want = ref(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    torch.manual_seed(0)
    other = timm.create_model("resnet18").eval()
    with torch.inference_mode():
        assert not np.allclose(other(torch.from_numpy(batch)).numpy(), got, atol=1e-3)


def test_cli_end_to_end_mobilenet(tmp_path, capsys):
    """`edgeinfer export` for the mobilenet family via the CLI, JSON summary, then the table."""
    from rich.console import Console

    from edgeinfer.cli.export import print_summary

    out = tmp_path / "mnv3"
    argv = ["export", "--model", "mobilenetv3_small_100", "--weights", "random", "--seed", "2",
            "--out", str(out), "--json"] + (["--images", str(PHOTOS)] if PHOTOS else [])
    assert main(argv) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["random_weights"] and s["weights"] == {"origin": "random", "seed": 2}
    assert s["files"]["fp32"]["parity"]["cosine_min"] >= 0.9999
    assert s["export"]["total_seconds"] > 0
    _check_artifact(out, "mobilenetv3_small_100", origin="random")
    con = Console(record=True, width=120)
    print_summary(con, s)
    text = con.export_text()
    assert "RANDOM WEIGHTS" in text and "model.fp32.onnx" in text and "cos min" in text
    # the artifact loads in the torch-free runtime and classifies
    import edgeinfer

    img = sorted(PHOTOS.iterdir())[0] if PHOTOS else None
    if img is not None:
        with edgeinfer.load(out, provider="cpu") as model:
            res = model.classify([img], top_k=3)
        assert len(res[0]) == 3
