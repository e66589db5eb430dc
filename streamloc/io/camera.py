"""`CameraSource`: OpenCV capture thread -> keep-latest :class:`~streamloc.buffer.FrameRing`.

``spec`` may be

* an ``int`` (or a digit string): a camera index (``/dev/videoN`` through V4L2 on Linux);
* a URL (``http://.../stream.mjpg``, ``rtsp://...``, ``udp://...``): opened with OpenCV's
  FFmpeg backend and ``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC``, so a
  server that never answers fails after ``open_timeout_s`` instead of FFmpeg's 30 s;
* a GStreamer pipeline (contains ``!``), when this OpenCV build has GStreamer (the PyPI wheels
  do not: the error says so);
* an image-sequence pattern (``frames/img_%04d.jpg``, OpenCV's ``CAP_IMAGES``);
* a video file.

The capture thread stamps every frame with :func:`time.monotonic_ns` when ``read()`` returns it
(arrival time) and puts it in the ring, which keeps only the newest few: a slow consumer skips
frames (counted in ``ring.frames_dropped``), it never makes a queue grow.

Files and image sequences are paced at their frame rate (``realtime=True``, as if live; stamps
are the delivery times) or read as fast as possible (``realtime=False``); their end sets
``finished``. On a live source a failed ``read()`` or no frame for ``read_timeout_s`` sets
``error`` (a :class:`~streamloc.errors.DeviceError`), ``error_event`` and calls ``on_error``.

The first frame is read inside :meth:`start`, so a device that opens but never delivers raises
there rather than becoming a silent empty stream.

OpenCV logs a WARN line for every expected failure (a missing camera index, the end of an image
sequence); unless the user set ``OPENCV_LOG_LEVEL`` this module lowers OpenCV's log level to
ERROR. FFmpeg's own error lines (``[tcp @ ...] Connection refused``) still reach stderr.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from streamloc.buffer import FrameEntry, FrameRing
from streamloc.errors import DeviceError, InputError
from streamloc.io import Source

__all__ = ["CameraSource", "CameraInfo", "quiet_opencv_logs", "parse_camera_spec"]

log = logging.getLogger("streamloc.io.camera")

_SEQ_RE = re.compile(r"%0?\d*d")
_quieted = False


def quiet_opencv_logs() -> None:
    """Lower OpenCV's log level to ERROR unless ``OPENCV_LOG_LEVEL`` is set (once per process)."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except Exception:  # pragma: no cover - very old OpenCV
        pass


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def parse_camera_spec(spec: Any) -> tuple[str, Any]:
    """``(kind, value)`` with kind one of ``index``, ``url``, ``gstreamer``, ``sequence``, ``file``.

    >>> parse_camera_spec(0), parse_camera_spec("2"), parse_camera_spec("rtsp://h/x")[0]
    (('index', 0), ('index', 2), 'url')
    >>> parse_camera_spec("videotestsrc ! appsink")[0], parse_camera_spec("a/img_%04d.jpg")[0]
    ('gstreamer', 'sequence')
    """
    if isinstance(spec, bool):
        raise InputError(f"camera spec must be an index, a path or a URL, got {spec!r}")
    if isinstance(spec, int):
        if spec < 0:
            raise InputError(f"camera index must be >= 0, got {spec}")
        return "index", spec
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"camera spec must be an index, a path or a URL, got {spec!r}")
    s = spec.strip()
    if s.isdigit():
        return "index", int(s)
    if "!" in s and "://" not in s.split("!")[0]:
        return "gstreamer", s
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", s):
        return "url", s
    if _SEQ_RE.search(s):
        return "sequence", s
    return "file", s


@dataclass(frozen=True)
class CameraInfo:
    """What the opened capture reports (``fps`` is 0 when the backend does not know it)."""

    spec: str
    kind: str
    backend: str
    width: int
    height: int
    fps: float
    frame_count: int  # files only; -1 when unknown


