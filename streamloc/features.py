"""Audio and image pre-processing: what the models see.

Pure computation (no devices, threads or files). Four groups of public names:

* **Audio spectrograms** -- :class:`AudioFrontendConfig` and :class:`AudioFrontend`, a
  ``torch.nn.Module`` turning a fixed-length waveform window into the spectrogram image a model
  was trained on. Two kinds:

  - ``"psd"``: the log power spectral density of EZ-VSL, AVGN and NoPrior, a float32 replica of
    ``scipy.signal.spectrogram(x, fs, nperseg=512, noverlap=274)`` with scipy's defaults, then
    ``log(psd + 1e-7) / 12``; output ``(B, 1, 257, T)``, ``T = 1 + (N - 512) // 238``.
  - ``"logmel"``: the 64-band log-mel spectrogram of Mix-and-Localize (also used for DSOL in this
    library); output ``(B, 1, T, 64)`` (time x mel), ``T = 1 + N // 80``.

* **Resampling** with soxr -- :func:`resample` (one shot) and :class:`StreamResampler` (live
  microphone chunks).
* **Images** -- :class:`ImagePreprocessConfig`, :func:`preprocess_images` (OpenCV, from BGR uint8
  frames) and :func:`preprocess_images_torch` (the same on a tensor's device).
* **Input checks** -- :func:`validate_audio`.

Neither torchaudio nor scipy is used here: the spectrograms are built from ``torch.fft.rfft`` on
frames cut with ``Tensor.unfold`` (the framing of ``torch.stft``), the windows and the mel
filterbank are computed with numpy in this module.

>>> import torch
>>> AudioFrontend()(torch.zeros(48000)).shape
torch.Size([1, 1, 257, 200])
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streamloc.errors import InputError

__all__ = [
    "AudioFrontendConfig",
    "AudioFrontend",
    "tukey_window",
    "hann_window",
    "mel_filterbank",
    "resample",
    "StreamResampler",
    "ImagePreprocessConfig",
    "preprocess_images",
    "preprocess_images_torch",
    "validate_audio",
]

_AUDIO_KINDS = ("psd", "logmel")
_MEL_DB = ("mixloc",)
_SOXR_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
_INTERPOLATIONS = ("area_or_cubic", "cubic", "linear")


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------


def _config_from_dict(cls: type, data: Mapping[str, Any]):
    if not isinstance(data, Mapping):
        raise InputError(
            f"{cls.__name__}.from_dict needs a mapping (e.g. a dict loaded from JSON), "
            f"got {type(data).__name__}"
        )
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise InputError(
            f"{cls.__name__}.from_dict: unknown key(s) {unknown}; allowed keys are {allowed}. "
            "Remove or rename them (a typo would otherwise silently fall back to the default)."
        )
    return cls(**dict(data))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Windows and filterbank (numpy, float64)
# --------------------------------------------------------------------------------------------


def tukey_window(length: int, alpha: float, periodic: bool = True) -> np.ndarray:
    """Tukey (tapered cosine) window, float64.

    ``alpha`` is the tapered fraction (0 = rectangular, 1 = Hann). ``periodic=True`` gives the
    window for spectral analysis, as ``scipy.signal.get_window(('tukey', alpha), length)`` does:
    the symmetric window of ``length + 1`` points with the last point dropped.

    >>> w = tukey_window(512, 0.25)
    >>> w.shape, float(w[0]), float((w ** 2).sum())
    ((512,), 0.0, 432.0)
    """
    if not _is_int(length) or length < 1:
        raise InputError(f"tukey_window length must be a positive integer, got {length!r}")
    if not _is_real(alpha) or not 0.0 <= alpha <= 1.0:
        raise InputError(f"tukey_window alpha must be in [0, 1], got {alpha!r}")
    n_points = int(length) + 1 if periodic else int(length)
    if length == 1 or alpha == 0:
        return np.ones(int(length))
    # Distance (in samples) from the nearer end, as a fraction of the window span.
    n = np.arange(n_points)
    k = np.minimum(n, n_points - 1 - n)
    x = k / (n_points - 1)
    w = np.where(x < alpha / 2.0, 0.5 * (1.0 - np.cos(2.0 * np.pi * x / alpha)), 1.0)
    return w[: int(length)]


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann window ``0.5 - 0.5 cos(2 pi n / length)``, float64 (as ``torch.hann_window``).

    >>> [round(float(v), 3) for v in hann_window(4)]
    [0.0, 0.5, 1.0, 0.5]
    """
    if not _is_int(length) or length < 1:
        raise InputError(f"hann_window length must be a positive integer, got {length!r}")
    n = np.arange(int(length))
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / int(length))


