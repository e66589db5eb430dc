"""Exceptions raised by streamloc.

Every error says what was wrong and how to fix it; the CLI prints them as one line.
"""

from __future__ import annotations


class StreamlocError(Exception):
    """Base class of every error streamloc raises on purpose."""


class InputError(StreamlocError, ValueError):
    """A frame, an audio window or a parameter that the library cannot use."""


class CheckpointError(StreamlocError):
    """A checkpoint that is missing, corrupt, foreign or does not match the model."""


class DeviceError(StreamlocError):
    """A camera, microphone or media source that cannot be opened or stopped delivering."""


class BackendError(StreamlocError):
    """An inference backend that cannot be loaded on this machine."""
