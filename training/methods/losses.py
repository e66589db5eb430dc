"""Loss functions shared by the paper methods, the IOI step run inside training, and a tiny
learnable synthetic audio-visual task for smoke tests.

Conventions: ``img`` is an L2-normalised visual map ``(B, C, h, w)``, ``aud`` an L2-normalised
audio vector ``(B, C)``; ``sims[n, m]`` is the cosine map ``<img_n(p), aud_m>`` of image ``n``
with audio ``m``, shape ``(B, B, h, w)`` (rows are images, columns audios). Every function works
in the dtype of its inputs (float64 in the tests, float32 in training).

* :func:`micl_loss` -- EZ-VSL's multiple-instance contrastive loss (paper Eq. 3-5, official
  ``max_xmil_loss``; they agree, see the function).
* :func:`avc_official_loss` / :func:`avc_paper_loss` -- NoPrior's audio-visual contrastive loss
  as the official code computes it (LVS trimap loss) and as the paper prints it (Eq. 1-3).
* :func:`collect_object_banks` -- the IOI + union-find decisions of ``streamloc.ioi`` run without
  gradients on one batch, then the object vectors gathered from the differentiable ``F^_v``.
* :func:`osc_official_loss` / :func:`osc_paper_loss` -- NoPrior's OSC loss (official cosine
  margin; paper Eq. 4).
* :func:`synthetic_av_batch` -- coloured squares on noise + tones tied to the colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streamloc import ioi

__all__ = [
    "ObjectBank",
    "avc_official_loss",
    "avc_paper_loss",
    "collect_object_banks",
    "cross_similarities",
    "guarded_ratio",
    "micl_logits",
    "micl_loss",
    "osc_official_loss",
    "osc_paper_loss",
    "synthetic_av_batch",
]

AVC_VARIANTS = ("official", "paper")
OSC_VARIANTS = ("official", "paper")


def guarded_ratio(num: torch.Tensor, den: torch.Tensor, guard: bool = True) -> torch.Tensor:
    """``num / den``; with ``guard``, entries where ``den == 0`` exactly are 0 instead of NaN/inf.

    This is the guard for the soft-region averages ``sum(w * S) / sum(w)`` of the LVS/NoPrior
    losses: when every weight of a region underflows to 0 (e.g. ``1 - sigmoid((S - 0.40) / 0.03)``
    is exactly 0 in float32 once every cell has ``S > ~0.92``), the official code divides 0 by 0
    and the whole batch loss becomes NaN. We define the average of an empty region as 0 (the
    numerator is then 0 as well, so a region with no weight adds a neutral logit of 0 and no
    gradient). Wherever ``den != 0`` the result is bit-identical to the plain division, and the
    backward pass never sees a division by zero.
    """
    if not guard:
        return num / den
    ok = den != 0
    q = num / torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok, q, torch.zeros_like(q))


def cross_similarities(img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
    """``sims[n, m, h, w] = <img_n(:, h, w), aud_m>`` for every image ``n`` and audio ``m``."""
    return torch.einsum("nchw,mc->nmhw", img, aud)


# ------------------------------------------------------------------------------------------------
# EZ-VSL
# ------------------------------------------------------------------------------------------------


def micl_logits(img: torch.Tensor, aud: torch.Tensor, tau: float = 0.03) -> torch.Tensor:
    """``logits[n, m] = max_{h,w} <img_n(h, w), aud_m> / tau`` (images x audios)."""
    return (cross_similarities(img, aud) / tau).flatten(2).amax(dim=2)


def micl_loss(img: torch.Tensor, aud: torch.Tensor, tau: float = 0.03
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EZ-VSL multiple-instance contrastive loss (both directions, summed).

    Paper Eq. 3 (audio i against the max-pooled bags of every image k) is the cross-entropy of
    row i of ``logits.T``; Eq. 4 (image i against every audio k, max over image i's bag) is the
    cross-entropy of row i of ``logits``; Eq. 5 sums them. The official code computes exactly
    ``CE(logits, arange B) + CE(logits.T, arange B)`` (batch mean inside each CE, the two
    directions summed, no 1/2), so paper and code coincide and no option is needed; ``sim`` is
    the cosine because ``img`` and ``aud`` are L2-normalised.

    Returns the loss and its parts: ``a2v`` (Eq. 3), ``v2a`` (Eq. 4), ``logits``.
    """
    logits = micl_logits(img, aud, tau)
    target = torch.arange(logits.shape[0], device=logits.device)
    v2a = F.cross_entropy(logits, target)
    a2v = F.cross_entropy(logits.t(), target)
    return a2v + v2a, {"a2v": a2v, "v2a": v2a, "logits": logits}


