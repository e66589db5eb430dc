"""AudioRing / FrameRing: pure unit tests plus a writer-thread / reader-thread stress run."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from streamloc.buffer import (
    AudioRing,
    FrameEntry,
    FrameRing,
    NotYetWritten,
    Overwritten,
    RingReadError,
)
from streamloc.errors import InputError, StreamlocError

SR = 1000  # 1 sample = 1 ms: easy arithmetic


def ramp(start: int, n: int, channels: int = 1) -> np.ndarray:
    x = np.arange(start, start + n, dtype=np.float32)
    if channels == 1:
        return x
    return np.stack([x + 0.25 * c for c in range(channels)], axis=1).astype(np.float32)


def fill(ring: AudioRing, sizes, t0_ns: int = 10**9) -> None:
    """Write ramps whose values equal their absolute index, stamped exactly at the nominal rate."""
    for n in sizes:
        w = ring.write_index
        ring.write(ramp(w, n, ring.channels), adc_time_ns=t0_ns + w * 10**9 // ring.sample_rate)


# ----------------------------------------------------------------------------- AudioRing basics
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(capacity_seconds=0, sample_rate=16000),
        dict(capacity_seconds=-1, sample_rate=16000),
        dict(capacity_seconds="x", sample_rate=16000),
        dict(capacity_seconds=1, sample_rate=0),
        dict(capacity_seconds=1, sample_rate=16000.5),
        dict(capacity_seconds=1, sample_rate=16000, channels=0),
    ],
)
def test_audio_ring_rejects_bad_parameters(kwargs):
    with pytest.raises(InputError):
        AudioRing(**kwargs)


def test_audio_ring_errors_are_streamloc_errors():
    assert issubclass(NotYetWritten, RingReadError) and issubclass(Overwritten, RingReadError)
    assert issubclass(RingReadError, StreamlocError)


def test_empty_ring_reports_not_yet_written():
    ring = AudioRing(1.0, SR)
    assert ring.write_index == 0 and ring.clock is None
    with pytest.raises(NotYetWritten):
        ring.time_of(0)
    with pytest.raises(NotYetWritten):
        ring.read_last(1)
    with pytest.raises(NotYetWritten):
        ring.read(0, 10**6)
    x, first = ring.read_last(5, allow_partial=True)
    assert x.shape == (0,) and first == 0


@pytest.mark.parametrize("channels", [1, 3])
def test_wraparound_every_range_is_exact(channels):
    ring = AudioRing(0.010, SR, channels=channels)  # 10 samples
    assert ring.capacity == 10
    sizes = [3, 7, 1, 9, 4, 10, 2, 6, 5, 8]
    fill(ring, sizes)
    w = ring.write_index
    assert w == sum(sizes)
    assert ring.oldest_index == w - 10
    for start in range(w - 10, w + 1):
        for stop in range(start, w + 1):
            x, first = ring.read_range(start, stop)
            assert first == start
            np.testing.assert_array_equal(x, ramp(start, stop - start, channels))
            assert x.dtype == np.float32
            assert x.shape == ((stop - start,) if channels == 1 else (stop - start, channels))


def test_block_larger_than_capacity_keeps_its_tail():
    ring = AudioRing(0.010, SR)
    fill(ring, [4, 25])
    assert ring.write_index == 29
    x, first = ring.read_last(10)
    assert first == 19
    np.testing.assert_array_equal(x, ramp(19, 10))
    with pytest.raises(Overwritten):
        ring.read_range(18, 20)


def test_overwritten_and_not_yet_written_are_explicit():
    ring = AudioRing(0.010, SR)
    fill(ring, [8, 8])  # holds [6, 16)
    with pytest.raises(Overwritten) as e:
        ring.read_range(5, 10)
    assert e.value.status == "overwritten"
    assert e.value.requested == (5, 10) and e.value.available == (6, 16)
    assert "overwritten" in str(e.value) and "[6, 16)" in str(e.value)
    with pytest.raises(NotYetWritten) as e:
        ring.read_range(10, 17)
    assert e.value.status == "not_yet_written" and e.value.available == (6, 16)
    with pytest.raises(NotYetWritten):
        ring.read_last(17)
    with pytest.raises(InputError):
        ring.read_range(10, 9)
    with pytest.raises(InputError):
        ring.read_last(-1)


def test_partial_reads_return_only_what_is_held():
    ring = AudioRing(0.010, SR)
    fill(ring, [8, 8])  # holds [6, 16)
    x, first = ring.read_range(2, 20, allow_partial=True)
    assert first == 6
    np.testing.assert_array_equal(x, ramp(6, 10))
    x, first = ring.read_range(0, 4, allow_partial=True)
    assert x.size == 0 and first == 6
    x, first = ring.read_range(20, 30, allow_partial=True)
    assert x.size == 0 and first == 16
    x, first = ring.read_last(50, allow_partial=True)
    assert first == 6 and x.size == 10


def test_write_shape_validation():
    ring = AudioRing(0.1, SR, channels=2)
    with pytest.raises(InputError):
        ring.write(np.zeros(10, np.float32))
    with pytest.raises(InputError):
        ring.write(np.zeros((10, 3), np.float32))
    with pytest.raises(InputError):
        ring.write(np.zeros((10, 2), np.float32), dropped=-1)
    ring.write(np.zeros((0, 2), np.float32))
    assert ring.write_index == 0
    mono = AudioRing(0.1, SR)
    mono.write(np.ones((5, 1), np.float32), adc_time_ns=0)  # (n, 1) accepted for mono
    mono.write([1.0, 2.0], adc_time_ns=5 * 10**6)  # lists accepted
    assert mono.write_index == 7
    np.testing.assert_array_equal(mono.read_last(2)[0], [1.0, 2.0])


# ----------------------------------------------------------------------------- time
def test_time_mapping_and_read_by_time_with_exact_stamps():
    ring = AudioRing(1.0, SR)
    t0 = 5 * 10**9
    fill(ring, [100] * 5, t0_ns=t0)  # sample n at t0 + n ms
    assert ring.time_of(0) == t0
    assert ring.time_of(250) == t0 + 250 * 10**6
    assert ring.index_at(t0 + 123 * 10**6) == pytest.approx(123)
    assert ring.latest_time_ns() == t0 + 500 * 10**6
    x, first = ring.read(t0 + 100 * 10**6, t0 + 300 * 10**6)
    assert first == 100
    np.testing.assert_array_equal(x, ramp(100, 200))
    # Equal durations give equal lengths wherever the window falls between samples.
    starts = [t0 + k * 137_000 + 10**8 for k in range(50)]
    lengths = {ring.read(s, s + 2 * 10**8)[0].size for s in starts}
    assert lengths == {200}
    with pytest.raises(NotYetWritten):
        ring.read(t0 + 400 * 10**6, t0 + 600 * 10**6)  # the future
    with pytest.raises(InputError):
        ring.read(t0 + 2, t0 + 1)


def test_arrival_stamps_without_adc_time():
    ring = AudioRing(1.0, 16000)
    before = time.monotonic_ns()
    ring.write(np.zeros(1600, np.float32))  # 100 ms that "just arrived"
    after = time.monotonic_ns()
    # The last sample arrived now, so the first one is 100 ms earlier.
    assert before - 100_000_000 <= ring.time_of(0) <= after - 100_000_000
    assert before <= ring.latest_time_ns() <= after


def test_drift_is_estimated_and_jitter_averaged():
    """A device whose clock runs 150 ppm fast, with +-3 ms of callback jitter."""
    sr = 16000
    ring = AudioRing(60.0, sr)
    true_period = 1e9 / (sr * (1 + 150e-6))
    rng = np.random.default_rng(0)
    block = 256
    t0 = 10**12
    for k in range(int(30 * sr / block)):  # 30 s of blocks
        n0 = k * block
        jitter = rng.uniform(-3e6, 3e6)
        ring.write(np.zeros(block, np.float32), adc_time_ns=int(t0 + n0 * true_period + jitter))
    assert ring.drift_ppm == pytest.approx(-150, abs=15)
    # Times of recent samples are accurate to well under the jitter.
    for n in (ring.write_index - 16000, ring.write_index - 100):
        assert abs(ring.time_of(n) - (t0 + n * true_period)) < 0.5e6


def test_drift_is_clamped_and_needs_a_minimum_span():
    ring = AudioRing(10.0, SR, min_fit_s=2.0, max_drift_ppm=1000)
    # 1 s of data claiming a 5 % fast clock: too short to fit, nominal rate kept.
    for k in range(10):
        ring.write(np.zeros(100, np.float32), adc_time_ns=int(k * 100 * 0.95e6))
    assert ring.drift_ppm == 0.0
    for k in range(10, 60):
        ring.write(np.zeros(100, np.float32), adc_time_ns=int(k * 100 * 0.95e6))
    assert ring.drift_ppm == pytest.approx(-1000)


# ----------------------------------------------------------------------------- overflow / gaps
def test_overflow_is_counted_once_the_reader_is_attached():
    ring = AudioRing(0.010, SR)
    fill(ring, [30])  # no reader yet: not an overflow
    assert ring.overflows == 0 and not ring.overflow_event.is_set()
    ring.read_last(5)  # reader is at 30
    fill(ring, [5, 5])  # exactly one lap: nothing unread lost
    assert ring.overflows == 0
    fill(ring, [7])  # 7 unread samples lost: [30, 37)
    assert ring.overflows == 1 and ring.overflow_samples == 7
    assert ring.overflow_event.is_set()
    fill(ring, [4])  # same episode
    assert ring.overflows == 1 and ring.overflow_samples == 11
    ring.read_last(10)
    fill(ring, [3])
    assert ring.overflows == 1 and ring.overflow_samples == 11
    fill(ring, [12])  # new episode: reader at 51, write to 66, oldest 56 -> [51, 56) lost
    assert ring.overflows == 2 and ring.overflow_samples == 16
    assert ring.stats()["overflows"] == 2


def test_dropped_samples_are_zero_filled_and_counted():
    ring = AudioRing(1.0, SR)
    ring.write(np.ones(10, np.float32), adc_time_ns=0)
    ring.write(np.full(10, 2.0, np.float32), adc_time_ns=15 * 10**6, dropped=5)
    assert ring.dropped_samples == 5 and ring.gaps == 1
    assert ring.write_index == 25
    x, _ = ring.read_range(0, 25)
    np.testing.assert_array_equal(x, [1] * 10 + [0] * 5 + [2] * 10)
    assert ring.time_of(15) == 15 * 10**6  # the index still matches time after the gap
    ring.write(np.ones(5, np.float32), dropped=3)  # arrival-stamped gap
    assert ring.dropped_samples == 8 and ring.gaps == 2 and ring.write_index == 33


def test_repr_and_stats():
    ring = AudioRing(0.5, 16000, channels=2)
    assert "16000 Hz" in repr(ring) and "2 ch" in repr(ring)
    assert set(ring.stats()) >= {"write_index", "overflows", "dropped_samples", "drift_ppm"}


# ----------------------------------------------------------------------------- FrameRing
def test_frame_ring_keep_latest_and_dropped_counter():
    ring = FrameRing(capacity=3)
    assert ring.latest() is None and ring.nearest(0) is None and len(ring) == 0
    for k in range(3):
        ring.put(k, t_ns=1000 + k)
    assert len(ring) == 3 and ring.frames_dropped == 0
    e = ring.latest()
    assert isinstance(e, FrameEntry) and (e.frame, e.t_ns, e.index) == (2, 1002, 2)
    for k in range(3, 10):
        ring.put(k, t_ns=1000 + k)
    # 0 and 1 were overwritten unread, 2 was read, 3..6 overwritten unread.
    assert ring.frames_written == 10 and ring.frames_dropped == 6
    assert [x.frame for x in ring.entries()] == [7, 8, 9]
    assert ring.latest().frame == 9
    assert ring.frames_read == 2
    assert len(ring) == 3


def test_frame_ring_nearest():
    ring = FrameRing(capacity=4)
    for k, t in enumerate([100, 200, 300, 400]):
        ring.put(f"f{k}", t_ns=t)
    assert ring.nearest(0).frame == "f0"
    assert ring.nearest(240).frame == "f1"
    assert ring.nearest(250).frame == "f2"  # tie -> newer
    assert ring.nearest(10**9).frame == "f3"
    ring.put("f4", t_ns=500)
    assert ring.nearest(0).frame == "f1"  # f0 is gone
    # f0 was read before it was overwritten: not a drop.
    assert ring.frames_dropped == 0


def test_frame_ring_default_stamp_and_validation():
    with pytest.raises(InputError):
        FrameRing(0)
    ring = FrameRing()
    before = time.monotonic_ns()
    e = ring.put("x")
    assert before <= e.t_ns <= time.monotonic_ns()
    assert "capacity=4" in repr(ring)


def test_frame_ring_wait_for():
    ring = FrameRing(capacity=2)
    assert ring.wait_for(timeout=0.01) is None
    threading.Timer(0.05, ring.put, args=("late",), kwargs={"t_ns": 7}).start()
    t = time.monotonic()
    e = ring.wait_for(after_index=-1, timeout=2.0)
    assert e is not None and e.frame == "late" and time.monotonic() - t < 1.0
    assert ring.wait_for(after_index=e.index, timeout=0.02) is None
    assert ring.wait_for(after_index=-1, timeout=0.0).frame == "late"


# ----------------------------------------------------------------------------- stress
def test_writer_and_reader_threads_never_see_wrong_samples():
    """A writer thread laps a small ring while a reader thread reads; every sample it gets is right.

    Values encode their absolute index (mod 2**20, exact in float32). The switch interval is
    lowered so the threads interleave inside write() and read_range() as often as possible.
    """
    ring = AudioRing(0.125, 16000, channels=2)  # 2000 samples
    mod = 2**20
    stop = threading.Event()
    wrong: list[str] = []
    counts = {"reads": 0, "samples": 0, "overwritten": 0, "not_yet": 0}

    def writer():
        rng = np.random.default_rng(1)
        while not stop.is_set():
            w = ring.write_index
            n = int(rng.integers(1, 400))
            v = (np.arange(w, w + n) % mod).astype(np.float32)
            ring.write(np.stack([v, -v], axis=1), adc_time_ns=w * 62_500)
            if rng.random() < 0.05:
                time.sleep(0.0002)

    def reader():
        rng = np.random.default_rng(2)
        while not stop.is_set():
            try:
                if rng.random() < 0.5:
                    x, first = ring.read_last(int(rng.integers(1, 2000)))
                else:
                    w = ring.write_index
                    start = w - int(rng.integers(0, 2600))
                    x, first = ring.read_range(start, start + int(rng.integers(0, 600)))
            except Overwritten:
                counts["overwritten"] += 1
                continue
            except NotYetWritten:
                counts["not_yet"] += 1
                continue
            want = (np.arange(first, first + x.shape[0]) % mod).astype(np.float32)
            if not (np.array_equal(x[:, 0], want) and np.array_equal(x[:, 1], -want)):
                wrong.append(f"read at {first} (+{x.shape[0]}) returned wrong samples")
            counts["reads"] += 1
            counts["samples"] += x.shape[0]

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(5)
    finally:
        sys.setswitchinterval(old)
    assert not wrong, wrong[:5]
    assert counts["reads"] > 1000 and counts["samples"] > 100_000, counts
    assert counts["overwritten"] > 0, counts  # the lapping path was exercised
    assert ring.write_index > 10 * ring.capacity
