"""Mix-and-Localize (Hu, Chen & Owens, CVPR 2022): k audio embeddings per mixture, k cosine maps.

Architecture (paper Sec. 4.1, reference §3.2):

* ``vision_model``: ResNet-18 whose layer4 keeps stride 1 (total stride 16: 14×14 at 224²), then
  ``conv_v_1`` (1×1, 512→dim) → ReLU → ``conv_v_2`` (1×1, dim→dim) → L2 over channels: f(x_p).
* ``aud_model``: a 1-channel ResNet-18 with the same strides on the (T, 64) log-mel image of a
  0.96-s 16-kHz window (193×64 → 13×4), global max pooling → 512, then ``num_sources`` separate
  heads ``fc_a_1 … fc_a_k`` (Linear 512→dim, ReLU, Linear dim→dim), each L2-normalised: s_1 … s_k.
* Per-source map (Sec. 3, "after training, the dot products f(x_i)ᵀ g(s_j) convey the location
  of each of the k sound sources"): ``maps[b, t] = <f(x_p), s_t>``, a cosine in [-1, 1].

Which map belongs to which source is not known (the paper evaluates permutation-invariantly), so
``postprocess`` reports all k maps as objects, scored by their maxima, and the sound map as their
element-wise maximum. The official net's ``conv_av`` (a 1×1 conv on the similarity maps that no
loss ever uses, so it keeps its random initialisation) is not part of this model.

Module names follow the official checkpoints (reference §3.6); :func:`from_official` converts them.
The training loss (cycle-consistent random walk) lives in ``training/methods/mixloc.py``.

>>> from streamloc.models import create_model
>>> model = create_model("mixloc", image={"size": (64, 64)}).eval()
>>> (maps,) = model(*model.example_inputs(batch=2))
>>> tuple(maps.shape)
(2, 2, 4, 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamloc.features import AudioFrontendConfig
from streamloc.models.base import GridObject, LocalizationModel, ModelConfig
from streamloc.models.common import build_visual, global_max_pool
from streamloc.models.encoders import ResNet18
from streamloc.models.registry import register_model

__all__ = ["MixLocConfig", "MixLoc", "from_official"]


def _mixloc_audio() -> AudioFrontendConfig:
    return AudioFrontendConfig(kind="logmel", sample_rate=16000, window_seconds=0.96)


@dataclass
class MixLocConfig(ModelConfig):
    """Mix-and-Localize options; defaults are the paper's and the official code's.

    ``audio``: 64-band log-mel of 0.96 s at 16 kHz (193×64). ``visual_backbone``:
    ``"resnet18_s16"`` (14×14 maps at 224²); ``visual_weights`` an optional torchvision ResNet-18
    ImageNet file (the official vision net starts from ImageNet; not bundled). ``dim``: embedding
    size C = 128. ``num_sources``: k = 2 audio nodes. ``temperature``: τ = 0.07 of the random
    walk (used by the training loss only; the maps are plain cosines).
    """

    audio: AudioFrontendConfig = field(default_factory=_mixloc_audio)
    visual_backbone: str = "resnet18_s16"
    visual_weights: str | None = None
    dim: int = 128
    num_sources: int = 2
    temperature: float = 0.07

    def __post_init__(self) -> None:
        if not isinstance(self.num_sources, int) or self.num_sources < 1:
            raise ValueError(f"num_sources must be a positive integer, got {self.num_sources!r}")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.audio.kind != "logmel":
            raise ValueError(
                f"Mix-and-Localize's audio network takes the log-mel spectrogram (audio.kind="
                f"'logmel'), got audio.kind={self.audio.kind!r}"
            )


def _audio_head(dim: int) -> nn.Sequential:
    # Indices 0 and 2 hold the weights, as the official `fc_a_i.{0,2}.*` keys.
    return nn.Sequential(nn.Linear(512, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


@register_model
class MixLoc(LocalizationModel):
    """Mix-and-Localize: ``forward(images, spectrograms) -> (maps,)`` with maps (B, k, h, w)."""

    method = "mixloc"
    config_class = MixLocConfig
    output_names = ("maps",)

    def __init__(self, config: MixLocConfig):
        super().__init__(config)
        self.vision_model, channels = build_visual(config.visual_backbone, config.visual_weights)
        self.conv_v_1 = nn.Conv2d(channels, config.dim, kernel_size=1)
        self.conv_v_2 = nn.Conv2d(config.dim, config.dim, kernel_size=1)
        # Same ResNet variant as the vision net (layer4 stride 1), 1-channel input: the official
        # `conv1_a`. Kaiming-normal (fan_out) convs and BN (1, 0), as the official init.
        self.aud_model = ResNet18(in_channels=1, layer4_stride=1)
        self.head_names = tuple(f"fc_a_{i + 1}" for i in range(config.num_sources))
        for name in self.head_names:
            self.add_module(name, _audio_head(config.dim))

    def external_prefixes(self) -> tuple[str, ...]:
        return ()

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised visual embeddings f(x_p): (B, dim, h, w)."""
        v = self.conv_v_2(F.relu(self.conv_v_1(self.vision_model(images))))
        return F.normalize(v, dim=1)

    def embed_audio(self, spectrograms: torch.Tensor) -> torch.Tensor:
        """The k L2-normalised audio node embeddings s_1 … s_k of each spectrogram: (B, k, dim)."""
        a = global_max_pool(self.aud_model(spectrograms))
        nodes = [getattr(self, name)(a) for name in self.head_names]
        return F.normalize(torch.stack(nodes, dim=1), dim=2)

    @staticmethod
    def similarity_maps(img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        """maps[b, t, i, j] = <img[b, :, i, j], aud[b, t]>: (B, k, h, w)."""
        return torch.einsum("bchw,btc->bthw", img, aud)

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.similarity_maps(self.embed_images(images), self.embed_audio(spectrograms)),)

    def postprocess(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[GridObject]]:
        maps = np.asarray(outputs["maps"], dtype=np.float32)  # (k, h, w)
        sound_map = maps.max(axis=0)
        objects = [GridObject(map=m, score=float(m.max())) for m in maps]
        return sound_map, objects


