"""`streamloc.cli`: what the `run` command builds from its options (the commands themselves run
end to end in test_pipeline.py, test_demo.py, test_bench.py and backends/test_export.py)."""

from __future__ import annotations

import inspect

import pytest

from streamloc import cli
from streamloc.bundled import BUNDLED_MODEL, bundled_asset
from streamloc.localizer import Localizer
from streamloc.models import create_model
from streamloc.models.checkpoint import save_checkpoint

DEFAULTS = {k: v.default for k, v in inspect.signature(Localizer).parameters.items()}


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.safetensors"
    save_checkpoint(create_model("noprior", image={"size": (64, 64)}), path, provenance={"note": "random init, test only"})
    return path


@pytest.mark.parametrize("options, object_mask, mask_threshold", [
    ([], DEFAULTS["object_mask"], DEFAULTS["mask_threshold"]),
    (["--object-mask", "cells"], "cells", DEFAULTS["mask_threshold"]),
    (["--mask-threshold", "0.3"], DEFAULTS["object_mask"], 0.3),
    (["--object-mask", "heatmap", "--mask-threshold", "0.7"], "heatmap", 0.7),
])
def test_run_mask_options_reach_the_localizer(options, object_mask, mask_threshold, small_model_file):
    args = cli.build_parser().parse_args(["run", "--model", str(small_model_file), *options])
    loc = cli._load_localizer(args)
    assert (loc.object_mask, loc.mask_threshold) == (object_mask, mask_threshold)


def test_run_mask_help_quotes_the_localizer_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {DEFAULTS['object_mask']!r}" in text
    assert f"(default {DEFAULTS['mask_threshold']})" in text


def test_run_without_model_uses_the_bundled_model(capsys):
    if not bundled_asset(BUNDLED_MODEL).is_file():
        pytest.fail(f"the bundled model streamloc/assets/demo/{BUNDLED_MODEL} is missing")
    args = cli.build_parser().parse_args(["run"])
    loc = cli._load_localizer(args)
    assert loc.model.config.visual_backbone == "efficientnet_lite0"
    assert not loc.model.training
    err = capsys.readouterr().err
    assert f"using the bundled {BUNDLED_MODEL}" in err and "--model" in err


def test_run_without_model_and_without_the_bundled_file_is_a_clear_error(monkeypatch, capsys):
    import streamloc.bundled as bundled

    monkeypatch.setattr(bundled, "BUNDLED_MODEL", "no_such_model.safetensors")
    assert cli.main(["run", "--media", "unused.mp4", "--no-display"]) == 2
    err = capsys.readouterr().err
    assert "no_such_model.safetensors) is not installed" in err and "--model FILE.safetensors" in err


def test_info_says_which_backends_run_here_and_why_not(capsys):
    import json

    import torch

    from streamloc.backends import BACKENDS

    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["backends"]) == set(BACKENDS) and info["backends"]["eager"] == "available"
    assert info["cuda"] == torch.cuda.is_available() and len(info["cuda_devices"]) == torch.cuda.device_count()
    if not torch.cuda.is_available():
        assert "CUDA is not available" in info["backends"]["tensorrt"]
    assert info["bundled_model"] == BUNDLED_MODEL
