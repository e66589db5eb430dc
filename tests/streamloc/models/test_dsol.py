"""DSOL model: heads and stage-two maps against literal transcriptions of the paper / official
forward, postprocess (silent-object suppression), official-checkpoint conversion, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import streamloc.models.dsol  # noqa: F401 - registers "dsol"
from streamloc.errors import CheckpointError
from streamloc.models import create_model
from streamloc.models.checkpoint import load_checkpoint, load_foreign_state_dict, save_checkpoint
from streamloc.models.dsol import DSOL, DSOLConfig

# 48 px images -> 3×3 maps; 0.04 s of audio -> (1, 9, 64) log-mel.
SMALL = {"image": {"size": (48, 48)}, "audio": {"kind": "logmel", "window_seconds": 0.04}}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def literal_av_map(model, v_fea, a_fea):
    """Official Location_Net forward from the backbone outputs, one cell at a time (float64)."""
    W1, b1 = _np(model.conv_v_1.weight)[:, :, 0, 0], _np(model.conv_v_1.bias)
    W2, b2 = _np(model.conv_v_2.weight)[:, :, 0, 0], _np(model.conv_v_2.bias)
    U1, c1 = _np(model.fc_a_1.weight), _np(model.fc_a_1.bias)
    U2, c2 = _np(model.fc_a_2.weight), _np(model.fc_a_2.bias)
    w_av = float(_np(model.conv_av.weight).reshape(()))
    B, C, H, W = v_fea.shape
    out = np.zeros((B, H, W))
    for b in range(B):
        a = U2 @ np.maximum(U1 @ a_fea[b] + c1, 0.0) + c2
        for i in range(H):
            for j in range(W):
                v = W2 @ np.maximum(W1 @ v_fea[b, :, i, j] + b1, 0.0) + b2
                cos = float(v @ a) / (math.sqrt(float(v @ v)) * math.sqrt(float(a @ a)))
                out[b, i, j] = _sigmoid(w_av * cos)
    return out


def literal_object_maps(v_fea, av_map, dictionary, alpha, beta, minimize, scale):
    """Paper Eqs. 4-6 with the official obj_conv affine and the inference softmax(3 · obj_mask)."""
    B, C, H, W = v_fea.shape
    K = dictionary.shape[0]
    mask = np.zeros((B, K, H, W))
    for b in range(B):
        for k in range(K):
            for i in range(H):
                for j in range(W):
                    m = alpha * sum(v_fea[b, c, i, j] * dictionary[k, c] for c in range(C)) + beta
                    mask[b, k, i, j] = m * av_map[b, i, j] if minimize else m
    logits = mask.sum(axis=(2, 3)) / (H * W)
    maps = np.zeros_like(mask)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                den = sum(math.exp(scale * mask[b, k, i, j]) for k in range(K))
                for k in range(K):
                    maps[b, k, i, j] = math.exp(scale * mask[b, k, i, j]) / den
    return mask, logits, maps


@pytest.fixture(scope="module")
def stage_two_model():
    torch.manual_seed(0)
    model = create_model("dsol", stage=2, num_clusters=5, **SMALL)
    model.set_dictionary(torch.rand(5, 512) * 0.02)
    with torch.no_grad():
        model.obj_conv.weight.fill_(0.8)
        model.obj_conv.bias.fill_(-0.1)
    return model.eval()


def test_defaults_are_the_official_architecture():
    model = create_model("dsol")
    c = model.config
    assert (c.stage, c.num_clusters, c.conv_av_init, c.minimize, c.map_scale) == (1, 11, 5.0, True, 3.0)
    assert model.spectrogram_shape() == (1, 201, 64)  # 1 s at 16 kHz, n_fft 160, hop 80
    assert model.output_names == ("av_map",)
    assert model.visual_net.layer4_stride == 1 and model.audio_net.layer4_stride == 1
    assert model.audio_net.conv1.weight.shape == (64, 1, 7, 7)
    assert float(_np(model.conv_av.weight).reshape(())) == 5.0 and model.conv_av.bias is None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv_v_1.weight"] == (128, 512, 1, 1) and shapes["conv_v_2.weight"] == (128, 128, 1, 1)
    assert shapes["fc_a_1.weight"] == (128, 512) and shapes["fc_a_2.weight"] == (128, 128)
    assert shapes["v_class_layer.weight"] == (11, 512) and shapes["a_class_layer.weight"] == (11, 512)
    assert not any(k.startswith(("obj_conv", "obj_rep")) for k in shapes)
    assert sum(p.numel() for p in model.parameters()) == 22_522_391
    assert float(np.abs(_np(model.v_class_layer.bias)).max()) == 0.0
    assert 0.005 < float(_np(model.v_class_layer.weight).std()) < 0.015
    with torch.no_grad():
        (av_map,) = model.eval()(torch.randn(1, 3, 224, 224), torch.randn(1, 1, 201, 64))
    assert av_map.shape == (1, 14, 14)


def test_stage_one_map_matches_the_literal_forward():
    torch.manual_seed(1)
    model = create_model("dsol", num_clusters=3, **SMALL).eval()
    images, specs = model.example_inputs(batch=2)
    with torch.no_grad():
        p = model.parts(images, specs, logits=True)
        (av_map,) = model(images, specs)
    ref = literal_av_map(model, p["v_fea"].double().numpy(), p["a_fea"].double().numpy())
    np.testing.assert_allclose(av_map.numpy(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p["av_map"], av_map)
    assert av_map.shape == (2, 3, 3)
    with torch.no_grad():
        v_ref = p["v_fea"].mean(dim=(2, 3)) @ model.v_class_layer.weight.T + model.v_class_layer.bias
    torch.testing.assert_close(p["v_logits"], v_ref)
    assert p["a_logits"].shape == (2, 3)


@pytest.mark.parametrize("minimize", [True, False])
def test_stage_two_maps_match_the_literal_formulas(minimize):
    torch.manual_seed(2)
    model = create_model("dsol", stage=2, num_clusters=4, minimize=minimize)
    model.set_dictionary(torch.rand(4, 512))
    v_fea = torch.rand(2, 512, 3, 2, dtype=torch.float64)
    av_map = torch.rand(2, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        model.obj_conv.weight.fill_(0.01)
        model.obj_conv.bias.fill_(0.3)
        out = model.object_maps(v_fea, av_map)
    mask, logits, maps = literal_object_maps(
        v_fea.numpy(), av_map.numpy(), model.obj_rep.double().numpy(), 0.01, 0.3, minimize, 3.0)
    np.testing.assert_allclose(out["obj_mask"].numpy(), mask, rtol=1e-5)
    np.testing.assert_allclose(out["object_logits"].numpy(), logits, rtol=1e-5)
    np.testing.assert_allclose(out["class_maps"].numpy(), maps, rtol=1e-5, atol=1e-7)


def test_class_maps_are_a_distribution_over_k(stage_two_model):
    model = stage_two_model
    assert model.output_names == ("av_map", "class_maps", "object_logits")
    with torch.no_grad():
        av_map, class_maps, logits = model(*model.example_inputs(batch=3))
    assert av_map.shape == (3, 3, 3) and class_maps.shape == (3, 5, 3, 3) and logits.shape == (3, 5)
    torch.testing.assert_close(class_maps.sum(dim=1), torch.ones(3, 3, 3))
    assert float(class_maps.min()) >= 0.0 and float(class_maps.max()) <= 1.0
    assert float(av_map.min()) >= 0.0 and float(av_map.max()) <= 1.0


def test_stage_one_postprocess_reports_the_av_map():
    model = create_model("dsol", num_clusters=3, **SMALL)
    av = np.random.default_rng(0).random((3, 3)).astype(np.float32)
    sound_map, objects = model.postprocess({"av_map": av})
    np.testing.assert_array_equal(sound_map, av)
    assert len(objects) == 1
    np.testing.assert_array_equal(objects[0].map, av)
    assert objects[0].score == pytest.approx(float(av.max()))


def _stage_two_outputs(probs, k=4, hw=(3, 3), seed=0):
    rng = np.random.default_rng(seed)
    logits = np.log(np.asarray(probs, dtype=np.float64)) + 1.7  # softmax is shift-invariant
    maps = rng.random((k, *hw)).astype(np.float32)
    maps /= maps.sum(axis=0, keepdims=True)
    return {"av_map": rng.random(hw).astype(np.float32), "class_maps": maps,
            "object_logits": logits.astype(np.float32)}


def test_stage_two_postprocess_suppresses_silent_classes_by_probability():
    model = create_model("dsol", stage=2, num_clusters=4, sounding_threshold=0.2, **SMALL)
    model.set_dictionary(np.arange(4 * 512, dtype=np.float32).reshape(4, 512))
    out = _stage_two_outputs([0.1, 0.45, 0.05, 0.4])
    sound_map, objects = model.postprocess(out)
    np.testing.assert_array_equal(sound_map, out["av_map"])
    assert [round(o.score, 6) for o in objects] == [0.45, 0.4]  # classes 1 then 3, by probability
    np.testing.assert_array_equal(objects[0].map, out["class_maps"][1])
    np.testing.assert_array_equal(objects[1].map, out["class_maps"][3])
    np.testing.assert_array_equal(objects[0].vector, model.obj_rep[1].numpy())
    # everything silent -> no objects
    model.config.sounding_threshold = 0.9
    assert model.postprocess(out)[1] == []


def test_stage_two_postprocess_map_test_uses_the_nsa_threshold():
    model = create_model("dsol", stage=2, num_clusters=3, silent_test="map", **SMALL)
    # cells (0,0), (0,1), (1,0), (1,1); each column sums to 1 over the 3 classes
    maps = np.array([[0.70, 0.40, 0.40, 0.41],
                     [0.15, 0.20, 0.20, 0.19],  # class 1 never exceeds 0.2: silent (NSA: <= tau)
                     [0.15, 0.40, 0.40, 0.40]], np.float32).reshape(3, 2, 2)
    out = {"av_map": np.ones((2, 2), np.float32), "class_maps": maps,
           "object_logits": np.array([0.0, 5.0, -1.0], np.float32)}
    _, objects = model.postprocess(out)
    found = sorted(int(np.argmax([np.array_equal(o.map, m) for m in maps])) for o in objects)
    assert found == [0, 2]


def _official_layout(model: DSOL, rng: torch.Generator) -> dict[str, torch.Tensor]:
    """The model's weights written as the official Location_Net state dict (reference §4.7)."""
    state = {}
    for key, value in model.state_dict().items():
        if key == "obj_rep":
            continue  # the official code keeps the dictionary in a separate .npy
        if key == "audio_net.conv1.weight":
            state["audio_net.conv1_a.weight"] = value.clone()
            state["audio_net.conv1.weight"] = torch.randn(64, 3, 7, 7, generator=rng)
            continue
        state[key] = value.clone()
        if key == "visual_net.conv1.weight":
            state["visual_net.conv1_a.weight"] = torch.randn(64, 1, 7, 7, generator=rng)
    for net in ("visual_net", "audio_net"):
        state[f"{net}.fc.weight"] = torch.randn(1000, 512, generator=rng)
        state[f"{net}.fc.bias"] = torch.randn(1000, generator=rng)
    return state