# ------------------------------------------------------------------------------------------------
# Official checkpoints
# ------------------------------------------------------------------------------------------------


def _is_dropped(key: str) -> bool:
    parts = key.split(".")
    return (
        parts[0] in ("stft", "conv_av")
        or "fc" in parts  # the unused classifier of both ResNets (not fc_a_*)
        or key.startswith(("aud_model.conv1.", "vision_model.conv1_a."))
    )


def from_official(obj, **_) -> tuple[dict, dict, dict]:
    """Official Mix-and-Localize checkpoint → (config, state dict, notes).

    Reads ``{'epoch', 'state_dict', 'optimizer'}`` (or a bare state dict), strips the
    DataParallel ``module.`` prefix, and maps the keys of reference §3.6 onto :class:`MixLoc`:

    * dropped: ``stft.*`` (the torchaudio window and mel filterbank buffers; the ``logmel``
      frontend recomputes them), ``conv_av.*`` (never trained), ``aud_model.fc.*`` and
      ``vision_model.fc.*`` (unused classifiers), ``aud_model.conv1.*`` (the audio net's unused
      RGB stem) and ``vision_model.conv1_a.*`` (the vision net's unused 1-channel stem);
    * renamed: ``aud_model.conv1_a.*`` → ``aud_model.conv1.*``;
    * everything else (``vision_model.*``, ``aud_model.*``, ``conv_v_{1,2}.*``,
      ``fc_a_i.{0,2}.*``) keeps its name.

    ``config`` carries ``dim`` and ``num_sources`` read from the tensors; ``notes`` has
    ``dropped`` (sorted original names, after the prefix strip), ``renamed`` and ``notes``.
    """
    from streamloc.models.convert import unwrap_state_dict
    from streamloc.features import mel_filterbank

    state = unwrap_state_dict(obj, containers=("state_dict", "model"), prefixes=("module.",))
    dropped = sorted(k for k in state if _is_dropped(k))
    out: dict[str, torch.Tensor] = {}
    renamed: list[str] = []
    for key, value in state.items():
        if _is_dropped(key):
            continue
        if key.startswith("aud_model.conv1_a."):
            new = "aud_model.conv1." + key[len("aud_model.conv1_a."):]
            renamed.append(f"{key} -> {new}")
            key = new
        out[key] = value

    config: dict = {}
    if "conv_v_1.weight" in out:
        config["dim"] = int(out["conv_v_1.weight"].shape[0])
    heads = {k.split(".")[0] for k in out if k.startswith("fc_a_")}
    if heads:
        config["num_sources"] = len(heads)

    notes: list[str] = []
    if any(k.startswith("conv_av.") for k in dropped):
        notes.append("conv_av dropped: it is never trained by the official loss; the maps are the "
                     "raw cosine similarities of the paper")
    fb = state.get("stft.0.mel_scale.fb")
    if fb is not None:
        ours = mel_filterbank(81, 16000, 64, 0.0, 8000.0)
        if tuple(fb.shape) != ours.shape or not np.allclose(fb.double().numpy(), ours, atol=1e-5):
            notes.append("the checkpoint's mel filterbank (stft.0.mel_scale.fb) differs from the "
                         "logmel frontend's HTK filterbank (81x64, 0-8000 Hz)")
    return config, out, {"dropped": dropped, "renamed": sorted(renamed), "notes": notes}
