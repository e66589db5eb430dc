"""Where tick results go: an overlay window, an annotated video, a JSONL log, a Python callback.

Every sink follows the `Sink` protocol: ``write(frame_bgr, result)`` once per tick, optionally
``write_audio(samples, sample_rate, t_s)`` with the original audio, and ``close()``. Sinks are
context managers; ``close()`` is idempotent and runs on every exit path (``with`` block, error,
Ctrl-C). A sink's ``closed`` flag turns True after ``close()`` or when the sink asks the pipeline
to stop (the overlay window after 'q' or Esc); the pipeline polls it.

>>> import json, tempfile, numpy as np
>>> from pathlib import Path
>>> from streamloc.types import TickResult
>>> path = Path(tempfile.mkdtemp()) / "ticks.jsonl"
>>> with JsonlSink(path) as sink:
...     sink.write(None, TickResult(frame_size=(480, 640), sound_map=np.zeros((7, 7), np.float32),
...                                 objects=[], time_ns=1_000_000_000, flags={"silent"}))
>>> record = json.loads(path.read_text().splitlines()[0])
>>> record["schema_version"], record["frame_size"], record["flags"]
(1, [480, 640], ['silent'])

JSONL record schema (``SCHEMA_VERSION = 1``)
--------------------------------------------
One JSON object per line (UTF-8, ``\\n``-terminated), one line per tick, in tick order. It is
``TickResult.to_record()`` plus ``schema_version``; non-finite numbers are written as ``null``.

===================  ====================  ==========================================================
field                type                  meaning (unit)
===================  ====================  ==========================================================
``schema_version``   int                   1; bumped whenever a field changes meaning or goes away
``time_ns``          int | null            reference time of the tick: ``time.monotonic_ns()`` stamp of
                                           the frame (ns, monotonic clock of the capturing machine,
                                           not wall-clock time)
``audio_window_ns``  [int, int] | null     monotonic ns of the start and end of the audio window
``frame_index``      int | null            index of the frame in its source (0-based)
``frame_size``       [int, int]            [height, width] of the frame the maps refer to (pixels)
``num_objects``      int                   number of sounding objects (0 when silent / none in view)
``objects``          list of objects       one per sounding object, strongest first:
  ``id``             int                   object id; stable across ticks when the pipeline tracks
  ``box``            [x1, y1, x2, y2]|null  pixel box of the mask, x2 and y2 exclusive
  ``centroid``       [x, y] | null         heat-weighted centroid inside the mask (pixels, 2 decimals)
  ``score``          float                 sound-association strength in [-1, 1] (5 decimals)
  ``area``           int                   mask area (pixels)
``sound_map_max``    float | null          maximum of the grid sound map (cosine similarity, [-1, 1])
``timings_ms``       {str: float}          per-stage latency (ms, 3 decimals), e.g. ``preprocess``,
                                           ``encoder``, ``postprocess``, ``total``
``flags``            [str]                 sorted conditions of the tick: ``late``,
                                           ``audio_overflow``, ``frames_dropped``, ``silent``
===================  ====================  ==========================================================
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import socket
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from streamloc.errors import DeviceError, InputError, StreamlocError
from streamloc.render import render_tick
from streamloc.types import TickResult

__all__ = [
    "SCHEMA_VERSION",
    "Sink",
    "BaseSink",
    "JsonlSink",
    "read_jsonl",
    "AnnotatedVideoWriter",
    "OverlayWindow",
    "CallbackSink",
    "MultiSink",
    "display_problem",
]

#: Version of the JSONL record layout documented above.
SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------------------------
# protocol and base class
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class Sink(Protocol):
    """What the pipeline needs of a sink.

    Optional members, looked up with ``getattr``: ``write_audio(samples, sample_rate, t_s)``
    (mono float32 audio whose first sample is at ``t_s`` seconds on the clock of
    ``TickResult.time_ns / 1e9``) and ``closed`` (True when the sink asks the pipeline to stop).
    """

    def write(self, frame_bgr: np.ndarray | None, result: TickResult) -> None: ...

    def close(self) -> None: ...


class BaseSink:
    """Context manager with an idempotent ``close()``; subclasses implement ``write`` and ``_close``."""

    def __init__(self) -> None:
        self._is_closed = False
        self._close_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True after ``close()`` (or when the sink asked the pipeline to stop)."""
        return self._is_closed

    def write(self, frame_bgr: np.ndarray | None, result: TickResult) -> None:  # pragma: no cover
        raise NotImplementedError

    def write_audio(self, samples: np.ndarray, sample_rate: int, t_s: float | None = None) -> None:
        """Ignore audio (sinks that record it override this)."""

    def close(self) -> None:
        """Release everything; safe to call many times and from ``__exit__`` after an error."""
        with self._close_lock:
            if self._is_closed:
                return
            self._is_closed = True
        self._close()

    def _close(self) -> None:
        pass

    def _check_open(self) -> None:
        if self._is_closed:
            raise StreamlocError(f"{type(self).__name__} is closed; create a new sink to write more ticks")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False


