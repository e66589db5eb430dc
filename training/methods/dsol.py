"""DSOL training (Hu et al., NeurIPS 2020): both stages, as the official scripts (reference §4.3-4.5).

Stage one (``stage=1``), alternating two kinds of steps on single-source data:

* **localization** (paper Eq. 1): the batch is re-organised as the official ``batch_organize``
  does: ``2B`` items interleaved ``(pos_0, neg_0, pos_1, neg_1, ...)`` with each audio duplicated,
  labels ``1, 0, 1, 0, ...``; loss = mean BCE of the global max of ``av_map`` against the labels.
  Negatives are ``batch["negative_images"]`` (frames of other videos) when present, else the
  batch's images rolled by one (the next sample's frame).
* **dictionary step** (Eqs. 2-3): object features ``o_i`` = spatial mean over ALL cells of the
  layer4 map times ``dilate(av_map > 0.05)`` (the official 4-neighbour dilation, spread only from
  interior cells), computed in eval mode; k-means (sklearn, Lloyd, ``n_init`` 10) on the
  L2-normalised ``o_i`` gives the pseudo labels; the dictionary is the per-cluster mean of the
  *un-normalised* ``o_i`` (:func:`build_dictionary`, :meth:`DSOLMethod.cluster`).
* **classification** (batches with ``"pseudo_labels"``): ``CE(v_logits, y) + CE(a_logits, y)``.
  As in the official code both optimizers step: the backbone/heads group (Adam 1e-4, wd 1e-4)
  and the class layers' own group (Adam 1e-3, wd 1e-4); class layers are re-initialised before
  each classification phase (:meth:`DSOLMethod.start_classification`).

Official schedule (``epochs`` 15, ``init_num`` 1, ``class_iter`` 3): every epoch runs one pass of
localization; from epoch ``init_num`` on (0-based) it is followed by feature extraction over the
training set, k-means, and ``class_iter`` passes of classification on the pseudo labels.

Stage two (``stage=2``, the model holds the dictionary, see ``DSOL.stage_two``), same interleaved
batches (synthetic cocktail-party images):

* ``L_loc = 0.5 · [BCE(max of positive av_maps, 1) + BCE(2×2 adaptive max-pool of negative
  av_maps (4 values each), 0)]``;
* ``L_cat = KLDiv(log_softmax(object_logits of positives), softmax(a_logits of the frozen
  stage-one audio classifier))`` in PyTorch's argument order, i.e.
  ``Σ_k q_k (log q_k − log p_k)`` with ``q`` the audio distribution and ``p`` the sounding-object
  distribution, averaged over all ``B·K`` terms as the official legacy ``KLDivLoss(reduce=True)``
  does (``kl_reduction="mean"``; ``"batchmean"`` gives the per-sample KL);
* total ``L_cat + 0.5 · L_loc``; Adam 1e-4, wd 1e-4 over everything but the (unused) class layers.

The frozen audio classifier (``audio_net`` + ``a_class_layer`` of the stage-one model, in eval
mode) is a copy taken when the method is built: from ``teacher`` when given, else from the model
itself (right when the stage-two model was just made from the stage-one weights, as the official
script loads the same file into both).

BCE terms are computed from the pre-sigmoid logits (``max sigmoid(x) = sigmoid(max x)``), equal
to the official ``BCELoss`` on the sigmoid outputs but without its log clamp at −100.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamloc.models.base import LocalizationModel
from streamloc.models.dsol import DSOL
from training.methods.base import Hyperparameters, TrainingMethod, register_method

__all__ = [
    "DSOLHyperparameters",
    "DSOLMethod",
    "AudioTeacher",
    "ClusterResult",
    "build_dictionary",
    "dilate_mask",
    "interleave",
    "kl_divergence",
    "loss_classification",
    "loss_localization",
    "loss_stage_two",
]

KL_REDUCTIONS = ("mean", "batchmean")

# Synthetic task: colours (RGB in [0, 1]) and the tone (Hz) each one "makes".
_PALETTE = ((0.9, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.2, 0.9), (0.9, 0.9, 0.1), (0.8, 0.1, 0.8), (0.1, 0.8, 0.8))
_TONES = (400.0, 900.0, 1800.0, 3000.0, 4500.0, 6500.0)


@dataclass
class DSOLHyperparameters(Hyperparameters):
    """Official settings (reference §4.5). ``epochs`` None: 15 in stage one, 5 in stage two;
    ``stage`` None: the model's stage (a different value is an error)."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 32
    epochs: int | None = None
    stage: int | None = None
    class_lr: float = 1e-3
    class_weight_decay: float = 1e-4
    init_num: int = 1
    class_iter: int = 3
    mask_threshold: float = 0.05
    kmeans_n_init: int = 10
    kmeans_seed: int | None = 0
    loc_weight: float = 0.5
    kl_reduction: str = "mean"

    def __post_init__(self) -> None:
        if self.stage not in (None, 1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage!r}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {self.kl_reduction!r}")
        self.betas = tuple(float(b) for b in self.betas)


