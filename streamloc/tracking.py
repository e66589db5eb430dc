"""Stable object ids across ticks: match each tick's objects to the previous tracks by object
vector similarity and mask overlap, so a robot can follow "object 2" over time. Pure.

The overlap is that of the objects' reported masks (what a user sees), on a grid subsampled to at
most ``REGION_SIDE`` pixels a side so that it costs microseconds. Not IOI's claimed grid cells:
under the paper's IOI rule a region claims every cell more like its object than like the
background, often most of the frame, so two objects' cells overlap nearly whole while their masks
(heatmap >= threshold) stay apart.

>>> import numpy as np
>>> from streamloc.types import SoundingObject
>>> def obj(v, mask):
...     return SoundingObject(id=0, heatmap=np.zeros((2, 2), np.float32), mask=np.array(mask, bool),
...                           box=None, centroid=None, score=1.0, vector=np.array(v, np.float32))
>>> tracker = ObjectTracker()
>>> [o.id for o in tracker.update([obj([1, 0], [[1, 0], [0, 0]]), obj([0, 1], [[0, 0], [0, 1]])])]
[0, 1]
>>> [o.id for o in tracker.update([obj([0, 1], [[0, 0], [0, 1]])])]
[1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamloc.types import SoundingObject

REGION_SIDE = 64
REGIONS = ("mask", "cells")


def _region(mask: np.ndarray | None) -> np.ndarray | None:
    if mask is None:
        return None
    step = max(1, -(-max(mask.shape[:2]) // REGION_SIDE))
    return np.ascontiguousarray(mask[::step, ::step])


@dataclass
class _Track:
    id: int
    vector: np.ndarray | None
    region: np.ndarray | None
    missed: int = 0


def _cos(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.shape != b.shape:
        return 0.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0


def _iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.shape != b.shape:
        return 0.0
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


class ObjectTracker:
    """Greedy matcher: affinity = w * cos(vectors) + (1 - w) * IoU(regions); pairs above
    `min_affinity` keep the track's id (best pairs first); unmatched objects open new ids; tracks
    unseen for more than `max_missed` ticks are dropped. Regions are the objects' masks,
    subsampled (see the module docstring); ``region="cells"`` uses IOI's claimed grid cells instead
    (where an object has them), the earlier matching — kept for comparison
    (``benchmarks/bench_tracking.py``)."""

    def __init__(self, *, vector_weight: float = 0.5, min_affinity: float = 0.4, max_missed: int = 10,
                 region: str = "mask"):
        if not 0.0 <= vector_weight <= 1.0:
            raise ValueError(f"vector_weight must be in [0, 1], got {vector_weight}")
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
        self.region = region
        self.vector_weight = vector_weight
        self.min_affinity = min_affinity
        self.max_missed = max_missed
        self._tracks: list[_Track] = []
        self._next_id = 0

    def reset(self) -> None:
        self._tracks.clear()
        self._next_id = 0

    def update(self, objects: list[SoundingObject]) -> list[SoundingObject]:
        """Assign ids to `objects` in place and return them."""
        regions = [o.cells if self.region == "cells" and o.cells is not None else _region(o.mask) for o in objects]
        pairs = []
        for i, (o, region) in enumerate(zip(objects, regions)):
            for j, t in enumerate(self._tracks):
                w = self.vector_weight if (o.vector is not None and t.vector is not None) else 0.0
                affinity = w * _cos(o.vector, t.vector) + (1.0 - w) * _iou(region, t.region)
                if affinity >= self.min_affinity:
                    pairs.append((affinity, i, j))
        pairs.sort(key=lambda p: -p[0])
        used_obj, used_track = set(), set()
        for _, i, j in pairs:
            if i in used_obj or j in used_track:
                continue
            used_obj.add(i)
            used_track.add(j)
            track = self._tracks[j]
            objects[i].id = track.id
            track.vector, track.region, track.missed = objects[i].vector, regions[i], 0
        for j, track in enumerate(self._tracks):
            if j not in used_track:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]
        for i, o in enumerate(objects):
            if i not in used_obj:
                o.id = self._next_id
                self._tracks.append(_Track(self._next_id, o.vector, regions[i]))
                self._next_id += 1
        return objects
