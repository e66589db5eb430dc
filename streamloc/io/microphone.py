"""`MicrophoneSource`: a sounddevice ``InputStream`` whose callback only copies into an AudioRing.

Device choice
    ``device`` is an index, ``"default"``/``None`` (PortAudio's default input, or the device
    literally named ``default``), or a case-insensitive name: an exact name wins, otherwise a
    unique substring. Several matches raise :class:`~streamloc.errors.DeviceError` listing the
    candidates; no match lists the available inputs and suggests ``streamloc devices``; no input
    device at all explains that no sound card or sound server is reachable.

Rate and channels
    The stream is opened at ``sample_rate`` when the device accepts it (checked with
    ``sounddevice.check_input_settings``); otherwise at the device's default rate (or at
    ``device_rate`` when given) and resampled to ``sample_rate`` by a streaming soxr resampler
    (:class:`streamloc.features.StreamResampler`) in a small consumer thread, **outside** the
    PortAudio callback. ``channel=None`` keeps the opened channels (``channels``, default 1),
    an ``int`` selects one channel, ``"mix"`` averages them (default 2 opened channels).

The callback
    It does only O(block) copies: picks the channel (a view) or averages into a preallocated
    scratch buffer (``numpy.mean(..., out=)``, no allocation: cheap enough to stay in the
    callback and it shrinks what is stored), then ``AudioRing.write``. No locks, no logging,
    no events: counters are plain ints that the watchdog thread turns into events.

Timestamps
    PortAudio's ``time_info`` uses its own clock (``CLOCK_REALTIME`` in PortAudio 19.6's ALSA
    host API). The callback reads ``time.monotonic_ns()`` and converts the ADC time of the
    block's first sample as ``now_mono - (currentTime - inputBufferAdcTime)``: the difference of
    two PortAudio times is clock-independent. If a host API reports no ADC time (0) or a
    nonsensical one, the block is stamped by arrival (the ring's fallback). The ring's clock
    fit smooths the per-callback jitter and the crystal drift (see :mod:`streamloc.buffer`).
    In resampling mode, output sample ``k`` is stamped with the device-rate ring's time of
    input sample ``k * device_rate / sample_rate`` (soxr's streaming output is aligned with
    its input, the filter delay only holds samples back).

Overflow and gaps
    The ``input_overflow`` status flag increments :attr:`MicrophoneSource.input_overflows`;
    the watchdog sets :attr:`overflow_event` and calls ``on_overflow(count)``. When the ADC
    time shows that samples were lost (more than 20 ms), the gap is zero-filled in the ring
    (``AudioRing.dropped_samples``) so that indices keep matching time.

Watchdog
    When a sound server dies, PortAudio callbacks simply stop, ``stream.active`` turns False
    and nothing raises. A watchdog thread polls every ``min(50 ms, watchdog_s / 10)``: a
    stream that is no longer active (the server died), or no callback for ``watchdog_s`` (the
    server hangs), closes the stream and sets ``error`` (a ``DeviceError``), ``error_event``
    and calls ``on_error``. Closing runs in a helper thread and is awaited for at most 0.1 s:
    PortAudio's ``abort``/``close`` block while a hung server does not answer, the report must
    not. ``stop()`` waits for the close at most 2 s for the same reason.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from streamloc.buffer import AudioRing, Overwritten
from streamloc.errors import DeviceError, InputError
from streamloc.io import Source

__all__ = ["MicrophoneSource", "resolve_input_device", "InputDevice"]

log = logging.getLogger("streamloc.io.microphone")

_GAP_MIN_S = 0.020  # a reported overflow only becomes a zero-filled gap above this


def import_sounddevice():
    """``import sounddevice`` with a clear DeviceError when PortAudio is missing."""
    try:
        import sounddevice as sd
    except OSError as exc:  # "PortAudio library not found"
        raise DeviceError(
            f"cannot use the microphone: {exc}. Install PortAudio (Debian/Ubuntu: "
            "`apt-get install libportaudio2`; macOS: `brew install portaudio`)"
        ) from exc
    return sd


@dataclass(frozen=True)
class InputDevice:
    """A PortAudio input device as seen by :func:`resolve_input_device`."""

    index: int
    name: str
    hostapi: str
    channels: int
    default_samplerate: float
    is_default: bool

    def describe(self) -> str:
        star = " (default)" if self.is_default else ""
        return (
            f"{self.index}: {self.name} [{self.hostapi}, {self.channels} in, "
            f"{self.default_samplerate:g} Hz]{star}"
        )


def _input_devices(sd) -> list[InputDevice]:
    try:
        devices = sd.query_devices()
        apis = sd.query_hostapis()
    except Exception:  # PortAudio error while scanning: treat as nothing reachable
        return []
    try:
        default_in = sd.default.device[0]
    except Exception:
        default_in = -1
    if isinstance(default_in, str):
        default_in = -1
    out = []
    for i, d in enumerate(devices):
        if d["max_input_channels"] > 0:
            out.append(
                InputDevice(
                    index=i,
                    name=d["name"],
                    hostapi=apis[d["hostapi"]]["name"],
                    channels=int(d["max_input_channels"]),
                    default_samplerate=float(d["default_samplerate"]),
                    is_default=(i == default_in),
                )
            )
    return out


def _no_inputs_message(sd) -> str:
    try:
        apis = ", ".join(a["name"] for a in sd.query_hostapis()) or "none"
    except Exception:
        apis = "unknown"
    return (
        "no audio input device: PortAudio sees no sound card and no sound server "
        f"(host APIs: {apis}). Start PulseAudio or PipeWire (check PULSE_SERVER and "
        "XDG_RUNTIME_DIR when running as another user or in a container), or plug in a "
        "microphone; `streamloc devices` lists what PortAudio sees"
    )


def resolve_input_device(device: Any = "default", sd=None) -> InputDevice:
    """The input device meant by ``device`` (index, ``"default"``, ``None`` or a name part)."""
    if sd is None:
        sd = import_sounddevice()
    inputs = _input_devices(sd)
    if not inputs:
        raise DeviceError(_no_inputs_message(sd))
    listing = "\n".join("  " + d.describe() for d in inputs)
    if isinstance(device, bool):
        raise InputError(f"device must be an index or a name, got {device!r}")
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        device = int(device.strip())
    if isinstance(device, (int, np.integer)):
        for d in inputs:
            if d.index == int(device):
                return d
        raise DeviceError(
            f"no audio input device with index {device}; the input devices are:\n{listing}\n"
            "run `streamloc devices` to list them"
        )
    if device is None or (isinstance(device, str) and device.strip().lower() == "default"):
        exact = [d for d in inputs if d.name.lower() == "default"]
        if len(exact) == 1:
            return exact[0]
        defaults = [d for d in inputs if d.is_default]
        if defaults:
            return defaults[0]
        if exact:
            return exact[0]
        raise DeviceError(
            "there is no default audio input device; choose one by index or name:\n"
            f"{listing}\nrun `streamloc devices` to list them"
        )
    if not isinstance(device, str):
        raise InputError(f"device must be an index or a name, got {device!r}")
    key = device.strip().lower()
    exact = [d for d in inputs if d.name.lower() == key]
    if len(exact) == 1:
        return exact[0]
    matches = exact or [d for d in inputs if key in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DeviceError(
            f"no audio input device matches {device!r}; the input devices are:\n{listing}\n"
            "run `streamloc devices` to list them"
        )
    cands = "\n".join("  " + d.describe() for d in matches)
    raise DeviceError(
        f"audio input device name {device!r} is ambiguous, it matches {len(matches)} devices:\n"
        f"{cands}\ngive the index or a longer part of the name"
    )


class MicrophoneSource(Source):
    """Live microphone into an :class:`~streamloc.buffer.AudioRing` at ``sample_rate``.

    ``ring``: an AudioRing to fill (its rate and channels must match), else one of
    ``ring_seconds`` is made. ``device_rate``: open the device at this rate (and resample)
    instead of trying ``sample_rate`` first. ``on_error(DeviceError)`` and
    ``on_overflow(count)`` are called from the watchdog thread.
    """

    name = "microphone"

    def __init__(
        self,
        device: Any = "default",
        *,
        sample_rate: int = 16000,
        channels: int | None = None,
        channel: int | str | None = None,
        blocksize: int = 0,
        latency: str | float = "high",
        ring: AudioRing | None = None,
        ring_seconds: float = 10.0,
        watchdog_s: float = 1.0,
        device_rate: int | None = None,
        resample_quality: str = "HQ",
        on_error: Callable[[DeviceError], Any] | None = None,
        on_overflow: Callable[[int], Any] | None = None,
    ):
        super().__init__(on_error=on_error)
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise InputError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if channels is not None and (int(channels) != channels or channels < 1):
            raise InputError(f"channels must be a positive integer, got {channels!r}")
        if not (channel is None or channel == "mix" or (isinstance(channel, int) and channel >= 0)):
            raise InputError(f"channel must be None, 'mix' or a channel number >= 0, got {channel!r}")
        if isinstance(channel, int) and channels is not None and channel >= channels:
            raise InputError(f"channel {channel} does not exist with channels={channels}")
        if watchdog_s <= 0:
            raise InputError(f"watchdog_s must be > 0, got {watchdog_s}")
        self.device = device
        self.sample_rate = int(sample_rate)
        self.channels = channels
        self.channel = channel
        self.blocksize = int(blocksize)
        self.latency = latency
        self.watchdog_s = float(watchdog_s)
        self.requested_device_rate = device_rate
        self.resample_quality = resample_quality
        self.on_overflow = on_overflow
        self.ring_seconds = ring_seconds
        self._user_ring = ring
        self.ring: AudioRing | None = ring

        self.device_info: InputDevice | None = None
        self.device_rate: int | None = None
        self.open_channels: int | None = None
        self.resampling = False
        self.stream = None  # the sounddevice.InputStream (kept after close: .closed is True)

        # Callback-side counters (plain ints written by the callback only).
        self.callbacks = 0
        self.frames_received = 0
        self.input_overflows = 0
        self._callback_exc: BaseException | None = None
        self.overflow_event = threading.Event()

        self._stop = threading.Event()
        self._stream_lock = threading.Lock()
        self._releaser: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._raw: AudioRing | None = None
        self._scratch = np.zeros(0, np.float32)
        self._select: int | None = None
        self._mix = False
        self._t_started = 0.0

    # -------------------------------------------------------------- open
    def _open(self) -> None:
        sd = import_sounddevice()
        dev = resolve_input_device(self.device, sd)
        self.device_info = dev
        self.name = f"microphone {dev.name!r} (#{dev.index})"

        ch = self.channel
        if isinstance(ch, int):
            open_ch = self.channels or ch + 1
            out_ch = 1
            self._select = ch
        elif ch == "mix":
            open_ch = self.channels or min(dev.channels, 2)
            out_ch = 1
            self._mix = open_ch > 1
            if not self._mix:
                self._select = 0
        else:
            open_ch = self.channels or 1
            out_ch = open_ch
        if open_ch > dev.channels:
            raise DeviceError(
                f"{self.name} has {dev.channels} input channel(s), {open_ch} requested"
            )
        self.open_channels = open_ch

        # Rate negotiation.
        if self.requested_device_rate is not None:
            candidates = [int(self.requested_device_rate)]
        else:
            candidates = [self.sample_rate]
            if int(dev.default_samplerate) not in candidates:
                candidates.append(int(dev.default_samplerate))
        errors = []
        rate = None
        for r in candidates:
            try:
                sd.check_input_settings(
                    device=dev.index, channels=open_ch, dtype="float32", samplerate=r
                )
            except Exception as exc:
                errors.append(f"{r} Hz: {exc}")
                continue
            rate = r
            break
        if rate is None:
            raise DeviceError(
                f"{self.name} accepts none of the rates tried with {open_ch} channel(s): "
                + "; ".join(errors)
            )
        self.device_rate = rate
        self.resampling = rate != self.sample_rate

        if self._user_ring is not None:
            r = self._user_ring
            if r.sample_rate != self.sample_rate or r.channels != out_ch:
                raise InputError(
                    f"the ring is {r.sample_rate} Hz x {r.channels} ch but the microphone "
                    f"delivers {self.sample_rate} Hz x {out_ch} ch"
                )
        else:
            self.ring = AudioRing(self.ring_seconds, self.sample_rate, out_ch)
        if self.resampling:
            self._raw = AudioRing(2.0, rate, out_ch)
            from streamloc.features import StreamResampler  # lazy: features imports torch

            self._resampler = StreamResampler(
                rate, self.sample_rate, channels=out_ch, quality=self.resample_quality
            )
        self._target = self._raw if self.resampling else self.ring
        self._scratch = np.zeros(max(4096, self.blocksize), np.float32)
        self._gap_min = int(_GAP_MIN_S * rate)

        try:
            stream = sd.InputStream(
                device=dev.index,
                samplerate=rate,
                channels=open_ch,
                dtype="float32",
                blocksize=self.blocksize,
                latency=self.latency,
                callback=self._callback,
            )
        except Exception as exc:
            raise DeviceError(f"cannot open {self.name} at {rate} Hz x {open_ch} ch: {exc}") from exc
        self.stream = stream
        self._t_started = time.monotonic()
        try:
            stream.start()
        except Exception as exc:
            raise DeviceError(f"cannot start {self.name}: {exc}") from exc
        if self.resampling:
            self._spawn(self._consume, "resampler")
        self._spawn(self._watch, "watchdog")

    def _spawn(self, fn, what: str) -> None:
        th = threading.Thread(target=fn, name=f"streamloc-mic-{what}", daemon=True)
        self._threads.append(th)
        th.start()

    # -------------------------------------------------------------- PortAudio callback
    def _callback(self, indata, frames, time_info, status) -> None:
        try:
            now = time.monotonic_ns()
            adc = time_info.inputBufferAdcTime
            cur = time_info.currentTime
            lag = cur - adc
            t_first = now - int(lag * 1e9) if (adc > 0 and 0.0 <= lag < 1.0) else None
            if self._select is not None:
                x = indata[:, self._select]
            elif self._mix:
                if frames > self._scratch.shape[0]:
                    self._scratch = np.zeros(2 * frames, np.float32)  # rare: only on a bigger block
                x = np.mean(indata, axis=1, out=self._scratch[:frames])
            else:
                x = indata
            ring = self._target
            gap = 0
            if status and status.input_overflow:
                self.input_overflows += 1
                if t_first is not None and ring.clock is not None:
                    expected = ring.time_of(ring.write_index)
                    g = int(round((t_first - expected) * self.device_rate / 1e9))
                    if g > self._gap_min:
                        gap = g
            ring.write(x, t_first, dropped=gap)
            self.frames_received += frames
            self.callbacks += 1
        except BaseException as exc:  # never let an exception kill the audio thread silently
            self._callback_exc = exc
            raise

    # -------------------------------------------------------------- resampling consumer
    def _consume(self) -> None:
        raw, out, rs = self._raw, self.ring, self._resampler
        ratio = self.device_rate / self.sample_rate
        pos = 0  # next raw index to resample
        base = 0  # raw index where the current resampler stream began
        produced = 0  # output samples of the current resampler stream
        while not self._stop.wait(0.005):
            w = raw.write_index
            if w <= pos:
                continue
            try:
                x, first = raw.read_range(pos, w)
            except Overwritten:
                # The consumer was starved (2 s behind): restart the resampler after the gap.
                new_pos = raw.oldest_index + int(0.1 * self.device_rate)
                gap = int(round((new_pos - base) / ratio)) - produced
                rs.reset()
                pos = base = new_pos
                produced = 0
                empty = np.zeros((0, out.channels), np.float32)
                out.write(empty, adc_time_ns=raw.time_of(new_pos), dropped=max(0, gap))
                continue
            y = rs.process(x)
            pos = w
            if y.shape[0]:
                t = raw.time_of(base + produced * ratio)
                out.write(y, adc_time_ns=t)
                produced += y.shape[0]

    # -------------------------------------------------------------- watchdog
    def _watch(self) -> None:
        poll = min(0.05, self.watchdog_s / 10)
        last_count = -1
        last_change = time.monotonic()
        seen_overflows = 0
        while not self._stop.wait(poll):
            now = time.monotonic()
            c = self.callbacks
            if c != last_count:
                last_count, last_change = c, now
            n_over = self.input_overflows
            if n_over != seen_overflows:
                seen_overflows = n_over
                self.overflow_event.set()
                if self.on_overflow is not None:
                    try:
                        self.on_overflow(n_over)
                    except Exception:
                        log.exception("on_overflow callback raised")
            stream = self.stream
            reason = None
            if self._callback_exc is not None:
                reason = f"the audio callback failed: {self._callback_exc!r}"
            elif stream is not None and not stream.closed and not stream.active:
                reason = "the stream stopped (PortAudio reports it inactive)"
            elif now - last_change > self.watchdog_s:
                reason = f"no audio for {now - last_change:.2f} s"
            if reason is not None:
                if self._stop.is_set():
                    return
                # Close first (so that whoever reacts to the error finds the stream released),
                # but never wait long: on a hung server (SIGSTOPped, deadlocked) PortAudio's
                # stop/abort/close block until the server answers.
                closed = self._release_stream(timeout=0.1)
                self._fail(
                    DeviceError(
                        f"{self.name} stopped delivering audio: {reason}. The sound server or "
                        "the device went away (PulseAudio/PipeWire restarted, hung or died, "
                        "device unplugged); run `streamloc devices` to see what is available"
                        + ("" if closed else " (still closing the stream: the server does not answer)")
                    )
                )
                return

    # -------------------------------------------------------------- close
    def _release_stream(self, timeout: float = 2.0) -> bool:
        """Abort and close the stream in a helper thread; True if it finished within ``timeout``.

        An input stream has nothing to drain, so ``abort()`` (not ``stop()``). The helper
        thread keeps the caller from hanging when the sound server hangs.
        """
        with self._stream_lock:
            if self._releaser is None:
                stream = self.stream
                if stream is None or stream.closed:
                    return True
                self._releaser = threading.Thread(
                    target=self._do_release, args=(stream,), name="streamloc-mic-close", daemon=True
                )
                self._releaser.start()
            th = self._releaser
        th.join(timeout)
        return not th.is_alive()

    def _do_release(self, stream) -> None:
        try:
            stream.abort()
        except Exception as exc:
            log.debug("aborting %s: %s", self.name, exc)
        finally:
            try:
                stream.close()
            except Exception as exc:
                log.debug("closing %s: %s", self.name, exc)

    def _close(self) -> None:
        self._stop.set()
        try:
            if not self._release_stream(timeout=2.0):
                log.warning("%s: the stream did not close within 2 s (sound server hung?)", self.name)
        finally:
            me = threading.current_thread()
            for th in self._threads:
                if th is not me:
                    th.join(5.0)

    # -------------------------------------------------------------- info
    @property
    def device_ring(self) -> AudioRing | None:
        """The device-rate ring the callback fills when resampling (``None`` otherwise)."""
        return self._raw

    def stats(self) -> dict[str, Any]:
        """Counters of the stream and its ring."""
        d = {
            "device": None if self.device_info is None else self.device_info.name,
            "device_rate": self.device_rate,
            "resampling": self.resampling,
            "callbacks": self.callbacks,
            "frames_received": self.frames_received,
            "input_overflows": self.input_overflows,
        }
        if self.ring is not None:
            d.update({f"ring_{k}": v for k, v in self.ring.stats().items()})
        return d