def _output_path(path: str | os.PathLike, what: str, suffix: str) -> Path:
    """Check that `path` can be created as a file, else raise DeviceError saying how to fix it."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise DeviceError(f"cannot write the {what} to '{p}': the directory '{parent}' does not exist; "
                          f"create it first (mkdir -p '{parent}') or choose another path")
    if not parent.is_dir():
        raise DeviceError(f"cannot write the {what} to '{p}': '{parent}' is not a directory; "
                          "choose a path inside an existing directory")
    if p.is_dir():
        raise DeviceError(f"cannot write the {what} to '{p}': it is a directory; give a file name "
                          f"inside it, e.g. '{p / ('out' + suffix)}'")
    return p


def _open_error(p: Path, what: str, e: OSError) -> DeviceError:
    reason = e.strerror or str(e)
    return DeviceError(f"cannot write the {what} to '{p}': {reason}; choose a path in a writable "
                       "directory, or fix the permissions of the file and its directory")


def _add_notes(err: BaseException, others: list[BaseException]) -> BaseException:
    if hasattr(err, "add_note"):
        for other in others:
            err.add_note(f"also: {type(other).__name__}: {other}")
    return err


# ---------------------------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------------------------
def _finite(value: Any) -> Any:
    """The record with NaN/inf replaced by None (strict JSON) and numpy scalars made plain."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    if isinstance(value, (set, frozenset)):
        return sorted(_finite(v) for v in value)
    return value


