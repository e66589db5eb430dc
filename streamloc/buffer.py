"""Rings between the capture threads and the tick loop: :class:`AudioRing` and :class:`FrameRing`.

Pure data structures: no devices, no files, no threads of their own. Both stamp with
:func:`time.monotonic_ns`, the single clock of the whole pipeline.

AudioRing
---------
A preallocated float32 ring indexed by the *absolute* sample count (sample ``n`` is the n-th
sample ever written, the ring only remembers the last ``capacity`` of them). One writer (the
audio callback or a resampling thread) and one reader (the tick loop) share it **without a
lock**:

* the writer first publishes ``reserve = end`` (the slots it is about to overwrite), copies the
  block, then publishes ``write_index = end``; both are plain ``int`` attributes, whose stores
  are atomic and ordered under CPython;
* the reader checks ``stop <= write_index`` before copying and ``start >= reserve - capacity``
  *after* copying (a seqlock-style check): if the writer lapped it during the copy the read is
  refused (:class:`Overwritten`) instead of returning torn data.

Reading data that is gone raises :class:`Overwritten`, data that does not exist yet raises
:class:`NotYetWritten` (both :class:`RingReadError`, with the requested and the available
index ranges); ``allow_partial=True`` returns the part that is there instead. Nothing is ever
silently wrong.

**Overflow** (the writer laps a slow reader): once the reader has read at least once, every
sample that is overwritten before the reader got past it counts in ``overflow_samples``; each
episode bumps ``overflows`` and sets :attr:`AudioRing.overflow_event`. **Gaps** reported by a
device (input overflow) are filled with zeros through ``write(..., dropped=n)`` so that the
index keeps matching time; they count in ``dropped_samples``.

**Time of a sample.** ``t(n) = t_ref + (n - n_ref) * period`` where the line is fitted to the
observations the writer passes: the monotonic time of each block's first sample, which is the
device's ADC time when it has one (``adc_time_ns``) or else the arrival time minus the block's
duration. The fit is a weighted least-squares line with exponential forgetting (time constant
``drift_tau_s``, default 30 s, computed with a numerically stable weighted Welford update):

* the intercept is the weighted mean of the residuals against the nominal rate, so the jitter of
  single callbacks (a few ms) is averaged away;
* the slope corrects the drift between the device's crystal and the host clock (typically
  10-100 ppm: 0.36 s per hour at 100 ppm). It is only used once the observations span
  ``min_fit_s`` (2 s) and is clamped to ``max_drift_ppm``; before that the nominal rate is used.

With arrival-time stamps the line sits on the *mean* arrival delay (a constant bias of a few
ms, the same kind of bias as a camera frame stamped at arrival). Reads by time use the fitted
line to find the last index and the *nominal* rate for the length, so a window of a fixed
duration always has the same number of samples.

FrameRing
---------
A few ``(frame, t_ns, index)`` entries with keep-latest semantics: the writer never blocks and
never queues, the reader asks for :meth:`FrameRing.latest` or :meth:`FrameRing.nearest`.
Frames overwritten before anyone read them count in ``frames_dropped``. Frames are not the hot
audio path, so this ring uses a plain lock (and a condition for :meth:`FrameRing.wait_for`).

>>> import numpy as np
>>> ring = AudioRing(1.0, 16000)
>>> ring.write(np.ones(160, np.float32), adc_time_ns=10**9)
>>> ring.write_index, ring.time_of(160) - 10**9
(160, 10000000)
>>> x, first = ring.read_last(100); (x.shape, first)
((100,), 60)
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamloc.errors import InputError, StreamlocError

__all__ = [
    "AudioRing",
    "FrameRing",
    "FrameEntry",
    "RingReadError",
    "NotYetWritten",
    "Overwritten",
]


class RingReadError(StreamlocError):
    """A ring read that cannot return the requested samples.

    ``requested`` is the ``(start, stop)`` index range asked for, ``available`` the
    ``(oldest, write_index)`` range the ring held when it refused.
    """

    status = "error"

    def __init__(self, message: str, requested: tuple[int, int], available: tuple[int, int]):
        super().__init__(message)
        self.requested = requested
        self.available = available


class NotYetWritten(RingReadError):
    """The requested samples (or any sample at all) have not been written yet."""

    status = "not_yet_written"


class Overwritten(RingReadError):
    """The requested samples were overwritten by the writer (the reader is too slow)."""

    status = "overwritten"


def _positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return v


class AudioRing:
    """Lock-free single-writer / single-reader audio ring with a drift-corrected clock.

    ``capacity_seconds`` of ``channels``-channel float32 audio at ``sample_rate``. Reads
    return ``(n,)`` arrays for a mono ring and ``(n, channels)`` otherwise.

    >>> import numpy as np
    >>> ring = AudioRing(0.01, 1000)          # 10 samples
    >>> for k in range(3):
    ...     ring.write(np.arange(4, dtype=np.float32) + 4 * k, adc_time_ns=k * 4_000_000)
    >>> ring.read_range(2, 12)[0].tolist()
    [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    >>> try:
    ...     ring.read_range(0, 4)
    ... except Overwritten as e:
    ...     print(e.status, e.available)
    overwritten (2, 12)
    """

    def __init__(
        self,
        capacity_seconds: float,
        sample_rate: int,
        channels: int = 1,
        *,
        drift_tau_s: float = 30.0,
        min_fit_s: float = 2.0,
        max_drift_ppm: float = 2000.0,
    ):
        _positive(capacity_seconds, "capacity_seconds")
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise InputError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if int(channels) != channels or channels < 1:
            raise InputError(f"channels must be a positive integer, got {channels!r}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.capacity = max(1, int(round(float(capacity_seconds) * self.sample_rate)))
        self.drift_tau_s = _positive(drift_tau_s, "drift_tau_s")
        self.min_fit_s = float(min_fit_s)
        self.max_drift_ppm = float(max_drift_ppm)
        self.nominal_period_ns = 1e9 / self.sample_rate
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)

        # Published by the writer (plain ints / one tuple: atomic stores).
        self._write_index = 0  # samples [0, _write_index) are written
        self._reserve = 0  # the writer is (or was last) overwriting slots up to this index
        self._clock: tuple[float, float, float] | None = None  # (n_ref, t_ref_ns, period_ns)

        # Written by the reader only.
        self._read_cursor: int | None = None  # highest index the reader has got past

        # Writer-private clock fit state (weighted Welford with exponential forgetting).
        self._fit_origin: tuple[int, int] | None = None  # (index, t_ns) of the first observation
        self._fit_w = 0.0
        self._fit_mx = 0.0
        self._fit_my = 0.0
        self._fit_cxx = 0.0
        self._fit_cxy = 0.0
        self._fit_last_x = 0
        self._fit_first_x = 0

        # Counters (writer-owned ints) and the overflow event.
        self.writes = 0
        self.overflows = 0
        self.overflow_samples = 0
        self.dropped_samples = 0
        self.gaps = 0
        self._overflowing = False
        self.overflow_event = threading.Event()

    # ------------------------------------------------------------------ properties
    @property
    def write_index(self) -> int:
        """Absolute index one past the newest written sample (= samples written so far)."""
        return self._write_index

    @property
    def oldest_index(self) -> int:
        """Absolute index of the oldest sample still held."""
        return max(0, self._reserve - self.capacity)

    @property
    def capacity_seconds(self) -> float:
        return self.capacity / self.sample_rate

    @property
    def clock(self) -> tuple[float, float, float] | None:
        """``(n_ref, t_ref_ns, period_ns)`` of the current time line, or ``None`` before data."""
        return self._clock

    @property
    def drift_ppm(self) -> float:
        """Fitted device-clock drift against the monotonic clock, in parts per million."""
        c = self._clock
        if c is None:
            return 0.0
        return (c[2] / self.nominal_period_ns - 1.0) * 1e6

    def __repr__(self) -> str:
        return (
            f"AudioRing({self.capacity_seconds:g} s, {self.sample_rate} Hz, {self.channels} ch, "
            f"written={self._write_index}, overflows={self.overflows}, "
            f"dropped={self.dropped_samples})"
        )

    # ------------------------------------------------------------------ writer
    def write(self, samples: Any, adc_time_ns: int | None = None, *, dropped: int = 0) -> None:
        """Append one block (writer thread only; never blocks, never allocates a ring).

        ``samples``: ``(n,)`` for a mono ring or ``(n, channels)``. ``adc_time_ns``: the
        monotonic time of the block's first sample if the device knows it; ``None`` stamps it
        as "now minus the block's duration" (the last sample just arrived). ``dropped``: a gap
        the device reported *before* this block; it is filled with zeros (so sample indices
        keep matching time) and counted in :attr:`dropped_samples`.
        """
        now = time.monotonic_ns()
        x = samples if isinstance(samples, np.ndarray) else np.asarray(samples, dtype=np.float32)
        if x.ndim == 1:
            if self.channels != 1:
                raise InputError(
                    f"this ring has {self.channels} channels; write (n, {self.channels}) blocks"
                )
            x = x[:, None]
        elif x.ndim != 2 or x.shape[1] != self.channels:
            raise InputError(
                f"expected a block of shape (n,) or (n, {self.channels}), got {x.shape}"
            )
        n = x.shape[0]
        if dropped:
            dropped = int(dropped)
            if dropped < 0:
                raise InputError(f"dropped must be >= 0, got {dropped}")
            self._write_block(None, dropped)
            self.dropped_samples += dropped
            self.gaps += 1
            if adc_time_ns is None:
                # The gap ended when this block started: anchor the gap's first sample too.
                self._observe(self._write_index - dropped, now - (n + dropped) * self.nominal_period_ns)
        if n == 0:
            return
        first = self._write_index
        self._write_block(x, n)
        self.writes += 1
        if adc_time_ns is None:
            t_first = now - n * self.nominal_period_ns
        else:
            t_first = adc_time_ns
        self._observe(first, t_first)

    def _write_block(self, x: np.ndarray | None, n: int) -> None:
        cap = self.capacity
        w = self._write_index
        end = w + n
        # Publish the slots about to be overwritten BEFORE touching them (reader's check).
        self._reserve = end
        if n >= cap:
            data_start = end - cap
            src = None if x is None else x[n - cap :]
            m = cap
        else:
            data_start = w
            src = x
            m = n
        s = data_start % cap
        k = min(m, cap - s)
        if src is None:
            self._buf[s : s + k] = 0.0
            if m > k:
                self._buf[: m - k] = 0.0
        else:
            self._buf[s : s + k] = src[:k]
            if m > k:
                self._buf[: m - k] = src[k:m]
        self._write_index = end  # publish after the copy
        self._account_overflow(w, end)

    def _account_overflow(self, old_end: int, end: int) -> None:
        rc = self._read_cursor
        if rc is None:
            return
        gone_before = max(0, old_end - self.capacity)
        gone_now = end - self.capacity
        lost = gone_now - max(rc, gone_before)
        if lost > 0:
            self.overflow_samples += lost
            if not self._overflowing:
                self._overflowing = True
                self.overflows += 1
                self.overflow_event.set()  # rare path: the only lock the writer may touch
        else:
            self._overflowing = False

    def _observe(self, index: int, t_ns: float) -> None:
        """Feed one (sample index, monotonic time) observation to the clock fit."""
        if self._fit_origin is None:
            self._fit_origin = (index, int(t_ns))
            self._fit_first_x = 0
            self._fit_last_x = 0
            self._fit_w = 1.0
            self._fit_mx = 0.0
            self._fit_my = 0.0
            self._fit_cxx = 0.0
            self._fit_cxy = 0.0
            self._clock = (float(index), float(int(t_ns)), self.nominal_period_ns)
            return
        i0, t0 = self._fit_origin
        x = float(index - i0)
        y = float(t_ns - t0) - x * self.nominal_period_ns  # residual against the nominal rate
        dt_s = max(0.0, (x - self._fit_last_x) / self.sample_rate)
        self._fit_last_x = x
        decay = math.exp(-dt_s / self.drift_tau_s)
        w = self._fit_w * decay
        cxx = self._fit_cxx * decay
        cxy = self._fit_cxy * decay
        w_new = w + 1.0
        dx = x - self._fit_mx
        dy = y - self._fit_my
        mx = self._fit_mx + dx / w_new
        my = self._fit_my + dy / w_new
        cxx += dx * (x - mx)
        cxy += dx * (y - my)
        self._fit_w, self._fit_mx, self._fit_my, self._fit_cxx, self._fit_cxy = w_new, mx, my, cxx, cxy
        slope = 0.0
        if (x - self._fit_first_x) >= self.min_fit_s * self.sample_rate and cxx > 0.0:
            slope = cxy / cxx
            lim = self.max_drift_ppm * 1e-6 * self.nominal_period_ns
            slope = min(lim, max(-lim, slope))
        n_ref = i0 + mx
        t_ref = t0 + mx * self.nominal_period_ns + my
        self._clock = (n_ref, t_ref, self.nominal_period_ns + slope)

    # ------------------------------------------------------------------ clock
    def _need_clock(self) -> tuple[float, float, float]:
        c = self._clock
        if c is None:
            raise NotYetWritten("the audio ring has no samples yet", (0, 0), (0, 0))
        return c

    def time_of(self, index: float) -> int:
        """Monotonic ns of absolute sample ``index`` (any index, also past or future ones)."""
        n_ref, t_ref, period = self._need_clock()
        return int(round(t_ref + (index - n_ref) * period))

    def index_at(self, t_ns: float) -> float:
        """Fractional absolute sample index at monotonic time ``t_ns``."""
        n_ref, t_ref, period = self._need_clock()
        return n_ref + (t_ns - t_ref) / period

    def latest_time_ns(self) -> int:
        """Monotonic ns of the end of the written data (the time of ``write_index``)."""
        return self.time_of(self._write_index)

    # ------------------------------------------------------------------ reader
    def _available(self) -> tuple[int, int]:
        return (max(0, self._reserve - self.capacity), self._write_index)

    def read_range(
        self, start: int, stop: int, *, allow_partial: bool = False
    ) -> tuple[np.ndarray, int]:
        """Copy absolute samples ``[start, stop)``; returns ``(samples, first_index)``.

        Raises :class:`NotYetWritten` / :class:`Overwritten` unless ``allow_partial``, which
        returns the part still held (possibly empty) and its first index.
        """
        start, stop = int(start), int(stop)
        if stop < start:
            raise InputError(f"read_range needs start <= stop, got [{start}, {stop})")
        cap = self.capacity
        w = self._write_index
        oldest = max(0, self._reserve - cap)
        if not allow_partial:
            if stop > w:
                raise NotYetWritten(
                    f"audio samples [{start}, {stop}) are not written yet: the ring holds "
                    f"[{oldest}, {w}) ({(stop - w) / self.sample_rate:.3f} s missing at the end)",
                    (start, stop),
                    (oldest, w),
                )
            if start < oldest:
                raise self._overwritten(start, stop, oldest, w)
            lo, hi = start, stop
        else:
            lo, hi = max(start, oldest), min(stop, w)
            if hi <= lo:
                return self._empty(), min(max(start, oldest), w)
        out = self._copy(lo, hi)
        # Seqlock check: did the writer start overwriting [lo, ...) while we copied?
        gone = self._reserve - cap
        if lo < gone:
            if not allow_partial:
                raise self._overwritten(start, stop, max(0, gone), self._write_index)
            cut = min(hi, gone) - lo
            out = out[cut:]
            lo += cut
        rc = self._read_cursor
        if rc is None or hi > rc:
            self._read_cursor = hi
        return out, lo

    def _overwritten(self, start: int, stop: int, oldest: int, w: int) -> Overwritten:
        return Overwritten(
            f"audio samples [{start}, {stop}) were overwritten: the ring holds [{oldest}, {w}) "
            f"({self.capacity} samples = {self.capacity_seconds:.3f} s); read more often or make "
            f"the ring longer",
            (start, stop),
            (oldest, w),
        )

    def _empty(self) -> np.ndarray:
        if self.channels == 1:
            return np.zeros(0, np.float32)
        return np.zeros((0, self.channels), np.float32)

    def _copy(self, lo: int, hi: int) -> np.ndarray:
        cap = self.capacity
        m = hi - lo
        out = np.empty((m, self.channels), np.float32)
        s = lo % cap
        k = min(m, cap - s)
        out[:k] = self._buf[s : s + k]
        if m > k:
            out[k:] = self._buf[: m - k]
        return out[:, 0] if self.channels == 1 else out

    def read_last(self, n: int, *, allow_partial: bool = False) -> tuple[np.ndarray, int]:
        """The newest ``n`` samples: ``(samples, first_index)``."""
        n = int(n)
        if n < 0:
            raise InputError(f"read_last needs n >= 0, got {n}")
        w = self._write_index
        if w < n and not allow_partial:
            raise NotYetWritten(
                f"only {w} audio samples written so far, {n} requested "
                f"({(n - w) / self.sample_rate:.3f} s missing)",
                (w - n, w),
                self._available(),
            )
        return self.read_range(max(0, w - n), w, allow_partial=allow_partial)

    def read(self, t0_ns: int, t1_ns: int, *, allow_partial: bool = False) -> tuple[np.ndarray, int]:
        """Samples of the time window ``[t0_ns, t1_ns)``: ``(samples, first_index)``.

        The last index is the fitted clock's index at ``t1_ns`` (rounded); the length is
        ``round((t1_ns - t0_ns) * sample_rate / 1e9)`` at the nominal rate, so equal durations
        give equal lengths. Raises like :meth:`read_range` (a window ending after
        :meth:`latest_time_ns` is :class:`NotYetWritten`).
        """
        if t1_ns < t0_ns:
            raise InputError(f"read needs t0_ns <= t1_ns, got {t0_ns} > {t1_ns}")
        n = int(round((t1_ns - t0_ns) * self.sample_rate / 1e9))
        stop = int(round(self.index_at(t1_ns)))
        return self.read_range(stop - n, stop, allow_partial=allow_partial)

    def stats(self) -> dict[str, Any]:
        """Counters as a plain dict (for logs and TickResult flags)."""
        return {
            "write_index": self._write_index,
            "writes": self.writes,
            "overflows": self.overflows,
            "overflow_samples": self.overflow_samples,
            "dropped_samples": self.dropped_samples,
            "gaps": self.gaps,
            "drift_ppm": self.drift_ppm,
        }


@dataclass(frozen=True)
class FrameEntry:
    """One captured frame: the image (BGR uint8 for cameras), its monotonic stamp, its index."""

    frame: Any
    t_ns: int
    index: int


class FrameRing:
    """Keep-latest ring of a few timestamped frames (one writer, any number of readers).

    >>> ring = FrameRing(capacity=2)
    >>> for k in range(5):
    ...     _ = ring.put(f"frame{k}", t_ns=k * 100)
    >>> ring.latest().frame, ring.nearest(330).frame, ring.frames_dropped
    ('frame4', 'frame3', 3)
    """

    def __init__(self, capacity: int = 4):
        if int(capacity) != capacity or capacity < 1:
            raise InputError(f"FrameRing capacity must be a positive integer, got {capacity!r}")
        self.capacity = int(capacity)
        self._slots: list[FrameEntry | None] = [None] * self.capacity
        self._read: list[bool] = [False] * self.capacity
        self._next = 0
        self._cond = threading.Condition(threading.Lock())
        self.frames_written = 0
        self.frames_dropped = 0
        self.frames_read = 0

    def __len__(self) -> int:
        return min(self._next, self.capacity)

    def __repr__(self) -> str:
        return (
            f"FrameRing(capacity={self.capacity}, written={self.frames_written}, "
            f"dropped={self.frames_dropped})"
        )

    def put(self, frame: Any, t_ns: int | None = None) -> FrameEntry:
        """Store a frame stamped ``t_ns`` (default: now); overwrites the oldest entry."""
        if t_ns is None:
            t_ns = time.monotonic_ns()
        with self._cond:
            idx = self._next
            slot = idx % self.capacity
            if self._slots[slot] is not None and not self._read[slot]:
                self.frames_dropped += 1
            entry = FrameEntry(frame, int(t_ns), idx)
            self._slots[slot] = entry
            self._read[slot] = False
            self._next = idx + 1
            self.frames_written += 1
            self._cond.notify_all()
        return entry

    def _mark(self, entry: FrameEntry) -> FrameEntry:
        slot = entry.index % self.capacity
        if not self._read[slot]:
            self._read[slot] = True
            self.frames_read += 1
        return entry

    def latest(self) -> FrameEntry | None:
        """The newest frame, or ``None`` if none was ever put."""
        with self._cond:
            if self._next == 0:
                return None
            return self._mark(self._slots[(self._next - 1) % self.capacity])  # type: ignore[arg-type]

    def nearest(self, t_ns: int) -> FrameEntry | None:
        """The held frame whose stamp is closest to ``t_ns`` (ties: the newer one)."""
        with self._cond:
            best = None
            for e in self._slots:
                if e is None:
                    continue
                if best is None or abs(e.t_ns - t_ns) < abs(best.t_ns - t_ns) or (
                    abs(e.t_ns - t_ns) == abs(best.t_ns - t_ns) and e.index > best.index
                ):
                    best = e
            return None if best is None else self._mark(best)

    def entries(self) -> list[FrameEntry]:
        """The held entries, oldest first (does not mark them read)."""
        with self._cond:
            return sorted((e for e in self._slots if e is not None), key=lambda e: e.index)

    def wait_for(self, after_index: int = -1, timeout: float | None = None) -> FrameEntry | None:
        """Block until a frame newer than ``after_index`` exists; return the newest (or ``None``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._next - 1 <= after_index:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._mark(self._slots[(self._next - 1) % self.capacity])  # type: ignore[arg-type]