def _randomise_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(1.0 + 0.2 * torch.rand(m.running_var.shape, generator=g))


@pytest.mark.parametrize("stage", [1, 2])
def test_from_official_round_trip(tmp_path, stage):
    torch.manual_seed(3)
    src = create_model("dsol", stage=stage, num_clusters=6, **SMALL)
    with torch.no_grad():
        _randomise_bn(src, 4)
        src.conv_av.weight.fill_(3.7)
        if stage == 2:
            src.set_dictionary(torch.rand(6, 512) * 0.05)
            src.obj_conv.weight.fill_(1.3)
            src.obj_conv.bias.fill_(0.2)
    src.eval()
    path = tmp_path / "location_cluster_net_010_0.700_av_class.pth"
    torch.save(_official_layout(src, torch.Generator().manual_seed(5)), path)
    dictionary = None
    if stage == 2:
        dictionary = tmp_path / "obj_feature_softmax_avg_fc_epoch_10_av_entire.npy"
        np.save(dictionary, src.obj_rep.numpy())
    state = load_foreign_state_dict(path)
    dst = DSOL.from_official(state, dictionary=dictionary, **SMALL)
    assert dst.config.stage == stage and dst.config.num_clusters == 6 and not dst.training
    inputs = src.example_inputs(batch=2)
    with torch.no_grad():
        for a, b in zip(src(*inputs), dst(*inputs)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the path form reads the file the same safe way
    again = DSOL.from_official(path, dictionary=dictionary, **SMALL)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_from_official_stage_two_needs_the_dictionary_and_refuses_bad_files():
    torch.manual_seed(6)
    src = create_model("dsol", stage=2, num_clusters=3, **SMALL)
    state = _official_layout(src, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="dictionary"):
        DSOL.from_official(state, **SMALL)
    with pytest.raises(ValueError, match="3 keys|num_clusters"):
        DSOL.from_official(state, dictionary=np.zeros((4, 512), np.float32), **SMALL)
    bad = dict(state)
    bad["conv_av.bias"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="AudioSet"):
        DSOL.from_official(bad, dictionary=np.zeros((3, 512)), **SMALL)
    bad = {k: v for k, v in state.items() if k != "fc_a_2.weight"}
    with pytest.raises(CheckpointError, match="fc_a_2.weight"):
        DSOL.from_official(bad, dictionary=np.zeros((3, 512)), **SMALL)
    # no num_batches_tracked (old PyTorch) and a DataParallel prefix are accepted
    old = {"module." + k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = DSOL.from_official(old, dictionary=np.zeros((3, 512)), **SMALL)
    assert model.config.stage == 2
    # a stage-one file can start stage two (obj_conv keeps its fresh init)
    one = {k: v for k, v in state.items() if not k.startswith("obj_conv")}
    assert DSOL.from_official(one, dictionary=np.ones((3, 512)), stage=2, **SMALL).config.stage == 2
    assert DSOL.from_official(one, **SMALL).config.stage == 1


def test_stage_two_from_stage_one_and_streamloc_checkpoint(tmp_path):
    torch.manual_seed(7)
    one = create_model("dsol", num_clusters=3, **SMALL)
    dictionary = np.random.default_rng(0).random((3, 512)).astype(np.float32)
    two = one.stage_two(dictionary, sounding_threshold=0.3)
    assert two.config.stage == 2 and two.config.sounding_threshold == 0.3
    for k, v in one.state_dict().items():
        assert torch.equal(v, two.state_dict()[k]), k
    np.testing.assert_array_equal(two.obj_rep.numpy(), dictionary)
    with pytest.raises(ValueError, match="stage_two"):
        one.set_dictionary(dictionary)
    with pytest.raises(ValueError, match="shape"):
        two.set_dictionary(np.zeros((3, 256)))
    with pytest.raises(ValueError, match="NaN"):
        two.set_dictionary(np.full((3, 512), np.nan))
    path = tmp_path / "dsol.safetensors"
    save_checkpoint(two, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, DSOL) and loaded.config.stage == 2
    np.testing.assert_array_equal(loaded.obj_rep.numpy(), dictionary)  # the dictionary travels
    inputs = two.example_inputs()
    with torch.no_grad():
        for a, b in zip(two.eval()(*inputs), loaded(*inputs)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("options, match", [
    ({"stage": 3}, "stage"),
    ({"num_clusters": 0}, "num_clusters"),
    ({"silent_test": "loud"}, "silent_test"),
    ({"sounding_threshold": 1.5}, "sounding_threshold"),
    ({"map_scale": 0.0}, "map_scale"),
])
def test_config_validation(options, match):
    with pytest.raises(ValueError, match=match):
        DSOLConfig(**options)


def test_convert_checkpoint_cli_path(tmp_path):
    """`streamloc convert --from dsol` through the generic converter, stage two with a dictionary."""
    import numpy as np

    from streamloc.models.checkpoint import load_checkpoint
    from streamloc.models.convert import convert_checkpoint

    torch.manual_seed(3)
    model = create_model("dsol", stage=2, num_clusters=5).eval()
    dictionary = torch.randn(5, 512)
    model.set_dictionary(dictionary)
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "obj_rep"}
    state["audio_net.conv1_a.weight"] = state.pop("audio_net.conv1.weight")
    state["visual_net.fc.weight"] = torch.randn(1000, 512)
    torch.save(state, tmp_path / "stage_two.pth")
    np.save(tmp_path / "dict.npy", dictionary.numpy())
    report = convert_checkpoint("dsol", tmp_path / "stage_two.pth", tmp_path / "dsol.safetensors",
                                dictionary=str(tmp_path / "dict.npy"))
    assert "visual_net.fc.weight" in report["dropped"]
    converted = load_checkpoint(tmp_path / "dsol.safetensors")
    inputs = model.example_inputs()
    with torch.no_grad():
        for a, b in zip(model(*inputs), converted(*inputs)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
