"""EZ-VSL (Mo & Morgado, ECCV 2022): audio-visual similarity map + object-guided localization.

Inference as the paper (Sec. 3.3, Eq. 9) and the official test script: the audio-visual map
S_AVL = <img(p), aud> (cosine; the official code divides by tau, which min-max removes) and an
audio-blind object prior S_OBJ = mean_c |f_obj(p)| from an untouched ImageNet network, blended as
minmax(alpha * minmax(S_AVL) + (1 - alpha) * minmax(S_OBJ)) with alpha = 0.4. EZ-VSL is a
single-source method: it reports one object per tick.

Module names follow the official checkpoints (`imgnet`, `img_proj`, `audnet`, `aud_proj`), so an
official state dict maps onto this model by stripping its `module.` prefix.

>>> from streamloc.models import create_model
>>> model = create_model("ezvsl", object_prior="none").eval()
>>> images, specs = model.example_inputs()
>>> avl, prior = model(images, specs)
>>> tuple(avl.shape)
(1, 7, 7)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamloc.models.base import GridObject, LocalizationModel, ModelConfig, minmax
from streamloc.models.common import (
    ObjectPrior,
    build_visual,
    freeze_,
    global_max_pool,
    init_official_,
)
from streamloc.models.encoders import ResNet18
from streamloc.models.registry import register_model

OBJECT_PRIORS = ("none", "efficientnet_lite0", "resnet18")


@dataclass
class EZVSLConfig(ModelConfig):
    """EZ-VSL options (defaults: the paper's and the official scripts')."""

    visual_backbone: str = "resnet18"
    visual_weights: str | None = None  # torchvision resnet18 .pth for ImageNet init (not bundled)
    freeze_visual: bool = False  # keep the (pretrained) visual backbone fixed, BatchNorm in eval mode
    dim: int = 512
    tau: float = 0.03
    object_prior: str = "efficientnet_lite0"
    object_prior_weights: str | None = None  # only for object_prior="resnet18"
    alpha: float = 0.4

    def __post_init__(self) -> None:
        if self.object_prior not in OBJECT_PRIORS:
            raise ValueError(f"object_prior must be one of {OBJECT_PRIORS}, got {self.object_prior!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


@register_model
class EZVSL(LocalizationModel):
    method = "ezvsl"
    config_class = EZVSLConfig
    output_names = ("avl", "prior")

    def __init__(self, config: EZVSLConfig):
        super().__init__(config)
        self.imgnet, channels = build_visual(config.visual_backbone, config.visual_weights)
        self.img_proj = nn.Conv2d(channels, config.dim, kernel_size=1)
        self.audnet = ResNet18(in_channels=1)
        self.aud_proj = nn.Linear(512, config.dim)
        init_official_(self.audnet, self.img_proj, self.aud_proj)
        if config.freeze_visual:
            freeze_(self.imgnet)
        self.objnet = None
        if config.object_prior != "none":
            self.objnet = freeze_(ObjectPrior(config.object_prior, config.object_prior_weights))

    def external_prefixes(self) -> tuple[str, ...]:
        c = self.config
        prefixes = ("objnet.",) if c.object_prior == "efficientnet_lite0" else ()
        if c.freeze_visual and c.visual_backbone == "efficientnet_lite0":
            prefixes += ("imgnet.",)  # the packaged ImageNet weights, untouched
        return prefixes

    def train(self, mode: bool = True) -> "EZVSL":
        super().train(mode)
        if self.config.freeze_visual:
            self.imgnet.eval()  # frozen BatchNorm statistics stay those of the pretrained net
        return self

    def embed(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised visual map (B, dim, h, w) and audio vector (B, dim), as trained."""
        img = F.normalize(self.img_proj(self.imgnet(images)), dim=1)
        aud = F.normalize(self.aud_proj(global_max_pool(self.audnet(spectrograms))), dim=1)
        return img, aud

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img, aud = self.embed(images, spectrograms)
        avl = torch.einsum("bchw,bc->bhw", img, aud)
        if self.objnet is None:
            prior = torch.zeros_like(avl)
        else:
            prior = self.objnet(images, size=tuple(avl.shape[-2:]))
        return avl, prior

    def postprocess(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[GridObject]]:
        avl = outputs["avl"]
        if self.objnet is None:
            blended = minmax(avl)
        else:
            a = self.config.alpha
            blended = minmax(a * minmax(avl) + (1.0 - a) * minmax(outputs["prior"]))
        return avl, [GridObject(map=blended, score=float(avl.max()))]


def from_official(obj, **_) -> tuple[dict, dict, dict]:
    """Official EZ-VSL checkpoint (`{'model': state_dict, 'optimizer', 'epoch', ...}`, keys
    `module.`-prefixed under DDP; reference §1.6) → (config, state dict, notes)."""
    from streamloc.models.convert import unwrap_state_dict

    state = unwrap_state_dict(obj, containers=("model", "state_dict"))
    dim = int(state["img_proj.weight"].shape[0]) if "img_proj.weight" in state else 512
    notes = {"notes": [
        "object prior: the official test script uses a separate untouched ImageNet ResNet-18, whose "
        "weights are not bundled; the converted model uses the EfficientNet-Lite0 ImageNet prior "
        "(pass config={'object_prior': 'resnet18', 'object_prior_weights': PATH} to match exactly)",
    ], "dropped": []}
    return {"dim": dim}, state, notes