@dataclass
class ClusterResult:
    """Output of the dictionary step: pseudo labels (N,), dictionary (K, 512) float32, the
    un-normalised object features (N, 512) and the k-means inertia."""

    labels: np.ndarray
    dictionary: np.ndarray
    features: np.ndarray
    inertia: float


class AudioTeacher(nn.Module):
    """The frozen stage-one audio classifier: ``a_class_layer(maxpool(audio_net(spec)))``.

    Always in eval mode (BatchNorm running statistics, as the official ``av_model_fix.eval()``)
    and without gradients.
    """

    def __init__(self, source: DSOL):
        super().__init__()
        self.audio_net = copy.deepcopy(source.audio_net)
        self.a_class_layer = copy.deepcopy(source.a_class_layer)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "AudioTeacher":
        return super().train(False)

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        return self.a_class_layer(torch.amax(self.audio_net(spectrograms), dim=(2, 3)))


def dilate_mask(mask: torch.Tensor) -> torch.Tensor:
    """The official ``location_dilation``: keep every set cell, and every set cell that is not on
    the border also sets its 4 neighbours. ``mask`` (..., h, w) bool; returns bool."""
    mask = mask.bool()
    interior = torch.zeros_like(mask)
    interior[..., 1:-1, 1:-1] = mask[..., 1:-1, 1:-1]
    out = mask.clone()
    out[..., :-1, :] |= interior[..., 1:, :]
    out[..., 1:, :] |= interior[..., :-1, :]
    out[..., :, :-1] |= interior[..., :, 1:]
    out[..., :, 1:] |= interior[..., :, :-1]
    return out


def build_dictionary(features: np.ndarray, num_clusters: int, *, n_init: int = 10,
                     seed: int | None = 0) -> ClusterResult:
    """k-means on the L2-normalised object features; dictionary = per-cluster mean of the raw ones.

    ``features`` (N, 512). sklearn ``KMeans(algorithm="lloyd")`` (the official ``'full'``).
    """
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"object features must be (N, C), got shape {features.shape}")
    if features.shape[0] < num_clusters:
        raise ValueError(f"k-means needs at least num_clusters={num_clusters} samples, got {features.shape[0]}")
    norms = np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    unit = features / np.where(norms > 0, norms, 1.0)  # sklearn.preprocessing.normalize
    kmeans = KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed, algorithm="lloyd")
    labels = kmeans.fit_predict(unit).astype(np.int64)
    dictionary = np.zeros((num_clusters, features.shape[1]), np.float32)
    for k in range(num_clusters):
        members = features[labels == k]
        if len(members) == 0:
            raise ValueError(f"k-means cluster {k} is empty: its dictionary key is undefined")
        dictionary[k] = members.mean(axis=0)
    return ClusterResult(labels, dictionary, features, float(kmeans.inertia_))


