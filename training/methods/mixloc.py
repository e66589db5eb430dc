"""Mix-and-Localize training: a cycle-consistent random walk between images and audio nodes.

Per training example (paper Sec. 3, reference §3.3-3.4): k images and their k waveforms; the
waveforms are each scaled to RMS 0.1 (RMS floored at 1e-4) and **averaged** into one mixture, from
which the model makes k audio node embeddings s_1 … s_k. With the pooled similarity
φ(v, s) = max_p <f(x_p), s> (Eq. 1; both sides L2-normalised) and temperature τ:

* A_SI(i, j) = softmax_j φ(v_j, s_i) / τ — audio node i → image j of the same mixture;
* A_IS(j, t) = softmax_t φ(v_j, s_t) / τ — image j → audio node t (Eq. 2);
* L_cyc = −(1/k) tr(log(A_SI · A_IS)) (Eq. 4), averaged over the mixtures of the batch.

Shifted-audio augmentation (Sec. 3, "Data augmentation"): the return step uses the nodes s'_t of a
second mixture made from randomly shifted windows of the same videos, giving A_IS'. Two variants
(``loss_variant``):

* ``"paper"`` (default): L = −(1/k) tr(log(A_SI · A_IS')), the walk starts at the nodes of the
  first (unshifted) mixture and must return to the same node index of the shifted mixture.
* ``"official_sis"``: the official code's "SIS" loss (reference §3.4): A_SI from the nodes of the
  *second* window's mixture (softmax over images), A_IS from the first (softmax over nodes),
  A_SIS = A_SI · A_IS and the mean NLL of log A_SIS against the identity over all nodes of all
  mixtures. It is the same formula with the two windows' roles exchanged.

``shifted_audio=False`` uses one mixture for both steps (Eq. 4 without augmentation).

Batch format (``synthetic_batch`` makes one): ``images`` (B, 3, H, W) ImageNet-normalised, where
consecutive groups of k images form one mixture (the official reshape (B/k, k, L) of the batch);
``waveforms`` (B, N) each image's own unmixed window (N = the frontend's ``num_samples``);
``waveforms_shifted`` (B, N) a second window of the same videos at a random shift; optional
``spectrograms`` (B, 1, T, 64) of the unmixed first windows (not used by the loss). The method
mixes and computes the log-mel spectrograms with the model's frontend.

Optimiser (reference §3.4): Adam, lr 1e-4 (the official code divides its ``--lr 1e-3`` by 10),
weight decay 5e-4; batch 128 images (64 mixtures), 30 epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from streamloc.models.mixloc import MixLoc
from training.methods.base import Hyperparameters, TrainingMethod, register_method

__all__ = [
    "LOSS_VARIANTS",
    "MixLocHyperparameters",
    "MixLocMethod",
    "cycle_consistency_loss",
    "mix_sources",
    "pooled_similarity",
    "random_windows",
    "rms_normalize",
    "walk_log_probs",
]

LOSS_VARIANTS = ("paper", "official_sis")


@dataclass
class MixLocHyperparameters(Hyperparameters):
    """Official effective settings: Adam lr 1e-4, weight decay 5e-4, 128 images, 30 epochs."""

    lr: float = 1e-4
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 30
    loss_variant: str = "paper"
    shifted_audio: bool = True
    mix_rms: float = 0.1
    mix_eps: float = 1e-4

    def __post_init__(self) -> None:
        if self.loss_variant not in LOSS_VARIANTS:
            raise ValueError(f"loss_variant must be one of {LOSS_VARIANTS}, got {self.loss_variant!r}")


# ------------------------------------------------------------------------------------------------
# Mixtures
# ------------------------------------------------------------------------------------------------


def rms_normalize(waveforms: torch.Tensor, rms: float = 0.1, eps: float = 1e-4) -> torch.Tensor:
    """Scale each waveform (last axis) to the given RMS: ``w · rms / max(eps, sqrt(mean(w²)))``."""
    current = waveforms.square().mean(dim=-1, keepdim=True).sqrt()
    return waveforms * (rms / current.clamp_min(eps))


def mix_sources(waveforms: torch.Tensor, k: int, rms: float = 0.1, eps: float = 1e-4) -> torch.Tensor:
    """(B, N) per-source windows → (B/k, N) mixtures: RMS-normalise each, average groups of k
    consecutive items (the official reshape (B/k, k, N) and mean over k)."""
    if waveforms.ndim != 2:
        raise ValueError(f"waveforms must be (B, N), got shape {tuple(waveforms.shape)}")
    b, n = waveforms.shape
    if b % k:
        raise ValueError(f"the batch size {b} is not a multiple of num_sources k={k}")
    return rms_normalize(waveforms, rms, eps).reshape(b // k, k, n).mean(dim=1)


def random_windows(signals: torch.Tensor, num_samples: int, generator: torch.Generator | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two windows of ``num_samples`` from each row of ``signals`` (B, L) at independent uniform
    random offsets: the window and its randomly shifted second window."""
    b, length = signals.shape
    if length < num_samples:
        raise ValueError(f"signals of {length} samples are shorter than the window ({num_samples})")
    span = length - num_samples + 1
    out = []
    for _ in range(2):
        start = torch.randint(0, span, (b, 1), generator=generator)
        idx = (start + torch.arange(num_samples)).to(signals.device)
        out.append(torch.gather(signals, 1, idx))
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------
# Cycle-consistency loss
# ------------------------------------------------------------------------------------------------


