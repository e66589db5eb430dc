"""Evaluate saved predictions under the official protocols and ours: numbers, JSON report, plots.

    python -m training.evaluate PREDICTIONS.npz --protocol ezvsl --protocol streamloc --out DIR

Runs one :class:`training.metrics.Evaluator` per requested protocol (``ezvsl``, ``avgn``,
``noprior``, ``dsol``, ``streamloc``; ``all`` = every one) over every sample, then writes to
``DIR``:

* ``report.json`` — per protocol: its summary numbers, a description, the options used, how many
  samples were evaluated / adapted / skipped and why, the 21-point success curve and, when the
  ground truth has class ids, a per-class table; plus the input's sha256, sample counts and the
  library versions. NaN / infinite numbers are written as ``null`` (strict JSON). ``counts``
  counts the samples given to / kept from the Evaluator; a summary's own ``n_skipped`` (DSOL:
  images without a sounding class) counts samples the Evaluator received but did not score.
* ``success_curve.png`` — success rate vs cIoU threshold, one line per protocol;
* ``per_class.png`` — mean cIoU per class (when class ids exist);
* ``examples_<protocol>.png`` — the best and worst samples: the image (when the file has one)
  with the GT outlined in green, the protocol's binarised prediction in magenta and silent
  objects outlined in blue; without an image, the GT mask and the binarised prediction side by side.

Errors (missing file, malformed file, unknown protocol or option) are printed as one line and
the exit code is 2. :func:`main` takes ``argv`` (and ``prog``) so that ``streamloc eval`` can
delegate to it.

Predictions file (``.npz``, version 1)
--------------------------------------
A zip of ``.npy`` arrays, no object arrays (``np.load(path, allow_pickle=False)`` works);
:func:`save_predictions` writes it byte-for-byte deterministically (fixed zip timestamps), so
the same predictions always have the same sha256. ``N`` samples, ``M`` predicted maps in all,
``G`` GT source masks in all, ``Q`` silent masks in all, ``S`` the GT size (224). Sample ``i``
owns the rows ``X_index[i]:X_index[i + 1]`` of each per-item array (``X_index[0] == 0``,
non-decreasing, last entry = number of rows). Variable-sized 2-D arrays are stored flattened
(row-major) one after another in ``X_data``, with their ``(h, w)`` in ``X_shape``; item ``r``
is ``X_data[o_r : o_r + h_r·w_r].reshape(h_r, w_r)`` with ``o = cumsum`` of the sizes.

================== ================ ===================================================
key                dtype, shape     meaning
================== ================ ===================================================
``format``         str, ()          ``"streamloc-predictions"``
``version``        int64, ()        1
``size``           int64, ()        ``S``, the GT mask size
``map_index``      int64, (N+1,)    sample → its predicted maps (may be none)
``map_shape``      int64, (M, 2)    ``(h, w)`` of each map (any resolution; a map of a
                                    stacked sample covers the ``(k·h, w)`` canvas)
``map_data``       float32, (Σhw,)  the raw predicted maps, flattened
``mask_index``     int64, (N+1,)    sample → its sounding-source GT masks
``masks``          float32, (G,S,S) one mask per sounding source (binary, or Flickr
                                    consensus weights {0, 0.5, 1})
``stacked``        bool, (N,)       the sources are separate images stacked vertically
                                    (NoPrior concatenation; mask ``j`` = piece ``j``)
``num_sources``    int64, (N,)      number of sounding sources (counting); optional,
                                    default: the number of masks
``class_ids``      int64, (G,)      optional: class of each GT source (≥ 0)
``map_class_ids``  int64, (M,)      optional: class each predicted map claims (≥ 0);
                                    enables AVGN's class-prompted slots and DSOL's
                                    class-aware evaluation
``class_names``    str, (C,)        optional: names of the class ids 0..C-1
``silent_index``   int64, (N+1,)    optional: sample → its silent-object masks
``silent_shape``   int64, (Q, 2)    their shapes (``(S, S)``, or ``(k·S, S)`` stacked)
``silent_data``    float32, (Σhw,)  the silent masks, flattened
``sample_ids``     str, (N,)        optional: a name per sample
``image_shape``    int64, (N, 3)    optional: ``(h, w, 3)`` of each sample's RGB image,
                                    ``(0, 0, 3)`` for none
``image_data``     uint8, (Σhw3,)   the RGB images, flattened
================== ================ ===================================================

Adapting the samples to each protocol
-------------------------------------
``noprior`` and ``streamloc`` take any number of maps and stacked canvases as they are (``noprior``
sums a sample's maps for PIAP, so maps of different shapes within a sample are first resized to
the largest with cv2 INTER_CUBIC, its up-sampling, and counted as adapted). The
other protocols were written for a fixed number of maps per image; ``adapt="merge"`` (default)
adapts each sample and counts it under ``adapted`` in the report, ``adapt="skip"`` skips such
samples instead (counted under ``skipped``). Stacked samples are always skipped by ``ezvsl``,
``avgn`` and ``dsol`` (they evaluate single images).

* ``ezvsl`` (exactly one map): several maps are merged by their pixel-wise maximum (resized to
  the largest map with cv2 INTER_LINEAR first); no map becomes a flat all-zero map — which the
  ``≥ median`` rule turns into the whole image.
* ``avgn`` (one class-prompted map per source, slot ``j`` ↔ source ``j``): when the file has
  ``map_class_ids`` and ``class_ids``, slot ``j`` gets the first unused map claiming source
  ``j``'s class; otherwise the maps in list order. A missing slot gets a flat map (the whole
  image after AVGN's normalisation), extra maps are dropped; a sample without sources gets one
  slot (the first map).
* ``dsol``: class-aware when every sample with sources has ``class_ids`` and the file has
  ``map_class_ids`` (option ``class_aware`` forces it on or off): the per-class map list has
  ``C`` entries (class ``c`` = sum of the maps claiming ``c``, all-zero if none; class ``c`` ↔
  cluster ``c``), so every non-sounding class counts for NSA. Class-agnostic otherwise: one map,
  merged as for ``ezvsl`` (an all-zero map binarises to nothing under ``p > t·max p``).

Per-protocol Evaluator options: ``options={"dsol": {"t": 0.2}}`` / ``--option dsol.t=0.2``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from training.metrics import (
    PROTOCOLS,
    Evaluator,
    GroundTruth,
    binarize_median_ge,
    binarize_relmax,
    minmax,
    noprior_binary_pieces,
    thresholds_21,
    upsample,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PROTOCOL_ORDER",
    "PROTOCOL_DESCRIPTIONS",
    "Sample",
    "Predictions",
    "PredictionsFormatError",
    "EvaluationError",
    "predictions_to_arrays",
    "arrays_to_predictions",
    "save_predictions",
    "load_predictions",
    "evaluate",
    "build_parser",
    "main",
]

FORMAT = "streamloc-predictions"
FORMAT_VERSION = 1
REPORT_FORMAT = "streamloc-eval-report"
PROTOCOL_ORDER = ("ezvsl", "avgn", "noprior", "dsol", "streamloc")
assert set(PROTOCOL_ORDER) == set(PROTOCOLS)

PROTOCOL_DESCRIPTIONS = {
    "ezvsl": (
        "EZ-VSL test.py: one map per image; torch bilinear up-sampling (align_corners=True), minmax, "
        "binarised >= the sorted-median element; cIoU against the union of all sources (Flickr consensus "
        "weights kept). ap50 = fraction of cIoU >= 0.5; AUC over the 21 float thresholds 0.05*i."
    ),
    "avgn": (
        "AVGN validate: one class-prompted map per source (slot j <-> source j); torch bicubic up-sampling, "
        "(x + 1/tau)/(2/tau) then minmax, >= median. precision = fraction of cIoU > 0.3 (> 0.1 with two slots), "
        "piap = pixel AP with swapped arguments (as coded), f1@30 with confidence >= 0.5."
    ),
    "noprior": (
        "NoPrior test_step: any number of maps over the (k*h, w) canvas; cv2 cubic up-sampling, > median per "
        "piece then >= 0.5; greedy matching in map order, a taken GT is zeroed; 0 per missing source, a sample "
        "without maps contributes nothing. CAP / PIAP on the binary maps; 'true' = (#maps == k)."
    ),
    "dsol": (
        "DSOL eval.py: class-aware (per sounding class, the maps of its clusters summed) or one class-agnostic "
        "map; cv2 linear up-sampling, binarised p > t*max p (t = 0.5 unless set); success at 0.05*6 and 0.5, "
        "AUC over 0.05*i; NSA = fraction of each non-sounding cluster map <= 0.2."
    ),
    "streamloc": (
        "ours: any number of maps; cv2 linear up-sampling, minmax, >= median per piece; Hungarian matching on "
        "cIoU, 0 for every unmatched source (never dropped); exact thresholds round(0.05*i, 2); CAP on the "
        "continuous maps, PIAP of the mean minmax map, silent suppression, counting accuracy and confusion."
    ),
}

ADAPTATION_NOTES = {
    "ezvsl": "exactly one map: several maps -> pixel-wise max; no map -> flat zero map; stacked samples skipped",
    "avgn": "one slot per source, by claimed class when maps carry class ids, else list order; "
    "missing slot -> flat map; extra maps dropped; stacked samples skipped",
    "noprior": "native (any number of maps, stacked canvases); the maps of one sample are resized to a common "
    "shape (the largest, cv2 cubic) when they differ (its PIAP sums them)",
    "dsol": "class-aware: per-class sum of the maps claiming it (zero map if none); class-agnostic: one "
    "map as for ezvsl; stacked samples skipped",
    "streamloc": "native (any number of maps, stacked canvases)",
}

_REQUIRED_KEYS = ("format", "version", "size", "map_index", "map_shape", "map_data", "mask_index", "masks", "stacked")
_OPTIONAL_KEYS = (
    "num_sources",
    "class_ids",
    "map_class_ids",
    "class_names",
    "silent_index",
    "silent_shape",
    "silent_data",
    "sample_ids",
    "image_shape",
    "image_data",
)
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class PredictionsFormatError(ValueError):
    """The predictions file (or in-memory samples) do not follow the documented layout."""


class EvaluationError(ValueError):
    """A bad request: unknown protocol or option, unusable input."""


# --------------------------------------------------------------------------------------------
# in-memory samples
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One evaluated sample: the predicted maps (raw, any resolution, possibly none), its
    :class:`~training.metrics.GroundTruth`, optionally the class each map claims, an RGB image
    (uint8 ``(h, w, 3)``, used for the example overlays) and a name."""

    maps: Sequence[np.ndarray]
    gt: GroundTruth
    map_class_ids: Sequence[int] | None = None
    image: np.ndarray | None = None
    sample_id: str = ""

    def __post_init__(self) -> None:
        maps = []
        for m in self.maps:
            a = np.asarray(m, dtype=np.float32)
            if a.ndim == 3 and a.shape[0] == 1:
                a = a[0]
            if a.ndim != 2 or a.size == 0:
                raise PredictionsFormatError(
                    f"sample {self.sample_id!r}: each map must be a non-empty 2-D array, got shape {a.shape}"
                )
            maps.append(a)
        self.maps = maps
        if self.map_class_ids is not None:
            self.map_class_ids = [int(c) for c in self.map_class_ids]
            if len(self.map_class_ids) != len(maps):
                raise PredictionsFormatError(f"sample {self.sample_id!r}: map_class_ids needs one entry per map")


