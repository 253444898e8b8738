"""CLIP ViT-B-32 (random weights, seeded) end to end through the export pipeline, on the real
photos: the runtime's FP32 zero-shot probabilities match open_clip's own PyTorch zero-shot (same
weights, labels and templates) within 1e-3. Slow (minutes on a small CPU): ``-m slow``.

The cifar10 label set only (EDGEINFER_CLIP_LABEL_SETS): the 80-template ImageNet ensemble is
80,000 text encodings, which is an export-time cost, not something this test needs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

# Minutes on a small CPU, so only when asked for: `pytest -m slow tests/test_clip_vit.py`.
pytestmark = [pytest.mark.slow, pytest.mark.photos,
              pytest.mark.skipif("'slow' not in (config.getoption('markexpr') or '')",
                                 reason="ViT-B-32 export takes minutes; run with -m slow")]

CUSTOM = ["shark", "dolphin", "lizard", "giraffe", "a goldfish", "a church", "Bäckerei", "猫"]


@pytest.fixture(scope="module")
def vit_artifact(tmp_path_factory, photos_dir):
    from edgeinfer.export.pipeline import export_model

    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEINFER_CLIP_LABEL_SETS", "cifar10")
    try:
        out = export_model("clip_vit_b32", weights="random", seed=0,
                           out=tmp_path_factory.mktemp("vit") / "clip_vit_b32")
    finally:
        mp.undo()
    return out


def _reference(photo_paths, labels, templates):
    from PIL import Image

    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    torch.manual_seed(0)  # same seeded random weights and architecture as the export
    model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True).eval()
    pre = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                    std=open_clip.OPENAI_DATASET_STD, interpolation="bicubic",
                                    resize_mode="shortest")
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        w = build_zero_shot_classifier(model, tok, labels, templates, num_classes_per_batch=None)
        feats = []
        for i in range(0, len(photo_paths), 25):
            x = torch.stack([pre(Image.open(p).convert("RGB")) for p in photo_paths[i:i + 25]])
            feats.append(model.encode_image(x, normalize=True))
        return torch.softmax(model.logit_scale.exp() * torch.cat(feats) @ w, -1).double().numpy()


def test_vit_b32_zero_shot_matches_open_clip(vit_artifact, photo_paths):
    import edgeinfer
    from edgeinfer.runtime.zero_shot import label_set_spec

    cifar, _, cifar_t = label_set_spec("cifar10")
    with edgeinfer.load(vit_artifact, provider="cpu", precision="fp32") as m:
        rows = m.embed_raw(photo_paths)
        names, emb = m.text.resolve("cifar10")
        p_set = m.text.probabilities(rows, emb)
        p_custom = m.text.probabilities(rows, m.text.resolve(CUSTOM)[1])
    assert names == cifar and p_set.shape == (len(photo_paths), 10)
    ref_set = _reference(photo_paths, cifar, cifar_t)
    ref_custom = _reference(photo_paths, CUSTOM, ["a photo of a {}."])
    d_set, d_custom = np.abs(p_set - ref_set).max(), np.abs(p_custom - ref_custom).max()
    print(f"\nViT-B-32 random: max |p_runtime - p_open_clip| over {len(photo_paths)} photos: "
          f"cifar10 set {d_set:.2e}, custom labels {d_custom:.2e}")
    assert d_set < 1e-3 and d_custom < 1e-3
