"""The contract every localization method implements, and its dataclass configs.

A method is a `LocalizationModel`: `forward(images, spectrograms)` is the static-shape tensor part
(encoder pair + method head, what the backends compile) and returns a tuple of tensors named by
`output_names`; `postprocess(outputs)` is the data-dependent numpy part for ONE item (e.g. the IOI
step) that never enters a compiled graph.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from streamloc.features import AudioFrontend, AudioFrontendConfig, ImagePreprocessConfig


def _from_dict(cls: type, data: Any) -> Any:
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; valid options: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


@dataclass
class ModelConfig:
    """Options shared by every method: the audio frontend and the image preprocessing."""

    audio: AudioFrontendConfig = field(default_factory=AudioFrontendConfig)
    image: ImagePreprocessConfig = field(default_factory=ImagePreprocessConfig)

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys are an error naming the valid ones."""
        return _from_dict(cls, data)


@dataclass
class GridObject:
    """One object found on the model's feature grid (before resizing to the frame).

    `map` is the object's raw localization map (any range, the Localizer normalises it); `cells`
    the grid cells it claimed (None: the Localizer thresholds the normalised map instead).
    """

    map: np.ndarray
    score: float
    cells: np.ndarray | None = None
    vector: np.ndarray | None = None


def minmax(x: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min); a constant map becomes all zeros."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


class LocalizationModel(nn.Module):
    """Base class of the methods in the registry."""

    method: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    output_names: ClassVar[tuple[str, ...]]
    # State-dict prefixes whose weights come, frozen, from an installed package (not saved in
    # checkpoints; re-created by the constructor and checked by hash on load).
    external_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def make_frontend(self) -> AudioFrontend:
        """The audio frontend this model was trained with."""
        return AudioFrontend(self.config.audio)

    def spectrogram_shape(self) -> tuple[int, ...]:
        """Shape (1, F, T) of one spectrogram as the frontend makes it for one window."""
        with torch.no_grad():
            n = self.config.audio.num_samples
            return tuple(self.make_frontend()(torch.zeros(1, n)).shape[1:])

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def postprocess(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[GridObject]]:
        """Per-item numpy post-processing: (sound map (h, w), objects)."""
        raise NotImplementedError

    def example_inputs(self, batch: int = 1, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Random inputs of the right static shapes (for tracing, export and benchmarks)."""
        h, w = self.config.image.size
        spec_shape = self.spectrogram_shape()
        images = torch.randn(batch, 3, h, w, device=device)
        specs = torch.randn(batch, *spec_shape, device=device)
        return images, specs