@dataclass
class Predictions:
    """A loaded predictions file: the samples, the GT size and the optional class names."""

    samples: list[Sample]
    size: int = 224
    class_names: list[str] | None = None
    path: str | None = None
    sha256: str | None = None
    content_sha256: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)


def _as_sample(item: Any) -> Sample:
    if isinstance(item, Sample):
        return item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], GroundTruth):
        return Sample(maps=item[0], gt=item[1])
    raise EvaluationError(f"expected Sample or (maps, GroundTruth) pairs, got {type(item).__name__}")


# --------------------------------------------------------------------------------------------
# file format
# --------------------------------------------------------------------------------------------


def _index(counts: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


def _flatten(arrays: Sequence[np.ndarray], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    shapes = np.array([a.shape[:2] for a in arrays], dtype=np.int64).reshape(len(arrays), 2)
    data = np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays]) if arrays else np.zeros(0, dtype)
    return shapes, data.astype(dtype, copy=False)


def predictions_to_arrays(
    samples: Iterable[Any], size: int = 224, class_names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of the documented ``.npz`` layout (see the module docstring)."""
    samples = [_as_sample(s) for s in samples]
    size = int(size)
    n = len(samples)
    maps = [m for s in samples for m in s.maps]
    map_shape, map_data = _flatten(maps, np.float32)
    masks = []
    for i, s in enumerate(samples):
        for m in s.gt.masks:
            if m.shape != (size, size):
                raise PredictionsFormatError(f"sample {i}: GT masks must be {size}x{size}, got {m.shape}")
            masks.append(m)
    out: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "size": np.array(size, dtype=np.int64),
        "map_index": _index([len(s.maps) for s in samples]),
        "map_shape": map_shape,
        "map_data": map_data,
        "mask_index": _index([len(s.gt.masks) for s in samples]),
        "masks": (np.stack(masks).astype(np.float32) if masks else np.zeros((0, size, size), np.float32)),
        "stacked": np.array([bool(s.gt.stacked) for s in samples], dtype=bool).reshape(n),
        "num_sources": np.array([int(s.gt.num_sources or 0) for s in samples], dtype=np.int64).reshape(n),
    }
    with_sources = [s for s in samples if len(s.gt.masks)]
    if any(s.gt.class_ids is not None for s in with_sources):
        if any(s.gt.class_ids is None for s in with_sources):
            raise PredictionsFormatError("class_ids must be given for every sample with sources, or for none")
        out["class_ids"] = np.array(
            [int(c) for s in samples for c in (s.gt.class_ids if s.gt.class_ids is not None else [])], dtype=np.int64
        )
    with_maps = [s for s in samples if len(s.maps)]
    if any(s.map_class_ids is not None for s in with_maps):
        if any(s.map_class_ids is None for s in with_maps):
            raise PredictionsFormatError("map_class_ids must be given for every sample with maps, or for none")
        out["map_class_ids"] = np.array([c for s in samples for c in (s.map_class_ids or [])], dtype=np.int64)
    if class_names is not None:
        out["class_names"] = np.array([str(c) for c in class_names], dtype=str).reshape(len(class_names))
    silent = [m for s in samples for m in s.gt.silent_masks]
    if silent:
        out["silent_index"] = _index([len(s.gt.silent_masks) for s in samples])
        out["silent_shape"], out["silent_data"] = _flatten(silent, np.float32)
    if any(s.sample_id for s in samples):
        out["sample_ids"] = np.array([str(s.sample_id) for s in samples], dtype=str).reshape(n)
    if any(s.image is not None for s in samples):
        images = []
        for i, s in enumerate(samples):
            img = np.zeros((0, 0, 3), np.uint8) if s.image is None else np.asarray(s.image)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise PredictionsFormatError(f"sample {i}: image must be uint8 (h, w, 3), got {img.dtype} {img.shape}")
            images.append(img)
        out["image_shape"] = np.array([img.shape for img in images], dtype=np.int64).reshape(n, 3)
        out["image_data"] = (
            np.concatenate([img.ravel() for img in images]) if images else np.zeros(0, np.uint8)
        ).astype(np.uint8)
    for key in ("class_ids", "map_class_ids"):
        if key in out and np.any(out[key] < 0):
            raise PredictionsFormatError(f"{key} must be >= 0")
    return out


def _write_npz(dest: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """A deflated ``.npz`` with fixed timestamps (same arrays → same bytes)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arrays[key]), allow_pickle=False)


