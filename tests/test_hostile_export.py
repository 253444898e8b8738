"""Interrupted and repeated exports: --force, preconditions before the expensive work, stale
staging removed, SIGKILL leaves nothing loadable, quantization temp files stay inside the
artifact (issue 9)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnx")

import edgeinfer  # noqa: E402
from conftest import REPO, make_image  # noqa: E402
from edgeinfer.cli.main import main  # noqa: E402
from edgeinfer.errors import (ArtifactError, CalibrationError, InvalidOptionError,  # noqa: E402
                              WeightsError)
from edgeinfer.export import pipeline, torch_models  # noqa: E402
from edgeinfer.runtime import artifact as A  # noqa: E402

from test_runtime_helpers import tiny_artifact  # noqa: E402

TINY_SRC = """
import torch
from edgeinfer.export import torch_models
from edgeinfer.export.recipes import get_recipe
from edgeinfer.export.torch_models import BuiltModel


class Tiny(torch.nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def fake_build(recipe, *, weights="pretrained", seed=0):
    torch.manual_seed(seed)
    r = get_recipe(recipe) if isinstance(recipe, str) else recipe
    r = r.with_preprocess(input_size=(3, 32, 32), crop_pct=1.0)
    return BuiltModel(module=Tiny().eval(), recipe=r, weights_info={"origin": "random", "seed": seed},
                      labels=[f"c{i}" for i in range(10)], extra={"num_classes": 10})
"""
_ns: dict = {}
exec(compile(TINY_SRC, "tiny_model", "exec"), _ns)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "engine-cache"))


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(torch_models, "build_model", _ns["fake_build"])


@pytest.fixture
def no_build(monkeypatch):
    def build(*a, **k):
        raise AssertionError("the model was built before the preconditions were checked")

    monkeypatch.setattr(torch_models, "build_model", build)


def _reliability():
    spec = importlib.util.spec_from_file_location("reliability", REPO / "benchmarks" / "reliability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------- --force
def test_existing_artifact_is_not_replaced_without_force(tiny, tmp_path, capsys):
    out = pipeline.export_model("resnet18", weights="random", out=tmp_path / "a", seed=1,
                                exporter="torchscript")
    (out / "bench").mkdir()
    (out / "bench" / "results.json").write_text("{}")
    (out / "tuning.json").write_text("{}")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ArtifactError, match="--force") as ei:
        pipeline.export_model("mobilevit_s", weights="random", out=out, seed=2)
    assert "bench" in str(ei.value) and "tuning.json" in str(ei.value)
    assert sorted(p.name for p in out.iterdir()) == before
    assert A.read_manifest(out)["weights"]["seed"] == 1
    rc = main(["export", "--model", "resnet18", "--weights", "random", "--out", str(out)])
    assert rc == 1 and "--force" in capsys.readouterr().err
    pipeline.export_model("resnet18", weights="random", out=out, seed=3, force=True,
                          exporter="torchscript")
    assert A.read_manifest(out)["weights"]["seed"] == 3 and not (out / "bench").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


# ----------------------------------------------------------------- preconditions
def test_preconditions_are_checked_before_the_model_is_built(no_build, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (dict(int8=True, calib=tmp_path / "nope"), CalibrationError, "does not exist"),
        (dict(fp16=True, calib=tmp_path / "nope"), CalibrationError, "does not exist"),
        (dict(int8=True, calib=empty), CalibrationError, "no image files"),
        (dict(int8=True, calib=tmp_path / "f.txt"), CalibrationError, "not a directory"),
        (dict(int8=True, calib_size=0), CalibrationError, "calib-size"),
        (dict(int8=True, max_drop=-1.0), InvalidOptionError, "max-drop"),
        (dict(weights=str(tmp_path / "missing.safetensors")), WeightsError, "does not exist"),
        (dict(weights="pretrainde"), WeightsError, "--weights takes"),
        (dict(weights=str(empty)), WeightsError, "not a regular file"),
    ]
    (tmp_path / "f.txt").write_text("x")
    for kw, err, text in cases:
        kw = {"weights": "random", **kw}
        t0 = time.perf_counter()
        with pytest.raises(err, match=text):
            pipeline.export_model("resnet18", out=tmp_path / "a", **kw)
        assert time.perf_counter() - t0 < 30
        assert not (tmp_path / "a").exists()


def test_cli_reports_a_missing_calib_folder_at_once(no_build, tmp_path, capsys):
    rc = main(["export", "--model", "resnet50", "--weights", "random", "--int8", "--calib",
               str(tmp_path / "missing"), "--out", str(tmp_path / "a")])
    assert rc == 1 and "calibration folder" in capsys.readouterr().err


# ----------------------------------------------------------------- stale staging
def test_next_export_removes_stale_staging_of_its_target(tiny, tmp_path):
    dead = _dead_pid()
    stale = tmp_path / ".a.staging-zz1"
    tiny_artifact(stale)
    (stale / A.STAGING_MARKER).write_text(f"{dead} {tmp_path / 'a'}\n")
    old = tmp_path / f".a.old-{dead}"
    tiny_artifact(old)
    live = tmp_path / ".a.staging-live"
    live.mkdir()
    (live / A.STAGING_MARKER).write_text(f"{os.getppid()} {tmp_path / 'a'}\n")  # still running
    other = tmp_path / ".b.staging-zz2"
    other.mkdir()
    (other / A.STAGING_MARKER).write_text(f"{dead} {tmp_path / 'b'}\n")
    for d in (stale, old):
        with pytest.raises(ArtifactError, match="staging"):
            edgeinfer.load(d, provider="cpu")
    pipeline.export_model("resnet18", weights="random", out=tmp_path / "a", exporter="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.staging-live", ".b.staging-zz2", "a"]
    edgeinfer.load(tmp_path / "a", provider="cpu").close()


def test_sigkill_with_a_complete_stage_leaves_nothing_loadable(tiny, tmp_path):
    """The worst moment: the staging dir holds a complete FP32 artifact and its manifest (the
    probe found 6 of 17 such leftovers loadable). Killed there, it never loads, and the next
    export removes it."""
    ready = tmp_path / "ready"
    code = TINY_SRC + textwrap.dedent(f"""
        import time
        from pathlib import Path
        from edgeinfer.export import pipeline
        torch_models.build_model = fake_build

        def hang(stage):
            Path({str(ready)!r}).write_text(str(stage))
            time.sleep(600)

        pipeline._usual_permissions = hang
        pipeline.export_model("resnet18", weights="random", out={str(tmp_path / 'a')!r},
                              exporter="torchscript")
    """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ})
    try:
        t0 = time.time()
        while not ready.exists() and p.poll() is None and time.time() - t0 < 300:
            time.sleep(0.2)
        assert ready.exists(), "the export did not reach its last step"
    finally:
        p.kill()
        p.wait()
    stage = Path(ready.read_text())
    assert stage.exists() and (stage / "manifest.json").exists() and (stage / "model.fp32.onnx").exists()
    assert not (tmp_path / "a").exists()
    with pytest.raises(ArtifactError, match="staging directory"):
        edgeinfer.load(stage, provider="cpu")
    pipeline.export_model("resnet18", weights="random", out=tmp_path / "a", exporter="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "ready"]
    edgeinfer.load(tmp_path / "a", provider="cpu").close()


# ----------------------------------------------------------------- quantize temp files
def test_quantize_temp_files_stay_inside_the_artifact(tmp_path, monkeypatch):
    from edgeinfer.quantize import quantize_artifact

    art = tiny_artifact(tmp_path / "art", size=32)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(8):
        make_image(i, size=(48, 40)).save(calib / f"c{i}.png")
    stale = art / f".quantize-{_dead_pid()}-abc"
    stale.mkdir()
    (stale / "model.int8.onnx").write_bytes(b"half")
    sys_tmp = tmp_path / "systmp"
    sys_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sys_tmp))
    monkeypatch.setenv("TMPDIR", str(sys_tmp))
    made = []
    real = tempfile.mkdtemp

    def mkdtemp(*a, **k):
        d = real(*a, **k)
        made.append(Path(d))
        return d

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    res = quantize_artifact(art, int8=True, calib=calib)
    assert "int8" in res
    assert any(p.name.startswith("ort.quant.") for p in made), made  # ORT's own temp dirs
    assert all(art.resolve() in p.resolve().parents for p in made), made
    assert list(sys_tmp.iterdir()) == []
    assert tempfile.tempdir == str(sys_tmp) and os.environ["TMPDIR"] == str(sys_tmp)  # restored
    assert not list(art.glob(".quantize-*"))  # its own work dir and the stale one are gone
    edgeinfer.load(art, provider="cpu", precision="int8").close()


@pytest.mark.slow
def test_kill_run_20_sigkills(tmp_path):
    """`edgeinfer export` / `quantize` killed at 20 random moments (benchmarks/reliability.py)."""
    R = _reliability()
    res = R.kill_run(20, 0, tmp_path, progress=lambda s: None)
    assert res["killed_runs"] >= 20
    assert res["loadable_leftovers"] == 0 and res["bad_out_states"] == 0, res["runs"]
    assert res["tmpdir_files_max"] == 0
    assert res["final_export_ok"] and res["left_after_final_export"] == []
    assert res["stale_quantize_dirs_after_final"] == []