# ------------------------------------------------------------------------------------------------
# NoPrior: L_avc
# ------------------------------------------------------------------------------------------------


def avc_official_loss(sims: torch.Tensor, *, eps_pos: float = 0.65, eps_neg: float = 0.40,
                      sigma: float = 0.03, temperature: float = 0.07, guard: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """NoPrior's L_avc as the official code computes it: the LVS trimap loss (reference §5.4).

    With ``S_v = sims[n, n]``: ``Pos = sigmoid((S_v - eps_pos) / sigma)``,
    ``Neg = 1 - sigmoid((S_v - eps_neg) / sigma)``, ``sim1 = sum(Pos S_v) / sum(Pos)``,
    ``simAll[n, m] = sum(PosAll S_nm) / sum(PosAll)`` with ``PosAll = sigmoid((S_nm - eps_pos) /
    sigma)``, multiplied by the mask ``1 - 100 I`` (the official way of pushing the diagonal
    away: it multiplies ``simAll[n, n]`` by -99, reproduced as is), ``sim2 = sum(Neg S_v) /
    sum(Neg)``; ``logits = [sim1, simAll[n, :], sim2] / temperature`` (B, B + 2) and the loss is
    the cross-entropy with target 0.

    ``guard`` (default on) replaces the official 0/0 = NaN of an empty soft region by 0, see
    :func:`guarded_ratio`; ``guard=False`` is the official arithmetic. Returns (loss, logits).
    """
    b = sims.shape[0]
    s = sims.flatten(2)  # (B, B, N)
    idx = torch.arange(b, device=sims.device)
    diag = s[idx, idx]  # (B, N) = S_v
    pos = torch.sigmoid((diag - eps_pos) / sigma)
    neg = 1.0 - torch.sigmoid((diag - eps_neg) / sigma)
    pos_all = torch.sigmoid((s - eps_pos) / sigma)
    sim1 = guarded_ratio((pos * diag).sum(-1), pos.sum(-1), guard)
    mask = 1.0 - 100.0 * torch.eye(b, dtype=sims.dtype, device=sims.device)
    sim_all = guarded_ratio((pos_all * s).sum(-1), pos_all.sum(-1), guard) * mask
    sim2 = guarded_ratio((neg * diag).sum(-1), neg.sum(-1), guard)
    logits = torch.cat([sim1[:, None], sim_all, sim2[:, None]], dim=1) / temperature
    target = torch.zeros(b, dtype=torch.long, device=sims.device)
    return F.cross_entropy(logits, target), logits


def avc_paper_loss(sims: torch.Tensor, *, alpha: float = 0.65, omega: float = 0.03,
                   guard: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """NoPrior's L_avc as printed (paper Eq. 1-3).

    Eq. 1: ``S^{n->m}(p) = cos(F^n(p), l^m) / sum_q cos(F^n(q), l^n)`` -- every map of image n is
    divided by the sum over the cells of its *own* (positive-pair) cosine map, literally.
    Eq. 2: ``M_n = sigmoid((S^{n->n} - alpha) / omega)``.
    Eq. 3: ``Pos_n = <M_n, S^{n->n}> / |M_n|``, ``Neg_n = <1 - M_n, S^{n->n}> / |1 - M_n|
    + (1 / hw) sum_{m != n} <1, S^{n->m}>`` (|.| the L1 norm = sum of the soft mask; the cross-clip
    term is a sum over the B - 1 other audios of the mean of S^{n->m}, not an average over m),
    ``L = -(1/B) sum_n log(exp Pos_n / (exp Pos_n + exp Neg_n))`` -- no temperature.

    The paper gives no alpha/omega ("same other hyper-parameters as [8]"), so the defaults are
    LVS's 0.65/0.03. Caveat: after Eq. 1 the n->n map sums to 1 (values ~1/hw), so with these
    values M_n is ~0 everywhere and Pos_n becomes a sharp soft-max-weighted average; we keep the
    literal formula and expose alpha/omega. ``guard`` as in :func:`avc_official_loss` (also used
    for a zero Eq. 1 denominator). Returns (loss, logits (B, 2) = [Pos, Neg]).
    """
    b = sims.shape[0]
    s = sims.flatten(2)  # (B, B, N)
    idx = torch.arange(b, device=sims.device)
    own_total = s[idx, idx].sum(-1)  # (B,) sum_q cos(F^n(q), l^n)
    norm = guarded_ratio(s, own_total[:, None, None].expand_as(s), guard)  # Eq. 1
    snn = norm[idx, idx]  # (B, N)
    m = torch.sigmoid((snn - alpha) / omega)  # Eq. 2
    pos = guarded_ratio((m * snn).sum(-1), m.sum(-1), guard)
    neg_in = guarded_ratio(((1.0 - m) * snn).sum(-1), (1.0 - m).sum(-1), guard)
    off = 1.0 - torch.eye(b, dtype=sims.dtype, device=sims.device)
    cross = (norm.mean(-1) * off).sum(1)
    logits = torch.stack([pos, neg_in + cross], dim=1)
    loss = -torch.log_softmax(logits, dim=1)[:, 0].mean()
    return loss, logits


# ------------------------------------------------------------------------------------------------
# NoPrior: IOI during training
# ------------------------------------------------------------------------------------------------


@dataclass
class ObjectBank:
    """The object bank of one item after the IOI loop and the grouping (paper Sec. 3.3-3.4).

    Attributes:
        vectors: ``(T, C)`` the object vectors ``E_t = F^_v[:, seed_t]`` in iteration order,
            gathered from the differentiable features (gradients flow into ``F^_v``).
        seeds: ``(T,)`` int64 flat seed cells (``row * w + col``) chosen by ``streamloc.ioi``.
        seed_scores: ``(T,)`` ``S_v`` at the seeds (detached).
        background: ``(T,)`` bool, entries rejected as background (``cos(E_n, E_t) > tau1``).
        groups: the objects: ascending bank indices per object, in ``streamloc.ioi`` order. The
            union-find root of a group (the official anchor) is its last member: the code merges
            ``parent[root(k)] = root(j)`` while scanning ``j`` upwards, so every union makes the
            current ``j`` the root and the largest member is the final root.
    """

    vectors: torch.Tensor
    seeds: torch.Tensor
    seed_scores: torch.Tensor
    background: np.ndarray
    groups: list[np.ndarray]

    @property
    def roots(self) -> list[int]:
        return [int(g[-1]) for g in self.groups]


def _match_cell(flat: np.ndarray, vector: np.ndarray) -> int:
    hits = np.flatnonzero((flat == vector[:, None]).all(axis=0))
    if hits.size == 0:
        raise RuntimeError("streamloc.ioi returned an object vector that is no cell of F^_v")
    return int(hits[0])


def collect_object_banks(sound_map: torch.Tensor, features: torch.Tensor,
                         background: torch.Tensor, *, eps: float = 0.1, tau1: float = 0.7,
                         tau2: float = 0.6, rule: str = "official", max_iter: int | None = None
                         ) -> list[ObjectBank]:
    """Run the IOI decisions of ``streamloc.ioi`` without gradients, then gather ``E_t``.

    The discrete part (argmax seeds, regions, background test, union-find) is
    :func:`streamloc.ioi.identify_objects` on the detached float32 ``S_v``, ``F^_v``, ``E_n`` of
    each item (each item on its own, like the official code with batch size 1; the official
    batched loop also appends zero vectors for items that finished early, which ``streamloc.ioi``
    deliberately does not reproduce). ``identify_objects`` reports the objects but not the
    background-rejected bank entries nor every member's seed, which the official OSC negative
    needs; the loop (seeds and regions) does not depend on ``tau1``/``tau2``, which only act in the
    grouping, so a second call with ``tau1 = tau2 = 1`` returns every bank entry as its own group
    and hence every seed. (Only an entry whose float64 cosine with ``E_n`` rounds above 1 -- a
    vector exactly parallel to ``E_n`` -- would be missing; it is then left out of the bank.)

    The vectors are then gathered from the differentiable ``features`` at those seeds, so the
    OSC loss back-propagates through ``E_t`` into ``F^_v`` (and through ``E_n``), as officially.
    """
    b, c, h, w = features.shape
    s_np = sound_map.detach().to("cpu", torch.float32).numpy()
    f_np = features.detach().to("cpu", torch.float32).numpy()
    e_np = background.detach().to("cpu", torch.float32).numpy()
    opts = {"eps": eps, "rule": rule, "max_iter": max_iter}
    banks = []
    for i in range(b):
        groups = ioi.identify_objects(s_np[i], f_np[i], e_np[i], tau1=tau1, tau2=tau2, **opts)
        every = ioi.identify_objects(s_np[i], f_np[i], e_np[i], tau1=1.0, tau2=1.0, **opts)
        flat = f_np[i].reshape(c, h * w)
        seed_of: dict[int, int] = {}
        for g in every:
            for k, t in enumerate(g.members.tolist()):
                if k == 0:
                    seed_of[t] = g.seed[0] * w + g.seed[1]
                else:
                    seed_of[t] = _match_cell(flat, g.vectors[k])
        order = sorted(seed_of)
        position = {t: p for p, t in enumerate(order)}
        seeds = np.array([seed_of[t] for t in order], dtype=np.int64)
        in_group = np.zeros(len(order), dtype=bool)
        members = []
        for g in groups:
            try:
                idx = np.array([position[t] for t in g.members.tolist()], dtype=np.int64)
            except KeyError:
                raise RuntimeError("streamloc.ioi: an object member is missing from the bank"
                                   ) from None
            if not np.array_equal(flat[:, seeds[idx]].T, g.vectors):
                raise RuntimeError("streamloc.ioi: object vectors are not F^_v at the seeds")
            in_group[idx] = True
            members.append(idx)
        seeds_t = torch.from_numpy(seeds).to(features.device)
        vectors = features[i].flatten(1)[:, seeds_t].t()
        scores = sound_map[i].detach().flatten()[seeds_t]
        banks.append(ObjectBank(vectors, seeds_t, scores, ~in_group, members))
    return banks


# ------------------------------------------------------------------------------------------------
# NoPrior: L_osc
# ------------------------------------------------------------------------------------------------


def osc_official_loss(banks: list[ObjectBank], backgrounds: torch.Tensor) -> torch.Tensor:
    """OSC loss as the official ``object_loss`` computes it (reference §5.4).

    For every item and every non-background group: anchor = ``E_root`` (skipped if the sum of its
    entries is 0); positive = mean of the group's member vectors (root included); negative = mean
    of **all other** bank entries (other groups and background-rejected entries) **plus** ``E_n``
    (a vector sum; skipped when it sums to 0 or has a NaN -- a group holding the whole bank makes
    the mean of an empty set NaN); all three L2-normalised (eps 1e-12);
    ``loss += (1 - <a, p>) + <a, n>``. The total is divided by the batch size B (not by the
    number of objects).
    """
    total = backgrounds.new_zeros(())
    for i, bank in enumerate(banks):
        v = bank.vectors
        n_bank = v.shape[0]
        for idx in bank.groups:
            anchor = v[int(idx[-1])]
            if float(anchor.detach().sum()) == 0.0:
                continue
            others = np.setdiff1d(np.arange(n_bank), idx)
            if others.size == 0:  # official: mean of an empty set is NaN -> skipped
                continue
            positive = v[torch.as_tensor(idx, device=v.device)].mean(0)
            negative = v[torch.as_tensor(others, device=v.device)].mean(0) + backgrounds[i]
            neg_d = negative.detach()
            if float(neg_d.sum()) == 0.0 or bool(torch.isnan(neg_d).any()):
                continue
            a = F.normalize(anchor, dim=0)
            p = F.normalize(positive, dim=0)
            n = F.normalize(negative, dim=0)
            total = total + (1.0 - a @ p) + a @ n
    return total / len(banks)


def _cos(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return (a @ b) / (a.norm() * b.norm()).clamp_min(eps)


def osc_paper_loss(banks: list[ObjectBank], backgrounds: torch.Tensor) -> torch.Tensor:
    """OSC loss as printed (paper Eq. 4), with our reading of Sec. 3.5.

    Sec. 3.5: "in the bank O_b, the anchor A_k is the most representative cell of object k; P_k
    consists of cells attributed to the same object, N_k is from different objects or
    backgrounds". Reading: cells are bank entries ``E_t``;
    * ``A_k`` = the member whose seed has the highest sound-associated score ``S_v`` (the cell
      IOI trusted most; seeds are taken in decreasing ``S_v`` order, so this is usually the
      group's first member; ties go to the earlier member);
    * ``P_k`` = all members of object k (anchor included, so a one-cell object has C_p = 1);
    * ``N_k`` = the bank entries of the other objects, the background-rejected bank entries and
      the negative cell vector ``E_n`` (never empty);
    * ``Sim(A, P)`` of a set = the cosine with the set's mean vector ("composition of cells").
    ``L_k = (1 - C_pk) + C_nk``; ``L = (1/B) sum_b (1/K_b) sum_k L_k``; an item with K_b = 0
    contributes 0 (and still counts in B). The cosine is ``<a, b> / max(|a||b|, 1e-8)``.
    """
    total = backgrounds.new_zeros(())
    for i, bank in enumerate(banks):
        if not bank.groups:
            continue
        v = bank.vectors
        n_bank = v.shape[0]
        item = backgrounds.new_zeros(())
        for idx in bank.groups:
            idx_t = torch.as_tensor(idx, device=v.device)
            anchor = v[int(idx[int(torch.argmax(bank.seed_scores[idx_t]))])]
            positive = v[idx_t].mean(0)
            others = torch.as_tensor(np.setdiff1d(np.arange(n_bank), idx), device=v.device)
            negative = torch.cat([v[others], backgrounds[i][None]], dim=0).mean(0)
            item = item + (1.0 - _cos(anchor, positive)) + _cos(anchor, negative)
        total = total + item / len(bank.groups)
    return total / len(banks)


# ------------------------------------------------------------------------------------------------
# Synthetic task
# ------------------------------------------------------------------------------------------------

#: BGR colours of the squares and the tone (Hz) each one sounds.
PALETTE_BGR = ((40, 40, 230), (40, 200, 40), (230, 60, 40), (40, 220, 230))
TONES_HZ = (440.0, 1100.0, 2300.0, 3900.0)


def synthetic_av_batch(model: Any, batch_size: int, generator: torch.Generator, *,
                       max_sources: int = 2) -> dict[str, torch.Tensor]:
    """A tiny learnable audio-visual task in the model's own input format.

    Each item shows 1..``max_sources`` squares of distinct palette colours on a grey noise
    background (one square per vertical strip, so they never overlap) and sounds the tones tied
    to those colours (sines with random phase, mixed with equal weights when there are several,
    plus faint noise). Images go through ``streamloc.features.preprocess_images`` with the model's
    image config; audio through the model's frontend (``model.make_frontend()``).

    Returns ``images`` (B, 3, H, W), ``spectrograms`` (B, 1, F, T), ``waveforms`` (B, n),
    ``classes`` (B, max_sources) colour ids (-1 padding), ``masks`` (B, max_sources, H, W) bool,
    ``num_sources`` (B,). Fully determined by ``generator``.
    """

    if not 1 <= max_sources <= len(PALETTE_BGR):
        raise ValueError(f"max_sources must be in [1, {len(PALETTE_BGR)}], got {max_sources}")
    h, w = model.config.image.size
    sr = model.config.audio.sample_rate
    n = model.config.audio.num_samples
    if max(TONES_HZ) >= 0.45 * sr:
        raise ValueError(f"sample rate {sr} too low for the synthetic tones {TONES_HZ}")
    strip = w // max_sources
    side = max(2, min(h, strip) * 2 // 3)

    def randint(lo: int, hi: int, size=()) -> np.ndarray:  # [lo, hi)
        return torch.randint(lo, hi, size, generator=generator).numpy()

    frames = np.empty((batch_size, h, w, 3), np.uint8)
    waves = np.zeros((batch_size, n), np.float64)
    classes = np.full((batch_size, max_sources), -1, np.int64)
    masks = np.zeros((batch_size, max_sources, h, w), bool)
    counts = np.zeros(batch_size, np.int64)
    t = np.arange(n) / sr
    for i in range(batch_size):
        k = int(randint(1, max_sources + 1))
        colours = torch.randperm(len(PALETTE_BGR), generator=generator)[:k].numpy()
        strips = torch.randperm(max_sources, generator=generator)[:k].numpy()
        frames[i] = (80 + randint(0, 96, (h, w, 3))).astype(np.uint8)
        for j, (col, s) in enumerate(zip(colours, strips)):
            y0 = int(randint(0, h - side + 1))
            x0 = int(s) * strip + int(randint(0, strip - side + 1))
            frames[i, y0:y0 + side, x0:x0 + side] = PALETTE_BGR[col]
            masks[i, j, y0:y0 + side, x0:x0 + side] = True
            phase = float(torch.rand((), generator=generator)) * 2 * np.pi
            waves[i] += 0.5 / k * np.sin(2 * np.pi * TONES_HZ[col] * t + phase)
            classes[i, j] = col
        counts[i] = k
        waves[i] += 0.01 * torch.randn(n, generator=generator, dtype=torch.float64).numpy()
    return finish_synthetic_batch(model, frames, waves, classes, masks, counts)


def finish_synthetic_batch(model: Any, frames: np.ndarray, waves: np.ndarray, classes: np.ndarray,
                           masks: np.ndarray, counts: np.ndarray) -> dict[str, torch.Tensor]:
    """Images through the model's preprocessing and audio through its frontend: the batch dict
    the synthetic tasks share."""
    from streamloc.features import preprocess_images

    images = preprocess_images(frames, model.config.image)
    waveforms = torch.from_numpy(waves.astype(np.float32))
    with torch.no_grad():
        spectrograms = model.make_frontend()(waveforms)
    return {
        "images": images,
        "spectrograms": spectrograms,
        "waveforms": waveforms,
        "classes": torch.from_numpy(classes),
        "masks": torch.from_numpy(masks),
        "num_sources": torch.from_numpy(counts),
    }
