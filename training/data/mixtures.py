"""The four multi-source mixture protocols, as pure numpy functions.

==========================  ====================================================================
protocol                    source
==========================  ====================================================================
:func:`mix_waveform_sum`    AVGN (``official-impls.md`` §2.3): the k 3-s waveforms (each in
                            [-1, 1]) are summed, **no rescaling, no clipping**; also the
                            VGGSound-Instruments test mixtures of Mix-and-Localize's paper
                            ("obtain sound mixtures by summing their waveforms").
:func:`mix_rms_average`     Mix-and-Localize code (§3.3): every waveform scaled to RMS 0.1
                            (RMS floored at eps = 1e-4), then the k are **averaged**.
:func:`mix_logspec_average` NoPrior (§5.5): the "mixture" is the mean of the k normalised
+ :func:`stack_frames_      log-spectrograms (not a waveform mix); the k frames are stacked
  vertical`                 along the **height** → (224·k, 224).
:func:`grid_2x2`            DSOL MUSIC-Synthetic (§4.4 and the DSOL paper §4.1): four 1-s solo
                            clips of different categories; their frames form a 2×2 grid and
                            two of the four waveforms are mixed, so two tiles sound and two are
                            silent.
==========================  ====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "mix_waveform_sum",
    "rms_normalize",
    "mix_rms_average",
    "mix_logspec_average",
    "stack_frames_vertical",
    "GridMixture",
    "grid_2x2",
    "GRID_TILE_BOXES",
]


def _stack_same_length(waves: Sequence[np.ndarray], what: str) -> np.ndarray:
    arrs = [np.asarray(w) for w in waves]
    if not arrs:
        raise ValueError(f"{what}: need at least one waveform")
    for i, a in enumerate(arrs):
        if a.ndim != 1:
            raise ValueError(f"{what}: waveform {i} must be 1-D, got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{what}: waveform {i} must be float, got {a.dtype}")
        if len(a) != len(arrs[0]):
            lengths = [len(x) for x in arrs]
            raise ValueError(f"{what}: waveforms must have equal lengths, got {lengths}")
    return np.stack(arrs)


def mix_waveform_sum(waves: Sequence[np.ndarray]) -> np.ndarray:
    """AVGN mixture: ``Σ_i waves[i]``, no rescaling and no clipping (the sum may leave [-1, 1]).

    The spectrogram is then computed from the sum (by the model's front-end).
    """
    s = _stack_same_length(waves, "mix_waveform_sum")
    return s.sum(axis=0, dtype=s.dtype)


def rms_normalize(wave: np.ndarray, rms: float = 0.1, eps: float = 1e-4) -> np.ndarray:
    """Mix-and-Localize's normalisation: ``wave · rms / max(eps, sqrt(mean(wave²)))``."""
    w = np.asarray(wave)
    current = np.sqrt(np.mean(np.square(w, dtype=np.float64)))
    return (w * (rms / max(eps, float(current)))).astype(w.dtype, copy=False)


def mix_rms_average(waves: Sequence[np.ndarray], rms: float = 0.1, eps: float = 1e-4) -> np.ndarray:
    """Mix-and-Localize mixture: ``mean_i( rms_normalize(waves[i], rms, eps) )``.

    (In the official training loop the batch is reshaped to (B/2, 2, L) and averaged over the
    pair axis after every waveform was scaled to RMS 0.1.)
    """
    s = _stack_same_length(waves, "mix_rms_average")
    normed = np.stack([rms_normalize(w, rms, eps) for w in s])
    return normed.mean(axis=0, dtype=np.float64).astype(s.dtype)


def mix_logspec_average(specs: Sequence[np.ndarray]) -> np.ndarray:
    """NoPrior mixture: the element-wise mean of k already-normalised log-spectrograms.

    Each spectrogram is whatever the front-end produces for one source (for NoPrior:
    ``log(PSD + 1e-7) / 12``, shape (1, 257, T)); all must have the same shape.
    """
    arrs = [np.asarray(s) for s in specs]
    if not arrs:
        raise ValueError("mix_logspec_average: need at least one spectrogram")
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise ValueError(f"mix_logspec_average: spectrograms must share one shape, got {sorted(shapes)}")
    stacked = np.stack(arrs)
    return stacked.mean(axis=0, dtype=np.float64).astype(np.result_type(stacked.dtype, np.float32))


def stack_frames_vertical(frames: Sequence[np.ndarray], *, channels_first: bool = False) -> np.ndarray:
    """NoPrior concatenation: frames stacked along the height.

    k frames of (H, W, C) (or (C, H, W) with ``channels_first``) → (k·H, W, C) (or (C, k·H, W)):
    "448×224" in the paper means H = 448, W = 224, the first source on top.
    """
    arrs = [np.asarray(f) for f in frames]
    if not arrs:
        raise ValueError("stack_frames_vertical: need at least one frame")
    axis = 1 if channels_first else 0
    ref = arrs[0]
    for i, a in enumerate(arrs):
        if a.ndim != ref.ndim or a.ndim not in (2, 3) or (channels_first and a.ndim != 3):
            raise ValueError(f"stack_frames_vertical: frame {i} has shape {a.shape}")
        other = tuple(d for j, d in enumerate(a.shape) if j != axis)
        if other != tuple(d for j, d in enumerate(ref.shape) if j != axis):
            raise ValueError(
                f"stack_frames_vertical: frames must share width and channels, got {a.shape} and {ref.shape}"
            )
    return np.concatenate(arrs, axis=axis)


#: Normalised x1, y1, x2, y2 of the four tiles of a 2×2 grid, row-major
#: (top-left, top-right, bottom-left, bottom-right).
GRID_TILE_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.5, 0.5),
    (0.5, 0.0, 1.0, 0.5),
    (0.0, 0.5, 0.5, 1.0),
    (0.5, 0.5, 1.0, 1.0),
)


