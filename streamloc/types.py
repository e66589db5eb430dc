"""Result types: what one tick of localization produces.

Pure data; `TickResult.to_record()` gives the JSON-able form written by the JSONL sink.

>>> import numpy as np
>>> obj = SoundingObject(id=0, heatmap=np.zeros((4, 4), np.float32), mask=np.zeros((4, 4), bool),
...                      box=None, centroid=None, score=0.5)
>>> TickResult(frame_size=(4, 4), sound_map=np.zeros((2, 2), np.float32), objects=[obj]).num_objects
1
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SoundingObject:
    """One sounding object found in a tick.

    Attributes:
        id: object id; stable across ticks when the pipeline tracks objects, else the rank in this tick.
        heatmap: (H, W) float32 in [0, 1] at frame resolution; how strongly each pixel belongs to it.
        mask: (H, W) bool at frame resolution: the object's region (its heatmap >= the Localizer's
            mask_threshold, or the grid cells IOI claimed with object_mask="cells").
        box: (x1, y1, x2, y2) pixel box of the mask (x2, y2 exclusive), or None for an empty mask.
        centroid: (x, y) pixel centroid of the heatmap inside the mask, or None for an empty mask.
        score: sound-association strength in [-1, 1] (mean sound map over the object's cells).
        vector: optional object embedding (for cross-tick matching).
        cells: optional (h, w) bool grid-level region on the model's feature map.
    """

    id: int
    heatmap: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int] | None
    centroid: tuple[float, float] | None
    score: float
    vector: np.ndarray | None = None
    cells: np.ndarray | None = None

    def to_record(self) -> dict:
        """JSON-able summary (no pixel arrays: box, centroid, score, mask area)."""
        return {
            "id": int(self.id),
            "box": None if self.box is None else [int(v) for v in self.box],
            "centroid": None if self.centroid is None else [round(float(v), 2) for v in self.centroid],
            "score": round(float(self.score), 5),
            "area": int(self.mask.sum()),
        }


@dataclass
class TickResult:
    """Everything one tick produced.

    Attributes:
        frame_size: (H, W) of the frame the maps refer to.
        sound_map: (h, w) float32 grid-level sound-associated map (cosine similarity in [-1, 1]).
        objects: the sounding objects, possibly empty (silence, or nothing sounding in view).
        time_ns: reference time of the tick (monotonic ns of the frame), when known.
        audio_window_ns: (t0, t1) monotonic ns of the audio window, when known.
        frame_index: index of the frame in its source, when known.
        timings_ms: per-stage latency in milliseconds.
        flags: conditions of this tick, e.g. {"late", "audio_overflow", "frames_dropped", "silent"}.
    """

    frame_size: tuple[int, int]
    sound_map: np.ndarray
    objects: list[SoundingObject]
    time_ns: int | None = None
    audio_window_ns: tuple[int, int] | None = None
    frame_index: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    def to_record(self) -> dict:
        """The JSON-able record of this tick (one line of the JSONL sink)."""
        return {
            "time_ns": self.time_ns,
            "audio_window_ns": None if self.audio_window_ns is None else list(self.audio_window_ns),
            "frame_index": self.frame_index,
            "frame_size": list(self.frame_size),
            "num_objects": self.num_objects,
            "objects": [o.to_record() for o in self.objects],
            "sound_map_max": round(float(np.max(self.sound_map)), 5) if self.sound_map.size else None,
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings_ms.items()},
            "flags": sorted(self.flags),
        }