def pooled_similarity(img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
    """φ(v_j, s_t) = max_p <img_j(p), s_t> within each mixture.

    ``img`` (G·k, C, h, w): images, consecutive groups of k per mixture; ``aud`` (G, k', C): the
    k' audio nodes of each mixture. Returns (G, k, k') indexed [mixture, image, node].
    """
    g, k_nodes, c = aud.shape
    if img.shape[0] % g or img.shape[1] != c:
        raise ValueError(f"images {tuple(img.shape)} do not fit {g} mixtures of dim {c}")
    v = img.reshape(g, img.shape[0] // g, c, -1)
    return torch.einsum("gjcp,gtc->gjtp", v, aud).amax(dim=-1)


def walk_log_probs(phi_start: torch.Tensor, phi_return: torch.Tensor, temperature: float) -> torch.Tensor:
    """log(A_SI · A_IS) per mixture, (G, k, k): entry [i, t] is the log-probability that a walk
    from audio node i (nodes of ``phi_start``) through the images ends at node t (nodes of
    ``phi_return``). Both φ are (G, images, nodes) as :func:`pooled_similarity` returns;
    A_SI normalises over images, A_IS over nodes. Computed in log space (logsumexp over images).
    """
    log_si = torch.log_softmax(phi_start.transpose(1, 2) / temperature, dim=2)  # (G, node i, image j)
    log_is = torch.log_softmax(phi_return / temperature, dim=2)  # (G, image j, node t)
    return torch.logsumexp(log_si.unsqueeze(3) + log_is.unsqueeze(1), dim=2)


def cycle_consistency_loss(img: torch.Tensor, aud: torch.Tensor, aud_shifted: torch.Tensor | None = None,
                           temperature: float = 0.07, variant: str = "paper",
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix-and-Localize's cycle loss and its return accuracy.

    ``img`` (G·k, C, h, w) L2-normalised visual maps; ``aud`` (G, k, C) the nodes of the first
    mixtures; ``aud_shifted`` (G, k, C) those of the shifted mixtures (None: ``aud``, no
    augmentation). ``variant="paper"``: −(1/k) tr(log(A_SI A_IS')) with A_SI from ``aud`` and
    A_IS' from ``aud_shifted``, averaged over mixtures; ``"official_sis"``: A_SI from
    ``aud_shifted``, A_IS from ``aud``, mean NLL of the diagonal. Returns (loss, accuracy): the
    fraction of start nodes whose most probable return node is themselves.
    """
    if variant not in LOSS_VARIANTS:
        raise ValueError(f"variant must be one of {LOSS_VARIANTS}, got {variant!r}")
    if aud_shifted is None:
        aud_shifted = aud
    phi = pooled_similarity(img, aud)
    phi_shifted = phi if aud_shifted is aud else pooled_similarity(img, aud_shifted)
    if variant == "paper":
        log_p = walk_log_probs(phi, phi_shifted, temperature)
    else:
        log_p = walk_log_probs(phi_shifted, phi, temperature)
    diag = torch.diagonal(log_p, dim1=1, dim2=2)  # (G, k)
    loss = -diag.mean()
    target = torch.arange(log_p.shape[1], device=log_p.device)
    accuracy = (log_p.argmax(dim=2) == target).float().mean()
    return loss, accuracy


# ------------------------------------------------------------------------------------------------
# Method
# ------------------------------------------------------------------------------------------------

# Colour (RGB in [0, 1]) and tone frequency (Hz) of the synthetic task's sources.
_PALETTE = (
    ((0.9, 0.1, 0.1), 440.0),
    ((0.1, 0.8, 0.1), 1000.0),
    ((0.1, 0.2, 0.9), 2200.0),
    ((0.9, 0.9, 0.1), 4000.0),
)


@register_method
class MixLocMethod(TrainingMethod):
    """Cycle-consistent random walk over k-source mixtures (see the module docstring)."""

    name = "mixloc"
    model_name = "mixloc"
    hparams_class = MixLocHyperparameters

    def __init__(self, model: MixLoc, hparams: MixLocHyperparameters | None = None):
        super().__init__(model, hparams)
        self.frontend = model.make_frontend()

    @property
    def k(self) -> int:
        return self.model.config.num_sources

    def mixture_spectrograms(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, N) per-source windows → (B/k, 1, T, 64) log-mel spectrograms of their mixtures."""
        hp = self.hparams
        mixes = mix_sources(waveforms, self.k, hp.mix_rms, hp.mix_eps)
        self.frontend = self.frontend.to(mixes.device)
        return self.frontend(mixes)

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        hp = self.hparams
        images, waves = batch["images"], batch["waveforms"]
        if images.shape[0] != waves.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {waves.shape[0]} waveforms")
        g = images.shape[0] // self.k
        if hp.shifted_audio:
            specs = torch.cat([self.mixture_spectrograms(waves),
                               self.mixture_spectrograms(batch["waveforms_shifted"])])
            nodes = self.model.embed_audio(specs)  # one pass, as the official [audio; audio_2]
            aud, aud_shifted = nodes[:g], nodes[g:]
        else:
            aud = self.model.embed_audio(self.mixture_spectrograms(waves))
            aud_shifted = None
        img = self.model.embed_images(images)
        loss, accuracy = cycle_consistency_loss(img, aud, aud_shifted, self.model.config.temperature,
                                                hp.loss_variant)
        return loss, {"loss": float(loss.detach()), "cycle_accuracy": float(accuracy)}

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        """Images with one coloured square on grey noise; each colour has its own amplitude-
        modulated tone. Groups of k consecutive items have distinct colours (one mixture each)."""
        k = self.k
        if batch_size % k:
            raise ValueError(f"batch_size {batch_size} must be a multiple of num_sources k={k}")
        if k > len(_PALETTE):
            raise ValueError(f"the synthetic task has {len(_PALETTE)} colours, fewer than k={k}")
        cfg = self.model.config
        h, w = cfg.image.size
        n, sr = cfg.audio.num_samples, cfg.audio.sample_rate
        length = n + n // 2  # room for the shifted second window

        ids = torch.cat([torch.randperm(len(_PALETTE), generator=generator)[:k]
                         for _ in range(batch_size // k)])
        images = 0.5 + 0.05 * torch.randn(batch_size, 3, h, w, generator=generator)
        side_h, side_w = max(1, h // 3), max(1, w // 3)
        ys = torch.randint(0, h - side_h + 1, (batch_size,), generator=generator)
        xs = torch.randint(0, w - side_w + 1, (batch_size,), generator=generator)
        t = torch.arange(length, dtype=torch.float64) / sr
        signals = torch.empty(batch_size, length, dtype=torch.float64)
        for b in range(batch_size):
            colour, freq = _PALETTE[int(ids[b])]
            y, x = int(ys[b]), int(xs[b])
            images[b, :, y:y + side_h, x:x + side_w] = torch.tensor(colour).view(3, 1, 1)
            phase, am_phase = (2 * math.pi * torch.rand(2, generator=generator, dtype=torch.float64)).tolist()
            am_rate = 1.0 + 2.0 * float(torch.rand((), generator=generator))
            envelope = 0.6 + 0.4 * torch.sin(2 * math.pi * am_rate * t + am_phase)
            signals[b] = envelope * torch.sin(2 * math.pi * freq * t + phase)
        signals = (signals + 0.01 * torch.randn(batch_size, length, generator=generator,
                                                dtype=torch.float64)).float()
        mean = torch.tensor(cfg.image.mean).view(1, 3, 1, 1)
        std = torch.tensor(cfg.image.std).view(1, 3, 1, 1)
        images = ((images.clamp(0, 1) - mean) / std).float()
        waves, waves_shifted = random_windows(signals, n, generator)
        with torch.no_grad():
            spectrograms = self.model.make_frontend()(waves)
        boxes = torch.stack([xs, ys, xs + side_w, ys + side_h], dim=1)  # pixel x1, y1, x2, y2
        return {"images": images, "waveforms": waves, "waveforms_shifted": waves_shifted,
                "spectrograms": spectrograms, "source_ids": ids, "boxes": boxes}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Dataset items → the batch of ``synthetic_batch``. Each item is one source (its frame
        and its own unmixed audio: ``"source_audio"[0]`` for pairing rows, else ``"audio"``);
        consecutive groups of k items are mixed by the loss. ``waveforms`` is the first
        ``num_samples`` window and ``waveforms_shifted`` a window at a random later offset
        (deterministic per batch of ids) when the item's audio is longer than one window, else
        the same window. ``source_ids`` (B,) = the first class id (-1 if none), ``boxes`` (B, 4)
        pixel x1, y1, x2, y2 of the first GT mask at the image size (the whole image when the
        item has no mask)."""
        import numpy as np

        from training.methods.collate import (
            batch_generator,
            collate_classes,
            collate_images,
            collate_masks,
            fit_length,
            item_waveform,
            spectrograms,
        )

        k = self.k
        if not samples or len(samples) % k:
            raise ValueError(f"Mix-and-Localize batches must hold a multiple of num_sources k={k} "
                             f"items (one mixture per k), got {len(samples)}")
        model = self.model
        n = int(model.config.audio.num_samples)
        gen = batch_generator(samples)
        first, shifted = [], []
        for i, item in enumerate(samples):
            if item.get("source_audio") is not None:
                one = {**item, "audio": np.asarray(item["source_audio"])[0]}
            else:
                one = item
            wave = item_waveform(model, one, i, self.name)
            if len(wave) > n:
                offset = int(torch.randint(1, len(wave) - n + 1, (), generator=gen))
                first.append(wave[:n])
                shifted.append(wave[offset:offset + n])
            else:
                w = fit_length(wave, n)
                first.append(w)
                shifted.append(w)
        waves = torch.from_numpy(np.stack(first).astype(np.float32))
        waves_shifted = torch.from_numpy(np.stack(shifted).astype(np.float32))
        images = collate_images(model, samples, self.name)
        h, w = model.config.image.size
        masks = collate_masks(samples, 1, (h, w))[:, 0]
        boxes = torch.tensor([[0, 0, w, h]] * len(samples), dtype=torch.int64)
        for b, m in enumerate(masks):
            ys, xs = torch.nonzero(m, as_tuple=True)
            if len(ys):
                boxes[b] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        return {"images": images, "waveforms": waves, "waveforms_shifted": waves_shifted,
                "spectrograms": spectrograms(model, waves),
                "source_ids": collate_classes(samples, 1)[:, 0], "boxes": boxes}
