"""Hostile artifacts: every bad manifest is one ArtifactError naming the field; nothing outside
the artifact directory is read; staging directories never load (issue 9)."""
from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path

import pytest

import edgeinfer
from edgeinfer.errors import ArtifactError
from edgeinfer.runtime import artifact as A
from edgeinfer.runtime.artifact import read_manifest, write_manifest

from test_runtime_helpers import tiny_artifact, tiny_onnx


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "engine-cache"))


@pytest.fixture
def art(tmp_path) -> Path:
    return tiny_artifact(tmp_path / "art")


def _set(m: dict, dotted: str, value) -> None:
    """Set ``a.b[1].c`` in a manifest (creating dicts on the way); value DELETE removes it."""
    parts = []
    for p in dotted.split("."):
        while "[" in p:
            head, rest = p.split("[", 1)
            if head:
                parts.append(head)
            idx, p = rest.split("]", 1)
            parts.append(int(idx))
        if p:
            parts.append(p)
    cur = m
    for p in parts[:-1]:
        cur = cur.setdefault(p, {}) if isinstance(p, str) else cur[p]
    if value is DELETE:
        del cur[parts[-1]]
    else:
        cur[parts[-1]] = value


DELETE = object()
NAN = float("nan")

# (field to edit, bad value, text the error must contain: the field and what is expected)
BAD_FIELDS = [
    ("format", "something-else", "'format'"),
    ("format_version", 99, "newer than this edgeinfer"),
    ("format_version", "1", "'format_version'"),
    ("format_version", True, "'format_version'"),
    ("format_version", DELETE, "'format_version'"),
    ("model", None, "'model'"),
    ("model.name", 5, "'model.name'"),
    ("model.name", "", "'model.name'"),
    ("model.kind", "detector", "'model.kind'"),
    ("weights", [], "'weights'"),
    ("weights.origin", "", "'weights.origin'"),
    ("preprocess", "none", "'preprocess'"),
    ("preprocess.input_size", [3, 60000, 60000], "'preprocess.input_size[1]'"),
    ("preprocess.input_size", [3, 224], "'preprocess.input_size'"),
    ("preprocess.input_size", [1, 32, 32], "'preprocess.input_size[0]'"),
    ("preprocess.input_size", [3, 0, 32], "'preprocess.input_size[1]'"),
    ("preprocess.input_size", [3, 32, 32.5], "'preprocess.input_size[2]'"),
    ("preprocess.input_size", None, "'preprocess.input_size'"),
    ("preprocess.resize_size", 1_000_000, "'preprocess.resize_size'"),
    ("preprocess.resize_size", -1, "'preprocess.resize_size'"),
    ("preprocess.resize_size", "36", "'preprocess.resize_size'"),
    ("preprocess.resize_size", DELETE, "'preprocess.resize_size'"),
    ("preprocess.interpolation", "magic", "'preprocess.interpolation'"),
    ("preprocess.crop", "random", "'preprocess.crop'"),
    ("preprocess.crop_pct", 0, "'preprocess.crop_pct'"),
    ("preprocess.mean", [0.5, 0.5], "'preprocess.mean'"),
    ("preprocess.mean", [0.5, "x", 0.5], "'preprocess.mean[1]'"),
    ("preprocess.std", [0.0, 0.0, 0.0], "'preprocess.std[0]'"),
    ("preprocess.std", [0.2, NAN, 0.2], "'preprocess.std[1]'"),
    ("preprocess.std", [0.2, 0.2, -0.2], "'preprocess.std[2]'"),
    ("preprocess.channel_order", "BGR", "'preprocess.channel_order'"),
    ("preprocess.layout", "NHWC", "'preprocess.layout'"),
    ("output", 3, "'output'"),
    ("output.kind", "boxes", "'output.kind'"),
    ("output.dim", 0, "'output.dim'"),
    ("output.dim", 10**9, "'output.dim'"),
    ("output.dim", DELETE, "'output.dim'"),
    ("labels", ["a"] * 9, "'labels'"),           # 9 labels for 10 outputs
    ("labels", "cat,dog", "'labels'"),
    ("labels[3]", 7, "'labels[3]'"),
    ("opset", "17", "'opset'"),
    ("files", [], "'files'"),
    ("files.bf16", {"file": "model.fp32.onnx"}, "'files.bf16'"),
    ("files.fp32", "model.fp32.onnx", "'files.fp32'"),
    ("files.fp32.sha256", "abc", "'files.fp32.sha256'"),
    ("files.fp32.sha256", "../../" + "a" * 58, "'files.fp32.sha256'"),
    ("files.fp32.precision", "int8", "'files.fp32.precision'"),
    ("files.fp32.file", "../outside.onnx", "'files.fp32.file'"),
    ("files.fp32.file", "/etc/passwd", "'files.fp32.file'"),
    ("files.fp32.file", "sub/../../x.onnx", "'files.fp32.file'"),
    ("files.fp32.file", ".", "'files.fp32.file'"),
    ("files.fp32.file", 12, "'files.fp32.file'"),
    ("files.fp32.file", "missing.onnx", "missing"),
    ("files.fp32.inputs", {"name": "x"}, "'files.fp32.inputs'"),
    ("files.fp32.external_data", [{"file": "/etc/passwd", "sha256": "0" * 64}],
     "'files.fp32.external_data[0].file'"),
    ("text", [], "'text'"),
    ("text.files.fp32", {"file": "../x", "precision": "fp32", "sha256": "0" * 64},
     "'text.files.fp32.file'"),
    ("text.tokenizer", {"type": "clip_bpe", "file": "../../etc/passwd", "sha256": "0" * 64},
     "'text.tokenizer.file'"),
    ("text.tokenizer", {"type": "sentencepiece", "file": "manifest.json", "sha256": "0" * 64},
     "'text.tokenizer.type'"),
    ("text.tokenizer", {"type": "clip_bpe", "file": "manifest.json"}, "'text.tokenizer.sha256'"),
    ("text.label_sets", {"pets": {"file": "/dev/zero", "sha256": "0" * 64, "labels": ["cat"]}},
     "'text.label_sets.pets.file'"),
    ("text.label_sets", {"pets": {"file": "manifest.json", "sha256": "0" * 64, "labels": []}},
     "'text.label_sets.pets.labels'"),
    ("text.default_label_set", "nope", "'text.default_label_set'"),
    ("text.logit_scale", -1, "'text.logit_scale'"),
    ("text.context_length", 10**7, "'text.context_length'"),
]


