"""Tests of the ResNet-18 and EfficientNet-Lite0 backbones (encoders.py, efficientnet_lite.py)."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from streamloc.errors import CheckpointError, InputError
from streamloc.models.efficientnet_lite import (
    EfficientNetLite0,
    efficientnet_lite0,
    packaged_efficientnet_lite0_path,
)
from streamloc.models.encoders import (
    RESNET18_WEIGHTS_FILE,
    ResNet18,
    create_visual_encoder,
    load_torchvision_resnet18,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@pytest.fixture(autouse=True)
def _two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------------------- ResNet18


@pytest.mark.parametrize(
    ("kwargs", "shape", "expected"),
    [
        ({}, (1, 3, 224, 224), (1, 512, 7, 7)),
        ({"layer4_stride": 1}, (1, 3, 224, 224), (1, 512, 14, 14)),
        ({"in_channels": 1}, (1, 1, 257, 200), (1, 512, 9, 7)),  # 3 s at 16 kHz
        ({"in_channels": 1}, (1, 1, 257, 276), (1, 512, 9, 9)),  # 3 s at 22.05 kHz
        ({"in_channels": 1, "bn_weight_std": 0.02}, (2, 1, 257, 276), (2, 512, 9, 9)),
        ({"in_channels": 2}, (1, 2, 224, 224), (1, 512, 7, 7)),
    ],
)
def test_resnet18_output_shapes(kwargs, shape, expected):
    net = ResNet18(**kwargs).eval()
    with torch.no_grad():
        assert tuple(net(torch.randn(shape)).shape) == expected


def _expected_resnet18_keys(in_channels: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    """torchvision resnet18 state-dict keys and shapes (minus fc), written from the architecture."""
    bn_suffixes = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
        return [(f"{prefix}.{s}", () if s == "num_batches_tracked" else (c,)) for s in bn_suffixes]

    keys = [("conv1.weight", (64, in_channels, 7, 7)), *bn("bn1", 64)]
    widths = {1: (64, 64), 2: (64, 128), 3: (128, 256), 4: (256, 512)}
    for layer, (cin, cout) in widths.items():
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            first_in = cin if block == 0 else cout
            keys += [(f"{p}.conv1.weight", (cout, first_in, 3, 3)), *bn(f"{p}.bn1", cout)]
            keys += [(f"{p}.conv2.weight", (cout, cout, 3, 3)), *bn(f"{p}.bn2", cout)]
            if block == 0 and layer > 1:
                keys += [(f"{p}.downsample.0.weight", (cout, cin, 1, 1))]
                keys += bn(f"{p}.downsample.1", cout)
    return keys


@pytest.mark.parametrize("layer4_stride", [2, 1])
@pytest.mark.parametrize("in_channels", [3, 1])
def test_resnet18_state_dict_names_match_torchvision(in_channels, layer4_stride):
    net = ResNet18(in_channels=in_channels, layer4_stride=layer4_stride)
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == _expected_resnet18_keys(in_channels)


def test_resnet18_parameter_count_and_layout():
    net = ResNet18()
    assert sum(p.numel() for p in net.parameters()) == 11_176_512
    assert sum(p.numel() for p in ResNet18(in_channels=1).parameters()) == 11_176_512 - 2 * 64 * 49
    s16 = ResNet18(layer4_stride=1)
    assert s16.layer4[0].conv1.stride == (1, 1)
    assert s16.layer4[0].downsample[0].stride == (1, 1)
    assert (net.stride, s16.stride) == (32, 16)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert (m.eps, m.momentum) == (1e-5, 0.1)
        if isinstance(m, torch.nn.Conv2d):
            assert m.bias is None


@pytest.mark.parametrize(("std", "is_ones"), [(0.0, True), (0.02, False)])
def test_resnet18_bn_init(std, is_ones):
    torch.manual_seed(0)
    net = ResNet18(in_channels=1, bn_weight_std=std)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in bns])
    biases = torch.cat([m.bias.detach() for m in bns])
    assert torch.all(biases == 0)
    assert bool(torch.all(weights == 1)) is is_ones
    if not is_ones:
        assert abs(weights.mean().item() - 1.0) < 0.005
        assert 0.015 < weights.std().item() < 0.025
    # Kaiming-normal fan_out: std of conv1 = sqrt(2 / (64 * 7 * 7)).
    assert net.conv1.weight.std().item() == pytest.approx((2 / (64 * 49)) ** 0.5, rel=0.1)


def test_resnet18_rejects_wrong_input():
    with pytest.raises(InputError, match="in_channels=1"):
        ResNet18(in_channels=1)(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="layer4_stride"):
        ResNet18(layer4_stride=4)


def _torchvision_style_file(tmp_path, *, with_nbt: bool = True):
    torch.manual_seed(1)
    src = ResNet18(bn_weight_std=0.1)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    for k, v in state.items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            v.uniform_(0.5, 1.5)
    if not with_nbt:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / RESNET18_WEIGHTS_FILE
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("with_nbt", [True, False])
@pytest.mark.parametrize("layer4_stride", [2, 1])
def test_load_torchvision_resnet18_round_trip(tmp_path, with_nbt, layer4_stride):
    path, state = _torchvision_style_file(tmp_path, with_nbt=with_nbt)
    net = load_torchvision_resnet18(ResNet18(layer4_stride=layer4_stride), path)
    loaded = net.state_dict()
    for k, v in state.items():
        if k.startswith("fc."):
            assert k not in loaded
        else:
            assert torch.equal(loaded[k], v), k


def test_create_visual_encoder_loads_resnet_path(tmp_path):
    path, state = _torchvision_style_file(tmp_path)
    enc, channels, stride = create_visual_encoder("resnet18", pretrained=str(path))
    assert (channels, stride) == (512, 32)
    assert torch.equal(enc.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_load_torchvision_resnet18_refuses_pickle(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": object.__new__(_NotATensor), "note": "x"}, path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_torchvision_resnet18(ResNet18(), path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_NotATensor(), protocol=2))
    with pytest.raises(CheckpointError, match="pickle"):
        load_torchvision_resnet18(ResNet18(), raw)


class _NotATensor:
    pass


def test_load_torchvision_resnet18_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not bundled") as info:
        load_torchvision_resnet18(ResNet18(), tmp_path / "nope.pth")
    assert RESNET18_WEIGHTS_FILE in str(info.value)
    with pytest.raises(CheckpointError, match=RESNET18_WEIGHTS_FILE):
        create_visual_encoder("resnet18", pretrained=True)


def test_load_torchvision_resnet18_wrong_keys_and_channels(tmp_path):
    path, state = _torchvision_style_file(tmp_path)
    del state["layer3.0.downsample.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_torchvision_resnet18(ResNet18(), bad)
    with pytest.raises(CheckpointError, match="in_channels=1"):
        load_torchvision_resnet18(ResNet18(in_channels=1), path)
    audio = ResNet18(in_channels=2)
    conv1 = audio.conv1.weight.detach().clone()
    load_torchvision_resnet18(audio, path, fresh_conv1=True)
    assert torch.equal(audio.conv1.weight, conv1)
    assert torch.equal(audio.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


# ------------------------------------------------------------------------------ EfficientNet-Lite0


@pytest.fixture(scope="module")
def packaged_state():
    return torch.load(packaged_efficientnet_lite0_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0():
    torch.set_num_threads(2)
    return efficientnet_lite0(pretrained=True)


def test_efficientnet_lite0_keys_match_package_exactly(packaged_state):
    net = EfficientNetLite0()
    own = net.state_dict()
    assert len(packaged_state) == 296
    assert list(own) == list(packaged_state)
    assert all(own[k].shape == packaged_state[k].shape for k in own)
    result = net.load_state_dict(packaged_state, strict=True)
    assert (len(result.missing_keys), len(result.unexpected_keys)) == (0, 0)
    assert sum(p.numel() for p in net.parameters()) == 4_652_008


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    bgr = cv2.resize(bgr, (224, 224), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    x = (rgb - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


@pytest.mark.parametrize(
    ("image", "top1", "min_p"),
    [("chelsea", 285, 0.6), ("coffee", 967, 0.6)],  # measured 0.777 and 0.832 (same padding)
)
def test_efficientnet_lite0_classifies_real_photos(lite0, image, top1, min_p):
    with torch.no_grad():
        probs = lite0(_imagenet_input(getattr(skdata, image)())).softmax(-1)[0]
    top_p, top_i = probs.topk(3)
    assert int(top_i[0]) == top1
    assert float(top_p[0]) > min_p
    if image == "chelsea":  # 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat
        assert set(top_i.tolist()) <= set(range(281, 286))


def test_efficientnet_lite0_random_init_is_near_uniform():
    torch.manual_seed(1234)
    net = EfficientNetLite0().eval()
    with torch.no_grad():
        probs = net(_imagenet_input(skdata.chelsea())).softmax(-1)
    assert probs.max().item() < 0.05


def test_efficientnet_lite0_padding_modes_differ_but_both_classify(lite0, packaged_state):
    sym = EfficientNetLite0(padding="symmetric").eval()
    sym.load_state_dict(packaged_state, strict=True)
    x = _imagenet_input(skdata.coffee())
    with torch.no_grad():
        a, b = lite0(x), sym(x)
    assert not torch.allclose(a, b, atol=1e-3)
    assert int(a.argmax()) == int(b.argmax()) == 967


@pytest.mark.parametrize(("size", "grid"), [(224, 7), (160, 5), (225, 8)])
def test_efficientnet_lite0_forward_features_shape(lite0, size, grid):
    with torch.no_grad():
        feats = lite0.forward_features(torch.randn(1, 3, size, size))
    assert tuple(feats.shape) == (1, 1280, grid, grid)
    assert feats.min().item() >= 0.0 and feats.max().item() <= 6.0  # ReLU6


def test_efficientnet_lite0_headless_and_bad_input(packaged_state):
    head = efficientnet_lite0(pretrained=True, num_classes=None)
    assert not any(k.startswith("_fc.") for k in head.state_dict())
    assert torch.equal(head._conv_head.weight, packaged_state["_conv_head.weight"])
    with pytest.raises(InputError):
        head(torch.zeros(1, 1, 224, 224))


@pytest.mark.parametrize(
    ("name", "pretrained", "channels", "stride", "grid"),
    [
        ("resnet18", None, 512, 32, 7),
        ("resnet18_s16", None, 512, 16, 14),
        ("efficientnet_lite0", False, 1280, 32, 7),
        ("efficientnet_lite0", True, 1280, 32, 7),
    ],
)
def test_create_visual_encoder(name, pretrained, channels, stride, grid):
    enc, c, s = create_visual_encoder(name, pretrained=pretrained)
    assert (c, s) == (channels, stride)
    with torch.no_grad():
        out = enc.eval()(torch.randn(1, 3, 224, 224))
    assert tuple(out.shape) == (1, channels, grid, grid)


def test_create_visual_encoder_unknown_name():
    with pytest.raises(ValueError, match="resnet18, resnet18_s16, efficientnet_lite0"):
        create_visual_encoder("vgg16")
