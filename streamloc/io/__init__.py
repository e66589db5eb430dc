"""Live ingest: capture threads that feed the rings of :mod:`streamloc.buffer`.

* :class:`~streamloc.io.camera.CameraSource` -- OpenCV ``VideoCapture`` (camera index, video
  file, image-sequence pattern, HTTP/RTSP URL, GStreamer pipeline) into a
  :class:`~streamloc.buffer.FrameRing`, keep-latest.
* :class:`~streamloc.io.microphone.MicrophoneSource` -- a sounddevice ``InputStream`` whose
  callback only copies into an :class:`~streamloc.buffer.AudioRing` (stamped from the ADC time),
  with rate negotiation, channel selection, a watchdog and overflow accounting.
* :class:`~streamloc.io.media.MediaSource` -- PyAV demux of a file's video and audio into the
  same ring types, paced in real time (as if live) or as fast as possible.
* :mod:`streamloc.io.devices` -- :func:`list_audio_inputs` and :func:`probe_cameras` for
  ``streamloc devices``.

Every source shares the small life cycle of :class:`Source`: ``start()`` opens the device and
raises :class:`~streamloc.errors.DeviceError` if it cannot; afterwards problems are reported,
never raised into the capture thread's void: ``source.error`` (a ``DeviceError``),
``source.error_event``, the optional ``on_error(error)`` callback; a clean end of a file sets
``source.finished``; ``source.done`` is set by either. ``stop()`` (also ``close()``) joins the
threads and releases the device; sources are context managers.

Submodules are imported lazily so that ``import streamloc.io`` does not load OpenCV, PortAudio
or FFmpeg.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from streamloc.errors import DeviceError

__all__ = [
    "Source",
    "CameraSource",
    "MicrophoneSource",
    "MediaSource",
    "MediaInfo",
    "list_audio_inputs",
    "probe_cameras",
]

log = logging.getLogger("streamloc.io")

_LAZY = {
    "CameraSource": "streamloc.io.camera",
    "MicrophoneSource": "streamloc.io.microphone",
    "MediaSource": "streamloc.io.media",
    "MediaInfo": "streamloc.io.media",
    "list_audio_inputs": "streamloc.io.devices",
    "probe_cameras": "streamloc.io.devices",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamloc.io' has no attribute {name!r}")


class Source:
    """Life cycle and error reporting shared by every capture source.

    Subclasses implement ``_open()`` (called by :meth:`start`, raises ``DeviceError``) and
    ``_close()`` (called by :meth:`stop`, must be idempotent), and report from their threads
    with :meth:`_fail` and :meth:`_finish`.
    """

    name = "source"

    def __init__(
        self,
        *,
        on_error: Callable[[DeviceError], Any] | None = None,
        on_finished: Callable[[], Any] | None = None,
    ):
        self.on_error = on_error
        self.on_finished = on_finished
        self.error: DeviceError | None = None
        self.error_event = threading.Event()
        self.finished = threading.Event()
        self.done = threading.Event()
        self._started = False
        self._closed = False
        self._report_lock = threading.Lock()

    # -------------------------------------------------------------- life cycle
    def start(self) -> "Source":
        """Open the device and start capturing; raises :class:`DeviceError` if it cannot."""
        if self._closed:
            raise DeviceError(f"{self.name} was stopped; make a new source to start again")
        if self._started:
            return self
        self._started = True
        try:
            self._open()
        except BaseException:
            self._started = False
            self._closed = True
            try:
                self._close()
            except Exception:  # pragma: no cover - best effort cleanup
                log.exception("cleanup after a failed open of %s", self.name)
            raise
        return self

    def stop(self) -> None:
        """Stop capturing, join the threads, release the device (idempotent)."""
        self._closed = True
        self._close()

    close = stop

    @property
    def running(self) -> bool:
        """Started, not stopped, and neither finished nor failed."""
        return self._started and not self._closed and not self.done.is_set()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the source finished or failed; ``True`` if it did within ``timeout``."""
        return self.done.wait(timeout)

    def raise_if_failed(self) -> None:
        """Re-raise the error a capture thread reported, if any."""
        if self.error is not None:
            raise self.error

    # -------------------------------------------------------------- for subclasses
    def _open(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fail(self, error: DeviceError) -> None:
        """Report an error once: attribute, events, callback (exceptions in it are logged)."""
        with self._report_lock:
            if self.error is not None or self.finished.is_set():
                return
            self.error = error
        log.error("%s", error)
        self.error_event.set()
        self.done.set()
        if self.on_error is not None:
            try:
                self.on_error(error)
            except Exception:
                log.exception("on_error callback of %s raised", self.name)

    def _finish(self) -> None:
        """Report a clean end (end of a file)."""
        with self._report_lock:
            if self.error is not None or self.finished.is_set():
                return
            self.finished.set()
        self.done.set()
        if self.on_finished is not None:
            try:
                self.on_finished()
            except Exception:
                log.exception("on_finished callback of %s raised", self.name)