class JsonlSink(BaseSink):
    """Append one JSON record per tick to a file (see the module docstring for the schema).

    Lines reach the operating system every `flush_every` ticks (default: every tick), always as
    whole lines, so a crash or Ctrl-C leaves every completed line on disk; ``close()`` writes the
    rest. With ``fsync=True`` each flush also waits for the disk (survives power loss; slower).
    `append=True` keeps an existing file's lines. The frame is not used (it may be None).
    """

    def __init__(self, path: str | os.PathLike, *, flush_every: int = 1, append: bool = False,
                 fsync: bool = False):
        super().__init__()
        if int(flush_every) < 1:
            raise InputError(f"flush_every must be ≥ 1 tick, got {flush_every}")
        self.path = _output_path(path, "JSONL log", ".jsonl")
        self.flush_every = int(flush_every)
        self.fsync = bool(fsync)
        self.lines_written = 0
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        try:
            self._file = open(self.path, "ab" if append else "wb", buffering=0)  # noqa: SIM115
        except OSError as e:
            raise _open_error(self.path, "JSONL log", e) from e

    def write(self, frame_bgr: np.ndarray | None, result: TickResult) -> None:
        """Queue the record of `result`; flush when `flush_every` records are queued."""
        self._check_open()
        record = {"schema_version": SCHEMA_VERSION, **result.to_record()}
        line = json.dumps(_finite(record), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        with self._lock:
            self._pending.append((line + "\n").encode("utf-8"))
            if len(self._pending) >= self.flush_every:
                self._flush_locked()

    def flush(self) -> None:
        """Write the queued lines to the file now."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        data = memoryview(b"".join(self._pending))
        n = len(self._pending)
        self._pending.clear()
        try:
            while data:
                written = self._file.write(data)
                data = data[written or 0:]
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError as e:
            raise DeviceError(f"writing the JSONL log '{self.path}' failed: {e.strerror or e}; "
                              "check free disk space and that the file is still writable") from e
        self.lines_written += n

    def _close(self) -> None:
        try:
            with self._lock:
                self._flush_locked()
        finally:
            self._file.close()


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a JSONL log, skipping a last line cut short by a crash.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "t.jsonl"
    >>> _ = p.write_text('{"schema_version": 1, "num_objects": 0}\\n{"schema_ver')
    >>> [r["num_objects"] for r in read_jsonl(p)]
    [0]
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # an unterminated last line: the writer died mid-line
                return
            raise


# ---------------------------------------------------------------------------------------------
# HUD statistics kept by the sinks that show them
# ---------------------------------------------------------------------------------------------
class _TickMeter:
    """Rate (ticks/s) and median latency over the last `window` ticks, for the HUD."""

    def __init__(self, window: int = 30, *, wall_clock_fallback: bool = True):
        self._t: deque[float] = deque(maxlen=window)
        self._lat: deque[float] = deque(maxlen=window)
        self._wall = wall_clock_fallback

    def update(self, result: TickResult) -> dict[str, float]:
        if result.time_ns is not None:
            self._t.append(result.time_ns / 1e9)
        elif self._wall:
            self._t.append(time.monotonic())
        total = result.timings_ms.get("total")
        if total is not None:
            self._lat.append(float(total))
        stats: dict[str, float] = {}
        if len(self._t) >= 2 and self._t[-1] > self._t[0]:
            stats["rate_hz"] = (len(self._t) - 1) / (self._t[-1] - self._t[0])
        if self._lat:
            stats["latency_ms"] = float(np.median(np.fromiter(self._lat, float)))
        return stats


RenderFn = Callable[[np.ndarray, TickResult, Mapping[str, object]], np.ndarray]


def _check_frame(frame: np.ndarray | None, who: str) -> np.ndarray:
    if frame is None:
        raise InputError(f"{who} needs the frame of each tick; pass the BGR frame to write()")
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise InputError(f"{who} expects an HxWx3 uint8 BGR frame, got {a.dtype} {a.shape}")
    return a


# ---------------------------------------------------------------------------------------------
# annotated video (PyAV)
# ---------------------------------------------------------------------------------------------
_VIDEO_TIME_BASE = Fraction(1, 30000)  # exact for 24/25/30/60 and 30000/1001 fps; ≤ 65535 for mpeg4
_AUDIO_SYNC_TOLERANCE_S = 0.04  # audio chunk timestamps within this of the running end are contiguous
_PENDING_AUDIO_S = 30.0  # audio kept while waiting for the first frame


def _encoder_available(name: str) -> bool:
    import av

    try:
        av.Codec(name, "w")
    except Exception:  # UnknownCodecError, or a decoder-only name
        return False
    return True


class _AVState:
    """Everything the video writer owns; `finish` may run from `close()` or at garbage collection."""

    def __init__(self, path: Path, container, codec: str, audio_codec: str, fps: Fraction,
                 frame_size: tuple[int, int] | None, audio_rate: int | None, t0_s: float | None,
                 video_options: dict[str, str], bit_rate: int | None):
        self.path = path
        self.container = container
        self.codec = codec
        self.audio_codec = audio_codec
        self.fps = fps
        self.frame_size = frame_size
        self.audio_rate = audio_rate
        self.origin = t0_s
        self.video_options = video_options
        self.bit_rate = bit_rate
        self.vstream = None
        self.astream = None
        self.started = False
        self.finished = False
        self.frames = 0
        self.content_hw: tuple[int, int] | None = None
        self.last_pts: int | None = None
        self.frame_dur = max(1, int(round(1 / (fps * _VIDEO_TIME_BASE))))
        # audio
        self.pending: list[tuple[np.ndarray, int, float | None]] = []
        self.pending_s = 0.0
        self.a_format = "fltp"
        self.a_frame_size = 1024
        self.a_small_last = True
        self.a_buf = np.zeros(0, np.float32)
        self.a_nominal_end: float | None = None  # output samples since the origin
        self.a_encoded = 0
        self.resamplers: dict[int, Any] = {}

    # -- setup -------------------------------------------------------------------------------
    def start(self, frame_hw: tuple[int, int]) -> None:
        import av

        h, w = self.frame_size or frame_hw
        self.content_hw = (int(h), int(w))
        enc_w, enc_h = int(w) + int(w) % 2, int(h) + int(h) % 2  # 4:2:0 needs even sizes
        vs = self.container.add_stream(self.codec, rate=self.fps)
        vs.width, vs.height = enc_w, enc_h
        formats = [f.name for f in (vs.codec_context.codec.video_formats or [])]
        vs.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
        vs.codec_context.time_base = _VIDEO_TIME_BASE
        if self.video_options:
            vs.options = dict(self.video_options)
        if self.bit_rate:
            vs.bit_rate = int(self.bit_rate)
        self.vstream = vs
        if self.audio_rate is None and self.pending:
            self.audio_rate = self.pending[0][1]
        if self.audio_rate is not None:
            codec = av.Codec(self.audio_codec, "w")
            rates = list(codec.audio_rates or [])
            rate = int(self.audio_rate)
            if rates and rate not in rates:
                higher = [r for r in rates if r >= rate]
                rate = min(higher) if higher else max(rates)
            self.audio_rate = rate
            fmts = [f.name for f in (codec.audio_formats or [])]
            for cand in ("fltp", "flt", "s16p", "s16"):
                if not fmts or cand in fmts:
                    self.a_format = cand
                    break
            else:
                raise InputError(f"the audio codec {self.audio_codec!r} takes none of fltp/flt/s16; "
                                 "use audio_codec='aac'")
            a = self.container.add_stream(self.audio_codec, rate=rate)
            a.layout = "mono"
            a.format = self.a_format
            a.bit_rate = 64000 if rate <= 24000 else 96000
            a.codec_context.open()
            self.a_frame_size = a.codec_context.frame_size or 1024
            self.a_small_last = bool(codec.capabilities & av.codec.codec.Capabilities.small_last_frame) or \
                bool(codec.capabilities & av.codec.codec.Capabilities.variable_frame_size)
            self.astream = a
        self.started = True

    # -- video -------------------------------------------------------------------------------
    def video(self, img: np.ndarray, t_s: float | None) -> None:
        import av

        first = not self.started
        if first:
            if self.origin is None:  # the first tick is time 0 (0 on the audio clock without tick times)
                self.origin = 0.0 if t_s is None else float(t_s)
            self.start(img.shape[:2])
            pending, self.pending = self.pending, []
            for samples, rate, t in pending:
                self.audio(samples, rate, t)
        h, w = self.content_hw
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        if (h % 2) or (w % 2):
            img = cv2.copyMakeBorder(img, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
        if t_s is None:
            pts = 0 if self.last_pts is None else self.last_pts + self.frame_dur
        else:
            pts = int(round((t_s - self.origin) / _VIDEO_TIME_BASE))
            if self.last_pts is not None and pts <= self.last_pts:
                pts = self.last_pts + 1
            pts = max(pts, 0)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
        frame.pts = pts
        frame.time_base = _VIDEO_TIME_BASE
        try:
            frame.duration = self.frame_dur
        except AttributeError:  # pragma: no cover - old PyAV
            pass
        self.container.mux(self.vstream.encode(frame))
        self.last_pts = pts
        self.frames += 1

    # -- audio -------------------------------------------------------------------------------
    def queue_audio(self, samples: np.ndarray, rate: int, t_s: float | None) -> None:
        if not self.started:
            self.pending.append((samples.copy(), rate, t_s))
            self.pending_s += samples.size / rate
            while self.pending_s > _PENDING_AUDIO_S and len(self.pending) > 1:
                old = self.pending.pop(0)
                self.pending_s -= old[0].size / old[1]
            return
        self.audio(samples, rate, t_s)

    def audio(self, x: np.ndarray, rate: int, t_s: float | None) -> None:
        if self.astream is None:
            raise InputError(
                f"the annotated video '{self.path}' has no audio track: audio arrived after the first "
                "frame and no audio_rate was given; pass audio_rate=<Hz> to AnnotatedVideoWriter")
        out_rate = self.audio_rate
        ratio = out_rate / rate
        start = None if t_s is None else (float(t_s) - self.origin) * out_rate
        if self.a_nominal_end is None:
            start = 0.0 if start is None else start
            if start < 0:  # before the start of the video: cut
                x = x[int(round(-start / ratio)):]
                start = 0.0
            if x.size == 0:
                return
            gap = int(round(start))
            if gap > 0:
                self._append(np.zeros(gap, np.float32))
            self.a_nominal_end = float(gap)
        elif start is not None:
            d = start - self.a_nominal_end
            if d > _AUDIO_SYNC_TOLERANCE_S * out_rate:  # a gap: keep sync with silence
                gap = int(round(d))
                self._append(np.zeros(gap, np.float32))
                self.a_nominal_end += gap
            elif d < -_AUDIO_SYNC_TOLERANCE_S * out_rate:  # an overlap: drop what was already written
                x = x[int(round(-d / ratio)):]
        if x.size == 0:
            return
        self._append(self._resample(x, rate) if rate != out_rate else x)
        self.a_nominal_end += x.size * ratio
        self._drain(final=False)

    def _resample(self, x: np.ndarray | None, rate: int) -> np.ndarray:
        import av

        rs = self.resamplers.get(rate)
        if rs is None:
            rs = self.resamplers[rate] = av.AudioResampler(format="flt", layout="mono", rate=self.audio_rate)
        if x is None:
            frames = rs.resample(None)
        else:
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, np.float32)[None, :], format="flt",
                                           layout="mono")
            f.sample_rate = rate
            frames = rs.resample(f)
        parts = [fr.to_ndarray().reshape(-1).astype(np.float32, copy=False) for fr in frames]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _append(self, y: np.ndarray) -> None:
        self.a_buf = np.concatenate([self.a_buf, np.asarray(y, np.float32)]) if self.a_buf.size else \
            np.asarray(y, np.float32).copy()

    def _drain(self, *, final: bool) -> None:
        n = self.a_frame_size
        while self.a_buf.size >= n or (final and self.a_buf.size):
            chunk, self.a_buf = self.a_buf[:n], self.a_buf[n:]
            if chunk.size < n and not self.a_small_last:
                chunk = np.concatenate([chunk, np.zeros(n - chunk.size, np.float32)])
            self._encode_audio(chunk)

    def _encode_audio(self, chunk: np.ndarray) -> None:
        import av

        fmt = self.a_format
        data = np.clip(chunk, -1.0, 1.0)
        if fmt.startswith("s16"):
            data = np.rint(data * 32767.0).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data)[None, :], format=fmt, layout="mono")
        frame.sample_rate = self.audio_rate
        frame.pts = self.a_encoded
        frame.time_base = Fraction(1, self.audio_rate)
        self.container.mux(self.astream.encode(frame))
        self.a_encoded += chunk.size

    # -- end ---------------------------------------------------------------------------------
    def finish(self) -> list[BaseException]:
        """Flush both encoders and close the container; returns the errors met on the way."""
        if self.finished:
            return []
        self.finished = True
        errors: list[BaseException] = []
        try:
            if self.started and self.astream is not None:
                try:
                    for rate in list(self.resamplers):
                        self._append(self._resample(None, rate))
                    self._drain(final=True)
                    self.container.mux(self.astream.encode(None))
                except Exception as e:
                    errors.append(e)
            if self.started and self.vstream is not None:
                try:
                    self.container.mux(self.vstream.encode(None))
                except Exception as e:
                    errors.append(e)
        finally:
            try:
                self.container.close()
            except Exception as e:
                errors.append(e)
            if not self.started:  # nothing was written: leave no empty file behind
                try:
                    if self.path.exists() and self.path.stat().st_size == 0:
                        self.path.unlink()
                except OSError:
                    pass
        return errors


def _finish_quietly(state: _AVState) -> None:  # weakref.finalize target: never raises at exit
    try:
        state.finish()
    except Exception:
        pass


class AnnotatedVideoWriter(BaseSink):
    """Write the rendered ticks, and the original audio, to a video file (MP4: H.264 + AAC) with PyAV.

    Args:
        path: output file; the container follows the extension (``.mp4``, ``.mkv``, ``.mov``) or
            `container_format`. Its directory must exist: a missing or unwritable location raises
            DeviceError here, before any tick.
        fps: nominal frame rate. Frames are placed at their tick time (``result.time_ns``, in
            seconds from the first tick, or from `t0_s`), so an irregular tick rate plays back in real
            time; frames without ``time_ns`` follow each other at `fps`.
        frame_size: ``(height, width)`` of the video, like ``TickResult.frame_size`` and
            ``ndarray.shape[:2]``; other frames are resized to it. Default: the first frame's size.
            Odd sizes get one replicated pixel row/column (4:2:0 needs even sizes).
        audio_rate: sample rate of the audio track (Hz). Default: the rate of the first
            ``write_audio`` call before the first frame; with neither, the file has no audio track
            (and later audio raises InputError). Other input rates are resampled; rates that the
            audio codec cannot take become the next one it can (AAC: 8 k … 96 k).
        codec: video encoder; "libx264" falls back to "mpeg4" when this FFmpeg has no x264.
        audio_codec: audio encoder ("aac").
        render: True draws `render_tick` (objects and HUD) on each frame; False writes the frames as
            given; a callable ``fn(frame, result, stats) -> frame`` draws something else.
        t0_s: time origin in seconds on the clock of ``time_ns / 1e9`` and of the audio ``t_s``.
            Default: the first frame's time (audio from before it is cut).
        crf, preset: quality and speed of libx264 (lower crf = better; presets from "ultrafast").
        hud_stats: optional callable returning extra HUD stats (``rate_hz``, ``latency_ms``, ...);
            by default the rate and median latency of the last 30 ticks are shown.

    Audio passed to ``write_audio(samples, sample_rate, t_s)`` is placed at `t_s` (seconds, same
    clock as the frames); chunks within 40 ms of the end of the previous one are appended
    contiguously, larger gaps are filled with silence and overlaps are dropped, so picture and
    sound stay in sync. ``close()`` flushes both encoders and closes the file even after an error;
    it also runs when the writer is garbage-collected or the interpreter exits. A writer that never
    got a frame leaves no file.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float, frame_size: tuple[int, int] | None = None,
                 audio_rate: int | None = None, codec: str = "libx264", audio_codec: str = "aac",
                 render: bool | RenderFn = True, t0_s: float | None = None, crf: int = 23,
                 preset: str = "veryfast", container_format: str | None = None,
                 hud_stats: Callable[[], Mapping[str, object]] | None = None):
        super().__init__()
        import av

        if not (fps and float(fps) > 0 and math.isfinite(float(fps))):
            raise InputError(f"fps must be a positive number, got {fps}")
        if frame_size is not None:
            if len(frame_size) != 2 or min(int(frame_size[0]), int(frame_size[1])) < 2:
                raise InputError(f"frame_size must be (height, width) of at least 2x2, got {frame_size}")
            frame_size = (int(frame_size[0]), int(frame_size[1]))
        if audio_rate is not None and int(audio_rate) <= 0:
            raise InputError(f"audio_rate must be a positive sample rate in Hz, got {audio_rate}")
        self.path = _output_path(path, "annotated video", ".mp4")
        if codec == "libx264" and not _encoder_available(codec):
            codec = "mpeg4"
        if not _encoder_available(codec):
            raise InputError(f"this FFmpeg (PyAV {av.__version__}) has no {codec!r} video encoder; "
                             "use codec='libx264' or 'mpeg4'")
        if not _encoder_available(audio_codec):
            raise InputError(f"this FFmpeg (PyAV {av.__version__}) has no {audio_codec!r} audio encoder; "
                             "use audio_codec='aac'")
        self.codec, self.audio_codec = codec, audio_codec
        self.fps = Fraction(float(fps)).limit_denominator(1001)
        self._render = render
        self._hud_stats = hud_stats
        self._meter = _TickMeter(wall_clock_fallback=False)
        self._lock = threading.Lock()
        # Fail early: create the file now (PyAV would only open it at the first packet).
        try:
            with open(self.path, "wb"):
                pass
        except OSError as e:
            raise _open_error(self.path, "annotated video", e) from e
        try:
            container = av.open(str(self.path), mode="w", format=container_format)
        except Exception as e:
            try:
                self.path.unlink()
            except OSError:
                pass
            if isinstance(e, ValueError):
                raise InputError(f"cannot tell the video container format of '{self.path}': {e}; "
                                 "use a .mp4, .mkv or .mov name or pass container_format='mp4'") from e
            raise DeviceError(f"cannot write the annotated video to '{self.path}': {e}") from e
        options = {"preset": str(preset), "crf": str(int(crf))} if codec == "libx264" else {}
        bit_rate = None
        if codec != "libx264":
            h, w = frame_size or (480, 640)
            bit_rate = int(max(500_000, 4_000_000 * h * w / (640 * 480)))
        self._state = _AVState(self.path, container, codec, audio_codec, self.fps, frame_size,
                               None if audio_rate is None else int(audio_rate),
                               None if t0_s is None else float(t0_s), options, bit_rate)
        self._finalizer = weakref.finalize(self, _finish_quietly, self._state)

    @property
    def frames_written(self) -> int:
        return self._state.frames

    @property
    def audio_seconds_written(self) -> float:
        s = self._state
        return s.a_encoded / s.audio_rate if s.audio_rate else 0.0

    def _wrap(self, e: Exception) -> StreamlocError:
        if isinstance(e, StreamlocError):
            return e
        return DeviceError(f"writing the annotated video '{self.path}' failed: {type(e).__name__}: {e}; "
                           "check free disk space and that the file is still writable")

    def write(self, frame_bgr: np.ndarray | None, result: TickResult) -> None:
        """Render `result` on the frame and encode it at the tick's time."""
        self._check_open()
        frame = _check_frame(frame_bgr, "AnnotatedVideoWriter")
        stats: dict[str, object] = dict(self._meter.update(result))
        if self._hud_stats is not None:
            stats.update(self._hud_stats() or {})
        if self._render is True:
            img = render_tick(frame, result, stats)
        elif callable(self._render):
            img = _check_frame(self._render(frame, result, stats), "the render function of AnnotatedVideoWriter")
        else:
            img = frame
        t_s = None if result.time_ns is None else result.time_ns / 1e9
        with self._lock:
            try:
                self._state.video(img, t_s)
            except Exception as e:
                raise self._wrap(e) from e

    def write_audio(self, samples: np.ndarray, sample_rate: int, t_s: float | None = None) -> None:
        """Add original audio: mono float32 samples in [-1, 1] whose first sample is at `t_s` seconds
        (clock of ``time_ns / 1e9``; None: right after the previous chunk). (n, channels) arrays
        are averaged to mono."""
        self._check_open()
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim == 2:
            x = x.mean(axis=1) if x.shape[1] <= 8 else x.mean(axis=0)
        if x.ndim != 1:
            raise InputError(f"write_audio expects mono samples (n,), got shape {np.shape(samples)}")
        if int(sample_rate) <= 0:
            raise InputError(f"sample_rate must be positive, got {sample_rate}")
        if x.size == 0:
            return
        with self._lock:
            try:
                self._state.queue_audio(np.nan_to_num(x), int(sample_rate), t_s)
            except Exception as e:
                raise self._wrap(e) from e

    def _close(self) -> None:
        with self._lock:
            errors = self._state.finish()
            self._finalizer.detach()
        if errors:
            raise _add_notes(self._wrap(errors[0]), errors[1:])


