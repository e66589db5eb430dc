"""Dataset items → a method's batch, on the fly (the ``collate_fn`` of the training DataLoader).

Items are the dicts of :mod:`training.data.datasets`: ``"audio"`` float32 (L,) at
``"sample_rate"``, ``"frame"`` uint8 RGB (H, W, 3) or ``"frames"`` (k, H, W, 3) for pairing rows
(the first frame is the visible one), ``"masks"`` (S, m, m), ``"class_ids"`` (S,) with -1 for no
class, ``"source_audio"`` (k, L) for pairing rows. :func:`collate_common` turns them into the keys
every method's :meth:`~training.methods.base.TrainingMethod.synthetic_batch` shares:

* ``images`` (B, 3, H, W): RGB frames → BGR → :func:`streamloc.features.preprocess_images` with
  the model's image config (the inference preprocessing);
* ``waveforms`` (B, N): the audio resampled to the model's rate with soxr
  (:func:`streamloc.features.resample`), centre-cropped to the model's ``num_samples`` or tiled
  when shorter (as the datasets tile short files);
* ``spectrograms`` (B, 1, F, T): ``model.make_frontend()`` of ``waveforms``;
* ``classes`` (B, S) padded with -1, ``masks`` (B, S, H, W) bool (the GT masks resized
  nearest-neighbour to the image size, all False when the dataset has none) and
  ``num_sources`` (B,).

Methods add their own keys (see each method's ``collate``). A field a method's batch needs and an
item lacks raises :class:`CollateError` naming the field and the sample.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "CollateError",
    "batch_generator",
    "collate_classes",
    "collate_common",
    "collate_images",
    "collate_masks",
    "collate_waveforms",
    "fit_length",
    "item_waveform",
    "spectrograms",
]

Item = Mapping[str, Any]


class CollateError(ValueError):
    """A dataset item lacks what the method's batch needs (the message names the field)."""


def _sid(item: Item, index: int) -> str:
    return repr(item.get("id", f"#{index}"))


def _check(samples: Sequence[Item]) -> None:
    if not samples:
        raise CollateError("empty batch: no dataset items to collate")


def batch_generator(samples: Sequence[Item], seed: int = 0) -> torch.Generator:
    """A generator determined by the items' ids (and ``seed``): the same items give the same
    random choices in any worker process and on any rank."""
    key = "\x00".join(str(item.get("id", i)) for i, item in enumerate(samples))
    return torch.Generator().manual_seed(zlib.crc32(key.encode()) + 1_000_003 * int(seed))


# -- images -------------------------------------------------------------------------------------
def item_frame(item: Item, index: int = 0, method: str = "this method") -> np.ndarray:
    """The visible RGB frame of an item: ``"frame"``, or the first of ``"frames"``."""
    if "frame" in item and item["frame"] is not None:
        frame = item["frame"]
    elif "frames" in item and item["frames"] is not None:
        frame = item["frames"][0]
    else:
        raise CollateError(f"{method} needs images but dataset item {_sid(item, index)} has no "
                           "'frame' (or 'frames') field")
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise CollateError(f"dataset item {_sid(item, index)}: 'frame' must be uint8 RGB (H, W, 3), "
                           f"got {frame.dtype} {frame.shape}")
    return frame


def collate_images(model: Any, samples: Sequence[Item], method: str = "this method") -> torch.Tensor:
    """(B, 3, H, W) ImageNet-normalised: RGB → BGR → ``preprocess_images``."""
    from streamloc.features import preprocess_images

    bgr = [np.ascontiguousarray(item_frame(item, i, method)[..., ::-1]) for i, item in enumerate(samples)]
    return preprocess_images(bgr, model.config.image)


