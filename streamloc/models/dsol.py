"""DSOL, "Discriminative Sounding Objects Localization" (Hu et al., NeurIPS 2020).

Two stages, one model class (``DSOLConfig.stage``):

* **Stage one** (single-source audio-visual correspondence, paper Sec. 3.1, Eq. 1): a ResNet-18
  with ``layer4`` stride 1 (14×14 at 224²) gives the visual map ``f(v)``; a 1-channel ResNet-18
  on the log-mel spectrogram, global max-pooled, gives ``a_fea`` (512). Heads as the official code
  (reference §4.2): visual 1×1 conv 512→128, ReLU, 1×1 conv 128→128 (no ReLU after); audio Linear
  512→128, ReLU, Linear 128→128. Both L2-normalised, the cosine map goes through ``conv_av`` (a
  bias-free 1×1 conv, i.e. a learned scalar, initialised to 5.0) and a sigmoid:
  ``av_map = sigmoid(w · cos(v(p), a))`` (B, h, w). Classification heads ``v_class_layer`` (on the
  average-pooled ``f(v)``) and ``a_class_layer`` (on ``a_fea``), Linear 512→K, are trained on the
  k-means pseudo labels (``training.methods.dsol``); they are not part of ``forward``.
* **Stage two** (cocktail party, Sec. 3.2, Eqs. 4-6): the object dictionary ``D`` (K×512, the
  per-cluster means of stage one's masked object features) is the registered buffer ``obj_rep``,
  saved with the model. Per class ``k`` and cell ``p``:
  ``obj_mask_k(p) = obj_conv(<f(v)(p), d_k>)`` (raw dot product, ``obj_conv`` a scalar affine
  ``α x + β``, the official Conv3d 1×1×1), multiplied by ``av_map(p)`` when ``minimize`` (the
  paper's "Prod" silent-area suppression, always on in the official scripts). Sounding-object
  logits = spatial mean of ``obj_mask`` (B, K) (Eq. 6 before its softmax); class maps =
  ``softmax_k(3 · obj_mask)`` as the official inference does (``map_scale``).

``forward(images, spectrograms)`` returns ``(av_map,)`` in stage one and
``(av_map, class_maps, object_logits)`` in stage two (see ``output_names``). ``postprocess``
(live, no labels) reports one object (the ``av_map``) in stage one; in stage two one object per
class channel that passes the silent-object test (``silent_test``):

* ``"probability"`` (default): the sounding-object distribution ``softmax(object_logits)``
  (Eq. 6) gives the class at least ``sounding_threshold``;
* ``"map"``: the class map rises above ``silent_map_threshold`` somewhere (the no-sound-area
  test of the paper's NSA metric, τ = 0.2 on the softmax maps).

Each object's map is its class map, its score the class probability, its vector the dictionary
key ``d_k``.

Audio features: the default front-end is the library's ``"logmel"`` (Mix-and-Localize: power
STFT n_fft 160 / hop 80, HTK mel 64 bands, ``20·log10(max(1e-5, S)) / 100``) over a 1-s window
at 16 kHz, giving the official input shape (1, 201, 64). The official DSOL features differ in
value (magnitude STFT with zero padding, Slaney mel, ``10·log10`` with top_db 80): weights
converted with :meth:`DSOL.from_official` need that front-end to be accurate.

Not implemented: the AudioSet-instrument variant (no L2 normalisation, ``conv_av`` with bias).

>>> from streamloc.models import create_model
>>> model = create_model("dsol", image={"size": (112, 112)}).eval()
>>> images, specs = model.example_inputs()
>>> tuple(specs.shape), tuple(model(images, specs)[0].shape)
((1, 1, 201, 64), (1, 7, 7))
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamloc.errors import CheckpointError
from streamloc.features import AudioFrontendConfig
from streamloc.models.base import GridObject, LocalizationModel, ModelConfig
from streamloc.models.common import global_max_pool
from streamloc.models.encoders import ResNet18, load_torchvision_resnet18
from streamloc.models.registry import register_model

__all__ = ["DSOLConfig", "DSOL", "SILENT_TESTS", "FEATURE_DIM", "EMBED_DIM"]

#: Channels of the ResNet-18 ``layer4`` map (the dictionary's width).
FEATURE_DIM = 512
#: Width of the audio-visual embedding (``conv_v_2`` / ``fc_a_2`` outputs).
EMBED_DIM = 128
#: Values of ``DSOLConfig.silent_test``.
SILENT_TESTS = ("probability", "map")

_STAGE_TWO_ONLY = ("obj_conv.weight", "obj_conv.bias", "obj_rep")


@dataclass
class DSOLConfig(ModelConfig):
    """DSOL options; defaults are the official MUSIC setting (reference §4.2-4.4).

    stage: 1 (audio-visual correspondence) or 2 (class-aware maps from the dictionary).
    num_clusters: K, the k-means clusters = dictionary size = classifier outputs (11 on MUSIC).
    visual_weights: torchvision ResNet-18 ImageNet ``.pth`` for the visual net (the official code
        starts from ImageNet; not bundled, ``None`` = random init).
    conv_av_init: the initial value of the scalar ``conv_av`` weight (official 5.0).
    minimize: multiply the class maps by the sounding area ``av_map`` (paper Eq. 5, "Prod").
    map_scale: the class maps are ``softmax_k(map_scale · obj_mask)`` (official inference: 3).
    silent_test / sounding_threshold / silent_map_threshold: which classes ``postprocess``
        reports in stage two (see the module docstring). The thresholds are this library's
        choices (the paper evaluates all classes offline): 0.2 on the class probability, and
        the NSA metric's τ = 0.2 on the class maps.
    """

    audio: AudioFrontendConfig = field(
        default_factory=lambda: AudioFrontendConfig(kind="logmel", window_seconds=1.0)
    )
    stage: int = 1
    num_clusters: int = 11
    visual_weights: str | None = None
    conv_av_init: float = 5.0
    minimize: bool = True
    map_scale: float = 3.0
    silent_test: str = "probability"
    sounding_threshold: float = 0.2
    silent_map_threshold: float = 0.2

    def __post_init__(self) -> None:
        if self.stage not in (1, 2) or isinstance(self.stage, bool):
            raise ValueError(f"stage must be 1 or 2, got {self.stage!r}")
        if isinstance(self.num_clusters, bool) or not isinstance(self.num_clusters, int) or self.num_clusters < 1:
            raise ValueError(f"num_clusters must be a positive integer, got {self.num_clusters!r}")
        if self.silent_test not in SILENT_TESTS:
            raise ValueError(f"silent_test must be one of {SILENT_TESTS}, got {self.silent_test!r}")
        for name in ("sounding_threshold", "silent_map_threshold"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not float(self.map_scale) > 0.0:
            raise ValueError(f"map_scale must be > 0, got {self.map_scale!r}")


def _as_dictionary(dictionary: Any, num_clusters: int | None = None) -> torch.Tensor:
    """A (K, 512) float32 tensor from an array, a tensor or a ``.npy`` path."""
    if isinstance(dictionary, (str, os.PathLike)):
        path = os.fspath(dictionary)
        if not os.path.isfile(path):
            raise CheckpointError(f"dictionary file {path} does not exist")
        try:
            dictionary = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - reported with the path
            raise CheckpointError(f"{path} is not a plain .npy array ({exc})") from None
    if isinstance(dictionary, torch.Tensor):
        tensor = dictionary.detach().to("cpu", torch.float32)
    else:
        tensor = torch.as_tensor(np.asarray(dictionary, dtype=np.float32))
    if tensor.ndim != 2 or tensor.shape[1] != FEATURE_DIM:
        raise ValueError(f"the DSOL dictionary must have shape (K, {FEATURE_DIM}), got {tuple(tensor.shape)}")
    if num_clusters is not None and tensor.shape[0] != num_clusters:
        raise ValueError(
            f"the dictionary has {tensor.shape[0]} keys but the model has num_clusters={num_clusters}"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("the DSOL dictionary contains NaN or inf (an empty k-means cluster?)")
    return tensor.contiguous()


def _softmax_np(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


@register_model
class DSOL(LocalizationModel):
    """The DSOL network (both stages); parameter names match the official state dicts (§4.7)."""

    method = "dsol"
    config_class = DSOLConfig
    # Stage two's outputs; a stage-one instance sets ``output_names = ("av_map",)``.
    output_names = ("av_map", "class_maps", "object_logits")

    def __init__(self, config: DSOLConfig):
        super().__init__(config)
        k = config.num_clusters
        self.visual_net = ResNet18(3, layer4_stride=1)
        if config.visual_weights:
            load_torchvision_resnet18(self.visual_net, config.visual_weights)
        self.audio_net = ResNet18(1, layer4_stride=1)
        self.conv_v_1 = nn.Conv2d(FEATURE_DIM, EMBED_DIM, kernel_size=1)
        self.conv_v_2 = nn.Conv2d(EMBED_DIM, EMBED_DIM, kernel_size=1)
        self.fc_a_1 = nn.Linear(FEATURE_DIM, EMBED_DIM)
        self.fc_a_2 = nn.Linear(EMBED_DIM, EMBED_DIM)
        self.conv_av = nn.Conv2d(1, 1, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv_av.weight.fill_(float(config.conv_av_init))
        self.v_class_layer = nn.Linear(FEATURE_DIM, k)
        self.a_class_layer = nn.Linear(FEATURE_DIM, k)
        self.reset_classifiers()
        if config.stage == 2:
            self.obj_conv = nn.Conv3d(1, 1, kernel_size=1)  # PyTorch default init, as official
            self.register_buffer("obj_rep", torch.zeros(k, FEATURE_DIM))
        else:
            self.output_names = ("av_map",)

    # -- structure ------------------------------------------------------------------------------
    @property
    def stage(self) -> int:
        return int(self.config.stage)

    def external_prefixes(self) -> tuple[str, ...]:
        return ()

    def classifier_parameters(self) -> list[nn.Parameter]:
        """``v_class_layer`` and ``a_class_layer`` weights and biases (the official ``params[-4:]``)."""
        return [*self.v_class_layer.parameters(), *self.a_class_layer.parameters()]

    def reset_classifiers(self) -> None:
        """Re-initialise both class layers as the official classification phase does every epoch:
        weights N(0, 0.01), biases 0."""
        with torch.no_grad():
            for layer in (self.v_class_layer, self.a_class_layer):
                layer.weight.normal_(0.0, 0.01)
                layer.bias.zero_()

    def set_dictionary(self, dictionary: Any) -> None:
        """Load the object dictionary D (K×512 array, tensor or ``.npy`` path) into ``obj_rep``."""
        if self.stage != 2:
            raise ValueError("only a stage-two DSOL model holds a dictionary; use stage_two(dictionary)")
        tensor = _as_dictionary(dictionary, self.config.num_clusters)
        with torch.no_grad():
            self.obj_rep.copy_(tensor.to(self.obj_rep.device))

    def stage_two(self, dictionary: Any, **options: Any) -> "DSOL":
        """A new stage-two model holding this model's weights (strict=False, like the official
        stage-two start from a stage-one ``*_av_class.pth``) and the dictionary; ``obj_conv`` keeps
        its fresh initialisation. ``options`` override config fields."""
        data = self.config.to_dict()
        data.update(options)
        data["stage"] = 2
        model = DSOL(DSOLConfig.from_dict(data))
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(_STAGE_TWO_ONLY)}
        model.load_state_dict(own, strict=False)
        model.set_dictionary(dictionary)
        device = next(self.parameters()).device
        return model.to(device).train(self.training)

    # -- computation ----------------------------------------------------------------------------
    def parts(self, images: torch.Tensor, spectrograms: torch.Tensor, *,
              logits: bool = False) -> dict[str, torch.Tensor]:
        """Every intermediate of the official forward.

        Keys: ``v_fea`` (B, 512, h, w) layer4 map, ``a_fea`` (B, 512), ``cos`` (B, h, w),
        ``av_logit`` (B, h, w) = conv_av(cos), ``av_map`` = sigmoid(av_logit); with
        ``logits=True`` also ``v_logits``/``a_logits`` (B, K); in stage two ``obj_mask``
        (B, K, h, w), ``object_logits`` (B, K) and ``class_maps`` (B, K, h, w).
        """
        v_fea = self.visual_net(images)
        a_fea = global_max_pool(self.audio_net(spectrograms))
        v = self.conv_v_2(F.relu(self.conv_v_1(v_fea)))
        a = self.fc_a_2(F.relu(self.fc_a_1(a_fea)))
        cos = torch.einsum("bchw,bc->bhw", F.normalize(v, dim=1), F.normalize(a, dim=1))
        av_logit = self.conv_av(cos.unsqueeze(1))[:, 0]
        out = {"v_fea": v_fea, "a_fea": a_fea, "cos": cos, "av_logit": av_logit,
               "av_map": torch.sigmoid(av_logit)}
        if logits:
            out["v_logits"] = self.v_class_layer(v_fea.mean(dim=(2, 3)))
            out["a_logits"] = self.a_class_layer(a_fea)
        if self.stage == 2:
            out.update(self.object_maps(v_fea, out["av_map"]))
        return out

    def object_maps(self, v_fea: torch.Tensor, av_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage-two class-aware maps from the layer4 map (B, 512, h, w) and av_map (B, h, w)."""
        dot = torch.einsum("bchw,kc->bkhw", v_fea, self.obj_rep.to(v_fea.dtype))
        # obj_conv is a Conv3d(1, 1, 1) over (B, 1, K, h, w): the scalar affine alpha * x + beta.
        obj_mask = dot * self.obj_conv.weight.reshape(()) + self.obj_conv.bias.reshape(())
        if self.config.minimize:
            obj_mask = obj_mask * av_map.unsqueeze(1)
        return {
            "obj_mask": obj_mask,
            "object_logits": obj_mask.mean(dim=(2, 3)),
            "class_maps": torch.softmax(self.config.map_scale * obj_mask, dim=1),
        }

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.parts(images, spectrograms)
        if self.stage == 1:
            return (p["av_map"],)
        return p["av_map"], p["class_maps"], p["object_logits"]

    def postprocess(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[GridObject]]:
        av_map = np.asarray(outputs["av_map"], dtype=np.float32)
        if self.stage == 1:
            return av_map, [GridObject(map=av_map, score=float(av_map.max()))]
        c = self.config
        maps = np.asarray(outputs["class_maps"], dtype=np.float32)
        prob = _softmax_np(outputs["object_logits"])
        if c.silent_test == "probability":
            sounding = prob >= c.sounding_threshold
        else:
            sounding = maps.reshape(maps.shape[0], -1).max(axis=1) > c.silent_map_threshold
        keys = self.obj_rep.detach().to("cpu", torch.float32).numpy()
        order = np.argsort(-prob, kind="stable")
        objects = [
            GridObject(map=maps[k], score=float(prob[k]), vector=keys[k].copy())
            for k in order if sounding[k]
        ]
        return av_map, objects

    # -- official checkpoints -------------------------------------------------------------------
    @classmethod
    def from_official(cls, obj: Mapping[str, torch.Tensor] | str | os.PathLike,
                      dictionary: Any = None, **options: Any) -> "DSOL":
        """Build a model from an official DSOL state dict (reference §4.7).

        ``obj`` is the plain ``torch.save(model.state_dict())`` dict (a ``module.`` prefix is
        stripped) or the path of such a file (read with
        :func:`streamloc.models.checkpoint.load_foreign_state_dict`, no unsafe unpickling).
        The stage is two when the dict has ``obj_conv`` (``options`` may set ``stage=2`` to start
        stage two from a stage-one file, ``obj_conv`` then keeps its fresh init, or ``stage=1`` to
        use only the stage-one part of a stage-two file). ``num_clusters`` comes from the class
        layers. Stage two needs ``dictionary``: the K×512 ``obj_feature_*.npy`` array (or its path).

        Dropped: the unused 3-channel ``audio_net.conv1`` and 1-channel ``visual_net.conv1_a``
        and both ``fc`` layers; ``audio_net.conv1_a`` becomes ``audio_net.conv1``.
        """
        if isinstance(obj, (str, os.PathLike)):
            from streamloc.models.checkpoint import load_foreign_state_dict

            obj = load_foreign_state_dict(obj)
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"an official DSOL checkpoint is a plain state dict, got {type(obj).__name__}")
        state = {}
        for key, value in obj.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"official DSOL state dict entry {key!r} is not a tensor")
            state[key[len("module."):] if key.startswith("module.") else key] = value
        if "conv_av.bias" in state:
            raise CheckpointError(
                "this is the AudioSet-instrument DSOL variant (conv_av with bias, no L2 "
                "normalisation), which streamloc does not implement"
            )
        if "v_class_layer.weight" not in state or "a_class_layer.weight" not in state:
            raise CheckpointError("not an official DSOL state dict: no v_class_layer/a_class_layer weights")
        num_clusters = int(state["v_class_layer.weight"].shape[0])
        if int(state["a_class_layer.weight"].shape[0]) != num_clusters:
            raise CheckpointError(
                f"v_class_layer has {num_clusters} outputs but a_class_layer "
                f"{int(state['a_class_layer.weight'].shape[0])}: the class layers disagree"
            )
        stage = int(options.pop("stage", 2 if "obj_conv.weight" in state else 1))
        options.pop("num_clusters", None)
        model = cls(DSOLConfig.from_dict({**options, "stage": stage, "num_clusters": num_clusters}))

        mapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            net, _, rest = key.partition(".")
            if net in ("visual_net", "audio_net") and rest.startswith("fc."):
                continue
            if net == "visual_net" and rest.startswith("conv1_a."):
                continue
            if net == "audio_net" and rest.startswith("conv1."):
                continue
            if net == "audio_net" and rest.startswith("conv1_a."):
                key = "audio_net.conv1." + rest[len("conv1_a."):]
            if stage == 1 and key.startswith(_STAGE_TWO_ONLY):
                continue
            mapped[key] = value
        own = model.state_dict()
        for key in own:  # files from before BatchNorm counted its batches
            if key.endswith("num_batches_tracked") and key not in mapped:
                mapped[key] = torch.zeros((), dtype=torch.long)
        optional = {"obj_conv.weight", "obj_conv.bias"} if stage == 2 else set()
        missing = sorted(set(own) - set(mapped) - optional - {"obj_rep"})
        unexpected = sorted(set(mapped) - set(own))
        wrong = [f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in sorted(set(mapped) & set(own)) if mapped[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"not an official DSOL state dict: missing {missing[:6]}, unexpected "
                f"{unexpected[:6]}, wrong shapes {wrong[:6]}"
            )
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=False)
        if stage == 2:
            if dictionary is None:
                raise ValueError(
                    "a stage-two DSOL model needs its object dictionary: pass the K×512 "
                    "obj_feature_*.npy array (or its path) as `dictionary`"
                )
            model.set_dictionary(dictionary)
        return model.eval()


def from_official(obj: Any, dictionary: Any = None, **options: Any) -> tuple[dict, dict, dict]:
    """`streamloc convert` adapter: (config, state dict, notes) from an official DSOL state dict
    (see `DSOL.from_official`; stage two needs `dictionary`, the K×512 .npy of the official run)."""
    model = DSOL.from_official(obj, dictionary=dictionary, **options)
    dropped = sorted(k for k in obj if isinstance(k, str) and (".fc." in k or k.endswith(
        ("visual_net.conv1_a.weight",)) or k.replace("module.", "").startswith("audio_net.conv1.")))
    notes = {"dropped": dropped, "notes": [
        "audio features: the official DSOL log-mel (Slaney mel of the magnitude STFT, 10*log10, "
        "top_db 80) is not reproduced yet; the model uses the Mix-and-Localize log-mel front-end"]}
    return model.config.to_dict(), dict(model.state_dict()), notes
