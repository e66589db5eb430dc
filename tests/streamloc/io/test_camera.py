"""CameraSource through OpenCV against real local sources: an MJPEG-over-HTTP server thread,
a server that never answers, a refused port, a video file and an image sequence."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from avtest_support import free_port, read_stamp, stamp_frame
from streamloc.buffer import FrameRing
from streamloc.errors import DeviceError, InputError
from streamloc.io.camera import CameraSource, parse_camera_spec
from streamloc.io.devices import probe_cameras


def test_parse_camera_spec():
    assert parse_camera_spec(3) == ("index", 3)
    assert parse_camera_spec(" 1 ") == ("index", 1)
    assert parse_camera_spec("http://127.0.0.1:8080/cam.mjpg")[0] == "url"
    assert parse_camera_spec("rtsp://user:pw@cam/stream")[0] == "url"
    assert parse_camera_spec("videotestsrc ! videoconvert ! appsink")[0] == "gstreamer"
    assert parse_camera_spec("frames/img_%04d.jpg")[0] == "sequence"
    assert parse_camera_spec("clip.mp4") == ("file", "clip.mp4")
    for bad in (-1, True, "", None, 1.5):
        with pytest.raises(InputError):
            parse_camera_spec(bad)
    cam = CameraSource("rtsp://user:secret@10.0.0.1/stream")
    assert "secret" not in cam.describe() and "***" in cam.describe()


def test_mjpeg_stream_frames_content_rate_and_keep_latest(mjpeg_server):
    seen = []  # (counter, embedded ms, arrival ns)

    def on_frame(entry):
        c, t_ms = read_stamp(entry.frame)
        seen.append((c, t_ms, entry.t_ns))

    ring = FrameRing(capacity=4)
    t = time.monotonic()
    cam = CameraSource(
        mjpeg_server.url, open_timeout_s=2, read_timeout_s=2, ring=ring, on_frame=on_frame
    )
    with cam:
        open_s = time.monotonic() - t
        assert cam.info.width == 320 and cam.info.height == 240 and cam.info.backend == "FFMPEG"
        time.sleep(1.2)
        # Keep-latest: nobody read for 1.2 s; the ring holds 4 frames and the newest is current.
        assert len(ring) == 4 and ring.frames_dropped >= ring.frames_written - 4 - 1
        latest = ring.latest()
        assert read_stamp(latest.frame)[0] >= mjpeg_server.counter - 2
        entries = ring.entries()
        assert [e.index for e in entries] == list(range(entries[0].index, entries[0].index + 4))
        assert all(a.t_ns < b.t_ns for a, b in zip(entries, entries[1:]))
    assert cam.error is None
    counters = [c for c, _, _ in seen]
    span_s = (seen[-1][2] - seen[0][2]) / 1e9
    fps = (len(seen) - 1) / span_s
    lat_ms = np.array([t_ns / 1e6 - (t_ms & 0xFFFFFFFF) for _, t_ms, t_ns in seen[1:]])
    lat_ms = (lat_ms + 2**31) % 2**32 - 2**31  # the embedded ms wrap at 32 bits
    print(f"MJPEG: open {open_s * 1e3:.0f} ms, {len(seen)} frames, {fps:.1f} fps, latency median "
          f"{np.median(lat_ms):.1f} ms, max {lat_ms.max():.1f} ms")
    assert all(b > a for a, b in zip(counters, counters[1:])), "frames decode to increasing counters"
    assert 20 <= fps <= 40
    assert np.median(lat_ms) < 100 and lat_ms.min() > -5


def test_live_stream_that_stops_is_reported_within_the_read_timeout(mjpeg_server):
    errors = []
    cam = CameraSource(mjpeg_server.url, open_timeout_s=2, read_timeout_s=2, on_error=errors.append)
    cam.start()
    try:
        time.sleep(0.2)
        assert cam.frames_read > 2
        t = time.monotonic()
        mjpeg_server.stop()
        assert cam.error_event.wait(4.0)
        dt = time.monotonic() - t
        print(f"stream stopped -> error in {dt * 1e3:.0f} ms")
        assert dt < 2.5
        assert isinstance(cam.error, DeviceError) and "stopped delivering frames" in str(cam.error)
        assert errors == [cam.error] and not cam.finished.is_set()
    finally:
        cam.stop()


def test_frozen_live_stream_is_reported_after_the_read_timeout(mjpeg_server):
    """The connection stays open but no frame comes: reported within read_timeout_s."""
    cam = CameraSource(mjpeg_server.url, open_timeout_s=2, read_timeout_s=1.0)
    cam.start()
    try:
        time.sleep(0.2)
        t = time.monotonic()
        mjpeg_server.paused = True
        assert cam.error_event.wait(4.0)
        dt = time.monotonic() - t
        print(f"frozen stream -> error in {dt * 1e3:.0f} ms ({cam.error})")
        assert 0.8 < dt < 1.6
        assert isinstance(cam.error, DeviceError)
        assert "read timeout" in str(cam.error)
    finally:
        cam.stop()


def test_missing_camera_index_fails_fast_with_a_hint():
    if os.path.exists("/dev/video0"):
        pytest.skip("this machine has /dev/video0")
    t = time.monotonic()
    with pytest.raises(DeviceError) as e:
        CameraSource(0).start()
    dt = time.monotonic() - t
    print(f"camera 0 -> DeviceError in {dt * 1e3:.1f} ms")
    assert dt < 2.0
    msg = str(e.value)
    assert msg.startswith("no camera 0: /dev/video0 does not exist or cannot be opened")
    assert "streamloc devices" in msg


def test_server_that_never_answers_times_out(silent_server):
    t = time.monotonic()
    with pytest.raises(DeviceError) as e:
        CameraSource(silent_server.url, open_timeout_s=1.0, read_timeout_s=1.0).start()
    dt = time.monotonic() - t
    print(f"silent server -> DeviceError in {dt:.2f} s")
    assert 0.8 < dt < 3.5
    assert "no answer within the open timeout of 1 s" in str(e.value)


def test_refused_port_fails_at_once():
    url = f"http://127.0.0.1:{free_port()}/cam.mjpg"
    t = time.monotonic()
    with pytest.raises(DeviceError) as e:
        CameraSource(url, open_timeout_s=2.0).start()
    assert time.monotonic() - t < 1.5
    assert "cannot open camera stream" in str(e.value) and "connection failed" in str(e.value)


def _write_video(path, n: int, fps: float = 30.0) -> None:
    fourcc = cv2.VideoWriter_fourcc(*"MJPG")
    w = cv2.VideoWriter(str(path), fourcc, fps, (320, 240))
    assert w.isOpened()
    for k in range(n):
        w.write(stamp_frame(k, 1000 * k))
    w.release()


def test_video_file_as_fast_as_possible_and_paced(tmp_path):
    path = tmp_path / "counter.avi"
    _write_video(path, 30)
    got = []
    finished = []
    t = time.monotonic()
    cam = CameraSource(path, realtime=False, on_frame=lambda e: got.append(read_stamp(e.frame)[0]),
                       on_finished=lambda: finished.append(True))
    with cam:
        assert cam.wait(5.0)
    fast_s = time.monotonic() - t
    assert cam.finished.is_set() and cam.error is None and finished == [True]
    assert got == list(range(30)) and cam.frames_read == 30
    assert cam.info.frame_count == 30 and cam.info.fps == pytest.approx(30)

    stamps = []
    t = time.monotonic()
    with CameraSource(path, realtime=True, fps=60, on_frame=lambda e: stamps.append(e.t_ns)) as cam:
        assert cam.wait(5.0)
    paced_s = time.monotonic() - t
    gaps_ms = np.diff(stamps) / 1e6
    print(f"video file: 30 frames in {fast_s * 1e3:.0f} ms unpaced, {paced_s * 1e3:.0f} ms paced "
          f"at 60 fps (median gap {np.median(gaps_ms):.1f} ms)")
    assert 0.4 < paced_s < 1.5 and fast_s < paced_s
    assert np.median(gaps_ms) == pytest.approx(1000 / 60, abs=3)


def test_image_sequence(tmp_path):
    for k in range(12):
        cv2.imwrite(str(tmp_path / f"img_{k:04d}.jpg"), stamp_frame(k, 0))
    got = []
    with CameraSource(str(tmp_path / "img_%04d.jpg"), realtime=False,
                      on_frame=lambda e: got.append(read_stamp(e.frame)[0])) as cam:
        assert cam.wait(5.0)
    assert cam.finished.is_set() and cam.error is None
    assert got == list(range(12))
    with pytest.raises(DeviceError, match="no files match"):
        CameraSource(str(tmp_path / "other_%03d.png")).start()


def test_file_errors(tmp_path):
    with pytest.raises(DeviceError, match="no such video file"):
        CameraSource(tmp_path / "missing.mp4").start()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DeviceError, match="bad.mp4"):
        CameraSource(bad).start()
    with pytest.raises(DeviceError, match="is a directory"):
        CameraSource(tmp_path).start()


def test_gstreamer_pipeline_without_gstreamer_support():
    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(DeviceError, match="no GStreamer support"):
        CameraSource("videotestsrc ! videoconvert ! appsink").start()


def test_probe_cameras_without_cameras():
    if os.path.exists("/dev/video0"):
        pytest.skip("this machine has cameras")
    t = time.monotonic()
    probes = probe_cameras(max_index=3)
    assert [p.index for p in probes] == [0, 1, 2, 3]
    assert not any(p.opened for p in probes)
    assert time.monotonic() - t < 2.0


def test_stopped_source_cannot_restart(tmp_path):
    path = tmp_path / "c.avi"
    _write_video(path, 3)
    cam = CameraSource(path, realtime=False)
    cam.start()
    cam.stop()
    cam.stop()  # idempotent
    with pytest.raises(DeviceError, match="make a new source"):
        cam.start()
