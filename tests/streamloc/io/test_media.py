"""MediaSource on real H.264 + AAC files written with PyAV (flash frames + beeps at known times)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from avtest_support import beep_onsets, make_clip
from streamloc.buffer import AudioRing, FrameRing
from streamloc.errors import DeviceError, InputError
from streamloc.io.media import MediaSource, probe_media

EVENTS = (0.5, 1.5, 2.5)
SR = 16000


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=3.0, events=EVENTS)


@pytest.fixture(scope="module")
def silent_clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("media") / "noaudio.mp4", seconds=1.0, audio=False)


class Recorder:
    """Collects every delivered frame (time, brightness) and audio chunk (wall time of delivery)."""

    def __init__(self):
        self.frames: list[tuple[int, float, int]] = []
        self.audio: list[tuple[int, int, int, int]] = []  # (first index, n, start ns, delivered ns)

    def on_frame(self, entry):
        self.frames.append((entry.t_ns, float(entry.frame.mean()), time.monotonic_ns()))

    def on_audio(self, x, first, t_ns):
        self.audio.append((first, x.size, t_ns, time.monotonic_ns()))

    def flash_times_ms(self, t0: int) -> list[float]:
        out = []
        for (t, b, _), (_, bp, _) in zip(self.frames[1:], self.frames[:-1]):
            if b > 200 and bp < 200:
                out.append((t - t0) / 1e6)
        return out


def beep_times_ms(ring: AudioRing, t0: int) -> list[float]:
    x, first = ring.read_range(ring.oldest_index, ring.write_index)
    return [(ring.time_of(first + i) - t0) / 1e6 for i in beep_onsets(x)]


def test_probe_reports_the_original_streams(clip):
    info = probe_media(clip)
    assert info.has_video and info.has_audio
    assert info.video_codec == "h264" and (info.width, info.height) == (320, 240)
    assert info.fps == pytest.approx(30) and info.video_frames == 90
    assert info.audio_codec == "aac" and info.audio_rate == 48000 and info.audio_channels == 1
    assert info.duration_s == pytest.approx(3.0, abs=0.05)


def test_as_fast_as_possible_stamps_follow_pts(clip):
    rec = Recorder()
    t = time.monotonic()
    src = MediaSource(clip, sample_rate=SR, realtime=False, ring_seconds=10,
                      on_frame=rec.on_frame, on_audio=rec.on_audio)
    with src:
        assert src.wait(10)
    elapsed = time.monotonic() - t
    assert src.finished.is_set() and src.error is None
    assert src.frames_delivered == 90 and len(rec.frames) == 90
    # Same ring types as the live sources; every frame is BGR uint8.
    assert isinstance(src.audio_ring, AudioRing) and isinstance(src.frame_ring, FrameRing)
    latest = src.frame_ring.latest()
    assert latest.frame.dtype == np.uint8 and latest.frame.shape == (240, 320, 3)
    assert src.audio_ring.sample_rate == SR and src.audio_ring.channels == 1
    assert src.audio_samples_delivered == pytest.approx(3.0 * SR, abs=SR * 0.02)
    t0 = src.t_start_ns
    flashes, beeps = rec.flash_times_ms(t0), beep_times_ms(src.audio_ring, t0)
    print(f"fast: 3 s clip in {elapsed * 1e3:.0f} ms; flashes {np.round(flashes, 2)} ms, "
          f"beeps {np.round(beeps, 2)} ms")
    np.testing.assert_allclose(flashes, [e * 1000 for e in EVENTS], atol=1.0)
    np.testing.assert_allclose(beeps, [e * 1000 for e in EVENTS], atol=2.0)
    # Frame stamps are the pts mapped onto the clock: exactly 1/30 s apart.
    stamps = np.array([f[0] for f in rec.frames])
    np.testing.assert_allclose(np.diff(stamps) / 1e6, 1000 / 30, atol=0.01)
    # Audio chunks are contiguous in the ring and their stamps agree with the ring's clock.
    for first, n, t_ns, _ in rec.audio:
        assert abs(src.audio_ring.time_of(first) - t_ns) < 100_000  # 0.1 ms
    assert elapsed < 1.5  # much faster than the 3 s of real time


def test_realtime_pacing_is_like_a_live_source(clip):
    rec = Recorder()
    t = time.monotonic()
    with MediaSource(clip, sample_rate=SR, realtime=True, on_frame=rec.on_frame,
                     on_audio=rec.on_audio) as src:
        assert src.wait(10)
    elapsed = time.monotonic() - t
    assert src.finished.is_set() and src.frames_delivered == 90
    t0 = src.t_start_ns
    # Frames are stamped at delivery, which is when their pts falls due on the clock.
    ideal = t0 + np.arange(90) * 1e9 / 30
    frame_lateness_ms = (np.array([f[0] for f in rec.frames]) - ideal) / 1e6
    # An audio chunk is delivered when its last sample is due (like a microphone block).
    audio_lateness_ms = np.array([(d - (t_ns + n * 1e9 / SR)) / 1e6 for _, n, t_ns, d in rec.audio])
    flashes, beeps = rec.flash_times_ms(t0), beep_times_ms(src.audio_ring, t0)
    print(f"realtime: 3 s clip in {elapsed:.2f} s; frame lateness median "
          f"{np.median(frame_lateness_ms):.2f} ms max {frame_lateness_ms.max():.2f} ms; audio "
          f"lateness median {np.median(audio_lateness_ms):.2f} ms; flashes {np.round(flashes, 1)}, "
          f"beeps {np.round(beeps, 1)}")
    assert 2.9 < elapsed < 3.9
    assert frame_lateness_ms.min() >= 0 and np.median(frame_lateness_ms) < 5
    assert audio_lateness_ms.min() >= 0 and np.median(audio_lateness_ms) < 5
    np.testing.assert_allclose(beeps, [e * 1000 for e in EVENTS], atol=2.0)
    np.testing.assert_allclose(flashes, beeps, atol=25.0)  # delivery jitter on a busy machine


def test_loop_continues_timestamps(clip):
    rec = Recorder()
    src = MediaSource(clip, sample_rate=SR, realtime=False, loop=True, ring_seconds=30,
                      on_frame=rec.on_frame, on_audio=rec.on_audio)
    with src:
        deadline = time.monotonic() + 10
        while src.loops_completed < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert src.loops_completed >= 3 and not src.finished.is_set() and src.error is None
    t0 = src.t_start_ns
    stamps = np.array([f[0] for f in rec.frames])
    assert np.all(np.diff(stamps) > 0), "frame stamps keep increasing across loops"
    # The audio index runs on without gaps and every chunk agrees with the ring's clock.
    expect = rec.audio[0][0]
    for first, n, t_ns, _ in rec.audio:
        assert first == expect
        expect += n
        assert abs(src.audio_ring.time_of(first) - t_ns) < 100_000
    flashes = rec.flash_times_ms(t0)
    beeps = beep_times_ms(src.audio_ring, t0)
    n = min(len(flashes), len(beeps))
    assert n >= 9
    period_ms = np.diff(beeps[:n:3]).mean()  # one pass, as long as its decoded audio
    print(f"loop: pass = {period_ms:.2f} ms; first flashes {np.round(flashes[:7], 1)}")
    assert period_ms == pytest.approx(3000, abs=30)
    np.testing.assert_allclose(flashes[:n], beeps[:n], atol=1.0)
    want = [e * 1000 + k * period_ms for k in range(n // 3) for e in EVENTS]
    np.testing.assert_allclose(beeps[: len(want)], want, atol=1.0)


def test_corrupt_files_raise_device_error_naming_the_file(clip, tmp_path):
    data = clip.read_bytes()
    garbled = tmp_path / "garbled.mp4"
    g = bytearray(data)
    g[:4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    garbled.write_bytes(bytes(g))
    with pytest.raises(DeviceError) as e:
        MediaSource(garbled)
    assert str(garbled) in str(e.value) and "PyAV says" in str(e.value)

    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    try:
        src = MediaSource(truncated, realtime=False)
    except DeviceError as exc:  # the header was cut
        assert str(truncated) in str(exc)
    else:  # the header survived: the damage is found while decoding and reported
        with src:
            assert src.wait(10)
        assert src.error is not None or src.finished.is_set()
        if src.error is not None:
            assert str(truncated) in str(src.error)
        assert src.frames_delivered < 90

    with pytest.raises(DeviceError, match="no such media file"):
        MediaSource(tmp_path / "missing.mp4")


def test_file_without_audio(silent_clip):
    with pytest.raises(DeviceError, match="has no audio stream.*allow_silent=True"):
        MediaSource(silent_clip)
    src = MediaSource(silent_clip, realtime=False, allow_silent=True)
    assert not src.info.has_audio and src.info.has_video
    with src:
        assert src.wait(5)
    assert src.finished.is_set() and src.frames_delivered == 30
    x, _ = src.audio_ring.read_range(0, src.audio_ring.write_index)
    assert x.size == SR and not x.any()  # 1 s of silence covering the video


def test_parameter_validation(clip):
    with pytest.raises(InputError):
        MediaSource(clip, sample_rate=0)
    with pytest.raises(InputError):
        MediaSource(clip, audio_ring=AudioRing(1, 48000))
    with pytest.raises(InputError):
        MediaSource(clip, lookahead_s=-1)


def test_stop_in_the_middle(clip):
    src = MediaSource(clip, realtime=True)
    src.start()
    time.sleep(0.3)
    t = time.monotonic()
    src.stop()
    assert time.monotonic() - t < 1.0
    assert not src.finished.is_set() and src.error is None
    assert 0 < src.frames_delivered < 90
