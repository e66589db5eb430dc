"""EZ-VSL training (Mo & Morgado, ECCV 2022, Sec. 3.2): multiple-instance contrastive learning.

``S[n, m, h, w] = <img_n(h, w), aud_m> / tau`` (cosines, tau = 0.03), ``logits[n, m] = max_{h,w}
S[n, m]`` and ``loss = CE(logits, arange B) + CE(logits^T, arange B)``: the paper's symmetric
loss (Eq. 3 + Eq. 4 = Eq. 5) and the official ``max_xmil_loss`` are the same formula (both
directions summed, batch mean inside each cross-entropy), see :func:`losses.micl_loss`.

Trained: the visual encoder, its 1x1 projection, the audio encoder and its linear projection;
the object prior ``model.objnet`` (an untouched ImageNet network, Sec. 3.3) is frozen and unused
by the loss.

>>> import torch
>>> from training.methods import create_method
>>> m = create_method("ezvsl", object_prior="none", image={"size": (64, 64)},
...                   audio={"window_seconds": 0.1})
>>> batch = m.synthetic_batch(4, torch.Generator().manual_seed(0))
>>> loss, logs = m.loss(batch)
>>> sorted(logs)
['a2v', 'acc_a2v', 'acc_v2a', 'loss', 'v2a']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from training.methods.base import Hyperparameters, TrainingMethod, register_method
from training.methods.losses import micl_loss, synthetic_av_batch


@dataclass
class EZVSLHyperparameters(Hyperparameters):
    """Paper Sec. 4.1 = official scripts: Adam (betas 0.9/0.999), lr 1e-4, no weight decay, no
    scheduler, global batch 128 (64 per GPU, negatives from the local batch only); 20 epochs on
    VGG-Sound 144k / full / Flickr 144k, 100 epochs on the 10k subsets."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 20


@register_method
class EZVSLMethod(TrainingMethod):
    name = "ezvsl"
    model_name = "ezvsl"
    smoke_model_options = {"image": {"size": [64, 64]}, "audio": {"window_seconds": 1.0}}
    hparams_class = EZVSLHyperparameters

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """Everything except the frozen object prior ``objnet``."""
        return [p for n, p in self.model.named_parameters()
                if not n.startswith("objnet.") and p.requires_grad]

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        img, aud = self.model.embed(batch["images"], batch["spectrograms"])
        loss, parts = micl_loss(img, aud, self.model.config.tau)
        logits = parts["logits"].detach()
        target = torch.arange(logits.shape[0], device=logits.device)
        logs = {
            "loss": float(loss.detach()),
            "a2v": float(parts["a2v"].detach()),
            "v2a": float(parts["v2a"].detach()),
            "acc_v2a": float((logits.argmax(1) == target).float().mean()),
            "acc_a2v": float((logits.argmax(0) == target).float().mean()),
        }
        return loss, logs

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        """One coloured square per image (EZ-VSL is single-source) and its tone."""
        return synthetic_av_batch(self.model, batch_size, generator, max_sources=1)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Dataset items → the batch of ``synthetic_batch``: one class / mask slot (single-source)."""
        from training.methods.collate import collate_common

        return collate_common(self, samples, slots=1)
