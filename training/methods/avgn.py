"""AVGN training (Mo & Tian, CVPR 2023): localisation loss + class-token and class-prediction losses.

As the official ``model.py`` computes it (reference §2.4; ``group_variant="official"``, default):

* ``L_loc``: EZ-VSL's max-MIL contrastive loss (:func:`losses.micl_loss`) between the
  L2-normalised visual map ``img`` (B, D, h, w) and ``a_n = xa[n, c_n]``, the grouped audio class
  embedding of item n's **visual** ground-truth class ``c_n``: ``logits[n, m] = max_p <img_n(p),
  a_m> / tau``, ``CE(logits, arange B) + CE(logitsᵀ, arange B)``. **[DIFF]** ``a_n`` is *not*
  L2-normalised (the paper's Eq. 10 uses cosines), so the logits are not bounded by 1/tau.
* ``L_token = CE(fc_cls(av_token), arange K)``: every class token must classify as its own class
  (mean over the K tokens).
* ``L_pred = BCE(p_v, y_v) + BCE(p_a, y_a)`` with ``p = sigmoid(fc_prob(x))`` (B, K), BCE the mean
  over all B·K entries; ``y_v`` is the one-hot of the visible source (the image holds only the
  first source's frame), ``y_a`` the 2-hot sum over the sources of a waveform-sum mixture.
* ``L = L_loc + L_token + L_pred`` (unit weights).

``group_variant="paper"``: Eq. 9 literally, ``L_group = Σ_{i=1..C} {CE(h_i, e_i) + BCE(y_i, p^a_i) +
BCE(y_i, p^v_i)}`` — sums over the C classes instead of means (the BCE terms averaged over the
batch), i.e. exactly ``K · (L_token + L_pred)``: the paper weights the class losses K times more
against ``L_loc`` (221× on VGGSound) than the code. ``L = L_loc + L_group`` (Eq. 11).
Not implemented: the paper's Eq. 10 localisation loss (cosine of ``g^a_n`` with ``f^v_p ⊙ g^v_n``,
one direction, averaged over N sources): the official code trains with the EZ-VSL loss above,
and its maps (``<img, xa_k>``) are what :mod:`streamloc.models.avgn` produces.

Targets come from ``batch["classes"]`` (B, S) int64: column 0 is the visible source's class, the
other columns the classes mixed into the audio (-1 = none). The official code sums the one-hot
rows (its sampler always mixes a *different* class); here the audio target is clamped to 1, which
only differs when a class appears twice in one item (the official target would then be 2).

Trained: every parameter of the model (the official code trains everything it executes; its
never-executed ``han_encoder`` is not part of :class:`streamloc.models.avgn.AVGN`).

>>> import torch
>>> from training.methods import create_method
>>> m = create_method("avgn", num_classes=5, dim=64, image={"size": (64, 64)},
...                   audio={"window_seconds": 0.1})
>>> batch = m.synthetic_batch(4, torch.Generator().manual_seed(0))
>>> loss, logs = m.loss(batch)
>>> sorted(logs)[:4]
['a2v', 'acc_audio', 'acc_token', 'acc_v2a']
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.methods.base import Hyperparameters, TrainingMethod, register_method
from training.methods.losses import finish_synthetic_batch, micl_loss

__all__ = [
    "AVGNHyperparameters",
    "AVGNMethod",
    "GROUP_VARIANTS",
    "class_palette",
    "class_tones",
    "group_loss_paper",
    "loc_loss",
    "mixture_targets",
    "pred_loss",
    "synthetic_avgn_batch",
    "token_loss",
]

GROUP_VARIANTS = ("official", "paper")


@dataclass
class AVGNHyperparameters(Hyperparameters):
    """Paper Sec. 4.1 = official README: Adam, lr 1e-4, no weight decay, constant LR, batch 128,
    100 epochs. ``group_variant``: ``"official"`` (coded means) or ``"paper"`` (Eq. 9 sums)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 100
    group_variant: str = "official"

    def __post_init__(self) -> None:
        if self.group_variant not in GROUP_VARIANTS:
            raise ValueError(f"group_variant must be one of {GROUP_VARIANTS}, got {self.group_variant!r}")


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


