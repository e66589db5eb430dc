"""Evaluation metrics of the official sound-source-localization protocols, and our fixed one.

Everything here is plain numpy (``torch`` / ``cv2`` are imported lazily by :func:`upsample`
only; ``sklearn`` is never needed — :func:`pixel_ap` is an exact numpy equivalent of
``sklearn.metrics.average_precision_score``). The behaviour of each official evaluation is
taken from its code as summarised in ``official-impls.md`` §1.5 (EZ-VSL), §2.5 (AVGN), §4.6
(DSOL), §5.6 (NoPrior) and §6, and from the papers for the metrics that only exist there
(Mix-and-Localize CAP / PIAP, CVPR 2022 §4.4, Eq. 5; DSOL CIoU / NSA, NeurIPS 2020 §4.2 Eq. 9).

Layers
------
* primitives: :func:`minmax`, :func:`upsample`, the binarisation rules
  (:func:`binarize_median_ge`, :func:`binarize_median_gt`, :func:`binarize_relmax`), the GT-map
  builders (:func:`gt_map_flickr`, :func:`gt_map_vggss`, :func:`gt_map_xywh`,
  :func:`gt_map_avgn_music`), :func:`ciou`, :func:`auc_21`, :func:`success_rate`,
  :func:`pixel_ap`;
* per-paper metrics: AVGN (:func:`piap_avgn_as_coded`, :func:`avgn_confidence`,
  :func:`avgn_precision_at`, :func:`avgn_precision_recall`, :func:`avgn_f1`), NoPrior
  (:func:`greedy_match_noprior`, :func:`piap_noprior`, :func:`cap_noprior`), DSOL
  (:func:`class_aware_ciou_dsol`, :func:`nsa_dsol`), Mix-and-Localize (:func:`cap_mixloc`,
  :func:`piap_mixloc`, :func:`class_aware_ciou_mixloc`), ours (:func:`optimal_match`,
  :func:`silent_suppression`, :func:`counting_accuracy`, :func:`counting_confusion`);
* :class:`Evaluator` — one protocol end to end: ``add(pred_maps, GroundTruth)`` per sample,
  ``summary()`` at the end.

Protocols
---------
``n`` is the number of pixels of a (piece of a) map, ``S`` the GT size (224), ``τ`` AVGN's
temperature. "≥ med" means ``minmax(p) >= sort(minmax(p))[n // 2]`` (index 25088 of 50176 at
224², *not* ``np.median``).

=============== ================== =================== =================== ================== ==================
aspect          ``ezvsl``          ``avgn``            ``noprior``         ``dsol``           ``streamloc``
=============== ================== =================== =================== ================== ==================
maps per sample exactly 1          1 per GT source,    any number (≥ 0),   1 per cluster      any number (≥ 0)
                                   slot j ↔ source j   canvases k·h × w    (class-aware)
                                   (class-prompted)
up-sampling     torch bilinear,    torch bicubic,      cv2 INTER_CUBIC to  cv2 INTER_LINEAR   cv2 INTER_LINEAR
                align_corners=True align_corners=False (k·S) × S, split                       (any, per option)
                (``test.py``)                          in k pieces
normalisation   minmax             (x + 1/τ)/(2/τ),    minmax per piece    none               minmax
                                   then minmax
binarisation    ≥ med              ≥ med               > med as coded      p > t·max p        ≥ med (per piece
                                                       (pixels = 1 kept),  t = 0.5 synthetic, when stacked)
                                                       then ≥ 0.5          0.2 duet,
                                                                           0.1 single
GT per entry    union of all       that source's       piece i's GT; a     union of the       that source's mask
                sources (Flickr    mask                shared image →      class's masks
                consensus kept)                        union, k = 1
matching        —                  by class label      greedy, maps in     by class→cluster   Hungarian on cIoU
                                                       list order, taken   map
                                                       GT zeroed
no / few maps   error              error               0 per missing       error              0 for every
                                                       source; no map →                       unmatched source
                                                       nothing but "true"                     (never dropped)
cIoU thresholds AP50 ≥ 0.5;        P@30 strict > 0.3   ≥ 0.5, ≥ 0.3,       ≥ 0.05·6 (=0.300…  exact decimals
                AUC at float       (> 0.1 if 2 src);   AUC at float 0.05·i 04), ≥ 0.5; AUC at round(0.05·i, 2)
                0.05·i             F1@30 conf ≥ 0.5                        float 0.05·i
pixel AP        —                  AP(y_true=binary    PIAP: AP(gt, binary —                  AP(gt, continuous
                                   pred, score=GT)     of summed maps);                       map) per matched
                                   (swapped)           CAP: per map on                        source (CAP); PIAP
                                                       greedy piece                           of mean of minmax
                                                                                              maps vs union GT
counting        —                  —                   "true": #maps == k  —                  #maps == #sources,
                                                                                              confusion matrix
silent objects  —                  —                   —                   NSA: fraction of   fraction of silent
                                                                           map ≤ 0.2 on non-  mask area whose
                                                                           sounding clusters  binarised pred is 0
summary keys    ap50, mean_ciou,   precision,          ciou@0.5, ciou@0.3, ciou@0.3,          ciou@0.5, ciou@0.3,
                auc                precision@30,       auc, piap, cap,     ciou@0.5, auc,     mean_ciou, auc,
                                   precision@10,       true                nsa                cap, piap,
                                   piap, f1@30                                                silent_suppression,
                                                                                              counting_accuracy,
                                                                                              counting_confusion
=============== ================== =================== =================== ================== ==================

All ``summary()`` dicts also hold ``n_samples`` (and protocol-specific counts).

Resolved ambiguities (see each function for details): NoPrior's CAP/PIAP with *no* map contribute
nothing (as its cIoU; its ``test_step`` returns early); NoPrior's AP y_true is ``gt > 0`` (the
official code crashes on Flickr consensus maps); MUSIC ``[x, y, w, h]`` boxes are rasterised as
each code does (DSOL ``int(y·S + h·S)``, NoPrior ``int(y·S) + int(h·S)``); DSOL's NSA uses
``≤ τ`` as coded (paper: ``< τ``), runs over the cluster indices other than the sounding classes'
primary clusters (as coded) and skips images without silent clusters; Mix-and-Localize's "best
pairing" is chosen per sample; AVGN's ``bb`` is 1 per given source mask (0 for a sample without
sources); ``streamloc`` scores pixel AP on the continuous map and PIAP on the mean of the
minmax-normalised maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "PROTOCOLS",
    "UPSAMPLE_METHODS",
    "GroundTruth",
    "Evaluator",
    "NoPriorMatch",
    "minmax",
    "upsample",
    "median_threshold",
    "binarize_median_ge",
    "binarize_median_gt",
    "binarize_relmax",
    "gt_map_flickr",
    "gt_map_vggss",
    "gt_map_xywh",
    "gt_map_avgn_music",
    "ciou",
    "auc_21",
    "success_rate",
    "thresholds_21",
    "pixel_ap",
    "piap_avgn_as_coded",
    "avgn_confidence",
    "avgn_precision_at",
    "avgn_precision_recall",
    "avgn_f1",
    "noprior_binary_pieces",
    "greedy_match_noprior",
    "piap_noprior",
    "cap_noprior",
    "class_aware_ciou_dsol",
    "nsa_dsol",
    "cap_mixloc",
    "piap_mixloc",
    "class_aware_ciou_mixloc",
    "optimal_match",
    "silent_suppression",
    "counting_accuracy",
    "counting_confusion",
]

PROTOCOLS = frozenset({"ezvsl", "avgn", "noprior", "dsol", "streamloc"})
UPSAMPLE_METHODS = ("torch_bicubic", "torch_bilinear_ac", "cv2_cubic", "cv2_linear")

_DEFAULT_UPSAMPLE = {
    "ezvsl": "torch_bilinear_ac",
    "avgn": "torch_bicubic",
    "noprior": "cv2_cubic",
    "dsol": "cv2_linear",
    "streamloc": "cv2_linear",
}


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        names = ", ".join(sorted(PROTOCOLS))
        raise ValueError(f"unknown protocol {protocol!r}; use one of: {names}")
    return protocol


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if np.isscalar(size):
        return int(size), int(size)  # type: ignore[arg-type]
    h, w = size  # type: ignore[misc]
    return int(h), int(w)


# --------------------------------------------------------------------------------------------
# primitives
# --------------------------------------------------------------------------------------------


def minmax(m: np.ndarray) -> np.ndarray:
    """``(m - min m) / (max m - min m)``; a constant map is returned unchanged (a copy).

    Floating dtypes are kept (the official code normalises float32 maps in float32); other
    dtypes are converted to float64.

    >>> minmax(np.array([2.0, 4.0, 3.0]))
    array([0. , 1. , 0.5])
    >>> minmax(np.array([5.0, 5.0]))
    array([5., 5.])
    """
    a = np.asarray(m)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    vmin, vmax = a.min(), a.max()
    if vmax - vmin == 0:
        return a.copy()
    return (a - vmin) / (vmax - vmin)


def upsample(map: np.ndarray, size: int | Sequence[int], method: str) -> np.ndarray:
    """Resize a 2-D map to ``size`` (int, or ``(height, width)``) as the official code does.

    Methods (computed in float32, like the official pipelines):

    * ``"torch_bicubic"`` — ``F.interpolate(mode="bicubic", align_corners=False)`` (AVGN,
      EZ-VSL ``train.py`` validation);
    * ``"torch_bilinear_ac"`` — ``F.interpolate(mode="bilinear", align_corners=True)`` (EZ-VSL
      ``test.py``);
    * ``"cv2_cubic"`` — ``cv2.resize(..., interpolation=INTER_CUBIC)`` (NoPrior);
    * ``"cv2_linear"`` — ``cv2.resize(..., interpolation=INTER_LINEAR)`` (DSOL; ours).

    >>> upsample(np.array([[0.0, 1.0], [2.0, 3.0]]), 4, "torch_bilinear_ac")[0]
    array([0.        , 0.33333334, 0.6666667 , 1.        ], dtype=float32)
    >>> upsample(np.array([[0.0, 1.0], [2.0, 3.0]]), 4, "cv2_linear")[0]
    array([0.  , 0.25, 0.75, 1.  ], dtype=float32)
    """
    h, w = _size2(size)
    a = np.ascontiguousarray(np.asarray(map, dtype=np.float32))
    if a.ndim != 2:
        raise ValueError(f"upsample expects a 2-D map, got shape {a.shape}")
    if method in ("torch_bicubic", "torch_bilinear_ac"):
        import torch
        import torch.nn.functional as F

        mode = "bicubic" if method == "torch_bicubic" else "bilinear"
        t = torch.from_numpy(a)[None, None]
        out = F.interpolate(t, size=(h, w), mode=mode, align_corners=(method == "torch_bilinear_ac"))
        return out[0, 0].numpy()
    if method in ("cv2_cubic", "cv2_linear"):
        import cv2

        interp = cv2.INTER_CUBIC if method == "cv2_cubic" else cv2.INTER_LINEAR
        out = cv2.resize(a, (w, h), interpolation=interp)
        return np.asarray(out, dtype=np.float32).reshape(h, w)
    raise ValueError(f"unknown upsample method {method!r}; use one of: {', '.join(UPSAMPLE_METHODS)}")


def _to_size(m: np.ndarray, shape: tuple[int, int], method: str) -> np.ndarray:
    """Upsample ``m`` to ``shape`` unless it already has it (then: a float32 copy)."""
    a = np.asarray(m)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.shape == tuple(shape):
        return a.astype(np.float32)
    return upsample(a, shape, method)


def median_threshold(p: np.ndarray) -> float:
    """The official "median": element ``n // 2`` of the ascending-sorted values (``n`` = size).

    Not ``np.median`` (which averages the two middle values of an even-sized map).

    >>> median_threshold(np.array([0.0, 0.2, 0.9, 1.0]))
    0.9
    """
    flat = np.sort(np.asarray(p).ravel())
    return flat[flat.size // 2].item()


def binarize_median_ge(p: np.ndarray) -> np.ndarray:
    """EZ-VSL / AVGN rule: ``q = minmax(p)``; ``q >= sort(q)[n // 2]`` (bool map).

    >>> binarize_median_ge(np.array([[0.0, 0.5], [0.5, 1.0]])).astype(int)
    array([[0, 1],
           [1, 1]])
    """
    q = minmax(p)
    return q >= median_threshold(q)


def binarize_median_gt(p: np.ndarray) -> np.ndarray:
    """NoPrior rule as coded: ``q = minmax(p)``; ``q[q > thr] = 1``; then ``q[q < 1] = 0``.

    ``thr = sort(q)[n // 2]``. Strict ``>``, except that pixels already equal to 1 (the maximum
    after minmax) survive even when ``thr == 1``; a constant map ``c >= 1`` (minmax leaves it
    unchanged) stays ``c``. Returns a float map (0/1 except for that constant-map case).
    NoPrior's cIoU then re-thresholds it with ``>= 0.5`` (:func:`ciou` ``infer_thr``).

    >>> binarize_median_gt(np.array([[0.0, 0.5], [0.5, 1.0]]))
    array([[0., 0.],
           [0., 1.]])
    >>> binarize_median_gt(np.array([0.0, 1.0, 1.0, 1.0]))  # thr == 1: the 1s survive
    array([0., 1., 1., 1.])
    """
    q = np.array(minmax(p), copy=True)
    thr = median_threshold(q)
    q[q > thr] = 1
    q[q < 1] = 0
    return q


def binarize_relmax(p: np.ndarray, t: float) -> np.ndarray:
    """DSOL rule: ``p > t * max(p)`` on the raw (resized) map; t = 0.1 single source (``tools.py``),
    0.5 synthetic (``eval.py``), 0.2 duet (``eval_duet.py``).

    >>> binarize_relmax(np.array([0.1, 0.3, 0.5, 1.0]), 0.5).astype(int)
    array([0, 0, 0, 1])
    >>> binarize_relmax(np.array([0.1, 0.3, 0.5, 1.0]), 0.2).astype(int)
    array([0, 1, 1, 1])
    """
    a = np.asarray(p)
    return a > t * a.max()


# ----------------------------------------------------------------------------- GT builders


def _iter_boxes(boxes: Iterable[Any]) -> Iterable[Sequence[Any]]:
    """Flatten a list of boxes, or a list (per annotator) of lists of boxes."""
    for item in boxes:
        items = list(item)
        if len(items) == 4 and all(np.isscalar(v) for v in items):
            yield items
        else:
            yield from _iter_boxes(items)


def gt_map_flickr(boxes_per_annotator: Iterable[Any], size: int = 224, src_size: int = 256) -> np.ndarray:
    """Flickr-SoundNet consensus map (EZ-VSL / AVGN / NoPrior).

    ``boxes_per_annotator``: per annotator, a list of ``[xmin, ymin, xmax, ymax]`` boxes in the
    ``src_size`` (256) pixel space (a flat list of boxes is accepted too; each box counts once).
    Each coordinate becomes ``int(size * int(v) / src_size)``; each box adds 1 on
    ``[ymin:ymax, xmin:xmax]`` (Python slicing); the count map is halved and clipped at 1 → values
    in {0, 0.5, 1} (1 where ≥ 2 annotators agree).

    >>> gt_map_flickr([[[0, 0, 128, 256]], [[0, 0, 256, 256]]], size=4)
    array([[1. , 1. , 0.5, 0.5],
           [1. , 1. , 0.5, 0.5],
           [1. , 1. , 0.5, 0.5],
           [1. , 1. , 0.5, 0.5]])
    """
    count = np.zeros((size, size), dtype=np.float64)
    for box in _iter_boxes(boxes_per_annotator):
        x1, y1, x2, y2 = (int(size * int(v) / src_size) for v in box)
        count[y1:y2, x1:x2] += 1
    count /= 2
    count[count > 1] = 1
    return count


def gt_map_vggss(boxes_norm_xyxy: Iterable[Sequence[float]], size: int = 224, protocol: str = "ezvsl") -> np.ndarray:
    """VGG-SS union map from normalised ``[x1, y1, x2, y2]`` boxes (binary float map).

    * ``protocol="ezvsl"`` (also EZ-VSL-derived ``"avgn"`` and ``"streamloc"``):
      ``(clip(b, 0, 1) * size).astype(int)``;
    * ``protocol="noprior"``: ``int(size * max(v, 0))`` (no upper clip — slicing past the end
      is the same as clipping, so both rules give identical maps for every finite box,
      including the corrupt ``-2.8823037615171176e16`` coordinates and degenerate boxes, which
      become empty slices).

    >>> gt_map_vggss([[-2.8823037615171176e16, 0.5, 0.5, 1.2]], size=4).astype(int)
    array([[0, 0, 0, 0],
           [0, 0, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 0, 0]])
    """
    gt = np.zeros((size, size), dtype=np.float64)
    for box in boxes_norm_xyxy:
        if protocol in ("ezvsl", "avgn", "streamloc"):
            x1, y1, x2, y2 = (np.clip(np.array(box), 0, 1) * size).astype(int).tolist()
        elif protocol == "noprior":
            x1, y1, x2, y2 = (int(size * max(v, 0)) for v in box)
        else:
            raise ValueError(f"unknown VGG-SS GT protocol {protocol!r}; use 'ezvsl' or 'noprior'")
        gt[y1:y2, x1:x2] = 1
    return gt


def gt_map_xywh(boxes_norm_xywh: Iterable[Sequence[float]], size: int = 224, protocol: str = "dsol") -> np.ndarray:
    """Union map from normalised ``[x, y, w, h]`` boxes (MUSIC JSONs, DSOL ``normbox``).

    * ``protocol="dsol"`` (``tools.py`` / ``eval.py``): ``b = box * size``; rows
      ``int(b_y):int(b_y + b_h)``, cols ``int(b_x):int(b_x + b_w)`` (truncation of the sums).
    * ``protocol="noprior"``: every value becomes ``int(size * max(v, 0))`` first, then
      ``x2 = x + w`` — a sum of truncations, one pixel shorter when the fractional parts add
      up to ≥ 1.

    Negative values are not clipped by DSOL (Python slicing wraps, as in the official code).

    >>> gt_map_xywh([[0.1, 0.1, 0.1, 0.1]], size=8).astype(int)[:2, :2]  # rows/cols 0:int(1.6)
    array([[1, 0],
           [0, 0]])
    >>> int(gt_map_xywh([[0.1, 0.1, 0.1, 0.1]], size=8, protocol="noprior").sum())  # 0 + 0
    0
    """
    gt = np.zeros((size, size), dtype=np.float64)
    for box in boxes_norm_xywh:
        if protocol == "dsol":
            b = np.asarray(box, dtype=np.float64) * size
            gt[int(b[1]) : int(b[1] + b[3]), int(b[0]) : int(b[0] + b[2])] = 1
        elif protocol == "noprior":
            x, y, w, h = (int(size * max(v, 0)) for v in box)
            gt[y : y + h, x : x + w] = 1
        else:
            raise ValueError(f"unknown xywh GT protocol {protocol!r}; use 'dsol' or 'noprior'")
    return gt


def gt_map_avgn_music(boxes_norm_xywh: Iterable[Sequence[float]], size: int = 224) -> np.ndarray:
    """AVGN's MUSIC GT **as coded (bug)**: ``[x, y, w, h]`` read as ``[x1, y1, x2, y2]``.

    Each box becomes ``(clip(b, 0, 1) * size).astype(int)`` and fills rows ``int(y·S):int(h·S)``,
    cols ``int(x·S):int(w·S)`` — empty whenever ``w <= x`` or ``h <= y`` (most MUSIC boxes),
    wrong otherwise. Use :func:`gt_map_xywh` for the correct reading.

    >>> int(gt_map_avgn_music([[0.5, 0.25, 0.25, 0.5]], size=8).sum())  # cols 4:2 -> empty
    0
    >>> int(gt_map_xywh([[0.5, 0.25, 0.25, 0.5]], size=8).sum())  # rows 2:6, cols 4:6
    8
    """
    gt = np.zeros((size, size), dtype=np.float64)
    for box in boxes_norm_xywh:
        x1, y1, x2, y2 = (np.clip(np.array(box), 0, 1) * size).astype(int).tolist()
        gt[y1:y2, x1:x2] = 1
    return gt


# ----------------------------------------------------------------------------- cIoU, AUC


def ciou(infer: np.ndarray, gt: np.ndarray, infer_thr: float | None = None) -> float:
    """Consensus IoU: ``Σ(infer·gt) / (Σgt + Σ infer·[gt == 0])``.

    ``gt`` may hold Flickr consensus weights {0, 0.5, 1}. With ``infer_thr`` the prediction is
    first re-binarised as ``infer >= infer_thr`` (LVS/NoPrior ``cal_CIOU(..., 0.5)``). ``0/0``
    (empty GT and empty prediction) gives ``nan``, like the official numpy code.

    >>> gt = np.array([[1.0, 0.5], [0.0, 0.0]])
    >>> ciou(np.array([[1, 1], [1, 0]]), gt)  # (1 + 0.5) / (1.5 + 1)
    0.6
    """
    inf = np.asarray(infer)
    if infer_thr is not None:
        inf = inf >= infer_thr
    inf = inf.astype(np.float64)
    g = np.asarray(gt, dtype=np.float64)
    num = np.sum(inf * g)
    den = np.sum(g) + np.sum(inf * (g == 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(num / den)


def thresholds_21(exact: bool = False) -> np.ndarray:
    """The 21 cIoU thresholds ``0.05·i``, i = 0..20.

    Official code: the float64 products (``0.05 * 6 == 0.30000000000000004``); ``exact=True``:
    ``round(0.05·i, 2)`` (``0.3``), our fixed protocol.

    >>> float(thresholds_21()[6]), float(thresholds_21(exact=True)[6])
    (0.30000000000000004, 0.3)
    """
    if exact:
        return np.array([round(0.05 * i, 2) for i in range(21)], dtype=np.float64)
    return np.array([0.05 * i for i in range(21)], dtype=np.float64)


def success_rate(cious: Sequence[float], thr: float, strict: bool = False) -> float:
    """Fraction of cIoUs ``>= thr`` (``> thr`` with ``strict``, AVGN "Precision"). NaN entries
    count as failures; an empty list gives ``nan``.

    >>> success_rate([0.2, 0.5, 0.7], 0.5), success_rate([0.2, 0.5, 0.7], 0.5, strict=True)
    (0.6666666666666666, 0.3333333333333333)
    """
    c = np.asarray(cious, dtype=np.float64)
    if c.size == 0:
        return float("nan")
    return float(np.mean(c > thr) if strict else np.mean(c >= thr))


def auc_21(cious: Sequence[float], exact: bool = False) -> float:
    """Area under the success curve: ``x = 0.05·i`` (i = 0..20), ``y = fraction(cIoU >= x)``,
    trapezoid rule (``sklearn.metrics.auc``). ``exact`` selects :func:`thresholds_21` rounding.

    >>> round(auc_21([0.3]), 6), round(auc_21([0.3], exact=True), 6)
    (0.275, 0.325)
    """
    c = np.asarray(cious, dtype=np.float64)
    if c.size == 0:
        return float("nan")
    x = thresholds_21(exact)
    y = np.array([np.sum(c >= t) / c.size for t in x])
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


# ----------------------------------------------------------------------------- pixel AP


def pixel_ap(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision, exactly ``sklearn.metrics.average_precision_score`` (binary case).

    Step-wise, no interpolation: ``AP = Σ_n (R_n − R_{n−1}) · P_n`` over the distinct score
    thresholds, descending. ``y_true`` must be binary ({0, 1} or bool); with no positive in
    ``y_true`` the result is 0.0 (sklearn ≥ 1.1, which also warns). With a binary ``y_score``
    this is ``R·P + (1 − R)·π`` (π = positive rate).

    >>> pixel_ap(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))  # (1 + 2/3) / 2
    0.8333333333333333
    """
    t = np.asarray(y_true).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"y_true and y_score sizes differ: {t.size} vs {s.size}")
    if t.dtype != bool:
        vals = np.unique(t)
        if not np.all(np.isin(vals, (0, 1))):
            raise ValueError(f"y_true must be binary (0/1), got values {vals[:5].tolist()}")
    if np.isnan(s).any():
        raise ValueError("y_score contains NaN")
    if t.size == 0:
        return float("nan")
    t = t.astype(bool)
    order = np.argsort(s, kind="mergesort")[::-1]
    s = s[order]
    t = t[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie group
    tps = np.cumsum(t)[ends].astype(np.float64)
    if tps[-1] == 0:
        return 0.0
    fps = (ends + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


# --------------------------------------------------------------------------------------------
# AVGN (§2.5)
# --------------------------------------------------------------------------------------------


def piap_avgn_as_coded(infer: np.ndarray, gt: np.ndarray) -> float:
    """AVGN's "PIAP" **as coded (bug)**: ``average_precision_score(y_true=infer, y_score=gt)``.

    Arguments swapped: the binary prediction is the truth and the GT map the score. For a binary
    GT this is ``R′·P′ + (1 − R′)·q`` with ``P′ = TP/(TP+FN)``, ``R′ = TP/(TP+FP)`` and ``q``
    the fraction of predicted-positive pixels.

    >>> infer = np.array([1, 1, 0, 0]); gt = np.array([1, 0, 0, 0])
    >>> piap_avgn_as_coded(infer, gt)  # R'=1/2, P'=1, q=1/2 -> 1/2 + 1/4
    0.75
    """
    return pixel_ap(np.asarray(infer).ravel() >= 0.5, np.asarray(gt).ravel())


def avgn_confidence(scores: np.ndarray) -> float:
    """AVGN confidence: mean of the top ``-(-n // 4)`` values (``np.sort(s)[-n//4:]``).

    >>> avgn_confidence(np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.9, 1.0, 0.5]))  # top 2
    0.95
    """
    flat = np.sort(np.asarray(scores).ravel())
    n = flat.size
    return float(flat[-n // 4 :].mean())


def avgn_precision_at(cious: Sequence[float], thr: float = 0.3, bb: Sequence[int] | None = None) -> float:
    """AVGN ``precision_at_{30,10}``: over samples with ``bb > 0``, fraction of cIoU **> thr**.

    >>> avgn_precision_at([0.3, 0.31, 0.9], 0.3)
    0.6666666666666666
    """
    c = np.asarray(cious, dtype=np.float64)
    b = np.ones(c.size, dtype=int) if bb is None else np.asarray(bb)
    return success_rate(c[b > 0], thr, strict=True)


def avgn_precision_recall(
    cious: Sequence[float],
    confs: Sequence[float],
    bb: Sequence[int] | None = None,
    ciou_thr: float = 0.3,
    conf_thr: float = 0.5,
) -> tuple[float, float]:
    """AVGN ``calc_precision_recall``: a sample with ``conf >= conf_thr`` is a detection — TP when
    it has objects and ``cIoU >= ciou_thr``, FP otherwise (also for ``bb == 0``); an undetected
    sample with objects is an FN. Empty denominators give 1.

    >>> avgn_precision_recall([0.5, 0.1, 0.9], [0.6, 0.7, 0.2])  # TP, FP, FN
    (0.5, 0.5)
    """
    c = np.asarray(cious, dtype=np.float64)
    f = np.asarray(confs, dtype=np.float64)
    b = np.ones(c.size, dtype=int) if bb is None else np.asarray(bb)
    det = f >= conf_thr
    tp = int(np.sum(det & (b > 0) & (c >= ciou_thr)))
    fp = int(np.sum(det & ((b == 0) | ~(c >= ciou_thr))))
    fn = int(np.sum(~det & (b > 0)))
    precision = 1.0 if tp + fp == 0 else tp / (tp + fp)
    recall = 1.0 if tp + fn == 0 else tp / (tp + fn)
    return precision, recall


def avgn_f1(
    cious: Sequence[float],
    confs: Sequence[float],
    bb: Sequence[int] | None = None,
    ciou_thr: float = 0.3,
    conf_thr: float = 0.5,
) -> float:
    """AVGN ``f1_at_30``: ``2PR/(P+R)`` of :func:`avgn_precision_recall` (0 when P + R = 0).

    >>> avgn_f1([0.5, 0.1, 0.9], [0.6, 0.7, 0.2])
    0.5
    """
    p, r = avgn_precision_recall(cious, confs, bb, ciou_thr, conf_thr)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


# --------------------------------------------------------------------------------------------
# NoPrior (§5.6)
# --------------------------------------------------------------------------------------------


def noprior_binary_pieces(canvas: np.ndarray, k: int, size: int = 224, method: str = "cv2_cubic") -> list[np.ndarray]:
    """Resize a ``(k·h, w)`` object map to ``(k·size, size)`` (skipped when already there),
    split it vertically in ``k`` pieces and binarise each with :func:`binarize_median_gt`.

    >>> canvas = np.array([[0, 1], [2, 3], [3, 2], [1, 0]])  # k = 2 pieces of 2 x 2
    >>> [p.astype(int).tolist() for p in noprior_binary_pieces(canvas, 2, size=2)]
    [[[0, 0], [0, 1]], [[1, 0], [0, 0]]]
    """
    up = _to_size(canvas, (k * size, size), method)
    return [binarize_median_gt(piece) for piece in np.split(up, k, axis=0)]


@dataclass
class NoPriorMatch:
    """Result of :func:`greedy_match_noprior` for one sample.

    ``cious`` / ``caps``: the entries this sample appends to NoPrior's cIoU / CAP lists (one per
    map, plus a 0 per missing source; empty when there is no map at all). ``matched[m]``: the
    piece index map ``m`` took; ``taken_before[m]``: whether that GT had already been zeroed.
    ``true``: NoPrior's counting flag ``#maps == k``.
    """

    cious: list[float]
    caps: list[float]
    matched: list[int]
    taken_before: list[bool]
    true: bool


def _as_pieces(gts: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(gts, np.ndarray) and gts.ndim == 2:
        return [gts.astype(np.float64)]
    return [np.asarray(g, dtype=np.float64) for g in gts]


def greedy_match_noprior(
    maps: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    method: str = "cv2_cubic",
    size: int | None = None,
) -> NoPriorMatch:
    """NoPrior's greedy matching (``test_step``), exactly as coded.

    ``maps``: the object maps in the model's order, each a ``(k·h, w)`` canvas (resized with
    ``method`` to ``(k·S, S)``, ``S`` = GT size, unless already there); ``gts``: the ``k`` piece
    GT maps (S × S). Maps are processed in list order; each map's piece ``i`` is binarised
    (:func:`binarize_median_gt`) and scored against the *current* GT ``i`` with
    ``ciou(..., infer_thr=0.5)``; the map takes ``np.argmax`` (first maximum), appends that cIoU
    and the pixel AP ``AP(y_true = GT_i > 0, y_score = binary piece)`` of the same piece (0 when
    GT_i had been zeroed), and GT ``i`` is zeroed. Fewer maps than ``k`` → a 0 per missing source;
    extra maps append their (usually 0) scores; no map → nothing at all (``true`` is False).

    >>> gt0 = np.array([[1.0, 1.0], [0.0, 0.0]]); gt1 = np.array([[0.0, 0.0], [1.0, 1.0]])
    >>> m = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])  # lights the bottom rows
    >>> r = greedy_match_noprior([m], [gt0, gt1]); r.cious, r.matched, r.true
    ([1.0, 0], [1], False)
    """
    gt_list = _as_pieces(gts)
    k = len(gt_list)
    s = gt_list[0].shape[0] if size is None else int(size)
    current = [g.copy() for g in gt_list]
    taken = [False] * k
    out = NoPriorMatch(cious=[], caps=[], matched=[], taken_before=[], true=(len(maps) == k))
    if len(maps) == 0:
        return out
    for m in maps:
        pieces = noprior_binary_pieces(m, k, s, method)
        scores = [ciou(pieces[i], current[i], infer_thr=0.5) for i in range(k)]
        aps = [pixel_ap(current[i] > 0, pieces[i]) for i in range(k)]
        j = int(np.argmax(scores))
        out.cious.append(scores[j])
        out.caps.append(aps[j])
        out.matched.append(j)
        out.taken_before.append(taken[j])
        current[j] = np.zeros_like(current[j])
        taken[j] = True
    for _ in range(k - len(maps)):
        out.cious.append(0)
        out.caps.append(0)
    return out


def piap_noprior(
    maps: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    method: str = "cv2_cubic",
    size: int | None = None,
) -> float | None:
    """NoPrior's per-sample PIAP as coded: sum all object maps, resize to ``(k·S, S)``, split,
    binarise each piece (minmax + :func:`binarize_median_gt`), concatenate all pieces' pixels and
    return ``AP(y_true = GT pixels > 0, y_score = binary pixels)`` = ``R·P + (1 − R)·π``.
    ``None`` when there is no map (the sample contributes nothing). The reported PIAP is the mean
    over samples.

    >>> gt = np.array([[1.0, 0.0], [0.0, 0.0]])
    >>> piap_noprior([np.array([[3.0, 2.0], [1.0, 0.0]])], [gt])  # only the max survives: AP 1
    1.0
    """
    gt_list = _as_pieces(gts)
    if len(maps) == 0:
        return None
    k = len(gt_list)
    s = gt_list[0].shape[0] if size is None else int(size)
    total = np.sum([np.asarray(m, dtype=np.float32) for m in maps], axis=0)
    pieces = noprior_binary_pieces(total, k, s, method)
    y_score = np.concatenate([p.ravel() for p in pieces])
    y_true = np.concatenate([g.ravel() > 0 for g in gt_list])
    return pixel_ap(y_true, y_score)


def cap_noprior(
    maps: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    method: str = "cv2_cubic",
    size: int | None = None,
) -> list[float]:
    """NoPrior's CAP entries for one sample: per map, the pixel AP of its binary piece on the GT
    it took in :func:`greedy_match_noprior` (0 if that GT was already zeroed), plus 0 per missing
    source; empty when there is no map. Reported CAP = mean of all entries over the dataset.

    >>> gt0 = np.array([[1.0, 1.0], [0.0, 0.0]]); gt1 = np.array([[0.0, 0.0], [1.0, 1.0]])
    >>> cap_noprior([np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])], [gt0, gt1])
    [1.0, 0]
    """
    return greedy_match_noprior(maps, gts, method=method, size=size).caps


# --------------------------------------------------------------------------------------------
# DSOL (§4.6; paper §4.2 Eq. 9)
# --------------------------------------------------------------------------------------------


def _ciou_dsol(binary: np.ndarray, gt: np.ndarray) -> float:
    """DSOL's cIoU: ``Σ(bin·[gt>0]) / (Σgt + Σ bin·[gt==0])`` (= :func:`ciou` for binary GT)."""
    b = np.asarray(binary).astype(np.float64)
    g = np.asarray(gt, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(b * (g > 0)) / (np.sum(g) + np.sum(b * (g == 0))))


def _clusters_of(cluster_of_class: Any, c: int) -> list[int]:
    """Clusters assigned to class ``c``; the first one is the class's primary (argmax) cluster."""
    if isinstance(cluster_of_class, np.ndarray) and cluster_of_class.ndim == 2:
        row = cluster_of_class[c]
        primary = int(np.argmax(row))
        ones = [int(i) for i in np.flatnonzero(row == 1)]
        return [primary] + [i for i in ones if i != primary]
    v = cluster_of_class[c]
    if np.isscalar(v):
        return [int(v)]  # type: ignore[arg-type]
    return [int(i) for i in v]


def _class_mask(value: Any, size: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64) if isinstance(value, np.ndarray) else None
    if arr is not None and arr.ndim == 2 and arr.shape == (size, size):
        return arr
    return gt_map_xywh(value, size=size, protocol="dsol")


def class_aware_ciou_dsol(
    class_maps: Sequence[np.ndarray],
    gt_boxes_by_class: Mapping[int, Any],
    cluster_of_class: Any,
    t: float,
    size: int = 224,
    method: str = "cv2_linear",
) -> float:
    """DSOL class-aware cIoU of one image (``eval.py`` t = 0.5 synthetic, ``eval_duet.py``
    t = 0.2 duet; paper Eq. 9 ``CIoU = Σ δ_k IoU_k / Σ δ_k``).

    ``class_maps``: the model's per-cluster maps (indexable by cluster id, any resolution);
    ``gt_boxes_by_class``: for each *sounding* class, its normalised ``[x, y, w, h]`` boxes (DSOL
    ``normbox``, rasterised by :func:`gt_map_xywh`) or an ``S × S`` mask; ``cluster_of_class``:
    class → cluster id or list of ids (primary first), a sequence indexed by class, or DSOL's
    class × cluster 0/1 assignment matrix (``corr.npy``). Per sounding class: ``pred =
    resize(Σ maps of its clusters)``, binarised ``pred > t·max(pred)``, cIoU against the union of
    its boxes; the image value is the mean over sounding classes (``nan`` if none).

    >>> maps = [np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 1.0]])]
    >>> gt = {7: np.array([[1.0, 0.0], [0.0, 0.0]])}
    >>> class_aware_ciou_dsol(maps, gt, {7: 0}, t=0.5, size=2)
    1.0
    """
    vals = []
    for c, value in gt_boxes_by_class.items():
        gt = _class_mask(value, size)
        summed = np.sum([np.asarray(class_maps[i], dtype=np.float32) for i in _clusters_of(cluster_of_class, c)], axis=0)
        pred = _to_size(summed, (size, size), method)
        vals.append(_ciou_dsol(binarize_relmax(pred, t), gt))
    return float(np.mean(vals)) if vals else float("nan")


def nsa_dsol(
    class_maps: Sequence[np.ndarray] | Mapping[int, np.ndarray],
    silent_classes: Iterable[int],
    thr: float = 0.2,
    size: int | None = 224,
    method: str = "cv2_linear",
) -> float:
    """DSOL No-Sound-Area of one image: mean over the silent ids of the fraction of the
    (resized) map with value **≤ thr** (code; the paper's Eq. 9 writes ``s_k < τ``), absolute
    threshold on softmax maps. ``nan`` when there is no silent id. ``size=None``: no resizing.

    >>> nsa_dsol([np.array([[0.1, 0.2], [0.3, 0.9]]), np.zeros((2, 2))], [0], size=None)  # 2/4
    0.5
    """
    vals = []
    for c in silent_classes:
        m = np.asarray(class_maps[c])
        if size is not None:
            m = _to_size(m, (size, size), method)
        vals.append(float(np.sum(m <= thr)) / m.size)
    return float(np.mean(vals)) if vals else float("nan")


# --------------------------------------------------------------------------------------------
# Mix-and-Localize (CVPR 2022 §4.4, Eq. 5) — paper definitions, no official code exists
# --------------------------------------------------------------------------------------------


def _check_same_shape(maps: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> None:
    shapes = {np.asarray(a).shape for a in list(maps) + list(gts)}
    if len(shapes) > 1:
        raise ValueError(f"maps and GT masks must share one shape (upsample first), got {sorted(shapes)}")


def _best_pairing(score: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Max-sum one-to-one pairing of rows (maps) and columns (GT)."""
    from scipy.optimize import linear_sum_assignment

    if score.size == 0:
        return 0.0, []
    rows, cols = linear_sum_assignment(score, maximize=True)
    return float(score[rows, cols].sum()), list(zip(rows.tolist(), cols.tolist()))


def cap_mixloc(
    maps: Sequence[np.ndarray] | Mapping[int, np.ndarray],
    gts: Sequence[np.ndarray] | Mapping[int, np.ndarray],
    permutation_invariant: bool = True,
) -> float:
    """Mix-and-Localize class-aware AP of one sample (paper §4.4, Eq. 5):
    ``CAP = Σ_k δ_k AP_k / Σ_k δ_k``, ``AP_k`` the pixel-wise AP of class ``k``'s map against
    class ``k``'s GT, over the sounding classes (δ_k = 1).

    * ``permutation_invariant=False``: class-labelled maps; ``gts`` maps each sounding class to
      its mask and ``maps[class]`` is that class's score map (or both are aligned sequences).
    * ``permutation_invariant=True`` (the paper's "modified CAP" for label-free methods, used by
      NoPrior too): every pairing of predicted maps and GT sources is evaluated and the best is
      reported — chosen *per sample* here (the paper does not say; per sample is the natural
      reading of "evaluate both pairings ... and report the best"). A GT left without a map
      scores 0.

    Scores are the continuous maps (AP is threshold-free), already at GT resolution.

    >>> g0 = np.array([[1, 0], [0, 0]]); g1 = np.array([[0, 0], [0, 1]])
    >>> m0 = np.array([[0.1, 0.2], [0.3, 0.9]]); m1 = np.array([[0.9, 0.2], [0.3, 0.1]])
    >>> cap_mixloc([m0, m1], [g0, g1]), cap_mixloc([m0, m1], [g0, g1], permutation_invariant=False)
    (1.0, 0.25)
    """
    if isinstance(gts, Mapping):
        keys = list(gts.keys())
        gt_list = [np.asarray(gts[c]) for c in keys]
        if not permutation_invariant:
            map_list = [np.asarray(maps[c]) for c in keys]  # type: ignore[index]
        else:
            map_list = [np.asarray(m) for m in (maps.values() if isinstance(maps, Mapping) else maps)]
    else:
        gt_list = [np.asarray(g) for g in gts]
        map_list = [np.asarray(m) for m in (maps.values() if isinstance(maps, Mapping) else maps)]
    if not gt_list:
        return float("nan")
    _check_same_shape(map_list, gt_list)
    if not permutation_invariant:
        if len(map_list) != len(gt_list):
            raise ValueError("class-aware CAP needs one map per sounding class")
        return float(np.mean([pixel_ap(g > 0, m) for m, g in zip(map_list, gt_list)]))
    ap = np.array([[pixel_ap(g > 0, m) for g in gt_list] for m in map_list]).reshape(len(map_list), len(gt_list))
    total, _ = _best_pairing(ap)
    return total / len(gt_list)


def piap_mixloc(maps: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> float:
    """Mix-and-Localize permutation-invariant AP (paper §4.4): the pixel AP of the *average* of
    the sounding-area maps against the GT of all sounding objects (their union).

    >>> g0 = np.array([[1, 0], [0, 0]]); g1 = np.array([[0, 0], [0, 1]])
    >>> piap_mixloc([np.array([[0.9, 0.0], [0.1, 0.0]]), np.array([[0.0, 0.1], [0.0, 0.9]])], [g0, g1])
    1.0
    """
    map_list = [np.asarray(m, dtype=np.float64) for m in maps]
    gt_list = [np.asarray(g) for g in gts]
    _check_same_shape(map_list, gt_list)
    if not map_list or not gt_list:
        return float("nan")
    union = np.max([g > 0 for g in gt_list], axis=0)
    return pixel_ap(union, np.mean(map_list, axis=0))


def class_aware_ciou_mixloc(
    binary_maps: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    permutation_invariant: bool = True,
) -> float:
    """Class-aware cIoU of one sample, ``Σ δ_k cIoU_k / Σ δ_k`` (DSOL Eq. 9 as used by
    Mix-and-Localize §4.4); with ``permutation_invariant`` the best pairing of (already
    binarised) maps and GT sources is taken, an unpaired GT scoring 0.

    >>> g0 = np.array([[1, 0], [0, 0]]); g1 = np.array([[0, 0], [0, 1]])
    >>> class_aware_ciou_mixloc([g1, g0], [g0, g1]), class_aware_ciou_mixloc([g1, g0], [g0, g1], False)
    (1.0, 0.0)
    """
    map_list = [np.asarray(m) for m in binary_maps]
    gt_list = [np.asarray(g) for g in gts]
    _check_same_shape(map_list, gt_list)
    if not gt_list:
        return float("nan")
    if not permutation_invariant:
        if len(map_list) != len(gt_list):
            raise ValueError("class-aware cIoU needs one map per sounding class")
        return float(np.mean([ciou(m, g) for m, g in zip(map_list, gt_list)]))
    c = np.nan_to_num(np.array([[ciou(m, g) for g in gt_list] for m in map_list]).reshape(len(map_list), len(gt_list)))
    total, _ = _best_pairing(c)
    return total / len(gt_list)


# --------------------------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------------------------


def optimal_match(ciou_matrix: np.ndarray) -> list[tuple[int, int]]:
    """Permutation-invariant optimal matching of maps (rows) to GT sources (columns): the
    one-to-one pairing that maximises the summed cIoU (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``); NaN counts as 0.

    >>> optimal_match(np.array([[0.45, 0.33], [1.0, 0.0]]))  # greedy would take (0, 0) first
    [(0, 1), (1, 0)]
    """
    c = np.nan_to_num(np.asarray(ciou_matrix, dtype=np.float64))
    return _best_pairing(c)[1]


def silent_suppression(binary_pred: np.ndarray, silent_masks: Iterable[np.ndarray]) -> list[float]:
    """For each silent object, the fraction of its mask area (``mask > 0``) where the binarised
    prediction is 0 (1 = perfectly suppressed). Empty masks are skipped.

    >>> silent_suppression(np.array([[1, 0], [0, 0]]), [np.array([[1, 1], [0, 0]])])
    [0.5]
    """
    pred = np.asarray(binary_pred) > 0
    out = []
    for mask in silent_masks:
        m = np.asarray(mask) > 0
        area = int(m.sum())
        if area:
            out.append(float(np.sum(m & ~pred)) / area)
    return out


def counting_accuracy(pred_counts: Sequence[int], true_counts: Sequence[int]) -> float:
    """Fraction of samples whose number of predicted maps equals the number of sounding sources
    (NoPrior §4.6 "counting accuracy"; ``nan`` when empty).

    >>> counting_accuracy([1, 2, 3, 0], [1, 2, 2, 1])
    0.5
    """
    p = np.asarray(pred_counts)
    t = np.asarray(true_counts)
    if p.shape != t.shape:
        raise ValueError("pred_counts and true_counts differ in length")
    return float(np.mean(p == t)) if p.size else float("nan")


def counting_confusion(pred_counts: Sequence[int], true_counts: Sequence[int], max_count: int | None = None) -> np.ndarray:
    """Counting confusion matrix ``M[true, pred]`` (ints); counts above ``max_count`` (default:
    the largest count seen) go to the last row / column.

    >>> counting_confusion([1, 2, 3, 0], [1, 2, 2, 1], max_count=2)
    array([[0, 0, 0],
           [1, 1, 0],
           [0, 0, 2]])
    """
    p = np.asarray(pred_counts, dtype=int)
    t = np.asarray(true_counts, dtype=int)
    if p.shape != t.shape:
        raise ValueError("pred_counts and true_counts differ in length")
    if max_count is None:
        max_count = int(max(p.max(initial=0), t.max(initial=0)))
    out = np.zeros((max_count + 1, max_count + 1), dtype=int)
    np.add.at(out, (np.clip(t, 0, max_count), np.clip(p, 0, max_count)), 1)
    return out


# --------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """Ground truth of one sample, at ``size × size`` per source.

    * ``masks`` — one map per *sounding* source (binary, or Flickr consensus {0, 0.5, 1});
    * ``class_ids`` — the class of each source (DSOL class-aware evaluation);
    * ``silent_masks`` — masks of visible silent objects (``streamloc`` suppression); canvas-shaped
      ``(k·size, size)`` when ``stacked``;
    * ``num_sources`` — the number of sounding sources (counting), default ``len(masks)``;
    * ``stacked`` — the sources live in *separate* images stacked vertically (NoPrior's
      concatenation; one piece per mask, predicted maps cover the ``(k·h, w)`` canvas). When
      False all sources share one image.

    >>> gt = GroundTruth([np.ones((2, 2)), np.zeros((2, 2))], class_ids=[3, 7])
    >>> gt.num_sources, gt.masks[0].dtype
    (2, dtype('float64'))
    """

    masks: Sequence[np.ndarray]
    class_ids: Sequence[int] | None = None
    silent_masks: Sequence[np.ndarray] = ()
    num_sources: int | None = None
    stacked: bool = False

    def __post_init__(self) -> None:
        self.masks = [np.asarray(m, dtype=np.float64) for m in self.masks]
        self.silent_masks = [np.asarray(m, dtype=np.float64) for m in self.silent_masks]
        shapes = {m.shape for m in self.masks}
        if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
            raise ValueError(f"GT masks must be 2-D and share one shape, got {sorted(shapes)}")
        if self.class_ids is not None and len(self.class_ids) != len(self.masks):
            raise ValueError("class_ids must have one entry per mask")
        if self.num_sources is None:
            self.num_sources = len(self.masks)


def _union(masks: Sequence[np.ndarray], size: int) -> np.ndarray:
    if not masks:
        return np.zeros((size, size), dtype=np.float64)
    return np.max(np.stack(masks), axis=0)


class Evaluator:
    """Accumulate one protocol's metrics over a test set.

    ``Evaluator(protocol, size=224, **options)``; options: ``upsample`` (method, default per
    protocol, see the module table), ``tau`` (AVGN, 0.03), ``conf_thr`` (AVGN F1, 0.5), ``t``
    (DSOL relative threshold: 0.5 = ``eval.py`` synthetic, the default; pass 0.2 for
    ``eval_duet.py`` and 0.1 for the single-source ``tools.py`` mode), ``cluster_of_class``
    (DSOL, see :func:`class_aware_ciou_dsol`; ``None`` = class-agnostic single-map mode of
    ``tools.py``), ``nsa_thr`` (DSOL, 0.2), ``threshold`` (``streamloc`` only: ``None``, the
    default, binarises each map by the papers' ``≥ med`` rule; a number ``t`` in [0, 1]
    binarises ``minmax(p) >= t`` instead — choose ``t`` on a validation split, never on test). DSOL images without a sounding class are skipped
    for cIoU (counted in ``n_skipped``; the official code would append a NaN that then counts
    as a failure).

    ``add(pred_maps, gt)`` takes the sample's predicted maps (raw model output at any resolution;
    see the table for how many each protocol expects) and its :class:`GroundTruth`; it returns
    the per-sample values it recorded. ``summary()`` returns the protocol's reported numbers.

    >>> ev = Evaluator("ezvsl", size=2)
    >>> _ = ev.add([np.array([[0.0, 0.0], [1.0, 1.0]])], GroundTruth([np.array([[0, 0], [1, 1]])]))
    >>> ev.summary()["ap50"]
    1.0
    """

    def __init__(self, protocol: str, size: int = 224, **options: Any) -> None:
        self.protocol = _check_protocol(protocol)
        self.size = int(size)
        known = {"upsample", "tau", "conf_thr", "t", "cluster_of_class", "nsa_thr", "threshold"}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown Evaluator options {sorted(unknown)}; known: {sorted(known)}")
        self.method = options.get("upsample", _DEFAULT_UPSAMPLE[protocol])
        if self.method not in UPSAMPLE_METHODS:
            raise ValueError(f"unknown upsample method {self.method!r}; use one of: {', '.join(UPSAMPLE_METHODS)}")
        self.tau = float(options.get("tau", 0.03))
        self.conf_thr = float(options.get("conf_thr", 0.5))
        self.t = float(options.get("t", 0.5))
        self.cluster_of_class = options.get("cluster_of_class")
        self.nsa_thr = float(options.get("nsa_thr", 0.2))
        thr = options.get("threshold")
        if thr is not None:
            if protocol != "streamloc":
                raise ValueError(f"the threshold option is for the streamloc protocol, not {protocol!r}")
            thr = float(thr)
            if not 0.0 <= thr <= 1.0:
                raise ValueError(f"threshold must be in [0, 1] (it applies to minmax-normalised maps), got {thr}")
        self.threshold = thr
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._slots: dict[int, dict[str, list[Any]]] = {}
        self._cious: list[float] = []
        self._caps: list[float] = []
        self._piaps: list[float] = []
        self._extra: list[float] = []
        self._pred_counts: list[int] = []
        self._true_counts: list[int] = []
        self._skipped = 0

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ add

    def add(self, pred_maps: Sequence[np.ndarray], gt: GroundTruth) -> dict[str, Any]:
        maps = [np.asarray(m) for m in pred_maps]
        for m in gt.masks:
            if m.shape != (self.size, self.size):
                raise ValueError(f"GT masks must be {self.size}x{self.size}, got {m.shape}")
        rec = getattr(self, f"_add_{self.protocol}")(maps, gt)
        self.records.append(rec)
        return rec

    def _add_ezvsl(self, maps: list[np.ndarray], gt: GroundTruth) -> dict[str, Any]:
        if len(maps) != 1:
            raise ValueError(f"ezvsl evaluates exactly one map per sample, got {len(maps)}")
        if gt.stacked:
            raise ValueError("ezvsl evaluates single images (stacked=False)")
        pred = _to_size(maps[0], (self.size, self.size), self.method)
        value = ciou(binarize_median_ge(pred), _union(gt.masks, self.size))
        self._cious.append(value)
        return {"ciou": value}

    def _add_avgn(self, maps: list[np.ndarray], gt: GroundTruth) -> dict[str, Any]:
        n_src = len(gt.masks)
        if len(maps) != max(1, n_src):
            raise ValueError(f"avgn evaluates one (class-prompted) map per source: {len(maps)} maps for {n_src} sources")
        masks = gt.masks if n_src else [np.zeros((self.size, self.size))]
        rec: dict[str, Any] = {"ciou": [], "conf": [], "piap": []}
        for j, (m, g) in enumerate(zip(maps, masks)):
            up = _to_size(m, (self.size, self.size), self.method)
            scores = (up - (-1.0 / self.tau)) / (2.0 / self.tau)
            pred = minmax(scores)
            conf = avgn_confidence(scores)
            infer = pred >= median_threshold(pred)
            value = ciou(infer, g)
            piap = piap_avgn_as_coded(infer, g)
            slot = self._slots.setdefault(j, {"ciou": [], "conf": [], "piap": [], "bb": []})
            slot["ciou"].append(value)
            slot["conf"].append(conf)
            slot["piap"].append(piap)
            slot["bb"].append(1 if n_src else 0)
            rec["ciou"].append(value)
            rec["conf"].append(conf)
            rec["piap"].append(piap)
        return rec

    def _add_noprior(self, maps: list[np.ndarray], gt: GroundTruth) -> dict[str, Any]:
        pieces = list(gt.masks) if gt.stacked else [_union(gt.masks, self.size)]
        match = greedy_match_noprior(maps, pieces, method=self.method, size=self.size)
        piap = piap_noprior(maps, pieces, method=self.method, size=self.size)
        self._cious.extend(float(c) for c in match.cious)
        self._caps.extend(float(c) for c in match.caps)
        if piap is not None:
            self._piaps.append(piap)
        self._pred_counts.append(len(maps))
        self._true_counts.append(len(pieces))
        return {"ciou": match.cious, "cap": match.caps, "piap": piap, "true": match.true, "matched": match.matched}

    def _add_dsol(self, maps: list[np.ndarray], gt: GroundTruth) -> dict[str, Any]:
        s = self.size
        if self.cluster_of_class is None:  # tools.py: one class-agnostic map, t = 0.1 there
            if len(maps) != 1:
                raise ValueError("dsol without cluster_of_class evaluates exactly one map per sample")
            if not gt.masks:
                self._skipped += 1
                return {"ciou": None}
            pred = _to_size(maps[0], (s, s), self.method)
            value = _ciou_dsol(binarize_relmax(pred, self.t), _union(gt.masks, s))
            self._cious.append(value)
            return {"ciou": value}
        if gt.class_ids is None:
            raise ValueError("dsol class-aware evaluation needs GroundTruth.class_ids")
        by_class: dict[int, np.ndarray] = {}
        for c, m in zip(gt.class_ids, gt.masks):
            by_class[int(c)] = np.maximum(by_class[int(c)], m) if int(c) in by_class else m
        primaries = {_clusters_of(self.cluster_of_class, c)[0] for c in by_class}
        silent = [i for i in range(len(maps)) if i not in primaries]
        nsa = nsa_dsol(maps, silent, thr=self.nsa_thr, size=s, method=self.method)
        if not np.isnan(nsa):
            self._extra.append(nsa)
        if not by_class:
            self._skipped += 1
            return {"ciou": None, "nsa": nsa}
        value = class_aware_ciou_dsol(maps, by_class, self.cluster_of_class, self.t, size=s, method=self.method)
        self._cious.append(value)
        return {"ciou": value, "nsa": nsa}

    def _add_streamloc(self, maps: list[np.ndarray], gt: GroundTruth) -> dict[str, Any]:
        s = self.size
        n_src = len(gt.masks)
        k = n_src if gt.stacked else 1
        canvas = (max(k, 1) * s, s)
        ups = [_to_size(m, canvas, self.method) for m in maps]
        n_pieces = max(k, 1)
        score_pieces = [np.split(u, n_pieces, axis=0) for u in ups]
        if self.threshold is None:
            bin_pieces = [[binarize_median_ge(p) for p in sp] for sp in score_pieces]
        else:
            bin_pieces = [[minmax(p) >= self.threshold for p in sp] for sp in score_pieces]
        bin_canvas = [np.concatenate(bp, axis=0) for bp in bin_pieces]

        def piece(j: int) -> int:  # which piece of a map source j is scored on
            return j if gt.stacked else 0

        c = np.zeros((len(maps), n_src))
        ap = np.zeros((len(maps), n_src))
        for m in range(len(maps)):
            for j, g in enumerate(gt.masks):
                c[m, j] = ciou(bin_pieces[m][piece(j)], g)
                ap[m, j] = pixel_ap(g > 0, score_pieces[m][piece(j)])
        c = np.nan_to_num(c)
        src_ciou = [0.0] * n_src
        src_ap = [0.0] * n_src
        for m, j in optimal_match(c):
            src_ciou[j] = float(c[m, j])
            src_ap[j] = float(ap[m, j])
        self._cious.extend(src_ciou)
        self._caps.extend(src_ap)
        if n_src:
            if maps:
                y_true = np.concatenate(gt.masks, axis=0) if gt.stacked else _union(gt.masks, s)
                piap = pixel_ap(y_true > 0, np.mean([minmax(u.astype(np.float64)) for u in ups], axis=0))
            else:
                piap = 0.0
            self._piaps.append(piap)
        else:
            piap = None
        pred_union = np.max(np.stack(bin_canvas), axis=0) if bin_canvas else np.zeros(canvas, dtype=bool)
        supp = silent_suppression(pred_union, gt.silent_masks) if len(gt.silent_masks) else []
        self._extra.extend(supp)
        self._pred_counts.append(len(maps))
        self._true_counts.append(int(gt.num_sources))  # type: ignore[arg-type]
        return {"ciou": src_ciou, "ap": src_ap, "piap": piap, "silent_suppression": supp}

    # ------------------------------------------------------------------ summary

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol, "n_samples": len(self.records)}
        mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
        if self.protocol == "ezvsl":
            out.update(ap50=success_rate(self._cious, 0.5), mean_ciou=mean(self._cious), auc=auc_21(self._cious))
        elif self.protocol == "avgn":
            slots = [self._slots[j] for j in sorted(self._slots)]
            p30 = [avgn_precision_at(sl["ciou"], 0.3, sl["bb"]) for sl in slots]
            p10 = [avgn_precision_at(sl["ciou"], 0.1, sl["bb"]) for sl in slots]
            out.update(
                {
                    "precision": mean(p30 if len(slots) <= 1 else p10),
                    "precision@30": mean(p30),
                    "precision@10": mean(p10),
                    "piap": mean([mean(sl["piap"]) for sl in slots]),
                    "f1@30": mean([avgn_f1(sl["ciou"], sl["conf"], sl["bb"], 0.3, self.conf_thr) for sl in slots]),
                    "n_slots": len(slots),
                }
            )
        elif self.protocol == "noprior":
            out.update(
                {
                    "ciou@0.5": success_rate(self._cious, 0.5),
                    "ciou@0.3": success_rate(self._cious, 0.3),
                    "auc": auc_21(self._cious),
                    "piap": mean(self._piaps),
                    "cap": mean(self._caps),
                    "true": counting_accuracy(self._pred_counts, self._true_counts),
                    "n_entries": len(self._cious),
                }
            )
        elif self.protocol == "dsol":
            thr = thresholds_21()
            out.update(
                {
                    "ciou@0.3": success_rate(self._cious, float(thr[6])),
                    "ciou@0.5": success_rate(self._cious, float(thr[10])),
                    "auc": auc_21(self._cious),
                    "nsa": mean(self._extra),
                    "n_skipped": self._skipped,
                }
            )
        else:  # streamloc
            out.update(
                {
                    "ciou@0.5": success_rate(self._cious, 0.5),
                    "ciou@0.3": success_rate(self._cious, 0.3),
                    "mean_ciou": mean(self._cious),
                    "auc": auc_21(self._cious, exact=True),
                    "cap": mean(self._caps),
                    "piap": mean(self._piaps),
                    "silent_suppression": mean(self._extra),
                    "counting_accuracy": counting_accuracy(self._pred_counts, self._true_counts),
                    "counting_confusion": counting_confusion(self._pred_counts, self._true_counts)
                    if self._pred_counts
                    else np.zeros((1, 1), dtype=int),
                    "n_sources": len(self._cious),
                }
            )
        return out
