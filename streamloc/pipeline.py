"""`StreamingPipeline`: sources → rings → tick scheduler → Localizer → sinks.

One thread (the caller's) runs the ticks; the sources capture in their own threads into the rings.
Each tick takes the newest frame and the audio window ending at that frame's time (or, with
`align="center"`, the frame at the window's centre, as the papers do offline), runs the Localizer,
gives objects stable ids, and hands the result to the sinks. At most one tick is in flight and
tick starts are at least one period apart: a tick that overruns its period makes the scheduler
skip the slots it missed (counted, never queued); waiting for a new frame only delays the next
tick.
Audio that has not arrived yet is waited for up to `late_audio_s`; after that the tick uses the
newest window and is flagged "late".

Example (needs an A/V file and a checkpoint)::

    from streamloc import Localizer
    from streamloc.io.media import MediaSource
    from streamloc.io.sinks import JsonlSink

    localizer = Localizer.from_checkpoint("model.safetensors")
    with StreamingPipeline(localizer, MediaSource("clip.mp4", sample_rate=localizer.sample_rate),
                           sinks=[JsonlSink("out.jsonl")], rate=10) as pipe:
        summary = pipe.run()
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from streamloc.buffer import AudioRing, FrameRing, RingReadError
from streamloc.errors import DeviceError, InputError, StreamlocError
from streamloc.latency import LatencyStats
from streamloc.localizer import Localizer
from streamloc.tracking import ObjectTracker
from streamloc.types import TickResult

ALIGNMENTS = ("end", "center")


def _frame_ring(source) -> FrameRing:
    ring = getattr(source, "frame_ring", None)
    if ring is None:
        ring = getattr(source, "ring", None)  # (rings define __len__: never test them for truth)
    if not isinstance(ring, FrameRing):
        raise InputError(f"{getattr(source, 'name', source)!r} does not provide video frames")
    return ring


def _audio_ring(source) -> AudioRing:
    ring = getattr(source, "audio_ring", None)
    if ring is None:
        ring = getattr(source, "ring", None)
    if not isinstance(ring, AudioRing):
        raise InputError(f"{getattr(source, 'name', source)!r} does not provide audio")
    return ring


class StreamingPipeline:
    """Runs a Localizer on live (or paced) sources at a target rate and feeds the sinks.

    Args:
        localizer: the `Localizer` (model + backend) to run each tick.
        video: a source with a FrameRing (`CameraSource`, `MediaSource`).
        audio: a source with an AudioRing (`MicrophoneSource`); None: `video` also gives audio
            (`MediaSource`).
        sinks: objects with `write(frame, result)`, optional `write_audio(samples, rate, t_s)`,
            `close()` and a `closed` flag (a sink that sets it, e.g. the window on 'q', ends the run).
        rate: target ticks per second.
        align: "end" (audio window ends at the frame) or "center" (frame at the window centre).
        late_audio_s: how long a tick waits for audio that has not arrived yet.
        track: give objects stable ids across ticks.
        duration: stop after this many seconds (None: until the sources end or stop() / Ctrl-C).
        warmup: ticks excluded from the latency statistics.
    """

    def __init__(self, localizer: Localizer, video, audio=None, *, sinks: Sequence[Any] = (), rate: float = 10.0,
                 align: str = "end", late_audio_s: float = 0.25, track: bool = True,
                 duration: float | None = None, warmup: int = 3, on_tick=None):
        if rate <= 0:
            raise InputError(f"rate must be > 0 ticks per second, got {rate}")
        if align not in ALIGNMENTS:
            raise InputError(f"align must be one of {ALIGNMENTS}, got {align!r}")
        self.localizer = localizer
        self.video = video
        self.audio = audio if audio is not None else video
        self.sources = [video] if self.audio is video else [video, self.audio]
        self.frames: FrameRing | None = None  # resolved in start(): a microphone makes its ring on open
        self.ring: AudioRing | None = None
        self.sinks = list(sinks)
        self.rate = float(rate)
        self.align = align
        self.late_audio_s = float(late_audio_s)
        self.tracker = ObjectTracker() if track else None
        self.duration = duration
        self.on_tick = on_tick
        self.stats = LatencyStats(warmup=warmup)
        self.window_ns = int(round(localizer.window_seconds * 1e9))
        self._stop = threading.Event()
        self._audio_sent = None  # next ring index to hand to audio-capable sinks
        self._last_counters: dict[str, int] = {}
        self.error: BaseException | None = None
        self.stop_reason: str | None = None
        self._entered = False

    # -- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> "StreamingPipeline":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Start the sources (raises DeviceError if one cannot open; everything opened is closed)."""
        self._entered = True
        self.localizer.warmup()  # JIT and allocations before the clock starts
        try:
            for source in self.sources:
                source.start()
            self.frames = _frame_ring(self.video)
            self.ring = _audio_ring(self.audio)
        except BaseException:
            self.close()
            raise

    def stop(self, reason: str = "stopped") -> None:
        """Ask the tick loop to finish (thread-safe; also what Ctrl-C and SIGTERM do)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def close(self) -> None:
        """Stop the sources and flush/close every sink, whatever happened (idempotent)."""
        errors = []
        for source in self.sources:
            try:
                source.stop()
            except Exception as exc:  # pragma: no cover - best effort
                errors.append(exc)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                errors.append(exc)
        if errors and self.error is None:
            raise StreamlocError(f"while closing the pipeline: {errors[0]}") from errors[0]

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        """Tick until the duration, the end of the media, a sink closing, stop(), Ctrl-C or SIGTERM.

        Returns the latency summary. A source error is raised (as DeviceError) after the sinks
        were flushed and closed.
        """
        if not self._entered:
            self.start()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: self.stop("SIGTERM"))
        period_ns = int(1e9 / self.rate)
        t_begin = time.monotonic_ns()
        next_tick = t_begin
        last_frame_index = -1
        try:
            while not self._stop.is_set():
                now = time.monotonic_ns()
                if self.duration is not None and now - t_begin >= self.duration * 1e9:
                    self.stop("duration")
                    break
                if now < next_tick:
                    self._stop.wait((next_tick - now) / 1e9)
                    continue
                self._check_sources()
                if self._stop.is_set():
                    break
                entry = self._pick_frame(last_frame_index)  # may wait for a new frame
                if entry is None:
                    if self._sources_finished():
                        self.stop("end of media")
                    continue
                t_start = time.monotonic_ns()
                result = self._tick(entry)
                if result is None:  # e.g. the first window of audio is still filling: next slot
                    next_tick = t_start + period_ns
                    continue
                last_frame_index = entry.index
                self._emit(entry.frame, result)
                # Ticks start at most `rate` times per second; a tick that ran longer than the
                # period makes the scheduler skip the slots it overran (counted, never queued).
                # Waiting for a new frame delays the next tick but is not a skip.
                missed = (time.monotonic_ns() - t_start) // period_ns
                if missed:
                    self.stats.count("ticks_skipped", int(missed))
                next_tick = t_start + (missed + 1) * period_ns
        except KeyboardInterrupt:
            self.stop("interrupted")
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self._drain_audio()
            self.close()
        summary = self.stats.summary()
        summary["stop_reason"] = self.stop_reason
        summary["audio_ring"] = self.ring.stats() if self.ring is not None else None
        summary["frames_dropped_by_ring"] = self.frames.frames_dropped if self.frames is not None else None
        return summary

    def _check_sources(self) -> None:
        for source in self.sources:
            error = getattr(source, "error", None)
            if error is not None:
                self.stop(f"source error: {error}")
                raise error if isinstance(error, DeviceError) else DeviceError(str(error))
        for sink in self.sinks:
            if getattr(sink, "closed", False):
                self.stop("a sink closed (window closed)")

    def _sources_finished(self) -> bool:
        return any(getattr(s, "finished", None) is not None and s.finished.is_set() for s in self.sources)

    def _pick_frame(self, last_index: int):
        if self.align == "center":
            try:
                t_center = self.ring.latest_time_ns() - self.window_ns // 2
            except RingReadError:
                return None
            entry = self.frames.nearest(t_center)
        else:
            entry = self.frames.wait_for(last_index, timeout=0.5)
        if entry is None or entry.index == last_index:
            return None
        return entry

    def _tick(self, entry) -> TickResult | None:
        t0 = time.perf_counter_ns()
        flags = set()
        if self.align == "center":
            t_end = entry.t_ns + self.window_ns // 2
        else:
            t_end = entry.t_ns
        deadline = time.monotonic_ns() + int(self.late_audio_s * 1e9)
        while True:
            try:
                latest = self.ring.latest_time_ns()
            except RingReadError:
                latest = None
            if latest is not None and latest >= t_end:
                break
            if time.monotonic_ns() >= deadline or self._stop.is_set():
                if latest is None:
                    return None
                flags.add("late")
                self.stats.count("late_ticks")
                t_end = latest
                break
            time.sleep(0.002)
        try:
            audio, first = self.ring.read(t_end - self.window_ns, t_end)
        except RingReadError as exc:
            if self.ring.write_index < self.ring.sample_rate * self.localizer.window_seconds:
                self.stats.count("ticks_waiting_for_audio")
                return None
            self.stats.count("audio_read_errors")
            if "overwritten" in getattr(exc, "status", ""):
                flags.add("audio_overflow")
            return None
        t_wait = time.perf_counter_ns()
        result = self.localizer.localize(entry.frame, audio, self.ring.sample_rate,
                                         time_ns=entry.t_ns, frame_index=entry.index)
        if self.tracker is not None:
            self.tracker.update(result.objects)
        result.audio_window_ns = (self.ring.time_of(first), self.ring.time_of(first + audio.shape[0]))
        result.flags |= flags | self._counter_flags()
        done = time.perf_counter_ns()
        result.timings_ms["wait_audio"] = (t_wait - t0) / 1e6
        result.timings_ms["e2e"] = (time.monotonic_ns() - entry.t_ns) / 1e6
        result.timings_ms["tick"] = (done - t0) / 1e6
        return result

    def _counter_flags(self) -> set[str]:
        counters = {
            "audio_overflow": int(self.ring.overflows) + int(getattr(self.audio, "input_overflows", 0)),
            # keep-latest: frames newer ones replaced before a tick used them (by design, no flag)
            "frames_not_used": int(self.frames.frames_dropped),
            # frames the source itself lost (a capture that could not keep up), when it reports them
            "frames_dropped": int(getattr(self.video, "frames_dropped", 0)),
        }
        flags = set()
        for name, value in counters.items():
            before = self._last_counters.get(name, 0)
            if value > before:
                if name != "frames_not_used":
                    flags.add(name)
                self.stats.count(name, value - before)
            self._last_counters[name] = value
        return flags

    def _emit(self, frame, result: TickResult) -> None:
        self._send_audio()
        for sink in self.sinks:
            sink.write(frame, result)
        self.stats.add(result.timings_ms)
        self.stats.count("ticks")
        if self.on_tick is not None:
            self.on_tick(result)

    def _send_audio(self) -> None:
        writers = [s for s in self.sinks if hasattr(s, "write_audio")]
        if not writers:
            return
        stop = self.ring.write_index
        if self._audio_sent is None:
            self._audio_sent = max(self.ring.oldest_index, stop - self.ring.sample_rate * 5)
        if stop <= self._audio_sent:
            return
        samples, first = self.ring.read_range(self._audio_sent, stop, allow_partial=True)
        if samples.size:
            t_s = self.ring.time_of(first) / 1e9
            for sink in writers:
                sink.write_audio(samples, self.ring.sample_rate, t_s)
        self._audio_sent = stop

    def _drain_audio(self) -> None:
        if self.ring is None:
            return
        try:
            self._send_audio()
        except Exception:  # pragma: no cover - closing must go on
            pass
