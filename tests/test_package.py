import subprocess
import sys

import pytest

from edgeinfer.errors import UnknownModelError
from edgeinfer.export.recipes import get_recipe, list_recipes


def test_recipes_cover_the_required_models():
    names = {r.name for r in list_recipes()}
    for n in ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilenetv2_100",
              "mobilenetv3_small_100", "mobilenetv3_large_100", "resnet18", "resnet50",
              "clip_vit_b32", "clip_vit_b16"]:
        assert n in names
    for r in list_recipes():
        assert r.preprocess_resolved, r.name


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError) as e:
        get_recipe("mobilevit_ss")
    assert "mobilevit_s" in str(e.value)


def test_pass_through_recipes():
    r = get_recipe("timm:efficientnet_b0")
    assert r.source == "timm" and r.source_name == "efficientnet_b0" and not r.preprocess_resolved
    assert get_recipe("torchvision:resnet18").source == "torchvision"


def test_import_edgeinfer_is_torch_free():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None; "
            "sys.modules['open_clip'] = None; import edgeinfer, edgeinfer.runtime, edgeinfer.backends; "
            "import edgeinfer.runtime.artifact, edgeinfer.backends.base, edgeinfer.export.recipes; "
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    subprocess.run([sys.executable, "-c", code], check=True)
