"""Media decoding for the datasets: audio windows and RGB frames.

Audio
-----
``.wav`` and ``.flac`` are read with soundfile (only the samples of the window are read), any
other container (mp4, mkv, m4a, mp3, ogg…) is decoded with PyAV. Multi-channel audio is
averaged to mono (as EZ-VSL / AVGN do). soundfile scales 16-bit PCM by 1/32768; EZ-VSL divides
by 32767 and clips to [-1, 1] — a relative difference of 3.1e-5 (6e-5 in a log-power
spectrogram), which this module does not reproduce.

Window protocols (``official-impls.md`` §1.3, §5.5), all on the file's native rate:

* ``"ezvsl"`` (EZ-VSL, AVGN): ``duration`` seconds centred on the file,
  ``start = max(len/sr/2 - duration/2, 0)``.
* ``"noprior_train"`` (NoPrior training): the first ``duration`` seconds.
* ``"noprior_test"`` (NoPrior test): centred on the file's whole seconds,
  ``start = (floor(len/sr)/2 - duration/2)·sr`` (clamped at 0). The official code hard-codes
  ``sr = 22050`` in this formula, which is only right for 22.05 kHz files; the file's own rate is
  used here, which is identical for the 22.05 kHz files NoPrior requires.
* an explicit ``start_s`` (e.g. DSOL's 1-s segment of second ``SSS``).

Sample indices are ``int(seconds · sr)``. A window shorter than ``duration`` (short file) is
tiled ``int(n/len)+1`` times and truncated to ``n`` samples (EZ-VSL, NoPrior). With a
``sample_rate``, the selected window is resampled with soxr (HQ) before tiling, so the result has
exactly ``round(duration · sample_rate)`` samples.
"""

from __future__ import annotations

import errno
from os import PathLike
from pathlib import Path

import numpy as np

from training.data.errors import MediaError

__all__ = [
    "SOUNDFILE_EXTENSIONS",
    "WINDOW_PROTOCOLS",
    "require_file",
    "audio_info",
    "decode_audio",
    "window_start",
    "tile_to_length",
    "resample",
    "load_audio_window",
    "load_frame",
]

PathArg = str | PathLike[str]

SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac"})
WINDOW_PROTOCOLS = ("ezvsl", "noprior_train", "noprior_test")


def require_file(path: PathArg, what: str = "file") -> Path:
    """``Path(path)`` if it is an existing file, else ``FileNotFoundError`` naming the path."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, f"{what} not found: {p}", str(p))
    return p


def _uses_soundfile(path: Path) -> bool:
    return path.suffix.lower() in SOUNDFILE_EXTENSIONS


def _sf_info(path: Path) -> tuple[int, int]:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile errors carry no stable type across versions
        raise MediaError(path, f"cannot read audio with soundfile: {exc}") from exc
    return int(info.frames), int(info.samplerate)


def _pyav_decode(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(path, "no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # planar float, layout and rate kept
            chunks: list[np.ndarray] = []
            rate = None
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    rate = out.sample_rate
                    chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float64))
            for out in resampler.resample(None):
                rate = out.sample_rate
                chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float64))
            if rate is None:
                rate = stream.rate or stream.sample_rate
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(path, f"cannot decode audio with PyAV: {exc}") from exc
    if not chunks or not rate:
        raise MediaError(path, "no audio samples")
    return np.concatenate(chunks).astype(np.float32), int(rate)


def audio_info(path: PathArg) -> tuple[int, int]:
    """(number of samples, sample rate). PyAV files are decoded to count exactly."""
    p = require_file(path, "audio file")
    if _uses_soundfile(p):
        return _sf_info(p)
    x, sr = _pyav_decode(p)
    return len(x), sr


def decode_audio(path: PathArg, *, start: int = 0, frames: int | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples ``[start, start + frames)`` (to the end if ``frames`` is None) and
    the native sample rate."""
    p = require_file(path, "audio file")
    if _uses_soundfile(p):
        import soundfile as sf

        try:
            data, sr = sf.read(
                str(p), start=start, frames=-1 if frames is None else frames,
                dtype="float32", always_2d=True,
            )
        except Exception as exc:
            raise MediaError(p, f"cannot read audio with soundfile: {exc}") from exc
        return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)), int(sr)
    x, sr = _pyav_decode(p)
    stop = None if frames is None else start + frames
    return np.ascontiguousarray(x[start:stop]), sr


