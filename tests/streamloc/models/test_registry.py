import dataclasses

import pytest

from streamloc.features import AudioFrontendConfig
from streamloc.models import create_model, get_model_class, list_models
from streamloc.models.ezvsl import EZVSLConfig
from streamloc.models.noprior import NoPriorConfig


def test_builtin_methods_are_registered():
    assert {"ezvsl", "noprior"} <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model 'nope'.*noprior"):
        create_model("nope")


def test_unknown_option_names_the_valid_options():
    with pytest.raises(ValueError, match="unknown option.*'tau2_typo'.*valid options"):
        create_model("noprior", tau2_typo=0.5)


@pytest.mark.parametrize("cls", [EZVSLConfig, NoPriorConfig])
def test_config_round_trips_through_a_dict(cls):
    config = cls()
    data = config.to_dict()
    assert isinstance(data["audio"], dict)
    again = cls.from_dict(data)
    assert again == config
    assert dataclasses.asdict(again) == data


@pytest.mark.parametrize(
    "name, options, check",
    [
        ("noprior", {"tau1": 0.8, "audio": {"sample_rate": 16000}},
         lambda m: m.config.tau1 == 0.8 and m.config.audio.sample_rate == 16000),
        ("noprior", {"audio": AudioFrontendConfig(sample_rate=48000)},
         lambda m: m.config.audio.sample_rate == 48000),
        ("ezvsl", {"object_prior": "none", "alpha": 1.0},
         lambda m: m.objnet is None and m.config.alpha == 1.0),
    ],
)
def test_create_model_applies_options(name, options, check):
    assert check(create_model(name, **options))


def test_create_model_from_config_with_overrides():
    model = create_model("noprior", NoPriorConfig(tau2=0.5), tau1=0.65)
    assert (model.config.tau1, model.config.tau2) == (0.65, 0.5)
    assert isinstance(model, get_model_class("noprior"))


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("ezvsl", {"object_prior": "clip"}, "object_prior"),
        ("ezvsl", {"alpha": 1.5}, "alpha"),
        ("noprior", {"ioi_rule": "fancy"}, "ioi_rule"),
    ],
)
def test_invalid_values_are_rejected(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **options)


def test_nested_dict_options_keep_the_method_defaults():
    import streamloc.models.mixloc  # noqa: F401

    model = create_model("mixloc", audio={"window_seconds": 0.5})
    assert model.config.audio.kind == "logmel" and model.config.audio.window_seconds == 0.5
    model = create_model("noprior", audio={"window_seconds": 1.0})
    assert model.config.audio.sample_rate == 22050  # NoPrior's default rate survives
