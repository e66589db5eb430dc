"""IOI/OSC, "no prior" (Kim et al., CVPR 2024): multi-source localization without knowing how many.

The encoder pair gives the sound-associated map S_v = cos(F_v(p), l_a) (Sec. 3.2), the
sound-associated features F̂_v = F_v * S_v (Sec. 3.3) and the background vector E_n: the mean over
all cells of F̂_v weighted by the negative mask 1 - sigmoid((S_v - eps_neg) / sigma), divided by the
number of cells as the official code does (reference §5.3). The data-dependent Iterative Object
Identification + union-find step (`streamloc.ioi`) then splits S_v into K objects, K unknown.

Not implemented: the official code's optical-flow attention (HTF); the visual map here is the
L2-normalised backbone map, as in the paper's Sec. 3.

>>> from streamloc.models import create_model
>>> model = create_model("noprior").eval()
>>> images, specs = model.example_inputs()
>>> sound_map, features, background = model(images, specs)
>>> tuple(sound_map.shape), tuple(features.shape), tuple(background.shape)
((1, 7, 7), (1, 512, 7, 7), (1, 512))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamloc import ioi
from streamloc.features import AudioFrontendConfig
from streamloc.models.base import GridObject, LocalizationModel, ModelConfig
from streamloc.models.common import build_visual, freeze_, global_max_pool, init_official_
from streamloc.models.encoders import ResNet18
from streamloc.models.registry import register_model


@dataclass
class NoPriorConfig(ModelConfig):
    """NoPrior options. Defaults follow the official code (reference §5.2-5.3): 22.05 kHz audio
    (the official model was trained on it), eps 0.65 / margin 0.25 trimap, sigmoid sharpness 0.03,
    logit temperature 0.07, IOI stop 0.1, tau1 0.7, tau2 0.6, the official distance rule."""

    audio: AudioFrontendConfig = field(default_factory=lambda: AudioFrontendConfig(sample_rate=22050))
    visual_backbone: str = "resnet18"
    visual_weights: str | None = None
    freeze_visual: bool = False
    proj_dim: int | None = None  # 1x1 / linear projections to this size; needed when channels differ
    eps_pos: float = 0.65
    eps_neg: float = 0.40
    sigma: float = 0.03
    logit_temperature: float = 0.07
    ioi_eps: float = 0.1
    tau1: float = 0.7
    tau2: float = 0.6
    ioi_rule: str = "official"

    def __post_init__(self) -> None:
        if self.ioi_rule not in ioi.RULES:
            raise ValueError(f"ioi_rule must be one of {ioi.RULES}, got {self.ioi_rule!r}")


@register_model
class NoPrior(LocalizationModel):
    method = "noprior"
    config_class = NoPriorConfig
    output_names = ("sound_map", "features", "background")

    def __init__(self, config: NoPriorConfig):
        super().__init__(config)
        self.imgnet, channels = build_visual(config.visual_backbone, config.visual_weights)
        if config.proj_dim is None and channels != 512:
            config.proj_dim = 512
        self.audnet = ResNet18(in_channels=1)
        self.img_proj: nn.Module | None = None
        self.aud_proj: nn.Module | None = None
        if config.proj_dim is not None:
            self.img_proj = nn.Conv2d(channels, config.proj_dim, kernel_size=1)
            self.aud_proj = nn.Linear(512, config.proj_dim)
        init_official_(*(m for m in (self.audnet, self.img_proj, self.aud_proj) if m is not None))
        if config.freeze_visual:
            freeze_(self.imgnet)

    def external_prefixes(self) -> tuple[str, ...]:
        frozen_package = self.config.freeze_visual and self.config.visual_backbone == "efficientnet_lite0"
        return ("imgnet.",) if frozen_package else ()

    def train(self, mode: bool = True) -> "NoPrior":
        super().train(mode)
        if self.config.freeze_visual:
            self.imgnet.eval()  # frozen BatchNorm statistics stay those of the pretrained net
        return self

    def embed(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised visual map F_v (B, C, h, w) and audio vector l_a (B, C)."""
        v = self.imgnet(images)
        a = global_max_pool(self.audnet(spectrograms))
        if self.img_proj is not None:
            v = self.img_proj(v)
            a = self.aud_proj(a)
        return F.normalize(v, dim=1), F.normalize(a, dim=1)

    def heads(self, img: torch.Tensor, aud: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """S_v (B, h, w), F̂_v (B, C, h, w) and E_n (B, C) from embedded features."""
        sound_map = torch.einsum("bchw,bc->bhw", img, aud)
        neg = 1.0 - torch.sigmoid((sound_map - self.config.eps_neg) / self.config.sigma)
        features = img * sound_map.unsqueeze(1)
        background = (features * neg.unsqueeze(1)).mean(dim=(2, 3))
        return sound_map, features, background

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.heads(*self.embed(images, spectrograms))

    def postprocess(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[GridObject]]:
        c = self.config
        groups = ioi.identify_objects(
            outputs["sound_map"], outputs["features"], outputs["background"],
            eps=c.ioi_eps, tau1=c.tau1, tau2=c.tau2, rule=c.ioi_rule,
        )
        objects = [
            GridObject(map=g.map, score=g.score, cells=g.cells, vector=g.vectors.mean(axis=0))
            for g in groups
        ]
        return outputs["sound_map"], objects


def from_official(obj, **_) -> tuple[dict, dict, dict]:
    """Official NoPrior checkpoint → (config, state dict, notes).

    Accepts the Lightning `.ckpt` (`state_dict` with `model.` prefixes; its `hyper_parameters`
    Namespace needs `--trust-pickle`) and the `.pth` with a `model` key (reference §5.7). The
    optical-flow branch (`flownet.*`, `flowatt.*`) is dropped: this model has no flow input.
    """
    from streamloc.models.convert import unwrap_state_dict

    state = unwrap_state_dict(obj, containers=("state_dict", "model"), prefixes=("module.", "model."))
    dropped = sorted(k for k in state if k.startswith(("flownet.", "flowatt.")))
    state = {k: v for k, v in state.items() if k not in set(dropped)}
    notes = {"dropped": dropped, "notes": []}
    if dropped:
        notes["notes"].append("optical-flow attention dropped: maps differ from the official flow model")
    return {"audio": {"sample_rate": 22050}}, state, notes
