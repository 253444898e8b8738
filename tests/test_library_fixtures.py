"""Artifacts and photo folders shared by test_library*.py and test_serve*.py (helpers, no tests).

The tiny CLIP is test_clip.py's open_clip config (32 px, 2 layers) exported once per session;
building it needs torch (the export side), serving it does not."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from test_runtime_helpers import tiny_artifact


def classifier_artifact(d: Path, *, seed_offset: int = 0) -> Path:
    """A tiny classifier (10 labels). ``seed_offset`` != 0 gives different weights (a new sha256)."""
    d = tiny_artifact(d, classes=10)
    if seed_offset:
        from edgeinfer.runtime.artifact import file_entry, read_manifest, write_manifest
        from test_runtime_helpers import tiny_onnx

        tiny_onnx(d / "model.fp32.onnx", classes=10, seed=seed_offset)
        m = read_manifest(d)
        m["files"]["fp32"] = file_entry(d / "model.fp32.onnx", precision="fp32",
                                        inputs=[{"name": "pixel_values"}], outputs=[{"name": "logits"}])
        write_manifest(d, m)
    return d


def _text_tower(path: Path, *, vocab: int = 49408, dim: int = 32, seed: int = 1) -> Path:
    """input_ids [N, L] int64 -> mean of a random token-embedding table over L -> [N, dim]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = numpy_helper.from_array(rng.normal(0, 1, (vocab, dim)).astype(np.float32), "table")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]),
             helper.make_node("ReduceMean", ["e", "axes"], ["text_embedding"], keepdims=0)]
    g = helper.make_graph(nodes, "tiny_text",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                          [helper.make_tensor_value_info("text_embedding", TensorProto.FLOAT, ["batch", dim])],
                          initializer=[table, axes])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def clip_artifact(base: Path) -> Path:
    """A tiny torch-free CLIP-shaped artifact under ``base`` (built on first call, reused):
    image tower = the tiny conv net with a 32-d embedding output, text tower = a random
    token-embedding table averaged over the tokens, open_clip's BPE vocabulary (read from the
    installed open_clip package without importing it), a stored 'cifar10' label set. It is not a
    trained CLIP; it exercises every code path of the service and the library in a second."""
    import importlib.util

    from edgeinfer.runtime.artifact import file_entry, read_manifest, sha256_file, write_manifest
    from edgeinfer.runtime.tokenizer import write_bpe_vocab

    out = base / "clip_tiny"
    if (out / "manifest.json").exists():
        return out
    spec = importlib.util.find_spec("open_clip")
    bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz" if spec else None
    if bpe is None or not bpe.exists():
        pytest.skip("open_clip's BPE vocabulary is not installed (pip install 'edgeinfer[export]')")
    tmp = base / "clip_tiny.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tiny_artifact(tmp, kind="clip", classes=32)
    write_bpe_vocab(bpe, tmp / "tokenizer_bpe.txt.gz")
    _text_tower(tmp / "text.fp32.onnx")
    labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    emb = np.random.default_rng(2).normal(size=(10, 32)).astype(np.float32)
    np.save(tmp / "labels.cifar10.npy", emb / np.linalg.norm(emb, axis=1, keepdims=True))
    m = read_manifest(tmp)
    m["model"]["name"] = "clip_tiny"
    m["text"] = {
        "files": {"fp32": file_entry(tmp / "text.fp32.onnx", precision="fp32",
                                     inputs=[{"name": "input_ids"}], outputs=[{"name": "text_embedding"}])},
        "tokenizer": {"type": "clip_bpe", "file": "tokenizer_bpe.txt.gz",
                      "sha256": sha256_file(tmp / "tokenizer_bpe.txt.gz"), "context_length": 77},
        "context_length": 77, "variable_length": False, "embedding_dim": 32, "logit_scale": 100.0,
        "logit_bias": None,
        "label_sets": {"cifar10": {"file": "labels.cifar10.npy", "sha256": sha256_file(tmp / "labels.cifar10.npy"),
                                   "labels": labels, "templates": 1}},
        "default_label_set": "cifar10", "templates": ["a photo of a {}."]}
    write_manifest(tmp, m)
    tmp.rename(out)
    return out


def write_images(d: Path, n: int, *, start: int = 0, size=(160, 120)) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = d / f"img{i:03d}.jpg"
        make_image(i, size=size).save(p, quality=90)
        out.append(p)
    return out


def jpeg_bytes(seed: int, size=(96, 72)) -> bytes:
    b = io.BytesIO()
    make_image(seed, size=size).save(b, "JPEG", quality=90)
    return b.getvalue()


def near_copies(src: Path, out_dir: Path) -> list[Path]:
    """Re-encoded (quality 55), half-size and 2%-cropped copies of a photo."""
    from PIL import Image

    im = Image.open(src).convert("RGB")
    w, h = im.size
    stem = src.stem
    made = []
    p = out_dir / f"{stem}_reencoded.jpg"
    im.save(p, "JPEG", quality=55)
    made.append(p)
    p = out_dir / f"{stem}_small.jpg"
    im.resize((w // 2, h // 2), Image.BICUBIC).save(p, "JPEG", quality=90)
    made.append(p)
    p = out_dir / f"{stem}_crop.jpg"
    im.crop((int(w * .02), int(h * .02), int(w * .98), int(h * .98))).save(p, "JPEG", quality=90)
    made.append(p)
    return made


def set_mtime(p: Path, t: float) -> None:
    os.utime(p, (t, t))


def rows(store, sql, params=()):
    return store.query(sql, params)


__all__ = ["classifier_artifact", "clip_artifact", "write_images", "jpeg_bytes", "near_copies", "np"]