class CameraSource(Source):
    """Capture thread for a camera, URL, video file or image sequence into a FrameRing.

    ``realtime``: pace files/sequences at ``fps`` (default: the file's, else 30) or read them
    as fast as possible. ``backend``: an OpenCV ``CAP_*`` constant to force an API.
    ``on_frame(entry)`` is called from the capture thread for every frame (keep it cheap).
    """

    name = "camera"

    def __init__(
        self,
        spec: Any,
        *,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
        ring: FrameRing | None = None,
        realtime: bool = True,
        fps: float | None = None,
        backend: int | None = None,
        on_frame: Callable[[FrameEntry], Any] | None = None,
        on_error: Callable[[DeviceError], Any] | None = None,
        on_finished: Callable[[], Any] | None = None,
    ):
        super().__init__(on_error=on_error, on_finished=on_finished)
        self.kind, self.spec = parse_camera_spec(spec)
        if open_timeout_s <= 0 or read_timeout_s <= 0:
            raise InputError("open_timeout_s and read_timeout_s must be > 0")
        if fps is not None and fps <= 0:
            raise InputError(f"fps must be > 0, got {fps}")
        self.open_timeout_s = float(open_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.ring = ring if ring is not None else FrameRing(4)
        self.realtime = bool(realtime)
        self.fps = fps
        self.backend = backend
        self.on_frame = on_frame
        self.info: CameraInfo | None = None
        self.frames_read = 0
        self.name = f"camera {self.describe()}"
        self._cap = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_frame_ns = 0

    @property
    def live(self) -> bool:
        """True for cameras, URLs and pipelines; False for files and image sequences."""
        return self.kind in ("index", "url", "gstreamer")

    def describe(self) -> str:
        if self.kind == "index":
            return str(self.spec)
        if self.kind == "url":
            return _redact(self.spec)
        return repr(self.spec) if self.kind == "gstreamer" else str(self.spec)

    # -------------------------------------------------------------- open
    def _open(self) -> None:
        import cv2

        quiet_opencv_logs()
        kind, spec = self.kind, self.spec
        t_open = time.monotonic()
        if kind == "index":
            api = self.backend
            if api is None:
                api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            cap = cv2.VideoCapture(spec, api)
            if not cap.isOpened():
                cap.release()
                raise DeviceError(self._no_camera_message(spec))
        elif kind == "url":
            api = self.backend if self.backend is not None else cv2.CAP_FFMPEG
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.read_timeout_s * 1000),
            ]
            cap = cv2.VideoCapture(spec, api, params)
            if not cap.isOpened():
                cap.release()
                elapsed = time.monotonic() - t_open
                if elapsed >= 0.9 * self.open_timeout_s:
                    why = f"no answer within the open timeout of {self.open_timeout_s:g} s"
                else:
                    why = (
                        "the connection failed (refused, unknown host, wrong path, or not a "
                        "video stream; FFmpeg's message is on stderr above)"
                    )
                raise DeviceError(f"cannot open camera stream {self.describe()}: {why}")
        elif kind == "gstreamer":
            if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
                raise DeviceError(
                    "this OpenCV build has no GStreamer support (cv2.getBuildInformation() says "
                    "'GStreamer: NO', as in the PyPI opencv-python wheels), so the pipeline "
                    f"{spec!r} cannot be opened; use an OpenCV built with GStreamer (e.g. Debian's "
                    "python3-opencv) or give a URL, file or camera index instead"
                )
            cap = cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)
            if not cap.isOpened():
                cap.release()
                raise DeviceError(f"GStreamer could not start the pipeline {spec!r}")
        elif kind == "sequence":
            pattern = spec
            first = self._first_sequence_file(pattern)
            api = self.backend if self.backend is not None else cv2.CAP_IMAGES
            cap = cv2.VideoCapture(pattern, api)
            if not cap.isOpened():
                cap.release()
                raise DeviceError(
                    f"cannot open the image sequence {pattern} (first file {first}): OpenCV "
                    "could not decode it"
                )
        else:
            path = Path(spec)
            if not path.exists():
                raise DeviceError(f"no such video file: {path}")
            if path.is_dir():
                raise DeviceError(
                    f"{path} is a directory; give a video file or an image pattern such as "
                    f"{path / 'img_%04d.jpg'}"
                )
            api = self.backend if self.backend is not None else cv2.CAP_FFMPEG
            cap = cv2.VideoCapture(str(path), api)
            if not cap.isOpened():
                cap.release()
                raise DeviceError(
                    f"cannot open video file {path}: OpenCV's FFmpeg backend cannot read it "
                    "(corrupt file or unsupported format)"
                )
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or -1) if not self.live else -1
        # First frame: here, so that a source that opens but never delivers fails in start().
        ok, frame = cap.read()
        t = time.monotonic_ns()
        if not ok or frame is None:
            if self.live:
                raise DeviceError(
                    f"camera {self.describe()} opened but delivered no frame"
                    + (f" within {self.read_timeout_s:g} s" if kind == "url" else "")
                )
            raise DeviceError(f"could not decode any frame from {self.describe()}")
        h, w = frame.shape[:2]
        self.info = CameraInfo(
            spec=self.describe(),
            kind=kind,
            backend=cap.getBackendName(),
            width=int(w),
            height=int(h),
            fps=fps,
            frame_count=count if count > 0 else -1,
        )
        if self.fps is None:
            self.fps = fps if (fps > 0 and fps < 1000) else 30.0
        self._t_first = time.monotonic_ns()
        self._deliver(frame, t if not self._paced else self._t_first)
        self._thread = threading.Thread(target=self._run, name=f"streamloc-{self.name}", daemon=True)
        self._thread.start()
        if self.live:
            self._watchdog = threading.Thread(
                target=self._watch, name=f"streamloc-{self.name}-watchdog", daemon=True
            )
            self._watchdog.start()

    @property
    def _paced(self) -> bool:
        return self.realtime and not self.live

    @staticmethod
    def _no_camera_message(index: int) -> str:
        if sys.platform.startswith("linux"):
            dev = f"/dev/video{index}"
            detail = (
                "exists but cannot be opened (busy, no permission, or not a capture device)"
                if os.path.exists(dev)
                else "does not exist or cannot be opened"
            )
            msg = f"no camera {index}: {dev} {detail}"
        else:
            msg = f"no camera {index}: the camera does not exist or cannot be opened"
        return msg + "; run `streamloc devices` to list cameras"

    @staticmethod
    def _first_sequence_file(pattern: str) -> str:
        directory = os.path.dirname(pattern) or "."
        if not os.path.isdir(directory):
            raise DeviceError(f"no such directory for the image sequence {pattern}: {directory}")
        parts = _SEQ_RE.split(os.path.basename(pattern))
        rx = re.compile("^" + r"\d+".join(re.escape(part) for part in parts) + "$")
        files = sorted(f for f in os.listdir(directory) if rx.match(f))
        if not files:
            raise DeviceError(f"no files match the image sequence pattern {pattern}")
        files = [os.path.join(directory, f) for f in files]
        return files[0]

    # -------------------------------------------------------------- capture thread
    def _deliver(self, frame: Any, t_ns: int) -> None:
        entry = self.ring.put(frame, t_ns)
        self.frames_read += 1
        self._last_frame_ns = t_ns
        if self.on_frame is not None:
            try:
                self.on_frame(entry)
            except Exception:
                log.exception("on_frame callback of %s raised", self.name)

    def _run(self) -> None:
        cap = self._cap
        period_ns = int(1e9 / self.fps) if self.fps else 0
        n = 1  # the first frame was delivered by _open
        try:
            while not self._stop.is_set():
                t_read = time.monotonic()
                ok, frame = cap.read()
                if self._stop.is_set():
                    break
                if not ok or frame is None:
                    if self.live:
                        if time.monotonic() - t_read >= 0.9 * self.read_timeout_s:
                            why = f"no frame within the read timeout of {self.read_timeout_s:g} s"
                        else:
                            why = "read failed: the device was unplugged or the stream ended"
                        self._fail(
                            DeviceError(
                                f"camera {self.describe()} stopped delivering frames after "
                                f"{self.frames_read} frames ({why})"
                            )
                        )
                    else:
                        self._finish()
                    break
                if self._paced:
                    due = self._t_first + n * period_ns
                    delay = (due - time.monotonic_ns()) / 1e9
                    if delay > 0 and self._stop.wait(delay):
                        break
                self._deliver(frame, time.monotonic_ns())
                n += 1
        except Exception as exc:  # an OpenCV exception in read(): report, never die silently
            self._fail(DeviceError(f"camera {self.describe()} failed: {exc}"))
        finally:
            self._cap = None
            cap.release()

    def _watch(self) -> None:
        poll = min(0.1, self.read_timeout_s / 10)
        limit_ns = int(self.read_timeout_s * 1e9)
        while not self._stop.wait(poll):
            if self.done.is_set():
                return
            if time.monotonic_ns() - self._last_frame_ns > limit_ns:
                self._fail(
                    DeviceError(
                        f"camera {self.describe()} delivered no frame for "
                        f"{self.read_timeout_s:g} s (read timeout)"
                    )
                )
                return

    # -------------------------------------------------------------- stop
    def _close(self) -> None:
        self._stop.set()
        me = threading.current_thread()
        for th in (self._thread, self._watchdog):
            if th is not None and th is not me:
                th.join(self.read_timeout_s + 2.0)
                if th.is_alive():  # pragma: no cover - a backend stuck in read()
                    log.warning("%s: capture thread still blocked in read(); leaving it", self.name)
        if self._thread is None and self._cap is not None:
            self._cap.release()
            self._cap = None