@pytest.mark.parametrize("field,value,expect", BAD_FIELDS,
                         ids=[f"{f}={json.dumps(v) if v is not DELETE else 'DELETE'}"[:60]
                              for f, v, _ in BAD_FIELDS])
def test_every_bad_field_is_one_artifact_error_naming_it(art, field, value, expect):
    m = json.loads((art / "manifest.json").read_text())
    _set(m, field, value if value is DELETE else copy.deepcopy(value))
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError) as ei:
        edgeinfer.load(art, provider="cpu")
    assert expect in str(ei.value), str(ei.value)
    assert type(ei.value) is ArtifactError


def test_the_unedited_manifest_loads(art, tmp_path):
    # the positive control for the table above: the same artifact, unchanged, classifies
    from conftest import make_image

    p = tmp_path / "x.jpg"
    make_image(0).save(p)
    with edgeinfer.load(art, provider="cpu") as m:
        assert len(m.classify(p, top_k=2)) == 2


@pytest.mark.parametrize("text,expect", [
    ("{not json", "not valid JSON"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ("[]", "top level"),
    ('{"format": "edgeinfer-artifact", "format_version": 1e999}', "'format_version'"),
])
def test_unparseable_manifests(art, text, expect):
    (art / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match=expect):
        A.Artifact(art)


def test_manifest_that_is_a_directory_device_or_symlink_outside(art, tmp_path):
    (art / "manifest.json").unlink()
    (art / "manifest.json").mkdir()
    with pytest.raises(ArtifactError, match="not a regular file"):
        edgeinfer.load(art, provider="cpu")
    (art / "manifest.json").rmdir()
    os.symlink("/dev/zero", art / "manifest.json")      # would hang a plain read_text()
    with pytest.raises(ArtifactError, match="outside the artifact"):
        edgeinfer.load(art, provider="cpu")
    (art / "manifest.json").unlink()
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    os.symlink(outside, art / "manifest.json")
    with pytest.raises(ArtifactError, match="outside the artifact"):
        edgeinfer.load(art, provider="cpu")


def test_symlinked_model_file_escaping_the_directory_is_refused(art, tmp_path):
    """A symlink with the right sha256 that points outside still does not load, and the file
    outside is never opened."""
    outside = tmp_path / "secret.onnx"
    os.replace(art / "model.fp32.onnx", outside)
    os.symlink(outside, art / "model.fp32.onnx")
    opened = []
    real = A.hash_and_scan
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(A, "hash_and_scan", lambda p, *a, **k: opened.append(Path(p)) or real(p, *a, **k))
        mp.setattr(A, "sha256_file", lambda p, *a, **k: opened.append(Path(p)) or "0" * 64)
        with pytest.raises(ArtifactError, match="'files.fp32.file'.*outside"):
            edgeinfer.load(art, provider="cpu")
    assert opened == []
    # a symlink that stays inside the artifact is fine
    os.unlink(art / "model.fp32.onnx")
    os.replace(outside, art / "real.onnx")
    os.symlink("real.onnx", art / "model.fp32.onnx")
    edgeinfer.load(art, provider="cpu").close()


def test_dev_zero_and_fifo_are_refused_quickly(art):
    os.unlink(art / "model.fp32.onnx")
    os.symlink("/dev/zero", art / "model.fp32.onnx")
    done = []
    t = threading.Thread(target=lambda: done.append(_load_error(art)), daemon=True)
    t.start()
    t.join(30)
    assert done and "outside" in done[0]
    os.unlink(art / "model.fp32.onnx")
    os.mkfifo(art / "model.fp32.onnx")     # inside the directory, but not a regular file
    t = threading.Thread(target=lambda: done.append(_load_error(art)), daemon=True)
    t.start()
    t.join(30)
    assert len(done) == 2 and "regular file" in done[1]


def _load_error(art) -> str:
    try:
        edgeinfer.load(art, provider="cpu")
    except ArtifactError as e:
        return str(e)
    return "loaded"


def _external_data_onnx(d: Path, location: str) -> Path:
    """The tiny model with its initializers in an external file at ``location``."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    f = tiny_onnx(d / "model.fp32.onnx")
    model = onnx.load(str(f))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.data",
                                   size_threshold=0)
    onnx.save_model(model, str(f))  # writes d/w.data
    if location != "w.data":
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        f.write_bytes(model.SerializeToString())
    return f


def test_external_data_is_hashed_and_contained(tmp_path):
    d = tiny_artifact(tmp_path / "ext")
    f = _external_data_onnx(d, "w.data")
    m = read_manifest(d)
    m["files"]["fp32"] = A.file_entry(f, precision="fp32")
    assert [x["file"] for x in m["files"]["fp32"]["external_data"]] == ["w.data"]
    write_manifest(d, m)
    edgeinfer.load(d, provider="cpu").close()
    # the external file changed: refused although the .onnx file itself is intact
    data = bytearray((d / "w.data").read_bytes())
    data[10] ^= 0xFF
    (d / "w.data").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="w.data does not match its sha256"):
        edgeinfer.load(d, provider="cpu")
    # external data the manifest does not record is refused before ONNX Runtime opens it
    m = read_manifest(d)
    del m["files"]["fp32"]["external_data"]
    write_manifest(d, m)
    with pytest.raises(ArtifactError, match="does not record"):
        edgeinfer.load(d, provider="cpu")


def test_external_data_pointing_outside_is_refused(tmp_path):
    d = tiny_artifact(tmp_path / "ext")
    secret = tmp_path / "secret.bin"
    f = _external_data_onnx(d, "../secret.bin")
    os.replace(d / "w.data", secret)
    assert A.external_data_locations(f) == ["../secret.bin"]
    m = read_manifest(d)
    m["files"]["fp32"] = {"file": f.name, "precision": "fp32", "sha256": A.sha256_file(f)}
    write_manifest(d, m)
    with pytest.raises(ArtifactError, match="does not record"):
        edgeinfer.load(d, provider="cpu")
    m["files"]["fp32"]["external_data"] = [{"file": "../secret.bin", "sha256": A.sha256_file(secret)}]
    write_manifest(d, m)
    with pytest.raises(ArtifactError, match="external_data\\[0\\].file"):
        edgeinfer.load(d, provider="cpu")


def test_location_scanner_handles_chunk_boundaries(tmp_path):
    key = A._LOCATION_KEY
    blob = b"x" * 1000 + key + bytes([7]) + b"a.data1" + b"y" * 50 + key + bytes([3]) + b"b.d"
    p = tmp_path / "blob"
    p.write_bytes(blob)
    for chunk in (1, 7, 64, 1 << 20):
        assert A.hash_and_scan(p, chunk=chunk)[1] == ["a.data1", "b.d"]


def test_staging_directories_never_load(art, tmp_path):
    import shutil

    staged = tmp_path / ".art.staging-abc123"
    shutil.copytree(art, staged)
    with pytest.raises(ArtifactError, match="staging directory"):
        edgeinfer.load(staged, provider="cpu")
    renamed = tmp_path / "looks-normal"
    shutil.copytree(art, renamed)
    (renamed / A.STAGING_MARKER).write_text("1 x\n")
    with pytest.raises(ArtifactError, match="staging directory"):
        edgeinfer.load(renamed, provider="cpu")
    old = tmp_path / ".art.old-4242"
    shutil.copytree(art, old)
    with pytest.raises(ArtifactError, match="staging directory"):
        edgeinfer.load(old, provider="cpu")


def test_staged_directory_is_readable_by_its_builder_only(tmp_path):
    out = tmp_path / "built"
    with A.staged_directory(out) as stage:
        tiny_artifact(stage)
        assert (stage / A.STAGING_MARKER).exists()
        assert read_manifest(stage)["model"]["name"] == "tiny"   # the export itself reads it
        # any other process (a service loading everything it finds) is refused
        import subprocess
        import sys

        r = subprocess.run([sys.executable, "-c", "import edgeinfer, sys; edgeinfer.load(sys.argv[1], "
                            "provider='cpu')", str(stage)], capture_output=True, text=True)
        assert r.returncode != 0 and "staging directory" in r.stderr
    assert not (out / A.STAGING_MARKER).exists()
    edgeinfer.load(out, provider="cpu").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built"]