def _hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int, sample_rate: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """HTK-scale triangular mel filterbank without normalisation, shape ``(n_freqs, n_mels)``.

    ``n_freqs`` one-sided FFT bins spaced evenly over ``[0, sample_rate / 2]``; band edges are
    ``n_mels + 2`` points evenly spaced on the mel scale ``2595 log10(1 + f / 700)`` between
    ``f_min`` and ``f_max``; each band is a triangle rising from its left edge to 1 at its
    centre and falling to 0 at its right edge (peak 1, no area normalisation). This is the
    filterbank of torchaudio's ``MelSpectrogram`` defaults and of
    ``librosa.filters.mel(htk=True, norm=None)``. With few FFT bins (Mix-and-Localize's
    81 bins at 100 Hz spacing) the narrow low bands catch no bin and are all zero -- a property
    of the official setting, kept.

    >>> fb = mel_filterbank(81, 16000, 64, 0.0, 8000.0)
    >>> fb.shape, float(fb.max()) <= 1.0
    ((81, 64), True)
    """
    if f_max is None:
        f_max = sample_rate / 2.0
    if not _is_int(n_freqs) or n_freqs < 2:
        raise InputError(f"mel_filterbank n_freqs must be an integer >= 2, got {n_freqs!r}")
    if not _is_int(n_mels) or n_mels < 1:
        raise InputError(f"mel_filterbank n_mels must be a positive integer, got {n_mels!r}")
    if not 0.0 <= f_min < f_max:
        raise InputError(f"mel_filterbank needs 0 <= f_min < f_max, got {f_min!r}, {f_max!r}")
    freqs = np.linspace(0.0, sample_rate / 2.0, int(n_freqs))
    mel_edges = np.linspace(_hz_to_mel_htk(f_min), _hz_to_mel_htk(f_max), int(n_mels) + 2)
    edges = _mel_to_hz_htk(mel_edges)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - left[None, :]) / (centre - left)[None, :]
    falling = (right[None, :] - freqs[:, None]) / (right - centre)[None, :]
    return np.maximum(0.0, np.minimum(rising, falling))


