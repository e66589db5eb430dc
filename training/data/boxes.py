"""Boxes in one canonical form, the policy for bad boxes, and ground-truth masks.

Every parser in :mod:`training.data.annotations` turns its file's box format into a :class:`Box`:
normalised ``x1, y1, x2, y2`` floats (0..1, origin top-left, x to the right), plus the values
exactly as written in the file (``source``) and their format (``source_format``) so that
protocols that use the file's numbers "as coded" stay reproducible.

Source formats (see ``official-impls.md`` §6.5):

* ``"xyxy_norm"`` — VGG-SS JSON (EZ-VSL, AVGN, NoPrior): normalised x1, y1, x2, y2.
* ``"xyxy_px256"`` — Flickr-SoundNet XML: x1, y1, x2, y2 in a 256×256 pixel space.
* ``"xywh_norm"`` — AVGN MUSIC JSON and DSOL ``normbox``: normalised x, y, w, h.

Masks
-----
All official protocols rasterise a normalised coordinate ``v`` at ``size`` pixels by truncation,
``int(v * size)``, and fill the half-open slice ``[y1:y2, x1:x2]``. With canonical boxes this
single rule reproduces, bit for bit at ``size=224``:

* EZ-VSL / AVGN VGG-SS: ``(clip(b, 0, 1) * 224).astype(int)`` (canonical boxes are clipped by
  the ``"clip"`` policy; NoPrior's ``int(224 * max(v, 0))`` gives the same slices).
* EZ-VSL Flickr: ``int(224 * v / 256)`` (dividing by 256 is exact in binary floating point, so
  ``int(224 * (v / 256))`` is the same integer).
* DSOL / NoPrior MUSIC: ``int(y * 224) : int((y + h) * 224)`` (canonical ``y2`` is the float
  ``y + h``).

AVGN's own MUSIC loader misreads x, y, w, h as x1, y1, x2, y2; :func:`avgn_misread_mask`
reproduces that bug for as-coded comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "SOURCE_FORMATS",
    "Box",
    "BoxPolicy",
    "BoxIssue",
    "BoxReport",
    "box_mask",
    "union_mask",
    "flickr_consensus_mask",
    "avgn_misread_mask",
]

SOURCE_FORMATS = ("xyxy_norm", "xyxy_px256", "xywh_norm")


class BoxPolicy(str, Enum):
    """What to do with a corrupt or degenerate box.

    * ``CLIP`` — EZ-VSL behaviour: clip every coordinate to [0, 1] and keep the box, even when it
      becomes (or already was) empty; an empty box adds nothing to a mask.
    * ``DROP`` — remove corrupt and degenerate boxes; an entry left without any box is removed too
      (and listed in :attr:`BoxReport.dropped_entries`).
    * ``ERROR`` — raise :class:`~training.data.AnnotationError` at the first such box.

    Every affected box is listed in the parser's :class:`BoxReport` whatever the policy.
    """

    CLIP = "clip"
    DROP = "drop"
    ERROR = "error"

    @classmethod
    def coerce(cls, value: "BoxPolicy | str") -> "BoxPolicy":
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(p.value) for p in cls)
            raise ValueError(f"unknown box policy {value!r}; use one of {names}") from None


@dataclass(frozen=True)
class Box:
    """One box: canonical normalised corners plus the file's own numbers.

    ``x1, y1, x2, y2`` are after the box policy (clipped under ``"clip"``). ``source`` holds
    the four values as written (ints stay ints), ``source_format`` names their layout (one of
    :data:`SOURCE_FORMATS`). ``category`` is a per-box class id where the file has one (DSOL).
    """

    x1: float
    y1: float
    x2: float
    y2: float
    source: tuple[float, float, float, float]
    source_format: str
    category: int | None = None

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def is_empty(self) -> bool:
        """True when the box covers no area (``x2 <= x1`` or ``y2 <= y1``)."""
        return not (self.x2 > self.x1 and self.y2 > self.y1)

    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def pixel_slices(self, size: int = 224) -> tuple[slice, slice]:
        """Row and column slices of the box at ``size``×``size`` pixels (truncation).

        Coordinates are clamped to [0, size] first, so a box that the ``"clip"`` policy did not
        see (e.g. built by hand) can never index from the end of the array.
        """
        return _slices(self.x1, self.y1, self.x2, self.y2, size)


def _trunc_px(v: float, size: int) -> int:
    return min(max(int(v * size), 0), size) if math.isfinite(v) else (size if v > 0 else 0)


def _slices(x1: float, y1: float, x2: float, y2: float, size: int) -> tuple[slice, slice]:
    return (
        slice(_trunc_px(y1, size), _trunc_px(y2, size)),
        slice(_trunc_px(x1, size), _trunc_px(x2, size)),
    )


def box_mask(box: Box, size: int = 224) -> np.ndarray:
    """Binary float32 mask (size, size) of one box (ones inside the half-open pixel slice)."""
    out = np.zeros((size, size), np.float32)
    rows, cols = box.pixel_slices(size)
    out[rows, cols] = 1.0
    return out


def union_mask(boxes: Iterable[Box], size: int = 224) -> np.ndarray:
    """Binary float32 mask of the union of ``boxes`` (all zeros for no box).

    This is the VGG-SS GT map of EZ-VSL / AVGN / NoPrior and DSOL's per-class map.
    """
    out = np.zeros((size, size), np.float32)
    for box in boxes:
        rows, cols = box.pixel_slices(size)
        out[rows, cols] = 1.0
    return out


def flickr_consensus_mask(annotators: Sequence[Sequence[Box]], size: int = 224) -> np.ndarray:
    """EZ-VSL's Flickr-SoundNet consensus map, float32 in {0, 0.5, 1}.

    Every box of every annotator adds 1 to a count map; the map is halved and values above 1 set
    to 1: 1 where at least two boxes agree, 0.5 where exactly one covers the pixel.
    """
    count = np.zeros((size, size), np.float32)
    for boxes in annotators:
        for box in boxes:
            rows, cols = box.pixel_slices(size)
            count[rows, cols] += 1.0
    count /= 2.0
    np.minimum(count, 1.0, out=count)
    return count


def avgn_misread_mask(box: Box, size: int = 224) -> np.ndarray:
    """AVGN's MUSIC GT map **as coded**: the file's x, y, w, h read as x1, y1, x2, y2.

    AVGN's ``bbox2gtmap`` clips the four numbers to [0, 1], scales by ``size`` and truncates,
    then fills ``[y:h, x:w]``; for most MUSIC boxes ``w < x`` or ``h < y`` and the map is empty
    (``official-impls.md`` §2.7). Use only to reproduce AVGN's published numbers.
    """
    if box.source_format != "xywh_norm":
        raise ValueError(
            f"avgn_misread_mask applies to x,y,w,h boxes (MUSIC JSON); got {box.source_format!r}"
        )
    x, y, w, h = (min(max(float(v), 0.0), 1.0) for v in box.source)
    out = np.zeros((size, size), np.float32)
    rows, cols = _slices(x, y, w, h, size)
    out[rows, cols] = 1.0
    return out


@dataclass(frozen=True)
class BoxIssue:
    """A corrupt and/or degenerate box found while parsing.

    ``corrupt``: a coordinate is not finite or lies outside [0, 1] once normalised
    (e.g. VGG-SS's −2.8823037615171176e16). ``degenerate``: the box as written has
    ``x2 <= x1`` or ``y2 <= y1`` (``w <= 0`` or ``h <= 0`` for x, y, w, h files).
    ``action`` is what the policy did: ``"clipped"``, ``"kept"`` (clip policy, already inside
    [0, 1]) or ``"dropped"``.
    """

    entry: int
    sample_id: str
    box_index: int
    source: tuple[float, ...]
    corrupt: bool
    degenerate: bool
    n_bad_coordinates: int
    action: str


@dataclass(frozen=True)
class BoxReport:
    """Everything a parser found wrong with the boxes of one file, and what it did."""

    path: str | None
    policy: BoxPolicy
    n_entries: int
    n_boxes: int
    issues: tuple[BoxIssue, ...] = ()
    dropped_entries: tuple[str, ...] = field(default=())

    @property
    def corrupt(self) -> tuple[BoxIssue, ...]:
        return tuple(i for i in self.issues if i.corrupt)

    @property
    def degenerate(self) -> tuple[BoxIssue, ...]:
        return tuple(i for i in self.issues if i.degenerate)

    @property
    def n_corrupt_coordinates(self) -> int:
        return sum(i.n_bad_coordinates for i in self.issues)

    @property
    def n_corrupt_boxes(self) -> int:
        return len(self.corrupt)

    @property
    def n_degenerate_boxes(self) -> int:
        return len(self.degenerate)

    @property
    def n_dropped_boxes(self) -> int:
        return sum(1 for i in self.issues if i.action == "dropped")

    @property
    def corrupt_ids(self) -> tuple[str, ...]:
        """Sample ids with at least one corrupt box, in file order, without repeats."""
        return tuple(dict.fromkeys(i.sample_id for i in self.corrupt))

    @property
    def degenerate_ids(self) -> tuple[str, ...]:
        """Sample ids with at least one degenerate box, in file order, without repeats."""
        return tuple(dict.fromkeys(i.sample_id for i in self.degenerate))

    @property
    def ok(self) -> bool:
        return not self.issues

    def summary(self) -> str:
        return (
            f"{self.path or '<annotations>'}: {self.n_entries} entries, {self.n_boxes} boxes; "
            f"{self.n_corrupt_coordinates} corrupt coordinates in {self.n_corrupt_boxes} boxes "
            f"({len(self.corrupt_ids)} samples), {self.n_degenerate_boxes} degenerate boxes "
            f"({len(self.degenerate_ids)} samples); policy {self.policy.value!r}: "
            f"{self.n_dropped_boxes} boxes and {len(self.dropped_entries)} entries dropped"
        )
