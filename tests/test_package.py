import pytest

from edgeinfer.catalog import get_recipe, list_recipes
from edgeinfer.errors import UnknownModelError

from torch_blocked import assert_imports_without_torch


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


def test_old_recipe_import_path_still_works():
    from edgeinfer.export import recipes

    assert recipes.get_recipe is get_recipe


def test_torch_free_layers_import_with_torch_blocked():
    assert_imports_without_torch(
        "edgeinfer", "edgeinfer.catalog", "edgeinfer.runtime.model", "edgeinfer.runtime.selection",
        "edgeinfer.runtime.artifact", "edgeinfer.backends", "edgeinfer.backends.providers",
        "edgeinfer.backends.ort", "edgeinfer.backends.openvino", "edgeinfer.evaluate.fidelity",
        "edgeinfer.evaluate.synthetic", "edgeinfer.bench.runner", "edgeinfer.cli.models",
        "edgeinfer.cli.providers")


def test_the_torch_blocked_check_can_fail():
    # a torch-side module must trip it, else the check above proves nothing
    with pytest.raises(AssertionError, match="torch"):
        assert_imports_without_torch("edgeinfer.export.torch_models")
    with pytest.raises(AssertionError, match="edgeinfer.export"):
        assert_imports_without_torch("edgeinfer.export.recipes")


def test_quantize_does_not_import_the_export_package():
    # recipes live in edgeinfer.catalog so that quantize and export do not import each other
    assert_imports_without_torch("edgeinfer.quantize", "edgeinfer.quantize.api",
                                 "edgeinfer.quantize.guard", "edgeinfer.quantize.settings",
                                 "edgeinfer.quantize.graph")


def test_cli_models_fits_80_columns_without_cutting_names(capsys):
    from edgeinfer.cli.main import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for r in list_recipes():
        assert r.name in out  # every name whole: it is what the user types
    assert main(["models", "--json"]) == 0
    import json

    assert {m["name"] for m in json.loads(capsys.readouterr().out)} == {r.name for r in list_recipes()}


def test_library_noise_is_hidden_unless_verbose(capsys):
    import logging
    import warnings

    from edgeinfer.cli.output import quiet_libraries

    root = logging.getLogger()
    level = root.level
    try:
        with warnings.catch_warnings():
            quiet_libraries(verbose=False)
            warnings.warn_explicit("No pretrained weights", UserWarning, "x.py", 1, module="open_clip.factory")
            warnings.warn_explicit("skipped 3 images", UserWarning, "calib.py", 7,
                                   module="edgeinfer.quantize.calib")
            logging.getLogger("open_clip").warning("WARNING from a library")
        err = capsys.readouterr().err
        assert "No pretrained weights" not in err and "WARNING from a library" not in err
        assert "warning: skipped 3 images" in err and "calib.py" not in err  # one line, no source
    finally:
        root.setLevel(level)
