"""What capture devices this machine has: for ``streamloc devices`` and error messages.

Both functions return empty results instead of raising when there is nothing to find (no sound
card, no sound server, no ``/dev/video*``).

>>> isinstance(describe_devices(max_camera_index=0), str)
True
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from streamloc.errors import DeviceError

__all__ = [
    "AudioInputInfo",
    "CameraProbe",
    "list_audio_inputs",
    "probe_cameras",
    "describe_devices",
]


@dataclass(frozen=True)
class AudioInputInfo:
    """One PortAudio input device."""

    index: int
    name: str
    hostapi: str
    channels: int
    default_samplerate: float
    is_default: bool


@dataclass(frozen=True)
class CameraProbe:
    """Result of trying ``cv2.VideoCapture(index)``."""

    index: int
    opened: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    backend: str = ""
    path: str = ""  # /dev/videoN on Linux
    path_exists: bool = False
    open_s: float = 0.0


def list_audio_inputs(refresh: bool = False) -> list[AudioInputInfo]:
    """PortAudio's input devices (``[]`` when there are none).

    ``refresh=True`` re-initialises PortAudio first, which rescans devices and sound servers
    (PortAudio only scans when it initialises); do not do that while a stream is open.
    Raises :class:`~streamloc.errors.DeviceError` only when the PortAudio library is missing.
    """
    from streamloc.io.microphone import _input_devices, import_sounddevice

    sd = import_sounddevice()
    if refresh:
        sd._terminate()
        sd._initialize()
    return [
        AudioInputInfo(d.index, d.name, d.hostapi, d.channels, d.default_samplerate, d.is_default)
        for d in _input_devices(sd)
    ]


def probe_cameras(max_index: int = 4, *, read_frame: bool = True) -> list[CameraProbe]:
    """Try camera indices ``0..max_index`` (inclusive); one :class:`CameraProbe` each.

    OpenCV's warnings about missing cameras are silenced while probing.
    """
    import cv2

    linux = sys.platform.startswith("linux")
    api = cv2.CAP_V4L2 if linux else cv2.CAP_ANY
    try:
        old_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except Exception:  # pragma: no cover
        old_level = None
    out = []
    try:
        for i in range(max_index + 1):
            path = f"/dev/video{i}" if linux else ""
            exists = bool(path) and os.path.exists(path)
            t = time.monotonic()
            cap = cv2.VideoCapture(i, api)
            try:
                opened = cap.isOpened()
                w = h = 0
                fps = 0.0
                backend = ""
                if opened:
                    backend = cap.getBackendName()
                    w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
                    h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
                    if read_frame:
                        ok, frame = cap.read()
                        if ok and frame is not None:
                            h, w = frame.shape[:2]
                        else:
                            opened = False
            finally:
                cap.release()
            out.append(CameraProbe(i, opened, w, h, fps, backend, path, exists, time.monotonic() - t))
    finally:
        if old_level is not None:
            cv2.utils.logging.setLogLevel(old_level)
    return out


def describe_devices(max_camera_index: int = 4) -> str:
    """Human-readable listing of audio inputs and cameras (what ``streamloc devices`` prints)."""
    lines = ["Audio inputs (use the index or a unique part of the name with --mic):"]
    try:
        inputs = list_audio_inputs()
    except DeviceError as exc:
        lines.append(f"  unavailable: {exc}")
        inputs = None
    if inputs is not None and not inputs:
        lines.append(
            "  none: no sound card or sound server is reachable (start PulseAudio/PipeWire or "
            "check PULSE_SERVER)"
        )
    for d in inputs or []:
        star = "*" if d.is_default else " "
        lines.append(
            f" {star}{d.index:3d}  {d.name}  "
            f"[{d.hostapi}, {d.channels} in, {d.default_samplerate:g} Hz]"
        )
    lines.append("Cameras (use the index with --camera; URLs and files work too):")
    try:
        cams = probe_cameras(max_camera_index)
    except Exception as exc:  # pragma: no cover - OpenCV itself broken
        lines.append(f"  unavailable: {exc}")
        cams = []
    found = [c for c in cams if c.opened]
    for c in found:
        lines.append(f"  {c.index:3d}  {c.width}x{c.height} @ {c.fps:g} fps  [{c.backend}] {c.path}")
    if cams and not found:
        lines.append(f"  none found at indices 0..{max_camera_index}")
    return "\n".join(lines)
