"""NoPrior training (Kim et al., CVPR 2024): L_total = lambda1 L_avc + lambda2 L_osc (Eq. 5).

One step: the model embeds the batch (``F_v``, ``l_a``), its heads give ``S_v``, ``F^_v`` and
``E_n`` (Sec. 3.2-3.3); ``L_avc`` is computed from the cosine maps of every image/audio pair; the
IOI loop and the union-find grouping run without gradients (``streamloc.ioi``, each item on its
own) and the object vectors ``E_t`` are gathered from the differentiable ``F^_v`` at the chosen
seeds, so ``L_osc`` trains through ``E_t``, ``F^_v`` and ``E_n`` as in the official code.

Variants (``hparams``), each default = what the official code computes, because the paper states
that it uses that code ("Following [8, 11], we utilize the implementation code"):

* ``avc_variant``: ``"official"`` = the LVS trimap loss (reference §5.4) with a guard against its
  0/0 NaN; ``"paper"`` = Eq. 1-3 literally (see :func:`losses.avc_paper_loss`).
* ``osc_variant``: ``"official"`` = the cosine-margin ``object_loss`` (anchor = group root,
  negative = mean of every other bank entry + ``E_n``, total / B); ``"paper"`` = Eq. 4 with our
  reading of Sec. 3.5 (anchor = member with the highest ``S_v``, averaged over the K_b objects
  then over B; see :func:`losses.osc_paper_loss`).

The trimap / IOI constants come from the model config (eps_pos 0.65, eps_neg 0.40, sigma 0.03,
logit temperature 0.07, IOI stop 0.1, tau1 0.7, tau2 0.6, ``ioi_rule``).

>>> import torch
>>> from training.methods import create_method
>>> m = create_method("noprior", image={"size": (64, 64)},
...                   audio={"sample_rate": 16000, "window_seconds": 0.1})
>>> loss, logs = m.loss(m.synthetic_batch(4, torch.Generator().manual_seed(0)))
>>> sorted(logs)
['acc', 'avc', 'bank', 'loss', 'objects', 'osc']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from training.methods.base import Hyperparameters, TrainingMethod, register_method
from training.methods.losses import (
    AVC_VARIANTS,
    OSC_VARIANTS,
    avc_official_loss,
    avc_paper_loss,
    collect_object_banks,
    cross_similarities,
    osc_official_loss,
    osc_paper_loss,
    synthetic_av_batch,
)


@dataclass
class NoPriorHyperparameters(Hyperparameters):
    """Paper Sec. 4.2: Adam, lr 1e-4, batch 128, 50 epochs, lambda1 = lambda2 = 1.

    Official scripts (train_vgg.sh / train_music.sh): Adam over all parameters, lr 1e-4 (the
    argparse default is 1e-3), batch 128, 100 epochs, ``--freeze_vision 1`` (the ImageNet visual
    ResNet-18 is frozen: use the model option ``freeze_visual=True``), unit loss weights,
    single-source training (``--concat_num 1``).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 50  # official scripts: 100
    lambda_avc: float = 1.0
    lambda_osc: float = 1.0
    avc_variant: str = "official"
    osc_variant: str = "official"
    # Eq. 2's alpha / omega for avc_variant="paper" (None: the model's eps_pos / sigma = LVS's)
    paper_alpha: float | None = None
    paper_omega: float | None = None
    # 0/0 of an empty soft region -> 0 instead of the official NaN (see losses.guarded_ratio)
    guard_empty: bool = True

    def __post_init__(self) -> None:
        if self.avc_variant not in AVC_VARIANTS:
            raise ValueError(f"avc_variant must be one of {AVC_VARIANTS}, got {self.avc_variant!r}")
        if self.osc_variant not in OSC_VARIANTS:
            raise ValueError(f"osc_variant must be one of {OSC_VARIANTS}, got {self.osc_variant!r}")


@register_method
class NoPriorMethod(TrainingMethod):
    name = "noprior"
    model_name = "noprior"
    smoke_model_options = {"image": {"size": [64, 64]}, "audio": {"window_seconds": 1.0}}
    hparams_class = NoPriorHyperparameters

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.model.config
        hp = self.hparams
        img, aud = self.model.embed(batch["images"], batch["spectrograms"])
        sound_map, features, background = self.model.heads(img, aud)
        sims = cross_similarities(img, aud)
        if hp.avc_variant == "official":
            l_avc, logits = avc_official_loss(
                sims, eps_pos=c.eps_pos, eps_neg=c.eps_neg, sigma=c.sigma,
                temperature=c.logit_temperature, guard=hp.guard_empty)
        else:
            alpha = c.eps_pos if hp.paper_alpha is None else hp.paper_alpha
            omega = c.sigma if hp.paper_omega is None else hp.paper_omega
            l_avc, logits = avc_paper_loss(sims, alpha=alpha, omega=omega, guard=hp.guard_empty)
        banks = collect_object_banks(sound_map, features, background, eps=c.ioi_eps,
                                     tau1=c.tau1, tau2=c.tau2, rule=c.ioi_rule)
        osc = osc_official_loss if hp.osc_variant == "official" else osc_paper_loss
        l_osc = osc(banks, background)
        total = hp.lambda_avc * l_avc + hp.lambda_osc * l_osc
        logs = {
            "loss": float(total.detach()),
            "avc": float(l_avc.detach()),
            "osc": float(l_osc.detach()),
            "acc": float((logits.detach().argmax(1) == 0).float().mean()),
            "objects": sum(len(b.groups) for b in banks) / len(banks),
            "bank": sum(b.vectors.shape[0] for b in banks) / len(banks),
        }
        return total, logs

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        """One or two coloured squares per image; the audio mixes their tones."""
        return synthetic_av_batch(self.model, batch_size, generator, max_sources=2)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Dataset items → the batch of ``synthetic_batch``: two class / mask slots (-1 / empty
        padding); the loss needs only ``images`` and ``spectrograms``."""
        from training.methods.collate import collate_common

        return collate_common(self, samples, slots=2)