# --------------------------------------------------------------------------------------------
# Audio front-end
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFrontendConfig:
    """Settings of :class:`AudioFrontend`; JSON-serialisable with ``dataclasses.asdict``.

    ``kind`` chooses the spectrogram: ``"psd"`` (EZ-VSL / AVGN / NoPrior log-PSD; uses
    ``nperseg``, ``noverlap``, ``tukey_alpha``, ``log_offset``, ``scale``) or ``"logmel"``
    (Mix-and-Localize log-mel; uses ``n_fft``, ``hop_length``, ``n_mels``, ``f_max``,
    ``mel_db``). ``window_seconds * sample_rate`` samples make one window (:attr:`num_samples`);
    the front-end accepts exactly that many. The defaults are the EZ-VSL setting (3 s);
    Mix-and-Localize uses ``kind="logmel", window_seconds=0.96`` at 16 kHz.

    ``mel_db="mixloc"`` is the official Mix-and-Localize conversion
    ``20 * log10(max(1e-5, S)) / 100`` applied to a *power* mel spectrogram ``S``: "dB" of a
    power spectrogram computed with the amplitude factor 20 (so 40 log10 |X|), then the
    official range normalisation ``2 (x + 100) / 200 - 1``, which is ``x / 100``. Kept as is
    because the published weights were trained on it.

    >>> cfg = AudioFrontendConfig(kind="logmel", window_seconds=0.96)
    >>> cfg.num_samples
    15360
    >>> AudioFrontendConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    True
    """

    kind: str = "psd"
    sample_rate: int = 16000
    window_seconds: float = 3.0
    nperseg: int = 512
    noverlap: int = 274
    tukey_alpha: float = 0.25
    log_offset: float = 1e-7
    scale: float = 12.0
    n_fft: int = 160
    hop_length: int = 80
    n_mels: int = 64
    f_max: float = 8000.0
    mel_db: str = "mixloc"

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> InputError:
            return InputError(
                f"AudioFrontendConfig.{name} = {getattr(self, name)!r} is invalid: {rule}"
            )

        if self.kind not in _AUDIO_KINDS:
            raise bad("kind", f"use one of {list(_AUDIO_KINDS)}")
        for name in ("sample_rate", "nperseg", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise bad(name, "must be a positive integer")
        if not _is_int(self.noverlap) or not 0 <= self.noverlap < self.nperseg:
            raise bad("noverlap", f"must be an integer in [0, nperseg={self.nperseg})")
        for name in ("window_seconds", "log_offset", "scale", "f_max"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                raise bad(name, "must be a finite number > 0")
        if not _is_real(self.tukey_alpha) or not 0.0 <= self.tukey_alpha <= 1.0:
            raise bad("tukey_alpha", "must be in [0, 1]")
        if self.mel_db not in _MEL_DB:
            raise bad("mel_db", f"use one of {list(_MEL_DB)}")
        if self.kind == "psd" and self.num_samples < self.nperseg:
            raise bad(
                "window_seconds",
                f"gives {self.num_samples} samples, fewer than nperseg={self.nperseg}",
            )
        if self.kind == "logmel":
            if self.f_max > self.sample_rate / 2:
                raise bad("f_max", f"must not exceed the Nyquist frequency {self.sample_rate / 2}")
            if self.num_samples <= self.n_fft // 2:
                raise bad(
                    "window_seconds",
                    f"gives {self.num_samples} samples; reflect padding needs more than "
                    f"n_fft // 2 = {self.n_fft // 2}",
                )

    @property
    def num_samples(self) -> int:
        """Samples in one window: ``round(window_seconds * sample_rate)``.

        >>> AudioFrontendConfig(sample_rate=22050).num_samples
        66150
        """
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one item of the output, ``(1, F, T)`` for psd or ``(1, T, n_mels)`` for logmel.

        >>> AudioFrontendConfig(sample_rate=48000).output_shape
        (1, 257, 603)
        """
        n = self.num_samples
        if self.kind == "psd":
            hop = self.nperseg - self.noverlap
            return (1, self.nperseg // 2 + 1, 1 + (n - self.nperseg) // hop)
        return (1, 1 + n // self.hop_length, self.n_mels)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (same as ``dataclasses.asdict``), for JSON.

        >>> AudioFrontendConfig().to_dict()["kind"]
        'psd'
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AudioFrontendConfig:
        """Build from a dict; missing keys take the defaults, unknown keys raise ``InputError``.

        >>> AudioFrontendConfig.from_dict({"sample_rate": 22050}).num_samples
        66150
        """
        return _config_from_dict(cls, data)


def _skip_data_checks() -> bool:
    # Value checks need a host sync and break graph capture; skip them while tracing/exporting.
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    for name in ("is_compiling", "is_exporting"):
        fn = getattr(compiler, name, None)
        if fn is not None and fn():
            return True
    return False


def _check_finite_tensor(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(bad.sum()) - n_nan
    first = tuple(int(i) for i in torch.nonzero(bad)[0])
    where = f"batch {first[0]}, sample {first[1]}" if len(first) == 2 else f"sample {first[0]}"
    raise InputError(
        f"{what} has {n_nan} NaN and {n_inf} inf sample(s) (first at {where}); replace them "
        "(e.g. torch.nan_to_num) or drop the window before computing features"
    )


class AudioFrontend(torch.nn.Module):
    """Waveform window -> spectrogram image, on CPU or CUDA.

    ``forward(waveform)`` takes a float tensor of shape ``(N,)`` or ``(B, N)`` with exactly
    ``config.num_samples`` samples per item (float64/float16 input is cast to float32) and
    returns float32 ``(B, 1, F, T)``:

    * ``kind="psd"``: ``log(PSD + log_offset) / scale`` with the PSD of
      ``scipy.signal.spectrogram(x, fs, nperseg, noverlap)`` and all its defaults: periodic
      Tukey(``tukey_alpha``) window, ``nfft = nperseg``, per-frame mean removal
      (``detrend='constant'``), no padding, one-sided, density scaling
      ``|X|^2 / (fs * sum(w^2))`` with all bins but DC and Nyquist doubled. Shape
      ``(B, 1, nperseg // 2 + 1, 1 + (N - nperseg) // (nperseg - noverlap))``: 257 x 200 at
      16 kHz, 257 x 276 at 22.05 kHz, 257 x 603 at 48 kHz for 3 s. The log values depend on
      the sample rate (density scaling), as in the official code.
    * ``kind="logmel"``: power STFT (``n_fft``-point periodic Hann window, hop ``hop_length``,
      centred frames with reflect padding), HTK mel filterbank (``n_mels`` bands,
      0..``f_max`` Hz, no norm, see :func:`mel_filterbank`), then ``mel_db``; shape
      ``(B, 1, 1 + N // hop_length, n_mels)`` -- time x mel, as Mix-and-Localize feeds its
      audio network; (B, 1, 193, 64) for 0.96 s at 16 kHz.

    The window, scale vector and filterbank are non-persistent buffers: ``.to(device)`` moves
    them, and they never enter a checkpoint. ``check_inputs=False`` skips the NaN/inf scan
    (one host sync per call); it is skipped automatically while tracing or compiling.

    Raises :class:`~streamloc.errors.InputError` for a wrong length, shape or dtype, non-finite
    samples, or a waveform on another device than the module.

    >>> import torch
    >>> fe = AudioFrontend(AudioFrontendConfig(kind="logmel", window_seconds=0.96))
    >>> fe(torch.zeros(2, 15360)).shape
    torch.Size([2, 1, 193, 64])
    """

    def __init__(self, config: AudioFrontendConfig | None = None, *, check_inputs: bool = True):
        super().__init__()
        if config is None:
            config = AudioFrontendConfig()
        if not isinstance(config, AudioFrontendConfig):
            raise InputError(
                f"AudioFrontend needs an AudioFrontendConfig, got {type(config).__name__}; "
                "use AudioFrontendConfig.from_dict(...) for a dict"
            )
        self.config = config
        self.check_inputs = bool(check_inputs)
        if config.kind == "psd":
            window = tukey_window(config.nperseg, config.tukey_alpha, periodic=True)
            n_bins = config.nperseg // 2 + 1
            scale = np.full(n_bins, 1.0 / (config.sample_rate * float((window**2).sum())))
            # One-sided: fold the negative frequencies onto the positive ones, except the DC bin
            # and (for an even FFT length) the Nyquist bin, which have no mirror image.
            last = n_bins - 1 if config.nperseg % 2 == 0 else n_bins
            scale[1:last] *= 2.0
            self.register_buffer("window", torch.tensor(window, dtype=torch.float32), False)
            self.register_buffer("psd_scale", torch.tensor(scale, dtype=torch.float32), False)
        else:
            window = hann_window(config.n_fft)
            fb = mel_filterbank(
                config.n_fft // 2 + 1, config.sample_rate, config.n_mels, 0.0, config.f_max
            )
            self.register_buffer("window", torch.tensor(window, dtype=torch.float32), False)
            self.register_buffer("mel_fb", torch.tensor(fb, dtype=torch.float32), False)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one output item without the batch axis (as ``config.output_shape``).

        >>> AudioFrontend().output_shape
        (1, 257, 200)
        """
        return self.config.output_shape

    def extra_repr(self) -> str:
        c = self.config
        return f"kind={c.kind!r}, sample_rate={c.sample_rate}, num_samples={c.num_samples}"

    def _prepare(self, waveform: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveform, torch.Tensor):
            raise InputError(
                f"AudioFrontend expects a torch.Tensor, got {type(waveform).__name__}; "
                "wrap a numpy window with torch.from_numpy(validate_audio(audio, sr))"
            )
        if not waveform.is_floating_point():
            raise InputError(
                f"AudioFrontend expects float samples in [-1, 1], got dtype {waveform.dtype}; "
                "convert int16 PCM with waveform.float() / 32768"
            )
        if waveform.ndim == 1:
            waveform = waveform.unsqueeze(0)
        elif waveform.ndim != 2:
            raise InputError(
                f"AudioFrontend expects a waveform of shape (N,) or (B, N), got "
                f"{tuple(waveform.shape)}; average channels to mono first"
            )
        n = self.config.num_samples
        if waveform.shape[-1] != n:
            raise InputError(
                f"AudioFrontend({self.config.kind!r}, sample_rate={self.config.sample_rate}, "
                f"window_seconds={self.config.window_seconds}) needs exactly {n} samples per "
                f"window, got {waveform.shape[-1]}; cut, pad or resample the window to {n}"
            )
        if waveform.shape[0] == 0:
            raise InputError("AudioFrontend got an empty batch (B = 0)")
        if waveform.device != self.window.device:
            raise InputError(
                f"waveform is on {waveform.device} but the AudioFrontend is on "
                f"{self.window.device}; call frontend.to(waveform.device) or move the waveform"
            )
        waveform = waveform.to(torch.float32)
        if self.check_inputs and not _skip_data_checks():
            _check_finite_tensor(waveform, "waveform")
        return waveform

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self._prepare(waveform)
        c = self.config
        if c.kind == "psd":
            frames = x.unfold(-1, c.nperseg, c.nperseg - c.noverlap)  # (B, T, nperseg)
            frames = frames - frames.mean(dim=-1, keepdim=True)  # detrend='constant'
            spec = torch.fft.rfft(frames * self.window, dim=-1)  # (B, T, F)
            psd = (spec.real.square() + spec.imag.square()) * self.psd_scale
            out = torch.log(psd + c.log_offset) / c.scale
            return out.transpose(1, 2).unsqueeze(1).contiguous()  # (B, 1, F, T)
        pad = c.n_fft // 2
        padded = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        frames = padded.unfold(-1, c.n_fft, c.hop_length)  # (B, T, n_fft)
        spec = torch.fft.rfft(frames * self.window, dim=-1)
        power = spec.real.square() + spec.imag.square()  # (B, T, n_fft // 2 + 1)
        mel = torch.matmul(power, self.mel_fb)  # (B, T, n_mels)
        out = 20.0 * torch.log10(torch.clamp(mel, min=1e-5)) / 100.0
        return out.unsqueeze(1).contiguous()  # (B, 1, T, n_mels)


# --------------------------------------------------------------------------------------------
# Audio input checks and resampling
# --------------------------------------------------------------------------------------------


def _check_rate(rate: Any, name: str) -> float:
    if not _is_real(rate) or not math.isfinite(rate) or rate <= 0:
        raise InputError(f"{name} must be a positive number of samples per second, got {rate!r}")
    return rate


def _first_nonfinite(audio: np.ndarray) -> str:
    bad = ~np.isfinite(audio)
    n_nan = int(np.isnan(audio).sum())
    n_inf = int(bad.sum()) - n_nan
    first = np.argwhere(bad)[0]
    where = f"sample {first[0]}" + (f", channel {first[1]}" if len(first) > 1 else "")
    return f"{n_nan} NaN and {n_inf} inf sample(s) (first at {where})"


def validate_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Check an audio block and return it as a new float32 mono 1-D array.

    Accepts a float32/float64 numpy array of shape ``(n,)`` or ``(n, channels)`` (frames x
    channels, as sounddevice and soundfile deliver); multi-channel audio is averaged to mono.
    Samples are expected in [-1, 1] but not clipped. Raises
    :class:`~streamloc.errors.InputError` (with the fix) for another type or dtype,
    channels-first or 3-D arrays, empty audio, NaN/inf samples, or a ``sample_rate`` that is
    not a positive number.

    >>> import numpy as np
    >>> validate_audio(np.ones((4, 2)), 16000)
    array([1., 1., 1., 1.], dtype=float32)
    """
    _check_rate(sample_rate, "sample_rate")
    if isinstance(audio, torch.Tensor):
        raise InputError("validate_audio expects a numpy array; pass tensor.cpu().numpy()")
    if not isinstance(audio, np.ndarray):
        raise InputError(
            f"validate_audio expects a numpy array, got {type(audio).__name__}; "
            "use np.asarray(audio, dtype=np.float32)"
        )
    if audio.dtype not in (np.float32, np.float64):
        hint = (
            "convert integer PCM with audio.astype(np.float32) / 32768 (int16) or "
            "/ 2147483648 (int32)"
            if np.issubdtype(audio.dtype, np.integer)
            else "convert it with audio.astype(np.float32)"
        )
        raise InputError(f"audio must be float32 or float64, got {audio.dtype}; {hint}")
    if audio.ndim == 2:
        n, ch = audio.shape
        if ch > 32 and n < ch:
            raise InputError(
                f"audio of shape {audio.shape} looks channels-first; pass (n_samples, "
                "n_channels), e.g. audio.T"
            )
    elif audio.ndim != 1:
        raise InputError(
            f"audio must be 1-D (n,) or 2-D (n, channels), got shape {audio.shape}"
        )
    if audio.size == 0:
        raise InputError(f"audio is empty (shape {audio.shape}); the source delivered no samples")
    if not np.isfinite(audio).all():
        raise InputError(
            f"audio has {_first_nonfinite(audio)}; replace them (np.nan_to_num) or drop the block"
        )
    if audio.ndim == 2:
        return audio.mean(axis=1, dtype=np.float64).astype(np.float32)
    return np.array(audio, dtype=np.float32, copy=True)


def _check_quality(quality: Any) -> str:
    if quality not in _SOXR_QUALITIES:
        raise InputError(f"soxr quality must be one of {list(_SOXR_QUALITIES)}, got {quality!r}")
    return quality


def _check_resample_input(audio: Any, what: str) -> np.ndarray:
    if not isinstance(audio, np.ndarray):
        raise InputError(
            f"{what} expects a numpy array, got {type(audio).__name__}; "
            "use np.asarray(audio, dtype=np.float32)"
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise InputError(
            f"{what} expects float samples, got {audio.dtype}; convert int16 PCM with "
            "audio.astype(np.float32) / 32768"
        )
    if audio.ndim not in (1, 2):
        raise InputError(
            f"{what} expects shape (n,) or (n, channels), got {audio.shape}"
        )
    if not np.isfinite(audio).all():
        raise InputError(f"{what}: audio has {_first_nonfinite(audio)}; replace or drop them")
    return np.ascontiguousarray(audio, dtype=np.float32)


def resample(
    audio: np.ndarray, from_rate: int, to_rate: int, quality: str = "HQ"
) -> np.ndarray:
    """Resample ``audio`` (``(n,)`` or ``(n, channels)``) with soxr; float32 out, same ndim.

    The output has ``round(n * to_rate / from_rate)``-ish samples (soxr's exact count) and no
    delay (soxr compensates its filter delay in one-shot mode). Equal rates return a float32
    copy. ``quality`` is one of soxr's ``"QQ"``, ``"LQ"``, ``"MQ"``, ``"HQ"``, ``"VHQ"``.
    Raises :class:`~streamloc.errors.InputError` for a rate <= 0, an unknown quality, or
    audio that is not a finite float array of 1 or 2 dimensions.

    >>> import numpy as np
    >>> resample(np.zeros(48000, np.float32), 48000, 16000).shape
    (16000,)
    """
    _check_rate(from_rate, "from_rate")
    _check_rate(to_rate, "to_rate")
    _check_quality(quality)
    x = _check_resample_input(audio, "resample")
    if from_rate == to_rate:
        return x.copy()
    import soxr

    return np.asarray(soxr.resample(x, from_rate, to_rate, quality=quality), dtype=np.float32)


class StreamResampler:
    """Chunk-by-chunk soxr resampler for the live microphone path.

    ``process(chunk)`` takes float ``(n,)`` (mono) or ``(n, channels)`` blocks and returns the
    float32 samples that are ready, with the same ndim; ``flush()`` returns the rest at the end
    of a stream and resets the resampler for a new one; ``reset()`` drops the buffered state
    without output (after a dropout, say).

    Delay handling: soxr holds back output until its filter has seen enough input, so the
    output lags the input by :attr:`delay` output samples (it varies with block boundaries;
    roughly 10-40 ms at HQ). Nothing is lost or shifted: the concatenation of every
    ``process`` output plus ``flush()`` equals :func:`resample` of the whole signal.

    >>> import numpy as np
    >>> rs = StreamResampler(48000, 16000)
    >>> parts = [rs.process(np.zeros(4800, np.float32)) for _ in range(10)] + [rs.flush()]
    >>> sum(len(p) for p in parts)
    16000
    """

    def __init__(self, from_rate: int, to_rate: int, channels: int = 1, quality: str = "HQ"):
        _check_rate(from_rate, "from_rate")
        _check_rate(to_rate, "to_rate")
        if not _is_int(channels) or channels < 1:
            raise InputError(f"channels must be a positive integer, got {channels!r}")
        import soxr

        self.from_rate = from_rate
        self.to_rate = to_rate
        self.channels = int(channels)
        self.quality = _check_quality(quality)
        self._stream = soxr.ResampleStream(
            from_rate, to_rate, self.channels, dtype="float32", quality=quality
        )

    @property
    def delay(self) -> float:
        """Output samples the resampler currently holds back (what ``flush`` would add).

        >>> StreamResampler(16000, 8000).delay
        0.0
        """
        return float(self._stream.delay())

    def _check_chunk(self, chunk: np.ndarray) -> np.ndarray:
        x = _check_resample_input(chunk, "StreamResampler.process")
        ch = 1 if x.ndim == 1 else x.shape[1]
        if ch != self.channels:
            raise InputError(
                f"StreamResampler was made for {self.channels} channel(s) but got a chunk of "
                f"shape {x.shape}; pass (n, {self.channels}) blocks or make a new resampler"
            )
        return x

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed one block; return the resampled samples that are ready (maybe fewer, maybe none).

        >>> import numpy as np
        >>> StreamResampler(16000, 16000).process(np.ones(3, np.float32))
        array([1., 1., 1.], dtype=float32)
        """
        x = self._check_chunk(chunk)
        return np.asarray(self._stream.resample_chunk(x, last=False), dtype=np.float32)

    def flush(self) -> np.ndarray:
        """End the stream: return the held-back samples, then reset for a new stream.

        >>> import numpy as np
        >>> rs = StreamResampler(8000, 16000)
        >>> n = len(rs.process(np.zeros(800, np.float32))) + len(rs.flush())
        >>> n
        1600
        """
        shape = (0,) if self.channels == 1 else (0, self.channels)
        out = np.asarray(
            self._stream.resample_chunk(np.zeros(shape, np.float32), last=True), dtype=np.float32
        )
        self._stream.clear()
        return out

    def reset(self) -> None:
        """Drop all buffered input and output; the next ``process`` starts a new stream.

        >>> StreamResampler(48000, 16000).reset()
        """
        self._stream.clear()


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePreprocessConfig:
    """How camera frames become model input; JSON-serialisable with ``dataclasses.asdict``.

    ``size`` is the model input ``(height, width)``; ``mean``/``std`` the per-channel RGB
    normalisation (ImageNet by default). ``interpolation``:

    * ``"area_or_cubic"`` (default): pixel-area averaging on an axis that shrinks
      (anti-aliased, close to the bicubic PIL resize of the official test transforms) and
      bicubic interpolation on an axis that grows;
    * ``"cubic"``: bicubic everywhere (aliases when shrinking);
    * ``"linear"``: bilinear everywhere (cheapest; aliases when shrinking).

    >>> cfg = ImagePreprocessConfig(size=(448, 224))
    >>> ImagePreprocessConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    True
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "area_or_cubic"

    def __post_init__(self) -> None:
        size = tuple(self.size) if isinstance(self.size, (list, tuple)) else None
        if size is None or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
            raise InputError(
                f"ImagePreprocessConfig.size must be (height, width) with positive integers, "
                f"got {self.size!r}"
            )
        object.__setattr__(self, "size", tuple(int(v) for v in size))
        for name in ("mean", "std"):
            value = getattr(self, name)
            ok = isinstance(value, (list, tuple)) and len(value) == 3
            ok = ok and all(_is_real(v) and math.isfinite(v) for v in value)
            if not ok:
                raise InputError(
                    f"ImagePreprocessConfig.{name} must be three finite numbers (R, G, B), "
                    f"got {value!r}"
                )
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(v <= 0 for v in self.std):
            raise InputError(f"ImagePreprocessConfig.std must be > 0, got {self.std!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise InputError(
                f"ImagePreprocessConfig.interpolation must be one of {list(_INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples become lists only through JSON), same as ``dataclasses.asdict``.

        >>> ImagePreprocessConfig().to_dict()["size"]
        (224, 224)
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePreprocessConfig:
        """Build from a dict (lists from JSON are accepted); unknown keys raise ``InputError``.

        >>> ImagePreprocessConfig.from_dict({"size": [256, 256]}).size
        (256, 256)
        """
        return _config_from_dict(cls, data)


def _frame_problem(shape: tuple[int, ...], dtype: Any, index: int | None) -> str | None:
    name = "frame" if index is None else f"frame {index}"
    if dtype not in (np.uint8, torch.uint8):
        return (
            f"{name} has dtype {dtype}; expected uint8 BGR as OpenCV delivers (convert 0-1 floats "
            "with (np.clip(frame, 0, 1) * 255).round().astype(np.uint8))"
        )
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return (
            f"{name} of shape {tuple(shape)} is grayscale; convert it with "
            "cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)"
        )
    if len(shape) != 3:
        return f"{name} has shape {tuple(shape)}; expected (height, width, 3) BGR"
    if shape[2] == 4:
        return (
            f"{name} of shape {tuple(shape)} has 4 channels; drop alpha with "
            "cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)"
        )
    if shape[2] != 3:
        return f"{name} has {shape[2]} channels, shape {tuple(shape)}; expected 3 (BGR)"
    if shape[0] == 0 or shape[1] == 0:
        return f"{name} is empty (shape {tuple(shape)}); the source delivered no picture"
    return None


def _split_frames(frames: Any) -> list[np.ndarray]:
    if isinstance(frames, torch.Tensor):
        raise InputError(
            "preprocess_images takes numpy frames; use preprocess_images_torch for a tensor"
        )
    if isinstance(frames, np.ndarray):
        if frames.ndim == 4:
            items = list(frames)
        else:
            items = [frames]
            problem = _frame_problem(frames.shape, frames.dtype, None)
            if problem:
                raise InputError(problem)
    elif isinstance(frames, Sequence) and not isinstance(frames, (str, bytes)):
        items = list(frames)
    else:
        raise InputError(
            f"preprocess_images expects a BGR uint8 frame (H, W, 3), a (B, H, W, 3) array or a "
            f"list of frames, got {type(frames).__name__}"
        )
    if not items:
        raise InputError("preprocess_images got no frames (empty list or B = 0)")
    for i, item in enumerate(items):
        if not isinstance(item, np.ndarray):
            raise InputError(f"frame {i} is a {type(item).__name__}, not a numpy array")
        problem = _frame_problem(item.shape, item.dtype, i)
        if problem:
            raise InputError(problem)
    return items


def _resize_plan(in_hw: tuple[int, int], out_hw: tuple[int, int], interpolation: str):
    """Steps ``[(method, (h, w)), ...]`` taking a picture from ``in_hw`` to ``out_hw``.

    ``area_or_cubic`` with one axis shrinking and the other growing resizes the shrinking axis
    by area first, then the growing axis by cubic, so that neither axis aliases.
    """
    (h, w), (oh, ow) = in_hw, out_hw
    if (h, w) == (oh, ow):
        return []
    if interpolation != "area_or_cubic":
        return [(interpolation, (oh, ow))]
    grows, shrinks = oh > h or ow > w, oh < h or ow < w
    if not grows:
        return [("area", (oh, ow))]
    if not shrinks:
        return [("cubic", (oh, ow))]
    mid = (oh, w) if oh < h else (h, ow)
    return [("area", mid), ("cubic", (oh, ow))]


def preprocess_images(
    frames: Any, config: ImagePreprocessConfig | None = None, device: Any = None
) -> torch.Tensor:
    """BGR uint8 camera frames -> normalised model input ``(B, 3, H, W)`` float32.

    ``frames`` is one frame ``(h, w, 3)``, a ``(B, h, w, 3)`` array, or a list of frames (their
    sizes may differ), uint8 BGR as OpenCV delivers. Each frame is resized to ``config.size``
    ``(H, W)`` without keeping the aspect ratio, like the official test transforms
    ``Resize((224, 224))``: with the default ``"area_or_cubic"``, ``cv2.INTER_AREA`` where it
    shrinks (anti-aliased, close to PIL's bicubic downscale; the exact PIL filter is not
    reproduced) and ``cv2.INTER_CUBIC`` where it grows; the result stays uint8 (rounded,
    saturated), as PIL's is. Then BGR -> RGB, ``/ 255``, ``(x - mean) / std``. The uint8 batch
    is moved to ``device`` (default CPU) before the float conversion.

    Raises :class:`~streamloc.errors.InputError` (with the fix) for frames that are not uint8,
    grayscale or not 3-channel, of the wrong ndim, or empty.

    >>> import numpy as np
    >>> x = preprocess_images(np.zeros((480, 640, 3), np.uint8))
    >>> x.shape, x.dtype, round(float(x[0, 0, 0, 0]), 4)
    (torch.Size([1, 3, 224, 224]), torch.float32, -2.1179)
    """
    import cv2

    if config is None:
        config = ImagePreprocessConfig()
    flags = {"area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}
    out_h, out_w = config.size
    resized = []
    for frame in _split_frames(frames):
        img = np.ascontiguousarray(frame)
        for method, (h, w) in _resize_plan(img.shape[:2], (out_h, out_w), config.interpolation):
            img = cv2.resize(img, (w, h), interpolation=flags[method])
        resized.append(img)
    batch = np.stack(resized)  # (B, H, W, 3) uint8 BGR
    nchw = np.ascontiguousarray(batch[..., ::-1].transpose(0, 3, 1, 2))  # RGB, (B, 3, H, W)
    x = torch.from_numpy(nchw)
    if device is not None:
        x = x.to(device)
    return _normalise(x.to(torch.float32), config)


def _normalise(x: torch.Tensor, config: ImagePreprocessConfig) -> torch.Tensor:
    mean, std = _mean_std(config.mean, config.std, x.device)
    return ((x / 255.0 - mean) / std).contiguous()


@functools.lru_cache(maxsize=32)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: building them with torch.tensor(..., device="cuda") on every call is a
    # blocking host-to-device copy, i.e. a host sync in the middle of a GPU tick.
    # inference_mode(False): a cached constant first built under inference_mode must still be
    # usable by code that records autograd (training).
    with torch.inference_mode(False):
        return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in (mean, std))


@functools.lru_cache(maxsize=32)
def _area_matrix_np(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of pixel-area averaging for shrinking ``n_in`` -> ``n_out`` pixels.

    Output pixel ``i`` covers source interval ``[i s, (i + 1) s)`` with ``s = n_in / n_out``;
    source pixel ``j`` (interval ``[j, j + 1)``) gets the overlap length divided by ``s``.
    """
    s = n_in / n_out
    start = np.arange(n_out)[:, None] * s
    j = np.arange(n_in)[None, :]
    overlap = np.minimum(start + s, j + 1) - np.maximum(start, j)
    m = np.clip(overlap, 0.0, None) / s
    m[m < 1e-12] = 0.0
    return m


@functools.lru_cache(maxsize=32)
def _area_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(_area_matrix_np(n_in, n_out), dtype=torch.float32, device=device)


def _resize_torch(x: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """Resize float ``(B, C, h, w)`` holding 0..255 values; result rounded and clamped to 0..255."""
    h, w = x.shape[-2:]
    oh, ow = size
    if method == "area":
        # Exact pixel-area averaging as two matrix products (what cv2.INTER_AREA computes).
        # F.interpolate(mode="area") is adaptive average pooling, which rounds the pooling
        # windows to whole pixels and differs from cv2 by tens of grey levels for
        # non-integer ratios such as 640 -> 224.
        if oh != h:
            x = torch.matmul(_area_matrix(h, oh, x.device), x)
        if ow != w:
            x = torch.matmul(x, _area_matrix(w, ow, x.device).T)
    else:
        mode = "bicubic" if method == "cubic" else "bilinear"
        x = F.interpolate(x, size=(oh, ow), mode=mode, align_corners=False)
    return torch.floor(x + 0.5).clamp(0.0, 255.0)  # round half up, as OpenCV does


def preprocess_images_torch(
    frames: torch.Tensor, config: ImagePreprocessConfig | None = None
) -> torch.Tensor:
    """Same as :func:`preprocess_images` for a uint8 BGR tensor, computed on its device.

    ``frames`` is ``(B, h, w, 3)`` or ``(h, w, 3)`` uint8 BGR (e.g. a batch of camera frames
    already copied to the GPU). Area shrinking is exact pixel-area averaging done with two
    matrix products (``F.interpolate(mode="area")`` is adaptive pooling and does not match
    ``cv2.INTER_AREA``); growing uses ``F.interpolate`` bicubic (or bilinear for
    ``"linear"``), ``align_corners=False``, the half-pixel convention of OpenCV. Results are
    rounded to whole grey levels after each resize step, like the uint8 OpenCV path. Versus
    :func:`preprocess_images` it differs by at most one grey level per pixel in the measured
    cases (``1 / (255 * 0.224) ~ 0.018`` after normalisation; OpenCV uses fixed-point cubic
    coefficients). On a GPU with TF32 matmul enabled the area step may round to a
    neighbouring level more often.

    >>> import torch
    >>> x = preprocess_images_torch(torch.zeros(2, 480, 640, 3, dtype=torch.uint8))
    >>> x.shape, x.dtype
    (torch.Size([2, 3, 224, 224]), torch.float32)
    """
    if config is None:
        config = ImagePreprocessConfig()
    if not isinstance(frames, torch.Tensor):
        raise InputError(
            f"preprocess_images_torch expects a uint8 torch.Tensor, got {type(frames).__name__}; "
            "use preprocess_images for numpy frames"
        )
    if frames.ndim == 4:
        problem = _frame_problem(tuple(frames.shape[1:]), frames.dtype, None)
        if problem is None and frames.shape[0] == 0:
            problem = "preprocess_images_torch got an empty batch (B = 0)"
    else:
        problem = _frame_problem(tuple(frames.shape), frames.dtype, None)
        if problem is None:
            frames = frames.unsqueeze(0)
    if problem:
        raise InputError(problem)
    x = frames.permute(0, 3, 1, 2).to(torch.float32)  # (B, 3, h, w) BGR
    for method, size in _resize_plan(tuple(x.shape[-2:]), config.size, config.interpolation):
        x = _resize_torch(x, size, method)
    return _normalise(x.flip(1), config)  # BGR -> RGB
