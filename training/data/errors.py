"""Errors raised by the dataset loaders.

Loaders never hide a problem by substituting another sample (the official EZ-VSL / AVGN
``__getitem__`` catches every exception and returns a random other item, which silently changes
the evaluated set): a bad annotation raises :class:`AnnotationError`, a missing media file raises
:class:`FileNotFoundError` naming the path, and an unreadable one raises :class:`MediaError`.
"""

from __future__ import annotations

from os import PathLike

from streamloc.errors import StreamlocError

__all__ = ["AnnotationError", "MediaError"]


class AnnotationError(StreamlocError, ValueError):
    """An annotation file that does not have the layout the parser expects.

    The message names the file, the line or entry, and what was expected. The same facts are
    kept as attributes for programmatic use.
    """

    def __init__(
        self,
        path: str | PathLike[str] | None,
        where: str | None,
        problem: str,
    ) -> None:
        self.path = None if path is None else str(path)
        self.where = where
        self.problem = problem
        parts = [p for p in (self.path, where) if p]
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class MediaError(StreamlocError, RuntimeError):
    """A media file (frame, audio) that exists but cannot be decoded or is empty."""

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