# ---------------------------------------------------------------------------------------------
# overlay window (OpenCV HighGUI)
# ---------------------------------------------------------------------------------------------
def _opencv_gui() -> str:
    m = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return m.group(1).upper() if m else ""


def _x_server_answers(display: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts connections at the X display `display` (":0", "host:10.0")."""
    m = re.fullmatch(r"(?:(?P<proto>[a-z]+)/)?(?P<host>[^:]*):(?P<num>\d+)(?:\.\d+)?", display.strip())
    if not m:
        return True  # a form we do not know: let the GUI toolkit decide
    host, num = m.group("host"), int(m.group("num"))
    if host in ("", "unix") or m.group("proto") == "unix":
        path = f"/tmp/.X11-unix/X{num}"
        for address in (path, "\0" + path):  # filesystem socket, then Linux abstract socket
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout_s)
                try:
                    s.connect(address)
                    return True
                except OSError:
                    continue
        if host == "":
            return False
        host = "localhost"
    try:
        with socket.create_connection((host, 6000 + num), timeout=timeout_s):
            return True
    except OSError:
        return False


def display_problem() -> str | None:
    """Why an OpenCV window cannot open on this machine, or None when it probably can.

    Checked without touching the GUI toolkit (Qt aborts the whole process when it has no display):
    an OpenCV build without GUI, and on Linux/BSD a missing or silent X display (``DISPLAY``) or
    Wayland display (``WAYLAND_DISPLAY``), following ``QT_QPA_PLATFORM``.
    """
    gui = _opencv_gui()
    if gui in ("", "NONE", "NO"):
        return "this OpenCV build has no GUI support (opencv-python-headless?); install opencv-python"
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return None
    qt = gui.startswith("QT")
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip().lower() if qt else ""
    if platform and platform != "xcb":
        if platform.startswith("wayland") and not os.environ.get("WAYLAND_DISPLAY"):
            return "QT_QPA_PLATFORM is wayland but WAYLAND_DISPLAY is not set (no Wayland compositor)"
        plugins = Path(cv2.__file__).parent / "qt" / "plugins" / "platforms"
        if plugins.is_dir() and not any(platform in p.name for p in plugins.iterdir()):
            have = ", ".join(sorted(p.stem.removeprefix("libq") for p in plugins.iterdir())) or "none"
            return (f"QT_QPA_PLATFORM={platform!r} but this OpenCV's Qt only has the platform plugins: "
                    f"{have}")
        return None
    display = os.environ.get("DISPLAY", "").strip()
    if not display:
        if not qt and os.environ.get("WAYLAND_DISPLAY"):
            return None
        return "no display: DISPLAY is not set (no X server here, e.g. SSH without -X, a container or CI)"
    if not _x_server_answers(display):
        return f"no X server answers at DISPLAY={display!r}"
    return None


class OverlayWindow(BaseSink):
    """Show each tick rendered with `render_tick` in an OpenCV window.

    'q' or Esc (or closing the window) sets `closed`, which the pipeline polls to stop; every key
    press is also passed to ``on_key(key_code)``. ``close()`` destroys the window. Without a display
    (no ``DISPLAY``, no X server, a headless OpenCV) the constructor raises DeviceError telling to
    run with ``--no-display``. The window needs the thread that created it to call `write`.
    """

    QUIT_KEYS = (ord("q"), ord("Q"), 27)

    def __init__(self, title: str = "streamloc", *, on_key: Callable[[int], object] | None = None,
                 render: bool | RenderFn = True, hud_stats: Callable[[], Mapping[str, object]] | None = None):
        super().__init__()
        problem = display_problem()
        if problem:
            raise DeviceError(f"cannot open the overlay window: {problem}; run with --no-display "
                              "(and write an annotated video or a JSONL log instead)")
        self.title = str(title)
        self.on_key = on_key
        self._render = render
        self._hud_stats = hud_stats
        self._meter = _TickMeter()
        self._quit = False
        self._shown = False
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
        except cv2.error as e:
            raise DeviceError(f"cannot open the overlay window: {e}; run with --no-display") from e

    @property
    def closed(self) -> bool:
        """True once the user pressed 'q'/Esc or closed the window, or after ``close()``."""
        return self._quit or self._is_closed

    def write(self, frame_bgr: np.ndarray | None, result: TickResult) -> None:
        """Show the rendered tick and handle key presses (a no-op once the user closed the window)."""
        if self.closed:
            self._check_open()
            return
        frame = _check_frame(frame_bgr, "OverlayWindow")
        stats: dict[str, object] = dict(self._meter.update(result))
        if self._hud_stats is not None:
            stats.update(self._hud_stats() or {})
        if self._render is True:
            img = render_tick(frame, result, stats)
        elif callable(self._render):
            img = self._render(frame, result, stats)
        else:
            img = frame
        cv2.imshow(self.title, img)
        self._shown = True
        self.poll()

    def poll(self, delay_ms: int = 1) -> int:
        """Let the window process events for `delay_ms`; returns the key pressed (-1 for none)."""
        if self._is_closed:
            return -1
        key = cv2.waitKey(max(1, int(delay_ms)))
        if key != -1:
            key &= 0xFF
            if self.on_key is not None:
                self.on_key(key)
            if key in self.QUIT_KEYS:
                self._quit = True
        elif self._shown:
            try:
                if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                    self._quit = True  # the user closed the window
            except cv2.error:
                self._quit = True
        return key

    def _close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


# ---------------------------------------------------------------------------------------------
# callback and fan-out
# ---------------------------------------------------------------------------------------------
def _callable_name(fn: Callable) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module not in ("builtins", "__main__") else str(name)


def _takes_two_args(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


class CallbackSink(BaseSink):
    """Call ``fn(result)`` each tick, or ``fn(result, frame)`` when `fn` takes two positional arguments.

    An exception raised by `fn` propagates as a StreamlocError naming the callback (the original
    is its ``__cause__``), which stops the pipeline.

    >>> import numpy as np
    >>> from streamloc.types import TickResult
    >>> seen = []
    >>> with CallbackSink(lambda r: seen.append(r.num_objects)) as sink:
    ...     sink.write(None, TickResult(frame_size=(4, 4), sound_map=np.zeros((2, 2)), objects=[]))
    >>> seen
    [0]
    """

    def __init__(self, fn: Callable[..., object], *, name: str | None = None):
        super().__init__()
        if not callable(fn):
            raise InputError(f"CallbackSink needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or _callable_name(fn)
        self.with_frame = _takes_two_args(fn)

    def write(self, frame_bgr: np.ndarray | None, result: TickResult) -> None:
        self._check_open()
        try:
            if self.with_frame:
                self.fn(result, frame_bgr)
            else:
                self.fn(result)
        except Exception as e:
            raise StreamlocError(f"the callback {self.name} raised {type(e).__name__}: {e}") from e


class MultiSink(BaseSink):
    """Send every tick (and audio) to several sinks; ``close()`` closes all of them even if some fail.

    `closed` is True as soon as any of them asks to stop. A sink whose ``write`` raises does not
    keep the others from getting the tick; the first error is raised afterwards.
    """

    def __init__(self, sinks: Iterable[Sink | None]):
        super().__init__()
        self.sinks = [s for s in sinks if s is not None]

    @property
    def closed(self) -> bool:
        return self._is_closed or any(bool(getattr(s, "closed", False)) for s in self.sinks)

    def _each(self, call: Callable[[Any], object], sinks: list) -> None:
        errors: list[BaseException] = []
        for s in sinks:
            try:
                call(s)
            except Exception as e:
                errors.append(e)
        if errors:
            raise _add_notes(errors[0], errors[1:])

    def write(self, frame_bgr: np.ndarray | None, result: TickResult) -> None:
        self._check_open()
        self._each(lambda s: s.write(frame_bgr, result),
                   [s for s in self.sinks if not getattr(s, "closed", False)])

    def write_audio(self, samples: np.ndarray, sample_rate: int, t_s: float | None = None) -> None:
        self._check_open()
        self._each(lambda s: s.write_audio(samples, sample_rate, t_s),
                   [s for s in self.sinks if hasattr(s, "write_audio") and not getattr(s, "closed", False)])

    def _close(self) -> None:
        errors: list[BaseException] = []
        for s in self.sinks:
            try:
                s.close()
            except BaseException as e:  # noqa: B036 - close the others even on Ctrl-C, then re-raise
                errors.append(e)
        if errors:
            raise _add_notes(errors[0], errors[1:])
