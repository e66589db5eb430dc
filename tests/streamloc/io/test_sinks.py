"""Sinks: JSONL log, annotated video (real PyAV encode/decode), overlay window, callback, fan-out."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from streamloc.errors import DeviceError, InputError, StreamlocError
from streamloc.io.sinks import (
    SCHEMA_VERSION,
    AnnotatedVideoWriter,
    BaseSink,
    CallbackSink,
    JsonlSink,
    MultiSink,
    OverlayWindow,
    Sink,
    read_jsonl,
)
from streamloc.types import SoundingObject, TickResult

REPO = Path(__file__).resolve().parents[3]
T0_NS = 7_000_000_000  # monotonic time of the first tick
FPS, W, H, SR = 15, 320, 240, 16000


def _tick(i: int, *, size=(H, W), score=0.5, t_ns: int | None = None) -> TickResult:
    h, w = size
    mask = np.zeros((h, w), bool)
    x0 = 10 + 5 * i
    mask[80:140, x0:x0 + 50] = True
    obj = SoundingObject(id=0, heatmap=mask.astype(np.float32), mask=mask, box=(x0, 80, x0 + 50, 140),
                         centroid=(x0 + 24.5, 109.5), score=score)
    return TickResult(frame_size=(h, w), sound_map=np.full((7, 7), 0.25, np.float32), objects=[obj],
                      time_ns=T0_NS + round(i * 1e9 / FPS) if t_ns is None else t_ns,
                      audio_window_ns=(T0_NS - 3_000_000_000, T0_NS), frame_index=i,
                      timings_ms={"encoder": 10.0, "total": 20.0 + i}, flags={"late", "audio_overflow"})


def _frame(i: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[80:140, 10 + 5 * i:60 + 5 * i] = 255  # a white square moving right by 5 px a frame
    return img


# ---------------------------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------------------------
RECORD_FIELDS = {"schema_version", "time_ns", "audio_window_ns", "frame_index", "frame_size", "num_objects",
                 "objects", "sound_map_max", "timings_ms", "flags"}


def test_jsonl_writes_one_record_per_tick(tmp_path):
    path = tmp_path / "ticks.jsonl"
    with JsonlSink(path) as sink:
        assert isinstance(sink, Sink)
        for i in range(5):
            sink.write(None, _tick(i))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    records = [json.loads(line) for line in lines]
    assert records == list(read_jsonl(path))
    for i, rec in enumerate(records):
        assert set(rec) == RECORD_FIELDS  # the documented schema; bump SCHEMA_VERSION when it changes
        assert rec["schema_version"] == SCHEMA_VERSION == 1
        assert rec["time_ns"] == T0_NS + round(i * 1e9 / FPS)
        assert rec["audio_window_ns"] == [T0_NS - 3_000_000_000, T0_NS]
        assert rec["frame_index"] == i and rec["frame_size"] == [H, W]
        assert rec["num_objects"] == 1
        assert rec["objects"] == [{"id": 0, "box": [10 + 5 * i, 80, 60 + 5 * i, 140],
                                   "centroid": [10 + 5 * i + 24.5, 109.5], "score": 0.5, "area": 3000}]
        assert rec["sound_map_max"] == 0.25
        assert rec["timings_ms"] == {"encoder": 10.0, "total": 20.0 + i}
        assert rec["flags"] == ["audio_overflow", "late"]


def test_jsonl_lines_are_on_disk_before_close(tmp_path):
    path = tmp_path / "live.jsonl"
    sink = JsonlSink(path)
    for i in range(3):
        sink.write(None, _tick(i))
        assert len(path.read_text().splitlines()) == i + 1  # read while the sink is open
    sink.close()
    sink.close()  # idempotent
    assert len(path.read_text().splitlines()) == 3
    with pytest.raises(StreamlocError, match="closed"):
        sink.write(None, _tick(3))

    batched = JsonlSink(tmp_path / "batched.jsonl", flush_every=4)
    for i in range(3):
        batched.write(None, _tick(i))
    assert (tmp_path / "batched.jsonl").read_text() == ""
    batched.write(None, _tick(3))
    assert len((tmp_path / "batched.jsonl").read_text().splitlines()) == 4
    batched.write(None, _tick(4))
    batched.close()  # close writes the rest
    assert len((tmp_path / "batched.jsonl").read_text().splitlines()) == 5


def test_jsonl_survives_a_killed_process(tmp_path):
    path = tmp_path / "killed.jsonl"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_sinks import _tick
        from streamloc.io.sinks import JsonlSink
        sink = JsonlSink({str(path)!r})
        for i in range(3):
            sink.write(None, _tick(i))
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit, no flush at exit
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["frame_index"] for r in records] == [0, 1, 2]


def test_jsonl_writes_strict_json_for_non_finite_numbers(tmp_path):
    path = tmp_path / "nan.jsonl"
    with JsonlSink(path) as sink:
        sink.write(None, _tick(0, score=float("nan")))

    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    rec = json.loads(path.read_text(), parse_constant=reject)
    assert rec["objects"][0]["score"] is None


def test_jsonl_append_and_bad_paths(tmp_path):
    path = tmp_path / "a.jsonl"
    with JsonlSink(path) as sink:
        sink.write(None, _tick(0))
    with JsonlSink(path, append=True) as sink:
        sink.write(None, _tick(1))
    assert [r["frame_index"] for r in read_jsonl(path)] == [0, 1]
    with pytest.raises(DeviceError, match="does not exist.*mkdir"):
        JsonlSink(tmp_path / "missing" / "a.jsonl")
    with pytest.raises(DeviceError, match="is a directory"):
        JsonlSink(tmp_path)
    with pytest.raises(InputError):
        JsonlSink(tmp_path / "b.jsonl", flush_every=0)


# ---------------------------------------------------------------------------------------------
# annotated video
# ---------------------------------------------------------------------------------------------
def _tone(start: int, stop: int, freq=440.0) -> np.ndarray:
    n = np.arange(start, stop)
    return (0.5 * np.sin(2 * np.pi * freq * n / SR)).astype(np.float32)


def _decode(path: Path):
    with av.open(str(path)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        v, a = c.streams.video[0], c.streams.audio[0]
        info = {"duration_s": c.duration / 1e6, "width": v.codec_context.width, "height": v.codec_context.height,
                "sample_rate": a.codec_context.sample_rate, "codecs": (v.codec_context.name, a.codec_context.name)}
        frames, times, audio = [], [], []
        for fr in c.decode(v, a):
            if isinstance(fr, av.VideoFrame):
                frames.append(fr.to_ndarray(format="bgr24"))
                times.append(fr.time)
            else:
                audio.append(fr.to_ndarray().reshape(-1))
    return info, frames, np.asarray(times), np.concatenate(audio)


def test_annotated_video_has_rendered_frames_and_the_original_audio(tmp_path):
    path = tmp_path / "annotated.mp4"
    n_frames = 3 * FPS  # 3 s
    with AnnotatedVideoWriter(path, fps=FPS, audio_rate=SR) as writer:
        for i in range(n_frames):
            a0, a1 = round(i * SR / FPS), round((i + 1) * SR / FPS)
            writer.write_audio(_tone(a0, a1), SR, T0_NS / 1e9 + a0 / SR)  # chunks with their start time
            writer.write(_frame(i), _tick(i))
        assert writer.frames_written == n_frames
    assert not writer._finalizer.alive

    info, frames, times, audio = _decode(path)
    assert info["codecs"] == ("h264", "aac")
    assert (info["width"], info["height"]) == (W, H)
    assert len(frames) == n_frames
    assert abs(info["duration_s"] - 3.0) < 0.1
    np.testing.assert_allclose(times, np.arange(n_frames) / FPS, atol=1e-3)  # pts from the tick times
    assert info["sample_rate"] == SR
    assert abs(audio.size / SR - 3.0) < 0.1

    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    peak_hz = np.argmax(spectrum) * SR / audio.size
    assert abs(peak_hz - 440.0) < 5.0
    ref = _tone(0, audio.size)
    corr = float(np.dot(audio, ref) / (np.linalg.norm(audio) * np.linalg.norm(ref)))
    assert corr > 0.9, "the decoded audio is the tone, in phase with the video clock"

    # the frames are the rendered ticks: the white square is tinted with object 0's colour, and the
    # square moves 5 px a frame (frame order and timing are right)
    for i in (0, 20, 44):
        inside = frames[i][95:125, 20 + 5 * i:50 + 5 * i].reshape(-1, 3).mean(axis=0)
        assert inside[0] < 200 and inside[2] > 200, f"frame {i}: expected the orange tint, got {inside}"
        assert frames[i][95:125, 70 + 5 * i:90 + 5 * i].mean() < 30  # right of the square: black
    assert frames[10][:6].mean() > 0, "the HUD text is drawn on the top strip"


def test_annotated_video_keeps_audio_in_sync_with_the_ticks(tmp_path):
    """Audio starting 0.5 s before the first tick is cut; a beep at tick time 1.0 s stays at 1.0 s."""
    path = tmp_path / "sync.mp4"
    t_first = T0_NS / 1e9
    audio_start = t_first - 0.5
    total = int(2.5 * SR)
    signal = np.zeros(total, np.float32)
    onset = int(1.5 * SR)  # 1.0 s after the first tick
    signal[onset:] = _tone(onset, total)
    with AnnotatedVideoWriter(path, fps=10) as writer:  # audio rate taken from the first audio chunk
        chunk = 1600
        for k in range(0, total, chunk):
            writer.write_audio(signal[k:k + chunk], SR, audio_start + k / SR)
        for i in range(20):
            writer.write(_frame(i), _tick(i, t_ns=T0_NS + i * 100_000_000))
    info, frames, times, audio = _decode(path)
    assert len(frames) == 20 and info["sample_rate"] == SR
    np.testing.assert_allclose(times, np.arange(20) / 10, atol=1e-3)
    envelope = np.convolve(np.abs(audio), np.ones(160) / 160, mode="same")
    onset_s = np.argmax(envelope > 0.5 * envelope.max()) / SR
    assert abs(onset_s - 1.0) < 0.03
    assert abs(audio.size / SR - 2.0) < 0.1


def test_annotated_video_resizes_odd_frames_and_resamples_audio(tmp_path):
    path = tmp_path / "odd.mkv"
    with AnnotatedVideoWriter(path, fps=FPS, frame_size=(121, 161), audio_rate=SR, render=False) as writer:
        for i in range(FPS):
            n = np.arange(3200 * i, 3200 * (i + 1))  # contiguous 48 kHz chunks without timestamps
            writer.write_audio(np.sin(2 * np.pi * 440 * n / 48000).astype(np.float32), 48000, None)
            writer.write(_frame(i), _tick(i, t_ns=None))  # no tick time: frames follow at fps
    info, frames, times, audio = _decode(path)
    assert (info["height"], info["width"]) == (122, 162)
    assert len(frames) == FPS
    np.testing.assert_allclose(times, np.arange(FPS) / FPS, atol=2e-3)
    assert info["sample_rate"] == SR
    assert abs(audio.size / SR - 1.0) < 0.1  # 15 × 3200 samples at 48 kHz = 1 s
    peak_hz = np.argmax(np.abs(np.fft.rfft(audio * np.hanning(audio.size)))) * SR / audio.size
    assert abs(peak_hz - 440.0) < 5.0


def test_annotated_video_with_the_mpeg4_fallback_codec(tmp_path):
    path = tmp_path / "mpeg4.mp4"
    with AnnotatedVideoWriter(path, fps=30000 / 1001, codec="mpeg4", audio_rate=22050) as writer:
        assert writer.codec == "mpeg4"
        writer.write_audio(np.zeros(22050, np.float32), 22050, T0_NS / 1e9)
        for i in range(10):
            writer.write(_frame(i), _tick(i, t_ns=T0_NS + round(i * 1001e9 / 30000)))
    info, frames, times, audio = _decode(path)
    assert info["codecs"] == ("mpeg4", "aac") and len(frames) == 10 and info["sample_rate"] == 22050
    np.testing.assert_allclose(times, np.arange(10) * 1001 / 30000, atol=1e-4)


@pytest.mark.parametrize("make_path, match", [
    (lambda tmp: tmp / "missing" / "out.mp4", "does not exist.*mkdir"),
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: tmp / "file.txt" / "out.mp4", "is not a directory"),
    (lambda tmp: Path("/proc/streamloc-test.mp4"), "writable"),
])
def test_annotated_video_fails_at_construction_on_an_unwritable_path(tmp_path, make_path, match):
    (tmp_path / "file.txt").write_text("x")
    path = make_path(tmp_path)
    with pytest.raises(DeviceError, match=match) as info:
        AnnotatedVideoWriter(path, fps=FPS)
    assert str(path) in str(info.value)


def test_annotated_video_closes_on_errors_and_leaves_no_empty_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    with AnnotatedVideoWriter(empty, fps=FPS):
        pass
    assert not empty.exists()

    with pytest.raises(InputError, match="container format"):
        AnnotatedVideoWriter(tmp_path / "x.unknownext", fps=FPS)
    assert not (tmp_path / "x.unknownext").exists()

    path = tmp_path / "partial.mp4"
    with pytest.raises(InputError):
        with AnnotatedVideoWriter(path, fps=FPS) as writer:
            for i in range(5):
                writer.write(_frame(i), _tick(i))
            writer.write(np.zeros((H, W), np.float32), _tick(5))  # a bad frame: the block exits
    assert writer.closed
    writer.close()  # idempotent
    with av.open(str(path)) as c:  # the 5 good frames are in a valid file
        assert sum(1 for _ in c.decode(video=0)) == 5
        assert len(c.streams.audio) == 0


def test_annotated_video_left_open_is_finished_when_collected(tmp_path):
    path = tmp_path / "forgotten.mp4"
    writer = AnnotatedVideoWriter(path, fps=FPS, audio_rate=SR)
    for i in range(4):
        writer.write_audio(_tone(i * 1000, (i + 1) * 1000), SR, None)
        writer.write(_frame(i), _tick(i))
    del writer
    gc.collect()
    with av.open(str(path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 4
        assert len(c.streams.audio) == 1


def test_annotated_video_without_audio_rate_rejects_late_audio(tmp_path):
    with AnnotatedVideoWriter(tmp_path / "noaudio.mp4", fps=FPS) as writer:
        writer.write(_frame(0), _tick(0))
        with pytest.raises(InputError, match="audio_rate"):
            writer.write_audio(_tone(0, 1600), SR, T0_NS / 1e9)


# ---------------------------------------------------------------------------------------------
# overlay window (never opens a real window here)
# ---------------------------------------------------------------------------------------------
def test_overlay_window_without_display_says_to_use_no_display(monkeypatch):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DeviceError, match="--no-display"):
        OverlayWindow()


def test_overlay_window_with_a_dead_x_display(monkeypatch):
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setenv("DISPLAY", ":87")  # no X server listens there
    with pytest.raises(DeviceError, match="no X server.*--no-display"):
        OverlayWindow("test")


# ---------------------------------------------------------------------------------------------
# callback and fan-out
# ---------------------------------------------------------------------------------------------
def test_callback_sink_calls_with_one_or_two_arguments():
    one, two, star = [], [], []
    frame, result = _frame(0), _tick(0)

    def on_result(r):
        one.append(r)

    class Robot:
        def on_tick(self, r, f=None):
            two.append((r, f))

    sinks = [CallbackSink(on_result), CallbackSink(Robot().on_tick), CallbackSink(lambda *a: star.append(a))]
    with MultiSink(sinks) as multi:
        multi.write(frame, result)
    assert one == [result]
    assert two[0][0] is result and two[0][1] is frame
    assert star[0][0] is result and star[0][1] is frame
    assert all(s.closed for s in sinks)


def test_callback_errors_name_the_callback():
    def broken_callback(r):
        raise KeyError("boom")

    sink = CallbackSink(broken_callback)
    with pytest.raises(StreamlocError, match="broken_callback raised KeyError") as info:
        sink.write(None, _tick(0))
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(InputError):
        CallbackSink("not callable")


class _Recorder(BaseSink):
    def __init__(self, log, name, fail_write=False, fail_close=False):
        super().__init__()
        self.log, self.name, self.fail_write, self.fail_close = log, name, fail_write, fail_close

    def write(self, frame, result):
        self.log.append(("write", self.name))
        if self.fail_write:
            raise RuntimeError(f"{self.name} write failed")

    def _close(self):
        self.log.append(("close", self.name))
        if self.fail_close:
            raise RuntimeError(f"{self.name} close failed")


def test_multisink_closes_every_sink_when_one_fails(tmp_path):
    log = []
    jsonl = JsonlSink(tmp_path / "m.jsonl")
    sinks = [_Recorder(log, "a"), _Recorder(log, "b", fail_write=True, fail_close=True), jsonl,
             _Recorder(log, "c", fail_close=True)]
    multi = MultiSink(sinks)
    with pytest.raises(RuntimeError, match="b write failed"):
        multi.write(None, _tick(0))
    assert ("write", "c") in log, "the other sinks still got the tick"
    with pytest.raises(RuntimeError, match="b close failed"):
        multi.close()
    assert [e for e in log if e[0] == "close"] == [("close", "a"), ("close", "b"), ("close", "c")]
    assert all(s.closed for s in sinks) and multi.closed
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1
    multi.close()  # idempotent: nothing raised the second time


def test_multisink_reports_a_sink_asking_to_stop():
    class StopAfterOne(BaseSink):
        stop = False

        @property
        def closed(self):
            return self.stop or super().closed

        def write(self, frame, result):
            self.stop = True

    log = []
    stopper, rec = StopAfterOne(), _Recorder(log, "r")
    with MultiSink([stopper, rec]) as multi:
        assert not multi.closed
        multi.write(None, _tick(0))
        assert multi.closed and not rec.closed
    assert rec.closed
