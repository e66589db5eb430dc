"""`Localizer`: one frame + one audio window in, one `TickResult` out. Pure: no threads, no devices.

>>> import numpy as np
>>> from streamloc import Localizer
>>> from streamloc.models import create_model
>>> loc = Localizer(create_model("noprior"))
>>> frame = np.zeros((240, 320, 3), np.uint8)
>>> audio = np.random.default_rng(0).standard_normal(3 * 22050).astype(np.float32) * 0.1
>>> result = loc.localize(frame, audio, 22050)
>>> result.frame_size
(240, 320)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from streamloc.errors import InputError
from streamloc.features import preprocess_images, preprocess_images_torch, resample, validate_audio
from streamloc.models.base import GridObject, LocalizationModel, minmax
from streamloc.types import SoundingObject, TickResult

SHORT_AUDIO_POLICIES = ("error", "tile", "pad")
OBJECT_MASKS = ("heatmap", "cells")


class Localizer:
    """Runs a localization model on (frame, audio window) pairs.

    Args:
        model: a `LocalizationModel` (from `create_model` or `load_checkpoint`).
        device: torch device for the encoder pair ("cpu", "cuda", ...).
        backend: an object with `__call__(images, spectrograms) -> tuple[Tensor, ...]`, or None for
            eager PyTorch on `device`.
        mask_threshold: threshold on an object's [0, 1] heatmap that gives its mask (and box).
        object_mask: ``"heatmap"`` (default): the mask is ``heatmap >= mask_threshold``, the
            binarisation the avpairs benchmark scores (its threshold 0.5 was chosen on val for the
            bundled model); ``"cells"``: the grid cells IOI claimed for the object, upsampled
            (objects without claimed cells fall back to the heatmap). The paper's IOI rule lets a
            region claim every cell more like the object than like the background, often most of
            the frame, so ``"cells"`` can be far looser than the heatmap.
        silence_dbfs: audio windows whose RMS level is below this (dBFS) give no objects and the
            flag "silent"; None disables the gate.
        short_audio: what to do with fewer samples than the model's window: "error" (default),
            "tile" (repeat the clip, as the official loaders do) or "pad" (zeros in front).
        preprocess_on_device: compute the spectrogram and the image resize/normalisation on the
            model's CUDA device (None, the default: yes when `device` is CUDA). The uint8 frames
            and the audio windows are then staged in pinned host memory and copied with
            `non_blocking=True`, and the tick synchronises with the GPU once, when the outputs come
            back to the host. On CPU the OpenCV image path is used, as before. The GPU image
            path differs from OpenCV's by at most one grey level per pixel (see
            `preprocess_images_torch`).

    On CUDA, `TickResult.timings_ms` also holds "preprocess_gpu" and "encoder_gpu": the GPU time
    of those stages from CUDA events (the host-side "preprocess" span only covers launching them).

    >>> from streamloc.models import create_model
    >>> loc = Localizer(create_model("noprior"), device="cpu")
    >>> loc.preprocess_on_device
    False
    """

    def __init__(self, model: LocalizationModel, *, device: str | torch.device = "cpu", backend=None,
                 mask_threshold: float = 0.5, silence_dbfs: float | None = -60.0, short_audio: str = "error",
                 preprocess_on_device: bool | None = None, object_mask: str = "heatmap"):
        if object_mask not in OBJECT_MASKS:
            raise ValueError(f"object_mask must be one of {OBJECT_MASKS}, got {object_mask!r}")
        if short_audio not in SHORT_AUDIO_POLICIES:
            raise ValueError(f"short_audio must be one of {SHORT_AUDIO_POLICIES}, got {short_audio!r}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if backend is None:
            from streamloc.backends import EagerBackend

            backend = EagerBackend(self.model, device=self.device)
        self.backend = backend
        self.frontend = self.model.make_frontend().to(self.device)
        on_cuda = self.device.type == "cuda"
        if preprocess_on_device is None:
            preprocess_on_device = on_cuda
        if preprocess_on_device and not on_cuda:
            raise ValueError(f"preprocess_on_device=True needs a CUDA device, got {self.device}")
        self.preprocess_on_device = bool(preprocess_on_device)
        if self.preprocess_on_device:
            # validate_audio already rejected non-finite samples on the host; the frontend's own
            # NaN scan would be a second host sync per tick.
            self.frontend.check_inputs = False
        self.sample_rate = self.model.config.audio.sample_rate
        self.window_samples = self.model.config.audio.num_samples
        self.mask_threshold = mask_threshold
        self.object_mask = object_mask
        self.silence_dbfs = silence_dbfs
        self.short_audio = short_audio

    @classmethod
    def from_checkpoint(cls, path, **kwargs) -> "Localizer":
        """A Localizer for the model stored in a streamloc checkpoint."""
        from streamloc.models.checkpoint import load_checkpoint

        return cls(load_checkpoint(path), **kwargs)

    @property
    def window_seconds(self) -> float:
        return self.model.config.audio.window_seconds

    def warmup(self, frame_size: tuple[int, int] = (480, 640), ticks: int = 2) -> None:
        """Run a few ticks on synthetic input so that JIT compilation (numba, torch) and memory
        allocation happen before the first real tick."""
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (*frame_size, 3), dtype=np.uint8)
        audio = (0.1 * rng.standard_normal(self.window_samples)).astype(np.float32)
        for _ in range(ticks):
            self.localize(frame, audio, self.sample_rate)

    # -- input checks -------------------------------------------------------------------------
    @staticmethod
    def _check_frame(frame) -> np.ndarray:
        if not isinstance(frame, np.ndarray):
            raise InputError(f"frame must be a numpy array (H, W, 3) BGR uint8, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise InputError(f"frame must be uint8 BGR (as OpenCV reads it), got dtype {frame.dtype}; "
                             "convert with np.clip(x * 255, 0, 255).astype(np.uint8) for [0, 1] floats")
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
            raise InputError(f"frame must have shape (H, W, 3), got {frame.shape}; convert grayscale "
                             "with cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)")
        return frame

    def _window(self, audio, sample_rate) -> tuple[np.ndarray, float]:
        audio = validate_audio(audio, sample_rate)
        if int(sample_rate) != self.sample_rate:
            audio = resample(audio, int(sample_rate), self.sample_rate)
        n = self.window_samples
        if audio.shape[0] < n:
            if self.short_audio == "error" or audio.shape[0] == 0:
                raise InputError(
                    f"audio too short: {audio.shape[0] / self.sample_rate:.3f} s after resampling to "
                    f"{self.sample_rate} Hz, the model needs {self.window_seconds:g} s ({n} samples); pass "
                    "a longer window or Localizer(short_audio='tile' or 'pad')"
                )
            if self.short_audio == "tile":
                audio = np.tile(audio, n // audio.shape[0] + 1)[:n]
            else:
                audio = np.concatenate([np.zeros(n - audio.shape[0], np.float32), audio])
        audio = np.ascontiguousarray(audio[-n:], dtype=np.float32)
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        level = 20.0 * np.log10(max(rms, 1e-12))
        return audio, level

    # -- the tick -----------------------------------------------------------------------------
    def localize(self, frame_bgr_uint8: np.ndarray, audio_float32: np.ndarray, sample_rate: int, *,
                 time_ns: int | None = None, frame_index: int | None = None) -> TickResult:
        """Localize the sounding objects of one frame given the audio window ending at it.

        `audio_float32` holds at least the model's window (3 s) at `sample_rate` (any rate: it is
        resampled with soxr); only its last window is used. Returns a TickResult with zero or more
        objects.
        """
        return self.localize_batch([frame_bgr_uint8], [audio_float32], sample_rate,
                                   time_ns=[time_ns], frame_index=[frame_index])[0]

    def localize_batch(self, frames: Sequence[np.ndarray], audios: Sequence[np.ndarray],
                       sample_rate: int | Sequence[int], *,
                       time_ns: Sequence[int | None] | None = None,
                       frame_index: Sequence[int | None] | None = None) -> list[TickResult]:
        """`localize` for several (frame, audio) pairs in one encoder call (e.g. several cameras).

        Frames may differ in size; `sample_rate` is one rate for all windows or one per window.
        The items go through the backend as one batch: build compiled backends for that batch
        (`create_backend(..., batch=N)`, `--backend-batch N`), otherwise a batch-1 graph runs the
        N items one after the other. Result `i` equals `localize(frames[i], audios[i], ...)`.

        >>> import numpy as np
        >>> from streamloc.models import create_model
        >>> loc = Localizer(create_model("noprior", image={"size": (64, 64)}))
        >>> frames = [np.zeros((120, 160, 3), np.uint8), np.zeros((90, 90, 3), np.uint8)]
        >>> audios = [np.zeros(3 * 16000, np.float32), np.zeros(3 * 22050, np.float32)]
        >>> [r.frame_size for r in loc.localize_batch(frames, audios, [16000, 22050])]
        [(120, 160), (90, 90)]
        """
        if len(frames) != len(audios) or not frames:
            raise InputError(f"need as many frames as audio windows (≥ 1), got {len(frames)} and {len(audios)}")
        if isinstance(sample_rate, (Sequence, np.ndarray)) and not isinstance(sample_rate, (str, bytes)):
            rates = list(sample_rate)
            if len(rates) != len(audios):
                raise InputError(f"got {len(rates)} sample rates for {len(audios)} audio windows")
        else:
            rates = [sample_rate] * len(audios)
        t0 = time.perf_counter_ns()
        frames = [self._check_frame(f) for f in frames]
        windows, levels = zip(*(self._window(a, r) for a, r in zip(audios, rates)))
        events = None
        if self.preprocess_on_device:
            events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            events[0].record()
            images, specs = self._device_inputs(frames, windows)
            events[1].record()
        else:
            wave = torch.from_numpy(np.stack(windows)).to(self.device)
            with torch.inference_mode():
                specs = self.frontend(wave)
            images = preprocess_images(list(frames), self.model.config.image, device=self.device)
        t1 = time.perf_counter_ns()
        outputs = self.backend(images, specs)
        if events is not None:
            events[2].record()
        host = self._to_host(outputs)  # the one host sync of the tick
        t2 = time.perf_counter_ns()
        results = []
        for i, frame in enumerate(frames):
            item = {name: host[k][i] for k, name in enumerate(self.model.output_names)}
            sound_map, grid_objects = self.model.postprocess(item)
            silent = self.silence_dbfs is not None and levels[i] < self.silence_dbfs
            objects = [] if silent else self._to_frame(grid_objects, frame.shape[:2])
            results.append(TickResult(
                frame_size=(int(frame.shape[0]), int(frame.shape[1])),
                sound_map=np.asarray(sound_map, np.float32),
                objects=objects,
                time_ns=None if time_ns is None else time_ns[i],
                frame_index=None if frame_index is None else frame_index[i],
                flags={"silent"} if silent else set(),
            ))
        t3 = time.perf_counter_ns()
        timings = {"preprocess": (t1 - t0) / 1e6, "encoder": (t2 - t1) / 1e6,
                   "postprocess": (t3 - t2) / 1e6, "total": (t3 - t0) / 1e6}
        if events is not None:  # complete: _to_host synchronised after the last one
            timings["preprocess_gpu"] = events[0].elapsed_time(events[1])
            timings["encoder_gpu"] = events[1].elapsed_time(events[2])
        for r in results:
            r.timings_ms.update(timings)
        return results

    # -- on-device preprocessing (CUDA) ---------------------------------------------------------
    def _device_inputs(self, frames: Sequence[np.ndarray], windows: Sequence[np.ndarray]):
        """(images, spectrograms) computed on the CUDA device without a host sync."""
        wave = _pinned_to_device(windows, self.device)
        with torch.inference_mode():
            specs = self.frontend(wave)
        # Images as plain tensors (not inference tensors), as the CPU path makes them.
        with torch.no_grad():
            config = self.model.config.image
            by_size: dict[tuple[int, ...], list[int]] = {}
            for i, f in enumerate(frames):
                by_size.setdefault(f.shape, []).append(i)
            if len(by_size) == 1:
                images = preprocess_images_torch(_pinned_to_device(frames, self.device), config)
            else:  # cameras of different sizes: one resize per size, back in input order
                parts: list[torch.Tensor | None] = [None] * len(frames)
                for idx in by_size.values():
                    out = preprocess_images_torch(_pinned_to_device([frames[i] for i in idx], self.device), config)
                    for j, i in enumerate(idx):
                        parts[i] = out[j]
                images = torch.stack(parts)
        return images, specs

    @staticmethod
    def _to_host(outputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """The backend's outputs as numpy arrays: on CUDA, non-blocking copies into pinned host
        memory and one stream synchronisation; elsewhere a plain copy."""
        if not any(o.is_cuda for o in outputs):
            return [o.detach().to("cpu").numpy() for o in outputs]
        host = []
        for o in outputs:
            # Fresh pinned buffers (torch's caching host allocator makes this cheap): the results
            # of this tick keep views of them, so they must not be reused by the next tick.
            h = torch.empty(o.shape, dtype=o.dtype, pin_memory=True)
            h.copy_(o.detach(), non_blocking=True)
            host.append(h)
        devices = {o.device for o in outputs if o.is_cuda}
        for device in devices:
            torch.cuda.current_stream(device).synchronize()
        return [h.numpy() for h in host]

    def _to_frame(self, grid_objects: list[GridObject], size: tuple[int, int]) -> list[SoundingObject]:
        h, w = size
        out = []
        for rank, g in enumerate(sorted(grid_objects, key=lambda o: -o.score)):
            heat = cv2.resize(np.asarray(g.map, np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
            heat = minmax(heat)
            if self.object_mask == "cells" and g.cells is not None:
                cells = cv2.resize(np.asarray(g.cells, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
                mask = cells >= 0.5
            else:
                mask = heat >= self.mask_threshold
            box, centroid = _box_and_centroid(mask, heat)
            out.append(SoundingObject(id=rank, heatmap=heat, mask=mask, box=box, centroid=centroid,
                                      score=float(g.score), vector=g.vector, cells=g.cells))
        return out


def _pinned_to_device(arrays: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Stack equally shaped host arrays into a pinned buffer and copy it to `device` without
    blocking. The caching host allocator keeps the buffer alive until the copy has run."""
    first = torch.from_numpy(np.ascontiguousarray(arrays[0]))
    staging = torch.empty((len(arrays), *first.shape), dtype=first.dtype, pin_memory=True)
    view = staging.numpy()
    for i, a in enumerate(arrays):
        view[i] = a
    return staging.to(device, non_blocking=True)


def _box_and_centroid(mask: np.ndarray, heat: np.ndarray):
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None, None
    cols = np.flatnonzero(mask.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    weights = np.where(mask, heat, np.float32(0.0))
    total = float(weights.sum())
    if total <= 0.0:
        weights, total = mask.astype(np.float32), float(mask.sum())
    cx = float(weights.sum(axis=0) @ np.arange(mask.shape[1], dtype=np.float32)) / total
    cy = float(weights.sum(axis=1) @ np.arange(mask.shape[0], dtype=np.float32)) / total
    return box, (cx, cy)
