"""CLIP ViT-B-32 (random weights, seeded) through the default export: image tower FP32 + INT8 +
FP16, text tower, the ImageNet (1000 x 80 templates) and CIFAR-10 (10 x 18) label sets. Checks:

- the stored class embeddings are within cosine 0.9999 of open_clip's own
  ``build_zero_shot_classifier`` on the same weights (all CIFAR-10 classes; a spread of ImageNet
  classes, since open_clip's padded-to-77 reference encodes ~14 prompts/s on a 2-core CPU);
- on the real photos, the runtime's FP32 zero-shot probabilities match open_clip's PyTorch
  zero-shot (same weights, labels and templates) within 1e-3, for a label set and custom labels.

Slow (the export is minutes on a small CPU; its time is printed): ``pytest -m slow``.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

# Minutes on a small CPU, so only when asked for: `pytest -m slow tests/test_clip_vit.py`.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif("'slow' not in (config.getoption('markexpr') or '')",
                                 reason="the ViT-B-32 default export takes minutes; run with -m slow")]

CUSTOM = ["shark", "dolphin", "lizard", "giraffe", "a goldfish", "a church", "Bäckerei", "猫"]
IMAGENET_CHECKED = list(range(0, 1000, 100))   # 10 classes x 80 templates against open_clip


@pytest.fixture(scope="module")
def vit_artifact(tmp_path_factory):
    from edgeinfer.export.pipeline import export_model

    lines: list[str] = []
    t0 = time.perf_counter()
    out = export_model("clip_vit_b32", weights="random", seed=0, int8=True, fp16=True,
                       out=tmp_path_factory.mktemp("vit") / "clip_vit_b32", progress=lines.append)
    print(f"\ndefault clip_vit_b32 export (int8 + fp16, imagenet + cifar10): "
          f"{time.perf_counter() - t0:.0f} s")
    return out, lines


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(0)  # same seeded random weights and architecture as the export
    return open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True).eval()


def _classifier(model, labels, templates) -> np.ndarray:
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    with torch.no_grad():
        return build_zero_shot_classifier(model, open_clip.get_tokenizer("ViT-B-32"), labels,
                                          templates, num_classes_per_batch=None).T.numpy()


def test_default_export_label_sets_match_build_zero_shot_classifier(vit_artifact, reference_model):
    from edgeinfer.evaluate.fidelity import cosine_per_row
    from edgeinfer.runtime.zero_shot import label_set_spec

    art, lines = vit_artifact
    m = json.loads((art / "manifest.json").read_text())
    assert {"fp32", "int8", "fp16"} <= set(m["files"])
    assert set(m["text"]["label_sets"]) == {"imagenet", "cifar10"}
    assert any("prompts/s" in x and "ETA" in x for x in lines), lines   # progress while it runs
    for name, rows in (("cifar10", None), ("imagenet", IMAGENET_CHECKED)):
        labels, _, templates = label_set_spec(name)
        spec = m["text"]["label_sets"][name]
        assert spec["templates"] == len(templates) and spec["check"]["cosine_min"] >= 0.9999
        ours = np.load(art / spec["file"])
        idx = list(range(len(labels))) if rows is None else rows
        ref = _classifier(reference_model, [labels[i] for i in idx], templates)
        cos = cosine_per_row(ours[idx], ref)
        print(f"{name}: cosine to build_zero_shot_classifier min {cos.min():.7f} over {len(idx)} classes")
        assert cos.min() >= 0.9999


@pytest.mark.photos
def test_vit_b32_zero_shot_matches_open_clip(vit_artifact, reference_model, photo_paths):
    from PIL import Image

    import edgeinfer
    from edgeinfer.runtime.zero_shot import label_set_spec

    art, _ = vit_artifact
    cifar, _, cifar_t = label_set_spec("cifar10")
    with edgeinfer.load(art, provider="cpu", precision="fp32") as m:
        rows = m.embed_raw(photo_paths)
        names, emb = m.text.resolve("cifar10")
        p_set = m.text.probabilities(rows, emb)
        p_custom = m.text.probabilities(rows, m.text.resolve(CUSTOM)[1])
    assert names == cifar and p_set.shape == (len(photo_paths), 10)
    pre = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                    std=open_clip.OPENAI_DATASET_STD, interpolation="bicubic",
                                    resize_mode="shortest")
    with torch.no_grad():
        feats = torch.cat([reference_model.encode_image(torch.stack(
            [pre(Image.open(p).convert("RGB")) for p in photo_paths[i:i + 25]]), normalize=True)
            for i in range(0, len(photo_paths), 25)]).numpy()
    scale = float(reference_model.logit_scale.exp())

    def probs(w):
        z = scale * feats.astype(np.float64) @ w.T.astype(np.float64)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    d_set = np.abs(p_set - probs(_classifier(reference_model, cifar, cifar_t))).max()
    d_custom = np.abs(p_custom - probs(_classifier(reference_model, CUSTOM, ["a photo of a {}."]))).max()
    print(f"\nViT-B-32 random: max |p_runtime - p_open_clip| over {len(photo_paths)} photos: "
          f"cifar10 set {d_set:.2e}, custom labels {d_custom:.2e}")
    assert d_set < 1e-3 and d_custom < 1e-3
