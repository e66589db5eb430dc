"""`MediaSource`: a media file's video and audio, demuxed with PyAV, into the live ring types.

The file's frames go into a :class:`~streamloc.buffer.FrameRing` (BGR uint8, keep-latest) and
its audio, resampled to mono float32 at ``sample_rate`` by ``av.AudioResampler``, into an
:class:`~streamloc.buffer.AudioRing`: the pipeline cannot tell the file from a camera and a
microphone.

Timeline
    Media time ``tau`` (the streams' pts in seconds) is mapped onto the monotonic clock from
    the moment the source starts: ``t = t_start + (offset + tau - tau0)``, where ``tau0`` is
    the earliest stream start and ``offset`` grows by one pass per loop. Audio is placed by
    its sample count from the first audio frame's pts, so audio sample indices map linearly to
    time, across loops too (a loop pass lasts exactly as long as the audio it produced).

``realtime=True`` (as if live)
    Each item is released when the clock reaches it: a video frame at its time, an audio chunk
    when its *last* sample is due (like a microphone block). Decoders hold frames back (B-frame
    reordering, frame threads) and files interleave their streams coarsely, so the demux thread
    decodes ``lookahead_s`` (0.5 s) ahead and orders the decoded items by due time in a small
    heap; the clock origin ``t_start_ns`` is fixed by the first delivery. Frames are stamped
    with ``time.monotonic_ns()`` at delivery, like a camera; audio chunks carry the mapped time
    of their first sample as their ADC time.

``realtime=False`` (as fast as possible)
    Nothing waits; stamps are the mapped pts (so they run ahead of the wall clock). A slow
    consumer of the frame ring skips frames (keep-latest); use ``on_frame`` / ``on_audio`` to
    see every item, and a ring longer than the file to keep all the audio.

End of file sets ``finished``; ``loop=True`` seamlessly restarts with continuing timestamps (for
soak tests). A file PyAV cannot open or decode raises (or reports) a
:class:`~streamloc.errors.DeviceError` naming the file and quoting PyAV. A file without audio
is refused unless ``allow_silent=True``, which feeds zeros paced with the video.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamloc.buffer import AudioRing, FrameEntry, FrameRing
from streamloc.errors import DeviceError, InputError
from streamloc.io import Source

__all__ = ["MediaSource", "MediaInfo", "probe_media"]

log = logging.getLogger("streamloc.io.media")


@dataclass(frozen=True)
class MediaInfo:
    """The original streams of a media file (before any resampling)."""

    path: str
    format: str
    duration_s: float | None
    start_time_s: float
    has_video: bool
    has_audio: bool
    video_codec: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0
    video_frames: int = 0  # 0 when the container does not say
    audio_codec: str | None = None
    audio_rate: int = 0
    audio_channels: int = 0
    audio_layout: str | None = None


def _pyav_error(path: Path, exc: BaseException, what: str = "cannot open media file") -> DeviceError:
    msg = str(exc) or type(exc).__name__
    return DeviceError(f"{what} {path}: PyAV says: {msg}")


def _open_container(path: Path):
    import av

    if not path.exists():
        raise DeviceError(f"no such media file: {path}")
    if path.is_dir():
        raise DeviceError(f"{path} is a directory, not a media file")
    try:
        return av.open(str(path))
    except Exception as exc:  # av.error.FFmpegError and friends
        raise _pyav_error(path, exc) from exc


def _stream_start(stream) -> float | None:
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def _info_from(container, path: Path) -> MediaInfo:
    v = container.streams.video[0] if container.streams.video else None
    a = container.streams.audio[0] if container.streams.audio else None
    duration = container.duration / 1e6 if container.duration else None
    if duration is None:
        for s in (v, a):
            if s is not None and s.duration and s.time_base:
                duration = max(duration or 0.0, float(s.duration * s.time_base))
    starts = [_stream_start(s) for s in (v, a) if s is not None]
    starts = [x for x in starts if x is not None]
    fps = 0.0
    if v is not None:
        rate = v.average_rate or v.guessed_rate or v.base_rate
        fps = float(rate) if rate else 0.0
    return MediaInfo(
        path=str(path),
        format=container.format.name,
        duration_s=duration,
        start_time_s=min(starts) if starts else 0.0,
        has_video=v is not None,
        has_audio=a is not None,
        video_codec=v.codec_context.name if v is not None else None,
        width=int(v.codec_context.width) if v is not None else 0,
        height=int(v.codec_context.height) if v is not None else 0,
        fps=fps,
        video_frames=int(v.frames or 0) if v is not None else 0,
        audio_codec=a.codec_context.name if a is not None else None,
        audio_rate=int(a.codec_context.sample_rate or 0) if a is not None else 0,
        audio_channels=int(a.codec_context.channels or 0) if a is not None else 0,
        audio_layout=(a.codec_context.layout.name if a is not None and a.codec_context.layout else None),
    )


def probe_media(path: str | os.PathLike) -> MediaInfo:
    """Stream info of a media file; :class:`DeviceError` if PyAV cannot open it."""
    p = Path(path)
    container = _open_container(p)
    try:
        return _info_from(container, p)
    finally:
        container.close()


class MediaSource(Source):
    """Video + audio of a file into a FrameRing and an AudioRing, paced or as fast as possible.

    ``on_frame(FrameEntry)`` and ``on_audio(samples, first_index, t_first_ns)`` are called
    from the demux thread for every item (after it is in its ring).
    """

    name = "media"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        sample_rate: int = 16000,
        realtime: bool = True,
        loop: bool = False,
        allow_silent: bool = False,
        audio_ring: AudioRing | None = None,
        frame_ring: FrameRing | None = None,
        ring_seconds: float = 10.0,
        lookahead_s: float = 0.5,
        on_frame: Callable[[FrameEntry], Any] | None = None,
        on_audio: Callable[[np.ndarray, int, int], Any] | None = None,
        on_error: Callable[[DeviceError], Any] | None = None,
        on_finished: Callable[[], Any] | None = None,
    ):
        super().__init__(on_error=on_error, on_finished=on_finished)
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise InputError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        self.path = Path(path)
        self.name = f"media file {self.path}"
        self.sample_rate = int(sample_rate)
        self.realtime = bool(realtime)
        self.loop = bool(loop)
        self.allow_silent = bool(allow_silent)
        self.on_frame = on_frame
        self.on_audio = on_audio
        if lookahead_s < 0:
            raise InputError(f"lookahead_s must be >= 0, got {lookahead_s}")
        self.lookahead_s = float(lookahead_s)
        self.info = probe_media(self.path)
        if not self.info.has_audio and not self.info.has_video:
            raise DeviceError(f"{self.path} has neither a video nor an audio stream")
        if not self.info.has_audio and not self.allow_silent:
            raise DeviceError(
                f"{self.path} has no audio stream; sound source localization needs sound "
                "(pass allow_silent=True to feed silence with the video)"
            )
        if audio_ring is not None and (
            audio_ring.sample_rate != self.sample_rate or audio_ring.channels != 1
        ):
            raise InputError(
                f"audio_ring must be mono at {self.sample_rate} Hz, got {audio_ring.sample_rate} Hz x "
                f"{audio_ring.channels} ch"
            )
        if audio_ring is None:
            audio_ring = AudioRing(ring_seconds, self.sample_rate, 1)
        self.audio_ring = audio_ring
        self.frame_ring = frame_ring if frame_ring is not None else FrameRing(4)
        # Alias used by code that treats every source alike.
        self.ring = self.audio_ring

        self.frames_delivered = 0
        self.audio_samples_delivered = 0
        self.loops_completed = 0
        self.max_late_ms = 0.0
        self.t_start_ns: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._container = None

    # -------------------------------------------------------------- life cycle
    def _open(self) -> None:
        self._container = _open_container(self.path)  # errors raise from start()
        self._thread = threading.Thread(target=self._run, name="streamloc-media", daemon=True)
        # Real time: the clock origin is fixed by the first delivery (after the lookahead).
        self.t_start_ns = None if self.realtime else time.monotonic_ns()
        self._thread.start()

    def _close(self) -> None:
        self._stop.set()
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(10.0)
        if th is None and self._container is not None:
            self._container.close()
            self._container = None

    # -------------------------------------------------------------- demux thread
    def _run(self) -> None:
        container = self._container
        offset_s = 0.0
        try:
            while not self._stop.is_set():
                pass_s = self._play_pass(container, offset_s)
                if self._stop.is_set() or pass_s is None:
                    return
                if not self.loop:
                    self._finish()
                    return
                self.loops_completed += 1
                offset_s += pass_s
                container.close()
                container = self._container = _open_container(self.path)
        except DeviceError as exc:
            self._fail(exc)
        except Exception as exc:
            self._fail(_pyav_error(self.path, exc, "error while decoding"))
        finally:
            if container is not None:
                container.close()
            self._container = None

    def _play_pass(self, container, offset_s: float) -> float | None:
        """Demux the whole file once; the pass duration in s (``None`` when stopped).

        Heap items are ``(due_s, seq, kind, payload, start_s)`` in stream seconds: a frame is
        due at its time, an audio chunk at the time of its last sample.
        """
        import av

        v = container.streams.video[0] if container.streams.video else None
        a = container.streams.audio[0] if container.streams.audio else None
        if v is not None:
            v.thread_type = "AUTO"
        tau0 = self.info.start_time_s
        sr = self.sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr) if a is not None else None
        audio_start_s: float | None = None  # pass-relative time of the first audio sample
        pass_samples = 0
        frame_dur = 1.0 / self.info.fps if self.info.fps > 0 else 1.0 / 30
        last_video_s = -frame_dur
        heap: list = []
        seq = itertools.count()

        def audio_items(frames):
            nonlocal pass_samples
            for f in frames:
                x = f.to_ndarray()
                x = np.ascontiguousarray(x[0] if x.ndim == 2 else x, dtype=np.float32)
                if x.size == 0:
                    continue
                start_s = offset_s + audio_start_s + pass_samples / sr
                pass_samples += x.size
                heapq.heappush(heap, (start_s + x.size / sr, next(seq), "a", x, start_s))

        streams = [st for st in (v, a) if st is not None]
        for fr in container.decode(*streams):
            if self._stop.is_set():
                return None
            if isinstance(fr, av.VideoFrame):
                tau = fr.time if fr.time is not None else (last_video_s + frame_dur + tau0)
                start_s = offset_s + (tau - tau0)
                last_video_s = tau - tau0
                img = fr.to_ndarray(format="bgr24")
                heapq.heappush(heap, (start_s, next(seq), "v", img, start_s))
            else:
                if audio_start_s is None:
                    tau = fr.time if fr.time is not None else tau0
                    audio_start_s = max(0.0, tau - tau0)
                start_s = offset_s + audio_start_s + pass_samples / sr
                audio_items(resampler.resample(fr))
            # Decoders hold frames back (reordering, frame threads) and muxers interleave
            # coarsely: only release what is due well before the newest decoded item.
            horizon = start_s - self.lookahead_s if self.realtime else None
            if not self._release(heap, horizon):
                return None
        if resampler is not None and audio_start_s is not None:
            audio_items(resampler.resample(None))
        if not self._release(heap, None):
            return None
        if a is not None and audio_start_s is not None:
            # Audio stays contiguous across loops: the next pass starts where this audio ended.
            return pass_samples / sr
        return last_video_s + frame_dur

    def _release(self, heap: list, horizon_s: float | None) -> bool:
        """Deliver heap items due up to ``horizon_s`` (all if None); False if stopped."""
        while heap and (horizon_s is None or heap[0][0] <= horizon_s):
            due_s, _, kind, payload, start_s = heapq.heappop(heap)
            if self.t_start_ns is None:
                # The clock origin is set by the first delivery, after the decoder's lookahead.
                self.t_start_ns = time.monotonic_ns() - int(round(due_s * 1e9))
            due_ns = self.t_start_ns + int(round(due_s * 1e9))
            if self.realtime:
                delay = (due_ns - time.monotonic_ns()) / 1e9
                if delay > 0 and self._stop.wait(delay):
                    return False
                late = (time.monotonic_ns() - due_ns) / 1e6
                if late > self.max_late_ms:
                    self.max_late_ms = late
            elif self._stop.is_set():
                return False
            if kind == "v":
                self._deliver_frame(payload, start_s, due_ns)
            else:
                self._deliver_audio(payload, self.t_start_ns + int(round(start_s * 1e9)))
        return True

    def _deliver_frame(self, img: np.ndarray, s: float, due_ns: int) -> None:
        t = time.monotonic_ns() if self.realtime else due_ns
        entry = self.frame_ring.put(img, t)
        self.frames_delivered += 1
        if not self.info.has_audio:
            # allow_silent: zeros up to the end of this frame, stamped on the same timeline.
            fps = self.info.fps if self.info.fps > 0 else 30.0
            ring = self.audio_ring
            target = int(round((s + 1.0 / fps) * self.sample_rate))
            n = target - ring.write_index
            if n > 0:
                z = np.zeros(n, np.float32)
                first = ring.write_index
                t_first = self.t_start_ns + int(round(first * 1e9 / self.sample_rate))
                self._deliver_audio(z, t_first)
        if self.on_frame is not None:
            try:
                self.on_frame(entry)
            except Exception:
                log.exception("on_frame callback raised")

    def _deliver_audio(self, x: np.ndarray, start_ns: int) -> None:
        ring = self.audio_ring
        first = ring.write_index
        ring.write(x, adc_time_ns=start_ns)
        self.audio_samples_delivered += x.size
        if self.on_audio is not None:
            try:
                self.on_audio(x, first, start_ns)
            except Exception:
                log.exception("on_audio callback raised")

    def stats(self) -> dict[str, Any]:
        return {
            "frames_delivered": self.frames_delivered,
            "audio_samples_delivered": self.audio_samples_delivered,
            "loops_completed": self.loops_completed,
            "max_late_ms": self.max_late_ms,
            "frames_dropped": self.frame_ring.frames_dropped,
            "audio_overflows": self.audio_ring.overflows,
        }
