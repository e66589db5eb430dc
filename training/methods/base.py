"""The contract of a training method, and its registry.

A `TrainingMethod` wraps a `streamloc.models` model (the inference model `streamloc run` uses) and
adds what training needs: the paper's loss, which parameters it trains, the paper's optimizer, and a
tiny synthetic batch for smoke tests. Batches are dicts of tensors; keys are method-specific but
always include "images" (B, 3, H, W) ImageNet-normalised and "spectrograms" (B, 1, F, T) as the
model's frontend makes them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from streamloc.models import LocalizationModel, create_model

_BUILTIN = ("training.methods.ezvsl", "training.methods.noprior", "training.methods.mixloc",
            "training.methods.dsol", "training.methods.avgn")
_REGISTRY: dict[str, type["TrainingMethod"]] = {}


@dataclass
class Hyperparameters:
    """Optimizer settings; each method's subclass sets the paper's defaults."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 100


class TrainingMethod:
    """Base class; subclasses set `name`, `hparams_class`, and implement `loss` + `synthetic_batch`."""

    name: ClassVar[str]
    model_name: ClassVar[str]
    hparams_class: ClassVar[type[Hyperparameters]] = Hyperparameters
    # Model options for `--data synthetic-smoke` runs: small enough to train on a laptop CPU in
    # well under a minute (the user's own --model-option values take precedence).
    smoke_model_options: ClassVar[dict[str, Any]] = {"image": {"size": [64, 64]}}

    def __init__(self, model: LocalizationModel, hparams: Hyperparameters | None = None):
        self.model = model
        self.hparams = hparams or self.hparams_class()

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of one batch and a dict of named float logs (loss parts, accuracies)."""
        raise NotImplementedError

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The parameters the paper trains (frozen ones excluded)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The paper's optimizer over `trainable_parameters()` (Adam by default)."""
        return torch.optim.Adam(self.trainable_parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        """A tiny batch with learnable structure, in this method's batch format."""
        raise NotImplementedError

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Dataset items (:mod:`training.data.datasets`) → this method's batch (the DataLoader's
        ``collate_fn``). Default: ``images``, ``spectrograms``, ``waveforms``, ``classes`` (B, 1),
        ``masks`` (B, 1, H, W), ``num_sources`` (see :mod:`training.methods.collate`)."""
        from training.methods.collate import collate_common

        return collate_common(self, samples, slots=1)


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    for module in _BUILTIN:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real import error inside an existing method
                raise


def list_methods() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def create_method(name: str, model: LocalizationModel | None = None, hparams: dict | None = None,
                  **model_options: Any) -> TrainingMethod:
    """The training method `name` around `model` (or a fresh `create_model(...)` with options)."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown training method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    if model is None:
        model = create_model(cls.model_name, **model_options)
    hp = cls.hparams_class(**(hparams or {}))
    return cls(model, hp)