def window_start(n_samples: int, sample_rate: int, protocol: str, duration: float = 3.0) -> int:
    """First sample of the window for ``protocol`` (see the module docstring)."""
    if protocol == "ezvsl":
        start_s = max(n_samples / sample_rate / 2.0 - duration / 2.0, 0.0)
        return int(start_s * sample_rate)
    if protocol == "noprior_train":
        return 0
    if protocol == "noprior_test":
        centre = (n_samples // sample_rate) / 2.0
        return max(int((centre - duration / 2.0) * sample_rate), 0)
    raise ValueError(f"unknown window protocol {protocol!r}; use one of {WINDOW_PROTOCOLS}")


def tile_to_length(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` truncated to ``n`` samples, or tiled ``int(n/len)+1`` times then truncated."""
    if len(x) == 0:
        raise ValueError("cannot tile an empty signal")
    if len(x) >= n:
        return x[:n]
    return np.tile(x, n // len(x) + 1)[:n]


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """soxr (HQ) resampling of a 1-D float signal; identity when the rates match."""
    if sr_in == sr_out:
        return x
    import soxr

    return soxr.resample(np.asarray(x, np.float32), sr_in, sr_out)


def load_audio_window(
    path: PathArg,
    *,
    protocol: str = "ezvsl",
    duration: float = 3.0,
    sample_rate: int | None = None,
    start_s: float | None = None,
    what: str = "audio file",
) -> tuple[np.ndarray, int]:
    """The ``duration``-second window of ``path`` as mono float32, and its sample rate.

    ``start_s`` (seconds) overrides ``protocol``. ``sample_rate=None`` keeps the native rate
    (EZ-VSL / AVGN). Raises ``FileNotFoundError`` naming the path for a missing file and
    :class:`~training.data.errors.MediaError` for an unreadable or empty one, or when
    ``start_s`` lies beyond the end of the file.
    """
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    p = require_file(path, what)
    if _uses_soundfile(p):
        n, sr = _sf_info(p)
        full = None
    else:
        full, sr = _pyav_decode(p)
        n = len(full)
    if n == 0:
        raise MediaError(p, "audio file has no samples")
    if start_s is not None:
        if start_s < 0:
            raise ValueError(f"start_s must be >= 0, got {start_s}")
        start = int(start_s * sr)
        if start >= n:
            raise MediaError(
                p, f"window start {start_s:g} s is beyond the end of the file ({n / sr:g} s)"
            )
    else:
        start = window_start(n, sr, protocol, duration)
    n_win = int(round(duration * sr))
    if full is None:
        x, _ = decode_audio(p, start=start, frames=min(n_win, n - start))
    else:
        x = full[start : start + n_win]
    if len(x) == 0:
        raise MediaError(p, "empty audio window")
    out_sr = sr if sample_rate is None else int(sample_rate)
    x = resample(x, sr, out_sr)
    x = tile_to_length(x, int(round(duration * out_sr)))
    return np.ascontiguousarray(x, dtype=np.float32), out_sr


def load_frame(path: PathArg, size: int | None = None, *, what: str = "frame") -> np.ndarray:
    """RGB uint8 image (H, W, 3) read with OpenCV (BGR → RGB).

    ``size`` resizes to ``size × size`` (aspect not kept, as the official test transforms):
    ``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when enlarging.
    """
    import cv2

    p = require_file(path, what)
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise MediaError(p, "OpenCV cannot decode this image")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size is not None and img.shape[:2] != (size, size):
        shrink = img.shape[0] * img.shape[1] > size * size
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.ascontiguousarray(img)
