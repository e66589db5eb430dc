"""AVGN, "Audio-Visual Grouping Network" (Mo & Tian, CVPR 2023): class-token grouping.

Architecture (paper Sec. 3.2-3.3, reference §2.2; the official code is followed where they differ):

* Backbones and projections exactly as EZ-VSL (``imgnet`` → ``img_proj`` 1×1 conv → L2 over
  channels: ``img`` (B, D, h, w); ``audnet`` → global max pool → ``aud_proj`` → L2: ``aud``
  (B, D)).
* ``av_token``: K learnable class tokens (K, D), **zero-initialised**, shared by both modalities.
* Two encoders (``audio_encoder``, ``visual_encoder``), each: concatenate the modality tokens (the
  single audio vector, or the h·w visual cells) with the class tokens, run ``depth`` pre-norm ViT
  blocks (``x += DropPath(MHSA(LN x)); x += DropPath(MLP(LN x))``, fused ``qkv``, 8 heads, GELU MLP
  of ratio 4, DropPath 0.1 in every block), split, then one GroupingBlock (GroupViT style) with
  the updated class tokens as groups:

  1. ``g = LN(tokens)``, ``x = LN(x)``; token-mixing MLP across the K axis (K → D/2 → K) then LN:
     the projected group tokens ``PGT``;
  2. ``PGT = CrossAttnBlock(PGT, x)``: ``PGT + MHA(q=PGT, k=v=x)``, ``+ MLP(LN ·)``, then a final
     (post-)LN;
  3. assignment (one head, scale D^-1/2): ``A = softmax_K(q kᵀ)`` (softmax over the **class** axis),
     ``A_kl /= (Σ_l A_kl + 1)``; ``out = proj(A v) + PGT`` (``"hard"``: straight-through one-hot of
     the same softmax, with Gumbel noise in training);
  4. ``out + MLP(LN out)`` → grouped class embeddings (B, K, D), **not** L2-normalised.

  With its single audio token, the audio grouping's cross-attention softmax runs over one key and
  is identically 1, so ``audio_encoder.grouping.pre_assign_attn.attn.{q_proj,k_proj}`` never get a
  gradient (as officially); they are kept for checkpoint compatibility.

* Heads: ``fc_prob_a``/``fc_prob_v`` (Linear D→1, sigmoid) give the per-class audio/visual
  probabilities; ``fc_cls`` (Linear D→K) classifies the class tokens themselves (training only).
* Init as the official code: EZ-VSL's init of ``audnet``/``img_proj``/``aud_proj``, then every
  Linear ← truncated normal (std 0.02, bias 0) and every LayerNorm ← (1, 0); convs and BatchNorm
  untouched; ``av_token`` zeros.

``forward(images, spectrograms)`` returns ``(class_maps, audio_probs, visual_probs)``:
``class_maps[b, k] = <img_b(p), xa[b, k]> / tau`` (B, K, h, w) — the official localisation map of
class k (the audio class embedding against the visual cells) — and ``sigmoid(fc_prob_a(xa))``,
``sigmoid(fc_prob_v(xv))`` (B, K) (the official ``sigmoid(fc(x)).sum(-1)``, i.e. the trailing
axis of size 1 dropped).

Inference. The official evaluation needs the ground-truth class (it selects ``xa[b, cls]``);
that labelled mode is :func:`localize_with_labels` (and ``postprocess(outputs, class_ids=...)``).
Live, without labels, ``postprocess`` picks the sources from the audio class probabilities: every
class with ``audio_probs[k] >= source_threshold`` becomes an object (sorted by probability), its
map the class map, its score the probability, its ``vector`` the one-hot class indicator (so
``argmax(vector)`` is the class id).

[DIFF] paper vs code: the paper's maps (Sec. 3.3) are cosines of ``g^a_n`` with ``f^v_p ⊙ g^v_n``;
the official code (followed here) uses ``<img(p), xa_k> / tau`` and never uses ``xv`` for the maps.

Not built: the official ``audio_encoder.han_encoder`` (constructed but never executed, so never
trained; :func:`from_official` drops its keys and reports them) and the optional dropout before the
projections (``--dropout_img/aud``, default 0 = identity).

Module names follow the official checkpoints (reference §2.6), so an official state dict maps onto
this model by stripping its ``module.`` prefix; :func:`from_official` does that.

>>> from streamloc.models import create_model
>>> model = create_model("avgn", num_classes=5, dim=64, image={"size": (64, 64)},
...                      audio={"window_seconds": 0.1}).eval()
>>> maps, pa, pv = model(*model.example_inputs(batch=2))
>>> tuple(maps.shape), tuple(pa.shape), tuple(pv.shape)
((2, 5, 2, 2), (2, 5), (2, 5))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamloc.models.base import GridObject, LocalizationModel, ModelConfig
from streamloc.models.common import build_visual, global_max_pool, init_official_
from streamloc.models.encoders import ResNet18
from streamloc.models.registry import register_model

__all__ = [
    "ASSIGN_MODES",
    "AVGN",
    "AVGNConfig",
    "AssignAttention",
    "Block",
    "CrossAttnBlock",
    "GroupingBlock",
    "ModalityTrans",
    "assign_weights",
    "from_official",
    "localize_with_labels",
]

#: Values of ``AVGNConfig.attn_assign``.
ASSIGN_MODES = ("soft", "hard")

#: The ``assign_eps`` of the official (GroupViT) assignment: rows are divided by (row sum + 1).
ASSIGN_EPS = 1.0


@dataclass
class AVGNConfig(ModelConfig):
    """AVGN options; defaults are the paper's (Sec. 4.1) and the official code's (reference §2.2).

    num_classes: K class tokens (221 for VGGSound-Single/Duet, the official ``train.py`` default;
        37 for VGG-Instruments; 11 for MUSIC).
    dim: D, the embedding size (512). depth_aud / depth_vis: ViT blocks of each encoder (3).
    heads: attention heads of the ViT blocks and the grouping cross-attention (8; the assignment
        attention always has one head). mlp_ratio: hidden = mlp_ratio · D in every channel MLP (4).
    token_mlp_ratio: hidden = token_mlp_ratio · D of the grouping block's token-mixing MLP across
        the K axis (GroupViT's 0.5: K → 256 → K at D = 512).
    drop_path: stochastic depth of every ViT block (0.1, constant over depth; training only).
    tau: temperature of the maps and of L_loc (0.03).
    attn_assign: ``"soft"`` (official default, paper's best) or ``"hard"`` (straight-through
        one-hot; Gumbel-softmax noise while training; paper App. B "Hard-Softmax").
    source_threshold: live inference reports the classes whose audio probability is at least
        this (0.5, the sigmoid's decision point; a library choice, the paper evaluates with labels).
    visual_backbone / visual_weights: as EZ-VSL (torchvision ResNet-18 ``.pth`` for the ImageNet
        init; not bundled).
    audio: EZ-VSL's log-PSD front-end (3 s, 257 bins); the official code reads each file at its
        native rate and the paper states 22.05 kHz (``audio={"sample_rate": 22050}``); the library
        default is 16 kHz, as for EZ-VSL.
    """

    visual_backbone: str = "resnet18"
    visual_weights: str | None = None
    num_classes: int = 221
    dim: int = 512
    depth_aud: int = 3
    depth_vis: int = 3
    heads: int = 8
    mlp_ratio: float = 4.0
    token_mlp_ratio: float = 0.5
    drop_path: float = 0.1
    tau: float = 0.03
    attn_assign: str = "soft"
    source_threshold: float = 0.5

    def __post_init__(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        positive_int("num_classes")
        positive_int("dim")
        positive_int("heads")
        positive_int("depth_aud", 0)
        positive_int("depth_vis", 0)
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        for name in ("mlp_ratio", "token_mlp_ratio"):
            if not float(getattr(self, name)) * self.dim >= 1:
                raise ValueError(f"{name} * dim must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.drop_path) < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        if not float(self.tau) > 0.0:
            raise ValueError(f"tau must be > 0, got {self.tau!r}")
        if self.attn_assign not in ASSIGN_MODES:
            raise ValueError(f"attn_assign must be one of {ASSIGN_MODES}, got {self.attn_assign!r}")
        if not 0.0 <= float(self.source_threshold) <= 1.0:
            raise ValueError(f"source_threshold must be in [0, 1], got {self.source_threshold!r}")


# ------------------------------------------------------------------------------------------------
# Transformer and grouping blocks (official grouping.py structure and parameter names)
# ------------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``p`` and
    scale the kept ones by 1 / (1 - p); identity in eval mode or when ``p == 0``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` (dropout 0, as official)."""

    def __init__(self, in_features: int, hidden: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, heads, N, c)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` Linear (bias) and ``proj``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj(_merge_heads(attn @ v))


class CrossAttention(nn.Module):
    """Multi-head attention of ``query`` over ``key`` (= value), separate ``q/k/v_proj`` (bias)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q_proj(query), self.heads)
        k = _split_heads(self.k_proj(key), self.heads)
        v = _split_heads(self.v_proj(key), self.heads)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj(_merge_heads(attn @ v))


class Block(nn.Module):
    """Pre-norm ViT block: ``x + DropPath(attn(norm1 x))``, then ``+ DropPath(mlp(norm2 x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossAttnBlock(nn.Module):
    """GroupViT's post-norm cross-attention block: ``x = q + attn(q, k)``; ``x = x + mlp(norm2 x)``;
    ``norm_post(x)`` (no norm on the attention inputs)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_post = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        x = query + self.attn(query, key)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


def _straight_through(soft: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    hard = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


def assign_weights(raw: torch.Tensor, mode: str = "soft", *, training: bool = False,
                   eps: float = ASSIGN_EPS, generator: torch.Generator | None = None) -> torch.Tensor:
    """The official assignment matrix from the raw scores ``raw`` (..., K, L).

    ``"soft"``: ``A = softmax over the K (group) axis`` (dim -2), then each row divided by its sum
    over L plus ``eps``: ``A_kl / (Σ_l A_kl + eps)``. ``"hard"``: the same with the softmax replaced
    by the straight-through one-hot of its argmax over K (forward: one-hot; backward: the softmax's
    gradient); in training Gumbel noise is added to the scores first (Gumbel-softmax, tau 1).
    """
    if mode == "soft":
        attn = torch.softmax(raw, dim=-2)
    elif mode == "hard":
        if training:
            u = torch.rand(raw.shape, dtype=raw.dtype, device=raw.device, generator=generator)
            gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(raw.dtype).tiny)))
            soft = torch.softmax(raw + gumbel, dim=-2)
        else:
            soft = torch.softmax(raw, dim=-2)
        attn = _straight_through(soft, soft.argmax(dim=-2, keepdim=True), dim=-2)
    else:
        raise ValueError(f"mode must be one of {ASSIGN_MODES}, got {mode!r}")
    return attn / (attn.sum(dim=-1, keepdim=True) + eps)


class AssignAttention(nn.Module):
    """One-head assignment of the L tokens to the K groups (``q/k/v_proj``, ``proj``, all with bias,
    scale D^-1/2): ``proj(assign_weights(q kᵀ · scale) v)``; see :func:`assign_weights`."""

    def __init__(self, dim: int, mode: str = "soft"):
        super().__init__()
        self.mode = mode
        self.scale = dim ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def attention(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The assignment matrix (B, K, L)."""
        raw = (self.q_proj(query) @ self.k_proj(key).transpose(-2, -1)) * self.scale
        return assign_weights(raw, self.mode, training=self.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attention(query, key) @ self.v_proj(key))


class GroupingBlock(nn.Module):
    """Official/GroupViT grouping block with K groups (the class tokens) and output dim = dim.

    ``forward(x, tokens)``: x (B, L, D) the modality tokens, tokens (B, K, D) the class tokens →
    (B, K, D). ``reduction`` is the identity (out_dim == dim), so it has no module.
    """

    def __init__(self, dim: int, num_tokens: int, heads: int, mlp_ratio: float,
                 token_mlp_ratio: float, assign: str = "soft"):
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.mlp_inter = Mlp(num_tokens, int(dim * token_mlp_ratio), num_tokens)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, heads, mlp_ratio)
        self.assign = AssignAttention(dim, assign)
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, int(dim * mlp_ratio))

    def project_group_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token-mixing MLP across the K axis, then LayerNorm (the "projected group tokens")."""
        mixed = self.mlp_inter(tokens.transpose(1, 2)).transpose(1, 2)
        return self.norm_post_tokens(mixed)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm_tokens(tokens)
        x = self.norm_x(x)
        pgt = self.pre_assign_attn(self.project_group_tokens(tokens), x)
        new = self.assign(pgt, x) + pgt
        return new + self.mlp_channels(self.norm_new_x(new))


class ModalityTrans(nn.Module):
    """``blocks`` over [modality tokens; class tokens], split, then ``grouping``."""

    def __init__(self, dim: int, num_tokens: int, depth: int, heads: int, mlp_ratio: float,
                 token_mlp_ratio: float, drop_path: float, assign: str):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, drop_path) for _ in range(depth))
        self.grouping = GroupingBlock(dim, num_tokens, heads, mlp_ratio, token_mlp_ratio, assign)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        h = torch.cat([x, tokens], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.grouping(h[:, :n], h[:, n:])


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


@register_model
class AVGN(LocalizationModel):
    """AVGN: ``forward(images, spectrograms) -> (class_maps, audio_probs, visual_probs)``."""

    method = "avgn"
    config_class = AVGNConfig
    output_names = ("class_maps", "audio_probs", "visual_probs")

    def __init__(self, config: AVGNConfig):
        super().__init__(config)
        c = config
        self.imgnet, channels = build_visual(c.visual_backbone, c.visual_weights)
        self.img_proj = nn.Conv2d(channels, c.dim, kernel_size=1)
        self.audnet = ResNet18(in_channels=1)
        self.aud_proj = nn.Linear(512, c.dim)
        self.av_token = nn.Parameter(torch.zeros(c.num_classes, c.dim))
        enc = dict(dim=c.dim, num_tokens=c.num_classes, heads=c.heads, mlp_ratio=c.mlp_ratio,
                   token_mlp_ratio=c.token_mlp_ratio, drop_path=c.drop_path, assign=c.attn_assign)
        self.audio_encoder = ModalityTrans(depth=c.depth_aud, **enc)
        self.visual_encoder = ModalityTrans(depth=c.depth_vis, **enc)
        self.fc_prob_a = nn.Linear(c.dim, 1)
        self.fc_prob_v = nn.Linear(c.dim, 1)
        self.fc_cls = nn.Linear(c.dim, c.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: EZ-VSL's for audnet/img_proj/aud_proj, then every Linear (std 0.02, bias
        0) and LayerNorm (1, 0) outside the visual backbone; ``av_token`` zeros."""
        init_official_(self.audnet, self.img_proj, self.aud_proj)
        for name, m in self.named_modules():
            if name.startswith("imgnet"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.av_token.zero_()

    def external_prefixes(self) -> tuple[str, ...]:
        return ()

    # -- computation ----------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised visual map (B, D, h, w) and audio vector (B, D), as EZ-VSL."""
        img = F.normalize(self.img_proj(self.imgnet(images)), dim=1)
        aud = F.normalize(self.aud_proj(global_max_pool(self.audnet(spectrograms))), dim=1)
        return img, aud

    def parts(self, images: torch.Tensor, spectrograms: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate: ``img`` (B, D, h, w), ``aud`` (B, D), ``xa``/``xv`` (B, K, D) the
        grouped audio/visual class embeddings, ``audio_logits``/``visual_logits`` (B, K) the
        pre-sigmoid probabilities."""
        img, aud = self.embed(images, spectrograms)
        tokens = self.av_token.unsqueeze(0).expand(img.shape[0], -1, -1)
        xa = self.audio_encoder(aud.unsqueeze(1), tokens)
        xv = self.visual_encoder(img.flatten(2).transpose(1, 2), tokens)
        return {
            "img": img, "aud": aud, "xa": xa, "xv": xv,
            "audio_logits": self.fc_prob_a(xa).squeeze(-1),
            "visual_logits": self.fc_prob_v(xv).squeeze(-1),
        }

    def class_maps(self, img: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        """``<img_b(p), xa[b, k]> / tau``: (B, K, h, w)."""
        return torch.einsum("bchw,bkc->bkhw", img, xa) / self.config.tau

    def token_logits(self) -> torch.Tensor:
        """``fc_cls(av_token)`` (K, K): the class tokens classifying themselves (L_token)."""
        return self.fc_cls(self.av_token)

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.parts(images, spectrograms)
        return (self.class_maps(p["img"], p["xa"]), torch.sigmoid(p["audio_logits"]),
                torch.sigmoid(p["visual_logits"]))

    # -- post-processing ------------------------------------------------------------------------
    def postprocess(self, outputs: dict[str, np.ndarray],
                    class_ids: int | Sequence[int] | None = None) -> tuple[np.ndarray, list[GridObject]]:
        """One item's ``(sound_map, objects)``.

        Live (``class_ids=None``): the classes with ``audio_probs >= source_threshold``, most
        probable first. Labelled (evaluation parity with the official code): exactly the given
        classes, in the given order. Each object: map = the class map (raw ``<img, xa_k>/tau``),
        score = the audio probability, vector = one-hot of the class id. The sound map is the
        element-wise maximum of the reported class maps, or the most probable class's map when no
        class passes the threshold.
        """
        maps = np.asarray(outputs["class_maps"], dtype=np.float32)
        probs = np.asarray(outputs["audio_probs"], dtype=np.float32).reshape(-1)
        k = maps.shape[0]
        if probs.shape[0] != k:
            raise ValueError(f"class_maps has {k} classes but audio_probs has {probs.shape[0]}")
        if class_ids is None:
            order = np.argsort(-probs, kind="stable")
            chosen = [int(c) for c in order if probs[c] >= self.config.source_threshold]
            fallback = int(order[0])
        else:
            chosen = _check_ids(np.atleast_1d(np.asarray(class_ids)), k).tolist()
            fallback = chosen[0] if chosen else int(np.argmax(probs))
        eye = np.eye(k, dtype=np.float32)
        objects = [GridObject(map=maps[c], score=float(probs[c]), vector=eye[c]) for c in chosen]
        sound_map = maps[chosen].max(axis=0) if chosen else maps[fallback]
        return sound_map, objects


def _check_ids(ids: Any, k: int) -> Any:
    if isinstance(ids, torch.Tensor):
        bad = ids.dtype.is_floating_point or bool(((ids < 0) | (ids >= k)).any())
    else:
        ids = np.asarray(ids)
        bad = ids.dtype.kind not in "iu" or bool(((ids < 0) | (ids >= k)).any())
    if bad:
        raise ValueError(f"class ids must be integers in [0, {k}), got {ids.tolist()}")
    return ids


def localize_with_labels(outputs: Mapping[str, Any] | Sequence[Any] | Any, class_ids: Any) -> Any:
    """The official labelled localisation maps: the class maps of the given classes.

    ``outputs``: the forward outputs (the tuple, a dict with ``"class_maps"``, or the class maps
    themselves), numpy or torch, batched (B, K, h, w) or one item (K, h, w). ``class_ids``:

    * one item: an int → (h, w), a sequence of N ints → (N, h, w);
    * a batch: (B,) → (B, h, w) (the official ``S[n, n] = <img_n, xa[n, cls_n]>/tau``), or (B, N) →
      (B, N, h, w) (e.g. the two sources of a duet, each with the mixture audio).

    The result has the type of ``outputs`` (numpy or torch) and the raw scale; the official
    evaluation then resizes it bicubically to 224² and min-max normalises it.
    """
    if isinstance(outputs, Mapping):
        maps = outputs["class_maps"]
    elif isinstance(outputs, (tuple, list)):
        maps = outputs[0]
    else:
        maps = outputs
    is_torch = isinstance(maps, torch.Tensor)
    if not is_torch:
        maps = np.asarray(maps)
    if maps.ndim not in (3, 4):
        raise ValueError(f"class maps must be (K, h, w) or (B, K, h, w), got shape {tuple(maps.shape)}")
    k = maps.shape[-3]
    if is_torch:
        ids = torch.as_tensor(class_ids, device=maps.device)
    else:
        ids = np.asarray(class_ids)
    ids = _check_ids(ids, k)
    if maps.ndim == 3:
        return maps[ids]
    b = maps.shape[0]
    if ids.ndim not in (1, 2) or ids.shape[0] != b:
        raise ValueError(f"a batch of {b} items needs class ids of shape ({b},) or ({b}, N), "
                         f"got {tuple(ids.shape)}")
    rows = torch.arange(b, device=maps.device) if is_torch else np.arange(b)
    if ids.ndim == 2:
        rows = rows[:, None]
    return maps[rows, ids]


# ------------------------------------------------------------------------------------------------
# Official checkpoints
# ------------------------------------------------------------------------------------------------

_UNUSED_PREFIXES = ("audio_encoder.han_encoder.", "visual_encoder.han_encoder.")


def _depth(state: Mapping[str, torch.Tensor], encoder: str) -> int:
    prefix = f"{encoder}.blocks."
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def from_official(obj, **extra: Any) -> tuple[dict, dict, dict]:
    """Official AVGN checkpoint → (config, state dict, notes).

    Reads ``{'model': state_dict, 'optimizer', 'epoch', 'best_Precision', 'best_AP', 'best_F1'}``
    (reference §2.6) or a bare state dict, strips the DDP ``module.`` prefix, and drops the keys of
    the never-executed ``audio_encoder.han_encoder`` (listed in ``notes['dropped']``). Every other
    key keeps its name. ``config`` carries what the tensors determine: ``num_classes`` and ``dim``
    (``av_token``), ``depth_aud``/``depth_vis`` (block count), ``mlp_ratio`` and
    ``token_mlp_ratio`` (MLP widths); ``extra`` entries (e.g. ``heads``, ``attn_assign``,
    ``source_threshold``) are added to it, since heads and the assignment mode are not stored.
    """
    from streamloc.models.convert import unwrap_state_dict

    state = unwrap_state_dict(obj, containers=("model", "state_dict"), prefixes=("module.",))
    dropped = sorted(k for k in state if k.startswith(_UNUSED_PREFIXES))
    out = {k: v for k, v in state.items() if not k.startswith(_UNUSED_PREFIXES)}
    config: dict[str, Any] = {}
    if "av_token" in out:
        config["num_classes"], config["dim"] = (int(s) for s in out["av_token"].shape)
        dim = config["dim"]
        for enc, field_name in (("audio_encoder", "depth_aud"), ("visual_encoder", "depth_vis")):
            if any(k.startswith(f"{enc}.") for k in out):
                config[field_name] = _depth(out, enc)
        fc1 = out.get("audio_encoder.grouping.mlp_channels.fc1.weight")
        if fc1 is not None:
            config["mlp_ratio"] = fc1.shape[0] / dim
        inter = out.get("audio_encoder.grouping.mlp_inter.fc1.weight")
        if inter is not None:
            config["token_mlp_ratio"] = inter.shape[0] / dim
    config.update(extra)
    notes = [
        "heads and attn_assign are not stored in the weights: the official values (8, 'soft') are "
        "assumed unless given",
        "the official inference needs the ground-truth class; live postprocess picks the classes "
        "with audio probability >= source_threshold instead (localize_with_labels is the "
        "labelled mode)",
    ]
    if dropped:
        notes.append(f"dropped {len(dropped)} tensors of the never-executed han_encoder (never trained)")
    for name in ("epoch", "best_Precision", "best_AP", "best_F1"):
        if isinstance(obj, Mapping) and name in obj:
            value = obj[name]
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                notes.append(f"{name} = {value}")
    return config, out, {"dropped": dropped, "notes": notes}