def mixture_targets(classes: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Visual and audio targets (B, K) from ``classes`` (B, S) (-1 = no source).

    ``y_v`` = one-hot of column 0 (the visible source, required); ``y_a`` = the sum of the one-hot
    rows of every source, clamped to 1 (2-hot for a two-class waveform-sum mixture).
    """
    classes = torch.as_tensor(classes)
    if classes.dim() == 1:
        classes = classes[:, None]
    if classes.dim() != 2 or classes.dtype.is_floating_point:
        raise ValueError(f"classes must be an integer tensor (B, S), got {tuple(classes.shape)} {classes.dtype}")
    if bool((classes[:, 0] < 0).any()):
        raise ValueError("every item needs its visible source's class in classes[:, 0]")
    if bool((classes >= num_classes).any()) or bool((classes < -1).any()):
        raise ValueError(f"class ids must be in [0, {num_classes}) (or -1 for no source)")
    valid = classes >= 0
    onehot = F.one_hot(classes.clamp_min(0), num_classes).float() * valid[..., None].float()
    y_v = onehot[:, 0]
    y_a = onehot.sum(dim=1).clamp_max(1.0)
    return y_v, y_a


def loc_loss(img: torch.Tensor, xa: torch.Tensor, visual_classes: torch.Tensor, tau: float
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Official L_loc: :func:`losses.micl_loss` of ``img`` (B, D, h, w) against the un-normalised
    ``a_n = xa[n, visual_classes[n]]`` (B, D). Returns the loss and ``a2v``/``v2a``/``logits``."""
    b = img.shape[0]
    a = xa[torch.arange(b, device=xa.device), visual_classes.to(xa.device).long()]
    return micl_loss(img, a, tau)


def token_loss(token_logits: torch.Tensor) -> torch.Tensor:
    """Official L_token: ``CE(fc_cls(av_token), arange K)`` (mean over the K tokens)."""
    k = token_logits.shape[0]
    return F.cross_entropy(token_logits, torch.arange(k, device=token_logits.device))


def pred_loss(visual_probs: torch.Tensor, audio_probs: torch.Tensor, y_v: torch.Tensor,
              y_a: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Official L_pred: ``BCE(p_v, y_v) + BCE(p_a, y_a)`` on probabilities (mean over B·K each)."""
    l_v = F.binary_cross_entropy(visual_probs, y_v.to(visual_probs.dtype))
    l_a = F.binary_cross_entropy(audio_probs, y_a.to(audio_probs.dtype))
    return l_v + l_a, {"pred_v": l_v, "pred_a": l_a}


def group_loss_paper(token_logits: torch.Tensor, visual_probs: torch.Tensor, audio_probs: torch.Tensor,
                     y_v: torch.Tensor, y_a: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 9: ``Σ_i CE(h_i, e_i) + (1/B) Σ_b Σ_i [BCE(y_i, p^a_i) + BCE(y_i, p^v_i)]``
    (= ``K · (L_token + L_pred)``)."""
    k = token_logits.shape[0]
    b = visual_probs.shape[0]
    ce = F.cross_entropy(token_logits, torch.arange(k, device=token_logits.device), reduction="sum")
    bce_a = F.binary_cross_entropy(audio_probs, y_a.to(audio_probs.dtype), reduction="sum") / b
    bce_v = F.binary_cross_entropy(visual_probs, y_v.to(visual_probs.dtype), reduction="sum") / b
    return ce + bce_a + bce_v


# ------------------------------------------------------------------------------------------------
# Synthetic task
# ------------------------------------------------------------------------------------------------


def class_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """One saturated BGR colour per class (hues evenly spaced)."""
    out = []
    for k in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb(k / num_classes, 0.85, 0.95)
        out.append((int(round(255 * b)), int(round(255 * g)), int(round(255 * r))))
    return out


def class_tones(num_classes: int, sample_rate: int) -> np.ndarray:
    """One tone (Hz) per class, geometrically spaced from 300 Hz to min(6 kHz, 0.4 · sr)."""
    lo, hi = 300.0, min(6000.0, 0.4 * sample_rate)
    if hi <= lo:
        raise ValueError(f"sample rate {sample_rate} too low for the synthetic tones")
    if num_classes == 1:
        return np.array([lo])
    return lo * (hi / lo) ** (np.arange(num_classes) / (num_classes - 1))


def synthetic_avgn_batch(model: Any, batch_size: int, generator: torch.Generator, *,
                         mixture_fraction: float = 0.5) -> dict[str, torch.Tensor]:
    """A tiny weakly-labelled task in the model's input format, with AVGN's training mixtures.

    Item n shows one square of class ``c1``'s colour on grey noise and sounds ``c1``'s tone
    (amplitude 0.5, random phase). With probability ``mixture_fraction`` a second class
    ``c2 != c1`` is mixed into the audio only, as the official ``*_multi`` training sets do: the
    two waveforms are summed without rescaling, the image keeps the first source's frame.

    Returns ``images`` (B, 3, H, W), ``spectrograms`` (B, 1, F, T), ``waveforms`` (B, n),
    ``classes`` (B, 2) (column 1 is -1 for single sources), ``masks`` (B, 1, H, W) bool (the
    visible square) and ``num_sources`` (B,). Fully determined by ``generator``.
    """

    k = int(model.config.num_classes)
    h, w = model.config.image.size
    sr = model.config.audio.sample_rate
    n = model.config.audio.num_samples
    palette = class_palette(k)
    tones = class_tones(k, sr)
    side = max(2, min(h, w) // 2)
    t = np.arange(n) / sr

    frames = np.empty((batch_size, h, w, 3), np.uint8)
    waves = np.zeros((batch_size, n), np.float64)
    classes = np.full((batch_size, 2), -1, np.int64)
    masks = np.zeros((batch_size, 1, h, w), bool)
    counts = np.ones(batch_size, np.int64)
    for i in range(batch_size):
        c1 = int(torch.randint(0, k, (), generator=generator))
        frames[i] = (80 + torch.randint(0, 96, (h, w, 3), generator=generator).numpy()).astype(np.uint8)
        y0 = int(torch.randint(0, h - side + 1, (), generator=generator))
        x0 = int(torch.randint(0, w - side + 1, (), generator=generator))
        frames[i, y0:y0 + side, x0:x0 + side] = palette[c1]
        masks[i, 0, y0:y0 + side, x0:x0 + side] = True
        classes[i, 0] = c1
        sources = [c1]
        if k > 1 and float(torch.rand((), generator=generator)) < mixture_fraction:
            c2 = int(torch.randint(0, k - 1, (), generator=generator))
            c2 += int(c2 >= c1)  # uniform over the other classes
            classes[i, 1] = c2
            sources.append(c2)
            counts[i] = 2
        for c in sources:
            phase = float(torch.rand((), generator=generator)) * 2 * np.pi
            waves[i] += 0.5 * np.sin(2 * np.pi * tones[c] * t + phase)
        waves[i] += 0.01 * torch.randn(n, generator=generator, dtype=torch.float64).numpy()
    return finish_synthetic_batch(model, frames, waves, classes, masks, counts)


# ------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------


@register_method
class AVGNMethod(TrainingMethod):
    name = "avgn"
    model_name = "avgn"
    smoke_model_options = {"image": {"size": [64, 64]}, "audio": {"window_seconds": 1.0},
                           "num_classes": 8, "dim": 128, "heads": 4}
    hparams_class = AVGNHyperparameters

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        model = self.model
        k = model.config.num_classes
        p = model.parts(batch["images"], batch["spectrograms"])
        classes = torch.as_tensor(batch["classes"]).to(p["xa"].device)
        if classes.dim() == 1:
            classes = classes[:, None]
        y_v, y_a = mixture_targets(classes, k)
        y_v, y_a = y_v.to(p["xa"].dtype), y_a.to(p["xa"].dtype)
        l_loc, loc_parts = loc_loss(p["img"], p["xa"], classes[:, 0], model.config.tau)
        logits_tok = model.token_logits()
        p_v = torch.sigmoid(p["visual_logits"])
        p_a = torch.sigmoid(p["audio_logits"])
        l_tok = token_loss(logits_tok)
        l_pred, pred_parts = pred_loss(p_v, p_a, y_v, y_a)
        if self.hparams.group_variant == "official":
            group = l_tok + l_pred
        else:
            group = group_loss_paper(logits_tok, p_v, p_a, y_v, y_a)
        total = l_loc + group
        logits = loc_parts["logits"].detach()
        target = torch.arange(logits.shape[0], device=logits.device)
        logs = {
            "loss": float(total.detach()),
            "loc": float(l_loc.detach()),
            "a2v": float(loc_parts["a2v"].detach()),
            "v2a": float(loc_parts["v2a"].detach()),
            "token": float(l_tok.detach()),
            "pred": float(l_pred.detach()),
            "pred_a": float(pred_parts["pred_a"].detach()),
            "pred_v": float(pred_parts["pred_v"].detach()),
            "group": float(group.detach()),
            "acc_v2a": float((logits.argmax(1) == target).float().mean()),
            "acc_token": float((logits_tok.detach().argmax(1) == torch.arange(k, device=logits.device)).float().mean()),
            "acc_audio": float(((p_a.detach() >= 0.5).to(y_a.dtype) == y_a).float().mean()),
            "acc_visual": float(((p_v.detach() >= 0.5).to(y_v.dtype) == y_v).float().mean()),
        }
        return total, logs

    def synthetic_batch(self, batch_size: int, generator: torch.Generator, *,
                        mixture_fraction: float = 0.5) -> dict[str, Any]:
        """Coloured squares ↔ class ids, tones tied to the classes, and 2-source waveform-sum
        mixtures for about ``mixture_fraction`` of the items; see :func:`synthetic_avgn_batch`."""
        return synthetic_avgn_batch(self.model, batch_size, generator, mixture_fraction=mixture_fraction)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Dataset items → the batch of ``synthetic_batch``: ``classes`` (B, 2) = the visible
        (first) source's class and the second source's class of a two-source item (a duet, or a
        pairing row whose ``"audio"`` mixes two sources), -1 when there is none; ``masks``
        (B, 1, H, W) the visible source's mask. Every item needs a class id in
        [0, num_classes) for its visible source (Flickr-SoundNet has none)."""
        from training.methods.collate import collate_common

        batch = collate_common(self, samples, slots=2, mask_slots=1)
        k = self.model.config.num_classes
        for i, row in enumerate(batch["classes"].tolist()):
            sid = samples[i].get("id", f"#{i}")
            if row[0] < 0:
                raise ValueError(f"AVGN needs 'class_ids' with the visible source's class; dataset "
                                 f"item {sid!r} has none (use a dataset with class labels)")
            if max(row) >= k:
                raise ValueError(f"dataset item {sid!r} has class ids {row}, outside the model's "
                                 f"num_classes={k} (set --model-option num_classes=...)")
        return batch