def save_predictions(
    path: str | os.PathLike,
    samples: Iterable[Any] | Predictions,
    size: int = 224,
    class_names: Sequence[str] | None = None,
) -> str:
    """Write ``samples`` (:class:`Sample` objects or ``(maps, GroundTruth)`` pairs) in the
    documented layout; returns the file's sha256."""
    if isinstance(samples, Predictions):
        size, class_names, samples = samples.size, samples.class_names, samples.samples
    arrays = predictions_to_arrays(samples, size=size, class_names=class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        _write_npz(f, arrays)
    os.replace(tmp, path)
    return _file_sha256(path)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _content_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of the arrays themselves (names, dtypes, shapes, bytes), independent of the zip."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _check_index(arrays: Mapping[str, np.ndarray], key: str, n: int, rows: int) -> np.ndarray:
    idx = arrays[key]
    if idx.ndim != 1 or idx.shape[0] != n + 1 or not np.issubdtype(idx.dtype, np.integer):
        raise PredictionsFormatError(
            f"{key} must be an integer array of length N+1 = {n + 1}, got {idx.dtype} {idx.shape}"
        )
    if idx[0] != 0 or np.any(np.diff(idx) < 0) or idx[-1] != rows:
        raise PredictionsFormatError(f"{key} must start at 0, be non-decreasing and end at {rows}")
    return idx.astype(np.int64)


def _check_shapes(
    arrays: Mapping[str, np.ndarray], shape_key: str, data_key: str, ncols: int
) -> tuple[np.ndarray, np.ndarray]:
    shapes, data = arrays[shape_key], arrays[data_key]
    ok = shapes.ndim == 2 and shapes.shape[1] == ncols and np.issubdtype(shapes.dtype, np.integer)
    if not ok or np.any(shapes < 0):
        raise PredictionsFormatError(
            f"{shape_key} must be a non-negative integer array (rows, {ncols}), got {shapes.dtype} {shapes.shape}"
        )
    if data.ndim != 1:
        raise PredictionsFormatError(f"{data_key} must be 1-D, got shape {data.shape}")
    sizes = np.prod(shapes, axis=1).astype(np.int64)
    offsets = _index(sizes)
    if offsets[-1] != data.shape[0]:
        raise PredictionsFormatError(
            f"{data_key} holds {data.shape[0]} values but {shape_key} describes {int(offsets[-1])}"
        )
    return shapes.astype(np.int64), offsets


def _scalar(arrays: Mapping[str, np.ndarray], key: str) -> Any:
    a = arrays[key]
    if a.ndim != 0:
        raise PredictionsFormatError(f"{key} must be a scalar, got shape {a.shape}")
    return a[()]


def arrays_to_predictions(arrays: Mapping[str, np.ndarray]) -> Predictions:
    """Validate the documented layout and rebuild the samples."""
    missing = [k for k in _REQUIRED_KEYS if k not in arrays]
    if missing:
        raise PredictionsFormatError(f"missing arrays {missing}")
    unknown = sorted(set(arrays) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    fmt = str(_scalar(arrays, "format"))
    if fmt != FORMAT:
        raise PredictionsFormatError(f"format is {fmt!r}, expected {FORMAT!r}")
    version = int(_scalar(arrays, "version"))
    if version != FORMAT_VERSION:
        raise PredictionsFormatError(f"unsupported version {version} (this reader knows {FORMAT_VERSION})")
    size = int(_scalar(arrays, "size"))
    if size <= 0:
        raise PredictionsFormatError(f"size must be positive, got {size}")
    stacked = arrays["stacked"]
    if stacked.ndim != 1 or stacked.dtype != bool:
        raise PredictionsFormatError(f"stacked must be a 1-D bool array, got {stacked.dtype} {stacked.shape}")
    n = stacked.shape[0]
    map_shape, map_off = _check_shapes(arrays, "map_shape", "map_data", 2)
    if np.any(map_shape == 0):
        raise PredictionsFormatError("map_shape has an empty map")
    map_index = _check_index(arrays, "map_index", n, map_shape.shape[0])
    map_data = np.asarray(arrays["map_data"], dtype=np.float32)
    if not np.all(np.isfinite(map_data)):
        raise PredictionsFormatError("map_data holds NaN or infinite values")
    masks = arrays["masks"]
    if masks.ndim != 3 or masks.shape[1:] != (size, size):
        raise PredictionsFormatError(f"masks must have shape (G, {size}, {size}), got {masks.shape}")
    if not np.all(np.isfinite(masks)):
        raise PredictionsFormatError("masks hold NaN or infinite values")
    mask_index = _check_index(arrays, "mask_index", n, masks.shape[0])

    def per_item(key: str, rows: int) -> np.ndarray | None:
        if key not in arrays:
            return None
        a = arrays[key]
        if a.ndim != 1 or a.shape[0] != rows or not np.issubdtype(a.dtype, np.integer):
            raise PredictionsFormatError(f"{key} must be an integer array of length {rows}, got {a.dtype} {a.shape}")
        if np.any(a < 0):
            raise PredictionsFormatError(f"{key} must be >= 0")
        return a.astype(np.int64)

    num_sources = per_item("num_sources", n)
    class_ids = per_item("class_ids", masks.shape[0])
    map_class_ids = per_item("map_class_ids", map_shape.shape[0])
    class_names = None
    if "class_names" in arrays:
        cn = arrays["class_names"]
        if cn.ndim != 1 or cn.dtype.kind != "U":
            raise PredictionsFormatError(f"class_names must be a 1-D str array, got {cn.dtype} {cn.shape}")
        class_names = [str(c) for c in cn]
    silent = None
    if any(k in arrays for k in ("silent_index", "silent_shape", "silent_data")):
        if not all(k in arrays for k in ("silent_index", "silent_shape", "silent_data")):
            raise PredictionsFormatError("silent_index, silent_shape and silent_data go together")
        s_shape, s_off = _check_shapes(arrays, "silent_shape", "silent_data", 2)
        s_index = _check_index(arrays, "silent_index", n, s_shape.shape[0])
        silent = (s_index, s_shape, s_off, np.asarray(arrays["silent_data"], dtype=np.float32))
    sample_ids = None
    if "sample_ids" in arrays:
        sid = arrays["sample_ids"]
        if sid.ndim != 1 or sid.shape[0] != n or sid.dtype.kind != "U":
            raise PredictionsFormatError(f"sample_ids must be a str array of length {n}, got {sid.dtype} {sid.shape}")
        sample_ids = [str(s) for s in sid]
    images = None
    if "image_shape" in arrays or "image_data" in arrays:
        if not ("image_shape" in arrays and "image_data" in arrays):
            raise PredictionsFormatError("image_shape and image_data go together")
        i_shape, i_off = _check_shapes(arrays, "image_shape", "image_data", 3)
        if i_shape.shape[0] != n or np.any((i_shape[:, 2] != 3) & (np.prod(i_shape, axis=1) > 0)):
            raise PredictionsFormatError(f"image_shape must hold N = {n} rows (h, w, 3)")
        if arrays["image_data"].dtype != np.uint8:
            raise PredictionsFormatError("image_data must be uint8")
        images = (i_shape, i_off, arrays["image_data"])

    samples = []
    for i in range(n):
        a, b = map_index[i], map_index[i + 1]
        maps = [map_data[map_off[r] : map_off[r + 1]].reshape(map_shape[r]) for r in range(a, b)]
        ga, gb = mask_index[i], mask_index[i + 1]
        silent_masks: list[np.ndarray] = []
        if silent is not None:
            s_index, s_shape, s_off, s_data = silent
            rows = range(s_index[i], s_index[i + 1])
            silent_masks = [s_data[s_off[r] : s_off[r + 1]].reshape(s_shape[r]) for r in rows]
        try:
            gt = GroundTruth(
                masks=list(masks[ga:gb]),
                class_ids=None if class_ids is None else class_ids[ga:gb].tolist(),
                silent_masks=silent_masks,
                num_sources=None if num_sources is None else int(num_sources[i]),
                stacked=bool(stacked[i]),
            )
        except ValueError as exc:
            raise PredictionsFormatError(f"sample {i}: {exc}") from None
        image = None
        if images is not None:
            i_shape, i_off, i_data = images
            if i_shape[i].prod() > 0:
                image = i_data[i_off[i] : i_off[i + 1]].reshape(i_shape[i])
        samples.append(
            Sample(
                maps=maps,
                gt=gt,
                map_class_ids=None if map_class_ids is None else map_class_ids[a:b].tolist(),
                image=image,
                sample_id=sample_ids[i] if sample_ids else "",
            )
        )
    extras = {"unknown_keys": unknown} if unknown else {}
    return Predictions(
        samples=samples, size=size, class_names=class_names, content_sha256=_content_sha256(arrays), extras=extras
    )


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Read and validate a predictions ``.npz`` (``allow_pickle=False``). Raises
    :class:`FileNotFoundError` or :class:`PredictionsFormatError` with a one-line message."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"predictions file not found: {p}")
    try:
        npz = np.load(p, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise PredictionsFormatError("not an .npz archive (a single .npy array?)")
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except PredictionsFormatError as exc:
        raise PredictionsFormatError(f"{p}: {exc}") from None
    except Exception as exc:  # zip / npy / pickle errors: all mean "not our format"
        raise PredictionsFormatError(f"{p}: not a readable .npz ({type(exc).__name__}: {_one_line(exc)})") from None
    try:
        preds = arrays_to_predictions(arrays)
    except PredictionsFormatError as exc:
        raise PredictionsFormatError(f"{p}: {exc}") from None
    preds.path = str(p)
    preds.sha256 = _file_sha256(p)
    return preds


# --------------------------------------------------------------------------------------------
# adapting samples to each protocol
# --------------------------------------------------------------------------------------------


def _resize(m: np.ndarray, shape: tuple[int, int], method: str) -> np.ndarray:
    a = np.asarray(m, dtype=np.float32)
    return a if a.shape == tuple(shape) else upsample(a, shape, method)


def _merge_max(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Pixel-wise max of the maps, resized (cv2 INTER_LINEAR) to the largest one first."""
    if len(maps) == 1:
        return maps[0]
    shape = max((m.shape for m in maps), key=lambda s: (s[0] * s[1], s))
    return np.max(np.stack([_resize(m, shape, "cv2_linear") for m in maps]), axis=0)


def _merge_sum(maps: Sequence[np.ndarray]) -> np.ndarray:
    if len(maps) == 1:
        return maps[0]
    shape = max((m.shape for m in maps), key=lambda s: (s[0] * s[1], s))
    return np.sum(np.stack([_resize(m, shape, "cv2_linear") for m in maps]), axis=0)


@dataclass
class _Context:
    size: int
    adapt: str
    dsol_class_aware: bool
    num_classes: int


def _prepare(protocol: str, sample: Sample, ctx: _Context) -> tuple[list[np.ndarray] | None, str | None]:
    """``(maps for the Evaluator, adaptation note)``; ``(None, reason)`` to skip the sample."""
    maps = list(sample.maps)
    gt = sample.gt
    s = ctx.size
    flat = np.zeros((s, s), np.float32)
    if protocol == "streamloc":
        return maps, None
    if protocol == "noprior":  # its PIAP sums the maps: they must share one shape
        if len({m.shape for m in maps}) > 1:
            if ctx.adapt == "skip":
                return None, "maps of different shapes"
            shape = max((m.shape for m in maps), key=lambda t: (t[0] * t[1], t))
            return [_resize(m, shape, "cv2_cubic") for m in maps], "maps of different shapes -> resized to the largest"
        return maps, None
    if gt.stacked:
        return None, "stacked sample (single-image protocol)"
    if protocol == "dsol" and ctx.dsol_class_aware:
        by_class: dict[int, list[np.ndarray]] = {}
        for m, c in zip(maps, sample.map_class_ids or []):
            by_class.setdefault(int(c), []).append(m)
        return [_merge_sum(by_class[c]) if c in by_class else flat for c in range(ctx.num_classes)], None
    if protocol in ("ezvsl", "dsol"):
        if len(maps) == 1:
            return maps, None
        if ctx.adapt == "skip":
            return None, "no map" if not maps else "several maps"
        if not maps:
            return [flat], "no map -> flat zero map"
        return [_merge_max(maps)], "several maps -> pixel-wise max"
    # avgn
    n_src = len(gt.masks)
    need = max(1, n_src)
    if n_src and gt.class_ids is not None and sample.map_class_ids is not None:
        unused = list(range(len(maps)))
        slots: list[np.ndarray | None] = []
        for c in gt.class_ids:
            hit = next((r for r in unused if sample.map_class_ids[r] == int(c)), None)
            if hit is not None:
                unused.remove(hit)
            slots.append(None if hit is None else maps[hit])
        dropped = len(unused)
    else:
        slots = list(maps[:need]) + [None] * max(0, need - len(maps))
        dropped = max(0, len(maps) - need)
    missing = sum(x is None for x in slots)
    notes = []
    if missing:
        notes.append("missing slot -> flat map")
    if dropped:
        notes.append("extra maps dropped")
    if notes and ctx.adapt == "skip":
        return None, "map count or classes do not fit the slots"
    return [flat if x is None else x for x in slots], "; ".join(notes) or None


def _record_cious(protocol: str, rec: Mapping[str, Any]) -> list[float]:
    v = rec.get("ciou")
    if v is None:
        return []
    if np.isscalar(v):
        return [float(v)]  # type: ignore[arg-type]
    return [float(x) for x in v]


# --------------------------------------------------------------------------------------------
# binarised predictions as each protocol sees them (for the example overlays)
# --------------------------------------------------------------------------------------------


def _gt_canvas(gt: GroundTruth, size: int) -> np.ndarray:
    if gt.stacked and gt.masks:
        return np.concatenate(gt.masks, axis=0)
    if not gt.masks:
        return np.zeros((size, size))
    return np.max(np.stack(gt.masks), axis=0)


def _display_binary(protocol: str, maps: list[np.ndarray], sample: Sample, ev: Evaluator) -> np.ndarray:
    """Union over the maps of the protocol's binarised prediction, on the GT canvas."""
    gt, s, method = sample.gt, ev.size, ev.method
    k = max(1, len(gt.masks)) if gt.stacked else 1
    canvas = (k * s, s)
    out = np.zeros(canvas, dtype=bool)
    if protocol == "ezvsl":
        return binarize_median_ge(_resize(maps[0], canvas, method))
    if protocol == "avgn":
        for m in maps:
            sc = (_resize(m, canvas, method) + 1.0 / ev.tau) / (2.0 / ev.tau)
            out |= binarize_median_ge(minmax(sc))
        return out
    if protocol == "noprior":
        for m in maps:
            out |= np.concatenate(noprior_binary_pieces(m, k, s, method), axis=0) >= 0.5
        return out
    if protocol == "dsol":
        if ev.cluster_of_class is None:
            return binarize_relmax(_resize(maps[0], canvas, method), ev.t)
        for c in set(int(c) for c in (gt.class_ids or [])):
            out |= binarize_relmax(_resize(maps[c], canvas, method), ev.t)
        return out
    for m in maps:  # streamloc
        pieces = np.split(_resize(m, canvas, method), k, axis=0)
        out |= np.concatenate([binarize_median_ge(p) for p in pieces], axis=0)
    return out


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in (
        ("streamloc", "streamloc"),
        ("numpy", "numpy"),
        ("scipy", "scipy"),
        ("torch", "torch"),
        ("opencv", "opencv-python"),
        ("matplotlib", "matplotlib"),
        ("tqdm", "tqdm"),
    ):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["streamloc"] is None:
        try:
            import streamloc

            out["streamloc"] = streamloc.__version__
        except Exception:  # pragma: no cover
            pass
    return out


def _normalize_protocols(protocols: str | Iterable[str] | None) -> list[str]:
    if protocols is None:
        return ["streamloc"]
    if isinstance(protocols, str):
        protocols = [protocols]
    names: list[str] = []
    for item in protocols:
        for name in str(item).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name == "all":
                names.extend(PROTOCOL_ORDER)
            elif name not in PROTOCOLS:
                raise EvaluationError(f"unknown protocol {name!r}; use one of: {', '.join(PROTOCOL_ORDER)}, all")
            else:
                names.append(name)
    if not names:
        raise EvaluationError("no protocol requested")
    return list(dict.fromkeys(names))


def _load_source(source: Any) -> Predictions:
    if isinstance(source, Predictions):
        preds = source
    elif isinstance(source, (str, os.PathLike)):
        return load_predictions(source)
    else:
        samples = [_as_sample(s) for s in source]
        shapes = [m.shape for s in samples for m in s.gt.masks]
        preds = Predictions(samples=samples, size=int(shapes[0][0]) if shapes else 224)
    if preds.content_sha256 is None:
        arrays = predictions_to_arrays(preds.samples, size=preds.size, class_names=preds.class_names)
        preds.content_sha256 = _content_sha256(arrays)
        buf = io.BytesIO()
        _write_npz(buf, arrays)
        preds.sha256 = hashlib.sha256(buf.getvalue()).hexdigest()  # = what save_predictions would write
    return preds


def _success_curve(protocol: str, entries: Sequence[float]) -> dict[str, Any]:
    exact = protocol == "streamloc"
    thr = thresholds_21(exact=exact)
    c = np.asarray(entries, dtype=np.float64)
    if c.size == 0:
        y = np.full(thr.size, np.nan)
    elif protocol == "avgn":
        y = np.array([np.mean(c > t) for t in thr])
    else:
        y = np.array([np.mean(c >= t) for t in thr])
    area = float(np.sum(np.diff(thr) * (y[1:] + y[:-1]) / 2.0)) if c.size else float("nan")
    return {
        "thresholds": thr.tolist(),
        "success": y.tolist(),
        "rule": (
            "cIoU > thr (AVGN precision rule; slots of samples with sources pooled)"
            if protocol == "avgn"
            else "cIoU >= thr"
        ),
        "thresholds_rule": "round(0.05*i, 2)" if exact else "float 0.05*i",
        "area": area,
        "n_entries": int(c.size),
    }


def _per_class(protocol: str, records: list[tuple[int, dict]], samples: list[Sample], class_names: list[str] | None):
    """Per-source cIoU per class, for the protocols that score each source separately."""
    if protocol not in ("streamloc", "avgn"):
        return None
    vals: dict[int, list[float]] = {}
    for i, rec in records:
        gt = samples[i].gt
        if gt.class_ids is None:
            continue
        cious = _record_cious(protocol, rec)
        for j, c in enumerate(gt.class_ids):
            if j < len(cious):
                vals.setdefault(int(c), []).append(cious[j])
    if not vals:
        return None
    strict = protocol == "avgn"
    table = []
    for c in sorted(vals):
        v = np.asarray(vals[c], dtype=np.float64)
        table.append(
            {
                "class_id": c,
                "class_name": class_names[c] if class_names and c < len(class_names) else str(c),
                "n_sources": int(v.size),
                "mean_ciou": float(np.nanmean(v)) if np.any(~np.isnan(v)) else float("nan"),
                "success@0.3": float(np.mean(v > 0.3) if strict else np.mean(v >= 0.3)),
                "success@0.5": float(np.mean(v > 0.5) if strict else np.mean(v >= 0.5)),
            }
        )
    return table


def evaluate(
    source: str | os.PathLike | Predictions | Iterable[Any],
    protocols: str | Iterable[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    plots: bool = True,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    adapt: str = "merge",
    progress: bool = True,
    n_examples: int = 3,
    per_sample: bool = False,
) -> dict[str, Any]:
    """Evaluate predictions under each requested protocol; returns the report (a JSON-ready dict).

    ``source``: a predictions ``.npz`` path, a :class:`Predictions`, or an iterable of
    :class:`Sample` / ``(maps, GroundTruth)`` pairs (GT size: that of the first mask). ``protocols``: names (or a
    comma-separated string; ``"all"``), default ``["streamloc"]``. ``out_dir``: where
    ``report.json`` and the plots go (nothing is written when ``None``). ``options``: per-protocol
    :class:`~training.metrics.Evaluator` options (plus ``class_aware`` for ``dsol``). ``adapt``:
    ``"merge"`` or ``"skip"`` (module docstring). ``per_sample``: also report each sample's cIoU
    entries (``null`` when skipped).

    The summary numbers are exactly ``Evaluator.summary()`` after adding the adapted samples.
    """
    from tqdm import tqdm

    if adapt not in ("merge", "skip"):
        raise EvaluationError(f"unknown adapt policy {adapt!r}; use 'merge' or 'skip'")
    names = _normalize_protocols(protocols)
    options = {str(k): dict(v) for k, v in (options or {}).items()}
    for key in options:
        if key not in PROTOCOLS:
            raise EvaluationError(
                f"options given for unknown protocol {key!r}; use one of: {', '.join(PROTOCOL_ORDER)}"
            )
        if key not in names:
            raise EvaluationError(f"options given for protocol {key!r}, which is not requested ({', '.join(names)})")
    preds = _load_source(source)
    samples, size = preds.samples, preds.size
    if not samples:
        raise EvaluationError("no samples to evaluate")

    has_gt_classes = any(s.gt.class_ids is not None for s in samples)
    has_map_classes = any(s.map_class_ids is not None for s in samples)
    all_ids = [int(c) for s in samples for c in list(s.gt.class_ids or []) + list(s.map_class_ids or [])]
    num_classes = max(len(preds.class_names or []), 1 + max(all_ids, default=-1))
    class_aware_possible = (
        has_map_classes
        and all(s.gt.class_ids is not None for s in samples if s.gt.masks)
        and all(s.map_class_ids is not None for s in samples if s.maps)
    )

    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": 1,
        "input": {
            "path": preds.path,
            "sha256": preds.sha256,
            "content_sha256": preds.content_sha256,
            "size": size,
            "n_samples": len(samples),
            "n_maps": sum(len(s.maps) for s in samples),
            "n_sources": sum(len(s.gt.masks) for s in samples),
            "n_silent_masks": sum(len(s.gt.silent_masks) for s in samples),
            "n_stacked": sum(bool(s.gt.stacked) for s in samples),
            "maps_per_sample": {str(k): v for k, v in sorted(Counter(len(s.maps) for s in samples).items())},
            "sources_per_sample": {str(k): v for k, v in sorted(Counter(len(s.gt.masks) for s in samples).items())},
            "has_class_ids": has_gt_classes,
            "has_map_class_ids": has_map_classes,
            "num_classes": num_classes if (has_gt_classes or has_map_classes) else 0,
            "class_names": preds.class_names,
            "has_images": any(s.image is not None for s in samples),
        },
        "adapt": adapt,
        "protocols": {},
        "plots": [],
        "versions": _versions(),
    }
    if preds.extras.get("unknown_keys"):
        report["input"]["ignored_keys"] = preds.extras["unknown_keys"]

    kept: dict[str, dict[str, Any]] = {}
    for protocol in names:
        opts = dict(options.get(protocol, {}))
        class_aware = False
        if protocol == "dsol":
            if "cluster_of_class" in opts:
                raise EvaluationError("dsol option cluster_of_class is set by evaluate (class c <-> cluster c)")
            want = opts.pop("class_aware", None)
            if want and not class_aware_possible:
                raise EvaluationError(
                    "dsol class_aware needs class_ids for every sample with sources and map_class_ids"
                )
            class_aware = class_aware_possible if want is None else bool(want)
            if class_aware:
                opts["cluster_of_class"] = list(range(num_classes))
        try:
            ev = Evaluator(protocol, size=size, **opts)
        except (TypeError, ValueError) as exc:
            raise EvaluationError(f"{protocol}: {_one_line(exc)}") from None
        ctx = _Context(size=size, adapt=adapt, dsol_class_aware=class_aware, num_classes=num_classes)
        skipped: Counter[str] = Counter()
        adapted: Counter[str] = Counter()
        records: list[tuple[int, dict]] = []
        used_maps: dict[int, list[np.ndarray]] = {}
        per: list[Any] = [None] * len(samples)
        bar = tqdm(samples, desc=f"eval {protocol}", unit="sample", disable=not progress, leave=False)
        for i, sample in enumerate(bar):
            maps, note = _prepare(protocol, sample, ctx)
            if maps is None:
                skipped[note or "skipped"] += 1
                continue
            if note:
                adapted[note] += 1
            gt = sample.gt
            if class_aware and gt.class_ids is None and not gt.masks:  # nothing sounds: no classes
                gt = dataclasses.replace(gt, class_ids=[])
            try:
                rec = ev.add(maps, gt)
            except ValueError as exc:
                name = f" ({sample.sample_id})" if sample.sample_id else ""
                raise EvaluationError(f"{protocol}: sample {i}{name}: {_one_line(exc)}") from None
            records.append((i, rec))
            used_maps[i] = maps
            per[i] = _record_cious(protocol, rec)
        summary = ev.summary()
        entries = [
            c
            for i, rec in records
            if not (protocol == "avgn" and not samples[i].gt.masks)  # AVGN scores only samples with objects
            for c in _record_cious(protocol, rec)
        ]
        shown_opts = {k: v for k, v in opts.items() if k != "cluster_of_class"}
        entry: dict[str, Any] = {
            "description": PROTOCOL_DESCRIPTIONS[protocol],
            "adaptation": ADAPTATION_NOTES[protocol],
            "options": {
                "upsample": ev.method,
                **shown_opts,
                **({"class_aware": class_aware} if protocol == "dsol" else {}),
            },
            "summary": summary,
            "counts": {
                "evaluated": len(records),
                "skipped": sum(skipped.values()),
                "skipped_reasons": dict(sorted(skipped.items())),
                "adapted": sum(adapted.values()),
                "adapted_reasons": dict(sorted(adapted.items())),
            },
            "curve": _success_curve(protocol, entries),
        }
        table = _per_class(protocol, records, samples, preds.class_names) if has_gt_classes else None
        if table is not None:
            entry["per_class"] = table
        elif has_gt_classes:
            entry["per_class_note"] = "no per-source attribution: this protocol scores unions / per-image means"
        if per_sample:
            entry["per_sample"] = per
        report["protocols"][protocol] = entry
        kept[protocol] = {"ev": ev, "records": records, "maps": used_maps}

    report = _jsonable(report)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            report["plots"] = _write_plots(report, kept, samples, out, n_examples)
        (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------

_DPI = 80
_COLORS = {"ezvsl": "#1f77b4", "avgn": "#ff7f0e", "noprior": "#2ca02c", "dsol": "#d62728", "streamloc": "#111111"}


def _figure(figsize: tuple[float, float]):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    return Figure(figsize=figsize, dpi=_DPI)


def _write_plots(report: dict, kept: dict, samples: list[Sample], out: Path, n_examples: int) -> list[str]:
    written = []
    fig = _figure((6.4, 4.2))
    ax = fig.subplots()
    for protocol, entry in report["protocols"].items():
        curve = entry["curve"]
        if not curve["n_entries"]:
            continue
        auc = curve["area"]
        ax.plot(
            curve["thresholds"],
            curve["success"],
            marker="o",
            ms=3,
            lw=1.5,
            color=_COLORS.get(protocol),
            label=f"{protocol} (area {auc:.3f}, n={curve['n_entries']})",
        )
    ax.set_xlabel("cIoU threshold")
    ax.set_ylabel("success rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("success rate vs cIoU threshold (21 points)")
    if ax.lines:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "success_curve.png", dpi=_DPI)
    written.append("success_curve.png")

    tables = {p: e["per_class"] for p, e in report["protocols"].items() if e.get("per_class")}
    if tables:
        classes = sorted({(r["class_id"], r["class_name"]) for t in tables.values() for r in t})
        pos = {c: k for k, (c, _) in enumerate(classes)}
        width = 0.8 / len(tables)
        fig = _figure((max(4.5, 0.9 * len(classes) + 2.0), 3.4))
        ax = fig.subplots()
        for k, (protocol, table) in enumerate(tables.items()):
            xs = [pos[r["class_id"]] + (k - (len(tables) - 1) / 2) * width for r in table]
            ys = [r["mean_ciou"] if r["mean_ciou"] is not None else 0.0 for r in table]
            ax.bar(xs, ys, width=width, color=_COLORS.get(protocol), label=protocol)
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels([name for _, name in classes], rotation=30 if len(classes) > 6 else 0, fontsize=8)
        ax.set_ylabel("mean cIoU per source")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("per-class localisation")
        fig.tight_layout()
        fig.savefig(out / "per_class.png", dpi=_DPI)
        written.append("per_class.png")

    if n_examples > 0:
        for protocol, state in kept.items():
            name = _plot_examples(protocol, state, samples, out, n_examples)
            if name:
                written.append(name)
    return written


def _outline(mask: np.ndarray, width: int | None = None) -> np.ndarray:
    import cv2

    m = (mask > 0).astype(np.uint8)
    if width is None:  # ~3 px at 224, 1 px on small test canvases
        width = max(1, round(min(m.shape) / 75))
    k = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return (cv2.dilate(m, k) - m) > 0 if width else m > 0


def _panel_image(sample: Sample, canvas: tuple[int, int], gt: np.ndarray, pred: np.ndarray | None) -> np.ndarray:
    import cv2

    if sample.image is not None:
        img = sample.image
        if img.shape[:2] != canvas:
            img = cv2.resize(img, (canvas[1], canvas[0]), interpolation=cv2.INTER_AREA)
        rgb = img.astype(np.float32) / 255.0
    else:
        rgb = np.repeat((0.15 + 0.5 * np.clip(gt, 0, 1))[..., None], 3, axis=2).astype(np.float32)
    if pred is not None:
        rgb = np.where(pred[..., None], 0.45 * rgb + 0.55 * np.array([1.0, 0.0, 1.0]), rgb)
    for sm in sample.gt.silent_masks:
        if sm.shape == canvas:
            rgb[_outline(sm)] = (0.2, 0.5, 1.0)
    rgb[_outline(gt)] = (0.1, 1.0, 0.2)
    return np.clip(rgb, 0, 1)


def _plot_examples(protocol: str, state: dict, samples: list[Sample], out: Path, n_examples: int) -> str | None:
    scored = []
    for i, rec in state["records"]:
        c = np.nan_to_num(np.asarray(_record_cious(protocol, rec), dtype=np.float64))
        if c.size:
            scored.append((float(c.mean()), i))
    if not scored:
        return None
    scored.sort(key=lambda t: (t[0], t[1]))
    k = min(n_examples, max(1, len(scored) // 2))
    rows = [("best", scored[::-1][:k]), ("worst", scored[:k])]
    with_image = any(samples[i].image is not None for _, group in rows for _, i in group)
    per = 1 if with_image else 2
    ev = state["ev"]
    fig = _figure((1.7 * per * k + 0.3, 2 * 2.0 + 0.3))
    axes = fig.subplots(2, per * k, squeeze=False)
    for r, (label, group) in enumerate(rows):
        for e in range(k):
            for q in range(per):
                axes[r][e * per + q].axis("off")
            if e >= len(group):
                continue
            score, i = group[e]
            sample = samples[i]
            gt = _gt_canvas(sample.gt, ev.size)
            pred = _display_binary(protocol, state["maps"][i], sample, ev)
            if pred.shape != gt.shape:  # e.g. a sample without sources under a stacked layout
                gt = np.zeros(pred.shape)
            name = sample.sample_id or f"#{i}"
            if with_image:
                ax = axes[r][e]
                ax.imshow(_panel_image(sample, gt.shape, gt, pred))
                ax.set_title(f"{label} {name}\ncIoU {score:.2f}", fontsize=7)
            else:
                axes[r][e * 2].imshow(_panel_image(sample, gt.shape, gt, None))
                axes[r][e * 2].set_title(f"{label} {name}: GT", fontsize=7)
                axes[r][e * 2 + 1].imshow(_panel_image(sample, gt.shape, gt, pred))
                axes[r][e * 2 + 1].set_title(f"pred, cIoU {score:.2f}", fontsize=7)
    fig.suptitle(
        f"{protocol}: best (top) / worst (bottom) samples\n"
        "green: GT outline, magenta: binarised prediction, blue: silent object",
        fontsize=8,
    )
    fig.tight_layout()
    name = f"examples_{protocol}.png"
    fig.savefig(out / name, dpi=_DPI)
    return name


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise _UsageError(message)


def _parse_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        protocol, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise EvaluationError(f"option {pair!r} must look like PROTOCOL.KEY=VALUE (e.g. dsol.t=0.2)")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(protocol.strip().lower(), {})[name.strip()] = parsed
    return out


def build_parser(prog: str = "python -m training.evaluate") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions", help="predictions .npz (layout: python -c 'import training.evaluate as e; help(e)')")
    p.add_argument(
        "--protocol",
        action="append",
        default=[],
        metavar="NAME",
        help=f"{', '.join(PROTOCOL_ORDER)} or all; repeat or comma-separate (default: streamloc)",
    )
    p.add_argument("--out", default=None, help="output folder for report.json and the plots (default: print only)")
    p.add_argument(
        "--option", action="append", default=[], metavar="PROTOCOL.KEY=VALUE", help="Evaluator option, e.g. dsol.t=0.2"
    )
    p.add_argument(
        "--adapt", default="merge", help="merge (default) or skip: samples that do not fit a protocol's map count"
    )
    p.add_argument("--examples", type=int, default=3, help="best / worst examples per protocol plot (0: none)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--per-sample", action="store_true", help="add each sample's cIoU entries to report.json")
    p.add_argument("--no-progress", action="store_true")
    return p


def _format_summary(report: dict) -> str:
    lines = [f"{report['input']['n_samples']} samples ({report['input']['path'] or 'in memory'})"]
    for protocol, entry in report["protocols"].items():
        s = entry["summary"]
        parts = []
        for k, v in s.items():
            if k in ("protocol",) or isinstance(v, (list, dict)):
                continue
            parts.append(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}")
        c = entry["counts"]
        extra = f" [adapted {c['adapted']}, skipped {c['skipped']}]" if c["adapted"] or c["skipped"] else ""
        lines.append(f"{protocol:>9}: " + " ".join(parts) + extra)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "python -m training.evaluate") -> int:
    """CLI entry point; returns the exit code (0, or 2 after a one-line error on stderr)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        options = _parse_options(args.option)
        protocols = _normalize_protocols(args.protocol or None)
        report = evaluate(
            args.predictions,
            protocols,
            args.out,
            plots=not args.no_plots,
            options=options,
            adapt=args.adapt,
            progress=not args.no_progress,
            n_examples=args.examples,
            per_sample=args.per_sample,
        )
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except (_UsageError, EvaluationError, PredictionsFormatError, FileNotFoundError, OSError, ValueError) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(_format_summary(report))
    if args.out:
        print(f"report: {Path(args.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