@dataclass(frozen=True)
class GridMixture:
    """A DSOL-style synthetic cocktail-party sample.

    ``image``: (2H, 2W, C) grid, tiles row-major. ``tile_masks``: (4, 2H, 2W) bool, one per tile.
    ``sounding``: (4,) bool. ``audio``: the mixture of the sounding tiles' waveforms, or None
    when no waveforms were given. ``sounding_mask``: union of the sounding tiles.
    """

    image: np.ndarray
    tile_masks: np.ndarray
    sounding: np.ndarray
    audio: np.ndarray | None

    @property
    def sounding_mask(self) -> np.ndarray:
        return self.tile_masks[self.sounding].any(axis=0)

    @property
    def tile_boxes(self) -> tuple[tuple[float, float, float, float], ...]:
        return GRID_TILE_BOXES


def grid_2x2(
    frames: Sequence[np.ndarray],
    sounding: Sequence[bool],
    waves: Sequence[np.ndarray] | None = None,
    *,
    offsets: Sequence[int] | None = None,
    n_sounding: int | None = 2,
) -> GridMixture:
    """DSOL MUSIC-Synthetic sample: a 2×2 grid of four frames, some sounding, some silent.

    What the DSOL paper (NeurIPS 2020, §4.1 "MUSIC-Synthetic") specifies: "randomly choose four
    1-second solo audiovisual pairs of different categories, then mix random two of the four
    audio clips with jittering as the multi-source audio waveform, and concatenate four frames
    of these clips as the multi-source video frame" — two instruments sound, two are silent. The
    official code only consumes the pre-built set (zenodo 4079386), so neither the mixing gain
    nor the kind of "jittering" is specified anywhere. Followed here: the audio is the plain
    **sum** of the sounding tiles' waveforms (silent tiles contribute nothing); jitter is an
    explicit, optional per-sounding-tile delay ``offsets`` (samples; the wave is shifted right,
    zero-filled and truncated to its length) — choosing random offsets is the caller's job.
    Choosing which frames and which two sound (and that their categories differ) is also the
    caller's.

    ``frames``: four arrays of the same shape (H, W) or (H, W, C), placed row-major
    (top-left, top-right, bottom-left, bottom-right). ``sounding``: four flags; exactly
    ``n_sounding`` (default 2, the paper's setting; ``None`` disables the check) must be true.
    ``waves``: optional four equal-length 1-D float waveforms (silent tiles' waves are unused).
    """
    imgs = [np.asarray(f) for f in frames]
    if len(imgs) != 4:
        raise ValueError(f"grid_2x2: need exactly 4 frames, got {len(imgs)}")
    shapes = {a.shape for a in imgs}
    if len(shapes) != 1:
        raise ValueError(f"grid_2x2: frames must share one shape, got {sorted(shapes)}")
    if imgs[0].ndim not in (2, 3):
        raise ValueError(f"grid_2x2: frames must be (H, W) or (H, W, C), got {imgs[0].shape}")
    flags = np.asarray([bool(s) for s in sounding])
    if flags.shape != (4,):
        raise ValueError(f"grid_2x2: need 4 sounding flags, got {len(flags)}")
    if n_sounding is not None and int(flags.sum()) != n_sounding:
        raise ValueError(
            f"grid_2x2: DSOL's synthetic set has {n_sounding} sounding tiles, got {int(flags.sum())}"
        )
    h, w = imgs[0].shape[:2]
    image = np.concatenate(
        [np.concatenate(imgs[0:2], axis=1), np.concatenate(imgs[2:4], axis=1)], axis=0
    )
    masks = np.zeros((4, 2 * h, 2 * w), bool)
    for t in range(4):
        r, c = divmod(t, 2)
        masks[t, r * h : (r + 1) * h, c * w : (c + 1) * w] = True
    audio = None
    if waves is not None:
        stacked = _stack_same_length(waves, "grid_2x2")
        if len(stacked) != 4:
            raise ValueError(f"grid_2x2: need 4 waveforms, got {len(stacked)}")
        idx = np.flatnonzero(flags)
        if offsets is not None and len(offsets) != len(idx):
            raise ValueError(
                f"grid_2x2: need one offset per sounding tile ({len(idx)}), got {len(offsets)}"
            )
        audio = np.zeros(stacked.shape[1], stacked.dtype)
        for j, t in enumerate(idx):
            wave = stacked[t]
            if offsets is not None:
                wave = _delay(wave, int(offsets[j]))
            audio += wave
    return GridMixture(image=image, tile_masks=masks, sounding=flags, audio=audio)


def _delay(x: np.ndarray, d: int) -> np.ndarray:
    if d < 0:
        raise ValueError(f"offsets must be >= 0 samples, got {d}")
    out = np.zeros_like(x)
    if d < len(x):
        out[d:] = x[: len(x) - d]
    return out