# -- audio --------------------------------------------------------------------------------------
def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Centre crop to ``n`` samples, or tile a short signal (``int(n/len)+1`` copies) and cut."""
    if len(x) == 0:
        raise CollateError("cannot fit an empty waveform")
    if len(x) >= n:
        start = (len(x) - n) // 2
        return x[start:start + n]
    return np.tile(x, n // len(x) + 1)[:n]


def item_waveform(model: Any, item: Item, index: int = 0, method: str = "this method") -> np.ndarray:
    """The item's ``"audio"`` as float32 at the model's sample rate (any length)."""
    from streamloc.features import resample

    audio = item.get("audio")
    if audio is None:
        hint = (" (a pairing dataset built with mixture='none' has only 'source_audio')"
                if "source_audio" in item else "")
        raise CollateError(f"{method} needs a waveform but dataset item {_sid(item, index)} has no "
                           f"'audio' field{hint}")
    if "sample_rate" not in item:
        raise CollateError(f"dataset item {_sid(item, index)} has 'audio' but no 'sample_rate' field")
    x = np.asarray(audio, np.float32)
    if x.ndim != 1:
        raise CollateError(f"dataset item {_sid(item, index)}: 'audio' must be mono (L,), got {x.shape}")
    return resample(x, int(item["sample_rate"]), int(model.config.audio.sample_rate))


def collate_waveforms(model: Any, samples: Sequence[Item], method: str = "this method") -> torch.Tensor:
    """(B, num_samples) float32 windows at the model's rate."""
    n = int(model.config.audio.num_samples)
    rows = [fit_length(item_waveform(model, item, i, method), n) for i, item in enumerate(samples)]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def spectrograms(model: Any, waveforms: torch.Tensor) -> torch.Tensor:
    """``model.make_frontend()`` of (B, N) waveforms, without gradients, on the CPU."""
    frontend = model.make_frontend()
    with torch.no_grad():
        return frontend(waveforms).detach()


# -- labels -------------------------------------------------------------------------------------
def collate_classes(samples: Sequence[Item], slots: int) -> torch.Tensor:
    """(B, slots) int64 class ids from ``"class_ids"``, padded with -1 (-1 when absent)."""
    out = torch.full((len(samples), slots), -1, dtype=torch.int64)
    for i, item in enumerate(samples):
        ids = np.asarray(item.get("class_ids", ()), np.int64).reshape(-1)[:slots]
        out[i, :len(ids)] = torch.from_numpy(ids.copy())
    return out


def collate_masks(samples: Sequence[Item], slots: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, slots, H, W) bool GT masks resized nearest-neighbour to ``size`` (False padding)."""
    import cv2

    h, w = size
    out = np.zeros((len(samples), slots, h, w), bool)
    for i, item in enumerate(samples):
        masks = item.get("masks")
        if masks is None:
            continue
        for s, m in enumerate(np.asarray(masks, np.float32)[:slots]):
            if m.shape != (h, w):
                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
            out[i, s] = m > 0.5
    return torch.from_numpy(out)


def num_sources(samples: Sequence[Item]) -> torch.Tensor:
    """(B,) sources per item: the number of GT masks, else of class ids, else 1."""
    counts = []
    for item in samples:
        if item.get("masks") is not None:
            counts.append(len(item["masks"]))
        elif item.get("class_ids") is not None:
            counts.append(len(np.asarray(item["class_ids"]).reshape(-1)))
        else:
            counts.append(1)
    return torch.tensor(counts, dtype=torch.int64)


def collate_common(method: Any, samples: Sequence[Item], *, slots: int = 1,
                   mask_slots: int | None = None) -> dict[str, Any]:
    """``images``, ``spectrograms``, ``waveforms``, ``classes`` (B, slots), ``masks``
    (B, mask_slots, H, W) and ``num_sources``: the batch of ``synthetic_av_batch``."""
    _check(samples)
    model = method.model
    name = getattr(method, "name", "this method")
    images = collate_images(model, samples, name)
    waves = collate_waveforms(model, samples, name)
    return {
        "images": images,
        "spectrograms": spectrograms(model, waves),
        "waveforms": waves,
        "classes": collate_classes(samples, slots),
        "masks": collate_masks(samples, slots if mask_slots is None else mask_slots,
                               tuple(model.config.image.size)),
        "num_sources": num_sources(samples),
    }


def audio_seconds(method: Any) -> float:
    """Seconds of audio a dataset should return per item for ``method``: the model's window, or
    1.5 windows for Mix-and-Localize (room for its randomly shifted second window)."""
    a = method.model.config.audio
    seconds = a.num_samples / a.sample_rate
    return seconds * 1.5 if getattr(method, "name", "") == "mixloc" else seconds