def interleave(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official ``batch_organize``: (images (2B, ...), spectrograms (2B, ...), labels (2B,))
    with positives at even and negatives at odd indices, each audio duplicated."""
    images = batch["images"]
    negatives = batch.get("negative_images")
    if negatives is None:
        if images.shape[0] < 2:
            raise ValueError("DSOL needs negative_images or a batch of at least 2 (negatives = other samples)")
        negatives = torch.roll(images, shifts=-1, dims=0)
    if negatives.shape != images.shape:
        raise ValueError(f"negative_images {tuple(negatives.shape)} must match images {tuple(images.shape)}")
    specs = batch["spectrograms"]
    b = images.shape[0]
    pair_images = torch.stack([images, negatives], dim=1).reshape(2 * b, *images.shape[1:])
    pair_specs = specs.repeat_interleave(2, dim=0)
    labels = torch.tensor([1.0, 0.0], device=images.device, dtype=images.dtype).repeat(b)
    return pair_images, pair_specs, labels


def loss_localization(av_logit: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Stage one, Eq. 1: mean BCE of ``sigmoid(max_p av_logit)`` (= max of av_map) vs ``labels``.
    ``av_logit`` (N, h, w) pre-sigmoid maps, ``labels`` (N,) 1 = matching pair, 0 = not."""
    return F.binary_cross_entropy_with_logits(av_logit.amax(dim=(1, 2)), labels.to(av_logit.dtype))


def loss_classification(v_logits: torch.Tensor, a_logits: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage one, pseudo-label classification: (CE(v_logits, y), CE(a_logits, y)); the loss is
    their sum."""
    labels = labels.long()
    return F.cross_entropy(v_logits, labels), F.cross_entropy(a_logits, labels)


def kl_divergence(log_p: torch.Tensor, q: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """PyTorch ``KLDivLoss`` semantics: ``q · (log q − log_p)``, 0 where q = 0; "mean" over all
    elements (the official legacy ``reduce=True``) or "batchmean" (sum / batch)."""
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    terms = torch.xlogy(q, q) - q * log_p
    return terms.mean() if reduction == "mean" else terms.sum() / log_p.shape[0]


def loss_stage_two(av_logit: torch.Tensor, object_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   *, loc_weight: float = 0.5, kl_reduction: str = "mean",
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage two, Eq. 8, on an interleaved batch (positives at even, negatives at odd indices).

    ``av_logit`` (2B, h, w) pre-sigmoid maps, ``object_logits`` (2B, K) sounding-object logits,
    ``teacher_logits`` (B, K) the frozen audio classifier's logits of the positives' audio.
    Returns ``(total, L_cat, L_loc)`` with
    ``L_loc = 0.5 [BCE(max pos, 1) + BCE(2×2 adaptive max-pool neg, 0)]``,
    ``L_cat = KLDiv(log_softmax(object_logits[pos]), softmax(teacher_logits))``,
    ``total = L_cat + loc_weight · L_loc``.
    """
    pos = av_logit[0::2].amax(dim=(1, 2))
    neg = F.adaptive_max_pool2d(av_logit[1::2].unsqueeze(1), 2).reshape(-1)
    loss_loc = 0.5 * (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                      + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
    target = torch.softmax(teacher_logits.detach(), dim=1)
    log_p = torch.log_softmax(object_logits[0::2], dim=1)
    loss_cat = kl_divergence(log_p, target, kl_reduction)
    return loss_cat + loc_weight * loss_loc, loss_cat, loss_loc


@register_method
class DSOLMethod(TrainingMethod):
    """DSOL's losses for one stage (``hparams.stage`` or the model's)."""

    name = "dsol"
    model_name = "dsol"
    hparams_class = DSOLHyperparameters

    def __init__(self, model: LocalizationModel, hparams: DSOLHyperparameters | None = None,
                 teacher: DSOL | None = None):
        if not isinstance(model, DSOL):
            raise TypeError(f"the dsol training method needs a DSOL model, got {type(model).__name__}")
        if hparams is not None and not isinstance(hparams, DSOLHyperparameters):
            raise TypeError(f"DSOL needs DSOLHyperparameters, got {type(hparams).__name__}")
        hp = dataclasses.replace(hparams) if hparams is not None else DSOLHyperparameters()
        if hp.stage is None:
            hp.stage = model.stage
        if hp.stage != model.stage:
            raise ValueError(
                f"hparams stage={hp.stage} but the model is a stage-{model.stage} DSOL; build the "
                "model with stage=2 (or DSOL.stage_two(dictionary)) for stage two"
            )
        if hp.epochs is None:
            hp.epochs = 15 if hp.stage == 1 else 5
        super().__init__(model, hp)
        self.teacher: AudioTeacher | None = None
        if hp.stage == 2:
            source = teacher if teacher is not None else model
            if source.config.num_clusters != model.config.num_clusters:
                raise ValueError("the teacher's a_class_layer must have num_clusters outputs")
            self.teacher = AudioTeacher(source).to(next(model.parameters()).device)
        self._frontend = None

    @property
    def stage(self) -> int:
        return int(self.hparams.stage)

    # -- parameters and optimizer ---------------------------------------------------------------
    def _classifier_ids(self) -> set[int]:
        return {id(p) for p in self.model.classifier_parameters()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Stage one: everything (class layers in their own optimizer group); stage two:
        everything but the class layers, which stage two's losses never reach."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.stage == 2:
            skip = self._classifier_ids()
            params = [p for p in params if id(p) not in skip]
        return params

    def make_optimizer(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if self.stage == 2:
            return torch.optim.Adam(self.trainable_parameters(), lr=hp.lr, betas=hp.betas,
                                    weight_decay=hp.weight_decay)
        skip = self._classifier_ids()
        main = [p for p in self.trainable_parameters() if id(p) not in skip]
        classes = [p for p in self.model.classifier_parameters() if p.requires_grad]
        return torch.optim.Adam([
            {"params": main, "lr": hp.lr, "weight_decay": hp.weight_decay},
            {"params": classes, "lr": hp.class_lr, "weight_decay": hp.class_weight_decay},
        ], lr=hp.lr, betas=hp.betas)

    def start_classification(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Re-initialise the class layers (new pseudo labels = new class order) and forget their
        Adam state, as the official per-epoch re-creation of the layers and their optimizer."""
        self.model.reset_classifiers()
        if optimizer is not None:
            for p in self.model.classifier_parameters():
                optimizer.state.pop(p, None)

    def clusters_after_epoch(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` ends with the dictionary step + classification (stage one)."""
        return self.stage == 1 and epoch >= self.hparams.init_num

    # -- losses ---------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.stage == 2:
            return self.stage_two_loss(batch)
        if "pseudo_labels" in batch:
            return self.classification_loss(batch)
        return self.localization_loss(batch)

    def localization_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage one, Eq. 1: BCE(GMP(av_map), match) over the interleaved pairs."""
        images, specs, labels = interleave(batch)
        av_logit = self.model.parts(images, specs)["av_logit"]
        loss = loss_localization(av_logit, labels)
        with torch.no_grad():
            score = torch.sigmoid(av_logit.amax(dim=(1, 2)))
            acc = (torch.round(score) == labels).float().mean()
        return loss, {"loss_loc": float(loss.detach()), "acc": float(acc),
                      "pos_score": float(score[0::2].mean()), "neg_score": float(score[1::2].mean())}

    def classification_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage one: CE(v_logits, y) + CE(a_logits, y) with the k-means pseudo labels y."""
        labels = torch.as_tensor(batch["pseudo_labels"], device=batch["images"].device).long()
        p = self.model.parts(batch["images"], batch["spectrograms"], logits=True)
        loss_v, loss_a = loss_classification(p["v_logits"], p["a_logits"], labels)
        loss = loss_v + loss_a
        with torch.no_grad():
            v_acc = (p["v_logits"].argmax(1) == labels).float().mean()
            a_acc = (p["a_logits"].argmax(1) == labels).float().mean()
        return loss, {"loss_cls": float(loss.detach()), "loss_v": float(loss_v.detach()),
                      "loss_a": float(loss_a.detach()), "v_acc": float(v_acc), "a_acc": float(a_acc)}

    def stage_two_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage two, Eq. 8: L_cat + loc_weight · L_loc."""
        hp = self.hparams
        images, specs, _ = interleave(batch)
        p = self.model.parts(images, specs)
        teacher = self.teacher
        if next(teacher.parameters()).device != batch["spectrograms"].device:
            teacher.to(batch["spectrograms"].device)
        with torch.no_grad():
            teacher_logits = teacher(batch["spectrograms"])
        loss, loss_cat, loss_loc = loss_stage_two(p["av_logit"], p["object_logits"], teacher_logits,
                                                  loc_weight=hp.loc_weight, kl_reduction=hp.kl_reduction)
        with torch.no_grad():
            agree = (p["object_logits"][0::2].argmax(1) == teacher_logits.argmax(1)).float().mean()
            pos_score = torch.sigmoid(p["av_logit"][0::2].amax(dim=(1, 2))).mean()
            neg_score = torch.sigmoid(p["av_logit"][1::2].amax(dim=(1, 2))).mean()
        return loss, {"loss_cat": float(loss_cat.detach()), "loss_loc": float(loss_loc.detach()),
                      "class_agreement": float(agree), "pos_score": float(pos_score),
                      "neg_score": float(neg_score)}

    # -- dictionary step ------------------------------------------------------------------------
    @torch.no_grad()
    def object_features(self, images: torch.Tensor, spectrograms: torch.Tensor) -> torch.Tensor:
        """Eq. 2 as the official ``extract_feature`` (eval mode): (B, 512) =
        mean over all cells of layer4 · dilate(av_map > mask_threshold)."""
        was_training = self.model.training
        self.model.eval()
        try:
            p = self.model.parts(images, spectrograms)
        finally:
            self.model.train(was_training)
        mask = dilate_mask(p["av_map"] > self.hparams.mask_threshold)
        return (p["v_fea"] * mask.unsqueeze(1).to(p["v_fea"].dtype)).mean(dim=(2, 3))

    def cluster(self, batches: Iterable[dict[str, Any]]) -> ClusterResult:
        """Object features of every batch (positives only), k-means, dictionary (Eq. 3)."""
        feats = [self.object_features(b["images"], b["spectrograms"]).cpu() for b in batches]
        if not feats:
            raise ValueError("no batches to cluster")
        features = torch.cat(feats).numpy()
        return build_dictionary(features, self.model.config.num_clusters,
                                n_init=self.hparams.kmeans_n_init, seed=self.hparams.kmeans_seed)

    # -- synthetic data -------------------------------------------------------------------------
    def _spectrograms(self, waves: torch.Tensor) -> torch.Tensor:
        if self._frontend is None:
            self._frontend = self.model.make_frontend()
        device = next(self.model.parameters()).device
        self._frontend.to(device)
        with torch.no_grad():
            return self._frontend(waves.to(device))

    def _render(self, colours: list[int], gen: torch.Generator) -> torch.Tensor:
        h, w = self.model.config.image.size
        img = 0.45 + 0.1 * torch.rand(3, h, w, generator=gen)
        side_h, side_w = max(2, h // 4), max(2, w // 4)
        quadrants = torch.randperm(4, generator=gen)[: len(colours)].tolist()
        for colour, q in zip(colours, quadrants):
            qh, qw = h // 2, w // 2
            top = (q // 2) * qh + int(torch.randint(0, max(1, qh - side_h + 1), (1,), generator=gen))
            left = (q % 2) * qw + int(torch.randint(0, max(1, qw - side_w + 1), (1,), generator=gen))
            img[:, top:top + side_h, left:left + side_w] = torch.tensor(_PALETTE[colour]).view(3, 1, 1)
        cfg = self.model.config.image
        mean = torch.tensor(cfg.mean).view(3, 1, 1)
        std = torch.tensor(cfg.std).view(3, 1, 1)
        return (img - mean) / std

    def _wave(self, colours: list[int], gen: torch.Generator) -> torch.Tensor:
        a = self.model.config.audio
        t = torch.arange(a.num_samples, dtype=torch.float64) / a.sample_rate
        wave = 0.01 * torch.randn(a.num_samples, generator=gen, dtype=torch.float64)
        for c in colours:
            phase = 2 * math.pi * float(torch.rand(1, generator=gen))
            wave += 0.4 * torch.sin(2 * math.pi * _TONES[c] * t + phase)
        return wave.float()

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        """Coloured squares on a grey image, each colour tied to a tone.

        Stage one: one square of one of 3 colours, audio = its tone; the negative frame shows a
        square of another colour. Keys ``images``, ``negative_images``, ``spectrograms``,
        ``classes`` (B,) (ground truth, unused by the loss).
        Stage two: two squares of 4 colours in two quadrants, one or both sounding (audio = sum of
        their tones); the negative frame shows two squares of non-sounding colours. Keys
        ``images``, ``negative_images``, ``spectrograms``, ``sounding`` (B, 4) multi-hot.
        """
        gen = generator
        images, negatives, waves, classes = [], [], [], []
        n_colours = 3 if self.stage == 1 else 4
        for _ in range(batch_size):
            perm = torch.randperm(n_colours, generator=gen).tolist()
            if self.stage == 1:
                sounding, shown, others = perm[:1], perm[:1], perm[1:2]
            else:
                n_sounding = 1 + int(torch.randint(0, 2, (1,), generator=gen))
                sounding, shown = perm[:n_sounding], perm[:2]
                others = perm[n_sounding:][:2] if n_sounding == 1 else perm[2:4]
            images.append(self._render(shown, gen))
            negatives.append(self._render(others, gen))
            waves.append(self._wave(sounding, gen))
            classes.append(sounding)
        batch = {
            "images": torch.stack(images),
            "negative_images": torch.stack(negatives),
            "spectrograms": self._spectrograms(torch.stack(waves)).cpu(),
        }
        if self.stage == 1:
            batch["classes"] = torch.tensor([c[0] for c in classes])
        else:
            hot = torch.zeros(batch_size, n_colours)
            for i, c in enumerate(classes):
                hot[i, c] = 1.0
            batch["sounding"] = hot
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in batch.items()}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Dataset items → the batch of ``synthetic_batch``: ``images``, ``negative_images`` (the
        images rolled by one: each item's negative is the next item's frame, another video, as
        the official ``batch_organize``), ``spectrograms`` and, in stage one, ``classes`` (B,)
        (the first source's class id, -1 when the dataset has none; unused by the loss). Stage
        two's synthetic ``sounding`` ground truth has no dataset counterpart and is left out
        (the stage-two loss does not read it)."""
        from training.methods.collate import collate_classes, collate_images, collate_waveforms, spectrograms

        if len(samples) < 2:
            raise ValueError(f"DSOL needs at least 2 items per batch (negatives are other items' "
                             f"frames), got {len(samples)}")
        images = collate_images(self.model, samples, self.name)
        waves = collate_waveforms(self.model, samples, self.name)
        batch = {
            "images": images,
            "negative_images": torch.roll(images, shifts=-1, dims=0),
            "spectrograms": spectrograms(self.model, waves),
        }
        if self.stage == 1:
            batch["classes"] = collate_classes(samples, 1)[:, 0]
        return batch
