import numpy as np
import pytest
import torch

import streamloc.models.mixloc as mixloc  # registers "mixloc"
from streamloc.features import hann_window, mel_filterbank
from streamloc.models import create_model
from streamloc.models.checkpoint import load_checkpoint, load_foreign_state_dict
from streamloc.models.convert import convert_checkpoint

SMALL = {"image": {"size": (48, 48)}, "audio": {"kind": "logmel", "window_seconds": 0.24}}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_defaults_are_the_official_setting():
    model = create_model("mixloc")
    c = model.config
    assert isinstance(c, mixloc.MixLocConfig)
    assert (c.audio.kind, c.audio.sample_rate, c.audio.window_seconds) == ("logmel", 16000, 0.96)
    assert model.spectrogram_shape() == (1, 193, 64)
    assert (c.visual_backbone, c.visual_weights, c.dim, c.num_sources, c.temperature) == (
        "resnet18_s16", None, 128, 2, 0.07)
    sd = model.state_dict()
    assert tuple(sd["conv_v_1.weight"].shape) == (128, 512, 1, 1)
    assert tuple(sd["conv_v_2.weight"].shape) == (128, 128, 1, 1)
    assert tuple(sd["aud_model.conv1.weight"].shape) == (64, 1, 7, 7)
    assert tuple(sd["vision_model.conv1.weight"].shape) == (64, 3, 7, 7)
    for i in (1, 2):
        assert tuple(sd[f"fc_a_{i}.0.weight"].shape) == (128, 512)
        assert tuple(sd[f"fc_a_{i}.2.weight"].shape) == (128, 128)
    # no unused official parameters (conv_av, the other stems, the classifiers)
    assert not [k for k in sd if "conv_av" in k or "conv1_a" in k or ".fc." in k or k.startswith("stft")]
    assert sum(p.numel() for p in model.parameters()) == 22_593_280


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="num_sources"):
        create_model("mixloc", num_sources=0)
    with pytest.raises(ValueError, match="logmel"):
        create_model("mixloc", audio={"kind": "psd"})
    with pytest.raises(ValueError, match="temperature"):
        create_model("mixloc", temperature=0.0)


def test_k_cosine_maps_at_224():
    torch.manual_seed(0)
    model = create_model("mixloc").eval()
    images, specs = model.example_inputs(batch=2)
    with torch.no_grad():
        (maps,) = model(images, specs)
        v = model.conv_v_2(torch.relu(model.conv_v_1(model.vision_model(images))))
        a = model.aud_model(specs).amax(dim=(2, 3))
        nodes = [model.fc_a_1(a), model.fc_a_2(a)]
    assert maps.shape == (2, 2, 14, 14)
    for b in range(2):
        for t in range(2):
            for i, j in [(0, 0), (4, 9), (13, 13)]:
                vec, s = v[b, :, i, j], nodes[t][b]
                expected = torch.dot(vec, s) / (vec.norm() * s.norm())
                assert abs(float(maps[b, t, i, j] - expected)) < 1e-5
    assert float(maps.abs().max()) <= 1.0 + 1e-5
    assert not torch.allclose(maps[:, 0], maps[:, 1])  # two different heads


def test_num_sources_three():
    model = create_model("mixloc", num_sources=3, **SMALL).eval()
    with torch.no_grad():
        (maps,) = model(*model.example_inputs(batch=1))
    assert maps.shape == (1, 3, 3, 3)
    assert model.head_names == ("fc_a_1", "fc_a_2", "fc_a_3")


def test_postprocess_reports_every_source_map():
    model = create_model("mixloc", **SMALL)
    rng = np.random.default_rng(0)
    maps = rng.uniform(-1, 1, (2, 5, 6)).astype(np.float32)
    sound_map, objects = model.postprocess({"maps": maps})
    np.testing.assert_array_equal(sound_map, np.maximum(maps[0], maps[1]))
    assert len(objects) == 2
    for obj, m in zip(objects, maps):
        np.testing.assert_array_equal(obj.map, m)
        assert obj.score == pytest.approx(float(m.max()))
        assert obj.cells is None


def official_checkpoint(model, prefix, *, fb=None):
    """An object laid out like the official `checkpoint_epN.pth.tar` (reference §3.6)."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("aud_model.conv1."):
            key = "aud_model.conv1_a." + key[len("aud_model.conv1."):]
        state[key] = value.clone()
    extras = {
        "aud_model.conv1.weight": torch.randn(64, 3, 7, 7, generator=g),
        "vision_model.conv1_a.weight": torch.randn(64, 1, 7, 7, generator=g),
        "aud_model.fc.weight": torch.randn(1000, 512, generator=g),
        "aud_model.fc.bias": torch.randn(1000, generator=g),
        "vision_model.fc.weight": torch.randn(1000, 512, generator=g),
        "vision_model.fc.bias": torch.randn(1000, generator=g),
        "conv_av.weight": torch.rand(1, 1, 1, 1, generator=g) * 2 - 1,
        "stft.0.spectrogram.window": torch.tensor(hann_window(160), dtype=torch.float32),
        "stft.0.mel_scale.fb": torch.tensor(mel_filterbank(81, 16000, 64, 0.0, 8000.0), dtype=torch.float32)
        if fb is None else fb,
    }
    state.update(extras)
    state = {prefix + k: v for k, v in state.items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 5e-4, "params": [0, 1]}]}
    return {"epoch": 30, "state_dict": state, "optimizer": optimizer}, sorted(extras)


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_from_official_round_trip(tmp_path, prefix):
    torch.manual_seed(0)
    original = create_model("mixloc", **SMALL)
    with torch.no_grad():  # non-trivial BN statistics
        for m in original.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    original.eval()
    obj, extras = official_checkpoint(original, prefix)
    path = tmp_path / "checkpoint_ep30.pth.tar"
    if prefix:  # through a file read safely (weights_only=True), as `streamloc convert` does
        torch.save(obj, path)
        loaded = load_foreign_state_dict(path)
    else:  # single-GPU layout: no DataParallel prefix
        loaded = obj
    config, state, notes = mixloc.from_official(loaded)
    assert config == {"dim": 128, "num_sources": 2}
    assert notes["dropped"] == extras
    assert notes["renamed"] == ["aud_model.conv1_a.weight -> aud_model.conv1.weight"]
    assert not any("filterbank" in n for n in notes["notes"])
    fresh = create_model("mixloc", {**SMALL, **config}).eval()
    fresh.load_state_dict(state, strict=True)

    inputs = original.example_inputs(batch=2)
    with torch.no_grad():
        (expected,) = original(*inputs)
        (got,) = fresh(*inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    if prefix:  # the whole CLI path: convert to safetensors, load, same maps
        dst = tmp_path / "mixloc.safetensors"
        report = convert_checkpoint("mixloc", path, dst, config=SMALL)
        assert report["dropped"] == extras
        with torch.no_grad():
            (again,) = load_checkpoint(dst, method="mixloc")(*inputs)
        torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_from_official_flags_a_foreign_mel_filterbank():
    model = create_model("mixloc", **SMALL)
    obj, _ = official_checkpoint(model, "module.", fb=torch.rand(81, 64))
    _, _, notes = mixloc.from_official(obj)
    assert any("filterbank" in n for n in notes["notes"])
