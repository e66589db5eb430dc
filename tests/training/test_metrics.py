"""Tests of training.metrics: hand-computed cases, every protocol difference listed in
official-impls.md (§1.5, §2.5, §4.6, §5.6, §6), and slow literal transcriptions of each formula."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest

from training import metrics as M
from training.metrics import (
    Evaluator,
    GroundTruth,
    auc_21,
    avgn_confidence,
    avgn_f1,
    avgn_precision_at,
    avgn_precision_recall,
    binarize_median_ge,
    binarize_median_gt,
    binarize_relmax,
    cap_mixloc,
    cap_noprior,
    ciou,
    class_aware_ciou_dsol,
    class_aware_ciou_mixloc,
    counting_accuracy,
    counting_confusion,
    greedy_match_noprior,
    gt_map_avgn_music,
    gt_map_flickr,
    gt_map_vggss,
    gt_map_xywh,
    median_threshold,
    minmax,
    nsa_dsol,
    optimal_match,
    piap_avgn_as_coded,
    piap_mixloc,
    piap_noprior,
    pixel_ap,
    silent_suppression,
    success_rate,
    thresholds_21,
    upsample,
)

CORRUPT = -2.8823037615171176e16  # the real corrupt VGG-SS coordinate (vggss.json, §1.7)
SEEDS = [0, 1, 2, 3, 4]


def mask_from(pixels, shape=(4, 4)):
    """Binary float map with the given row-major pixel indices set to 1."""
    m = np.zeros(shape[0] * shape[1])
    m[list(pixels)] = 1
    return m.reshape(shape)


# ==========================================================================================
# slow literal transcriptions (loops over pixels)
# ==========================================================================================


def slow_minmax(m):
    vals = [float(v) for v in np.asarray(m, dtype=np.float64).ravel()]
    lo, hi = min(vals), max(vals)
    if hi - lo == 0:
        return np.array(vals).reshape(np.shape(m))
    return np.array([(v - lo) / (hi - lo) for v in vals]).reshape(np.shape(m))


def slow_median_thr(p):
    vals = sorted(float(v) for v in np.asarray(p).ravel())
    return vals[int(len(vals) * 0.5)]


def slow_bin_ge(p):
    q = slow_minmax(p)
    thr = slow_median_thr(q)
    return np.array([[1.0 if v >= thr else 0.0 for v in row] for row in q])


def slow_bin_gt_as_coded(p):
    q = slow_minmax(p)
    thr = slow_median_thr(q)
    out = []
    for row in q:
        new = []
        for v in row:
            v = 1.0 if v > thr else v
            v = 0.0 if v < 1 else v
            new.append(v)
        out.append(new)
    return np.array(out)


def slow_relmax(p, t):
    mx = max(float(v) for v in np.asarray(p).ravel())
    return np.array([[1.0 if float(v) > t * mx else 0.0 for v in row] for row in np.asarray(p)])


def slow_ciou(infer, gt):
    num = den_gt = den_fp = 0.0
    for i in range(gt.shape[0]):
        for j in range(gt.shape[1]):
            num += float(infer[i, j]) * float(gt[i, j])
            den_gt += float(gt[i, j])
            if gt[i, j] == 0:
                den_fp += float(infer[i, j])
    return num / (den_gt + den_fp) if den_gt + den_fp else math.nan


def slow_success(cious, thr, strict=False):
    hits = 0
    for c in cious:
        if (c > thr) if strict else (c >= thr):
            hits += 1
    return hits / len(cious)


def slow_auc(cious, exact=False):
    xs = [round(0.05 * i, 2) if exact else 0.05 * i for i in range(21)]
    ys = [slow_success(cious, x) for x in xs]
    area = 0.0
    for i in range(20):
        area += (xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2.0
    return area


def slow_ap(y_true, y_score):
    y = [bool(v) for v in np.asarray(y_true).ravel()]
    s = [float(v) for v in np.asarray(y_score).ravel()]
    pos = sum(y)
    if pos == 0:
        return 0.0
    ap, prev_r = 0.0, 0.0
    for th in sorted(set(s), reverse=True):
        tp = sum(1 for yi, si in zip(y, s) if si >= th and yi)
        fp = sum(1 for yi, si in zip(y, s) if si >= th and not yi)
        p, r = tp / (tp + fp), tp / pos
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def slow_fill(size, boxes_px):
    """Pixel (r, c) is set when y1 <= r < y2 and x1 <= c < x2 (boxes in non-negative pixels)."""
    gt = np.zeros((size, size))
    for x1, y1, x2, y2 in boxes_px:
        for r in range(size):
            for c in range(size):
                if y1 <= r < y2 and x1 <= c < x2:
                    gt[r, c] = 1
    return gt


def slow_cubic_upsample(a, out_h, out_w, align_corners=False, A=-0.75):
    """Keys cubic (A=-0.75), half-pixel source coordinates, replicated borders."""

    def w(x):
        x = abs(x)
        if x <= 1:
            return (A + 2) * x**3 - (A + 3) * x**2 + 1
        if x < 2:
            return A * x**3 - 5 * A * x**2 + 8 * A * x - 4 * A
        return 0.0

    h, wd = a.shape
    out = np.zeros((out_h, out_w))
    for oy in range(out_h):
        sy = (oy + 0.5) * h / out_h - 0.5
        iy = math.floor(sy)
        for ox in range(out_w):
            sx = (ox + 0.5) * wd / out_w - 0.5
            ix = math.floor(sx)
            acc = 0.0
            for m in range(-1, 3):
                for n in range(-1, 3):
                    yy = min(max(iy + m, 0), h - 1)
                    xx = min(max(ix + n, 0), wd - 1)
                    acc += a[yy, xx] * w(sy - (iy + m)) * w(sx - (ix + n))
            out[oy, ox] = acc
    return out


def slow_linear_upsample(a, out_h, out_w, align_corners):
    h, wd = a.shape

    def src(o, n_in, n_out):
        if align_corners:
            return o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        return min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)

    out = np.zeros((out_h, out_w))
    for oy in range(out_h):
        sy = src(oy, h, out_h)
        y0 = min(int(math.floor(sy)), h - 1)
        y1 = min(y0 + 1, h - 1)
        fy = sy - y0
        for ox in range(out_w):
            sx = src(ox, wd, out_w)
            x0 = min(int(math.floor(sx)), wd - 1)
            x1 = min(x0 + 1, wd - 1)
            fx = sx - x0
            out[oy, ox] = (
                a[y0, x0] * (1 - fy) * (1 - fx)
                + a[y0, x1] * (1 - fy) * fx
                + a[y1, x0] * fy * (1 - fx)
                + a[y1, x1] * fy * fx
            )
    return out


# ==========================================================================================
# module doctests (every public function carries a >>> example)
# ==========================================================================================


def test_doctests_pass():
    res = doctest.testmod(M, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0
    assert res.attempted >= 30


def test_every_public_function_has_an_example():
    for name in M.__all__:
        obj = getattr(M, name)
        if callable(obj) and name not in ("NoPriorMatch",):
            assert ">>>" in (obj.__doc__ or ""), name


# ==========================================================================================
# minmax and upsampling
# ==========================================================================================


@pytest.mark.parametrize(
    "m, expected",
    [
        ([2.0, 4.0, 3.0], [0.0, 1.0, 0.5]),  # (v - 2) / 2
        ([5.0, 5.0, 5.0], [5.0, 5.0, 5.0]),  # constant: unchanged (official normalize_img)
        ([-1, 1], [0.0, 1.0]),  # ints -> float
        ([[-33.0, 0.0], [33.0, 11.0]], [[0.0, 0.5], [1.0, 2 / 3]]),
    ],
)
def test_minmax_hand(m, expected):
    np.testing.assert_allclose(minmax(np.array(m)), expected)


def test_minmax_keeps_float32():
    assert minmax(np.array([0, 1, 2], dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize("seed", SEEDS)
def test_minmax_vs_slow(seed):
    a = np.random.default_rng(seed).normal(size=(5, 6))
    np.testing.assert_allclose(minmax(a), slow_minmax(a), rtol=1e-12)


A22 = np.array([[0.0, 1.0], [2.0, 3.0]])


@pytest.mark.parametrize(
    "method, axis_vals",
    [
        # align_corners=True: sample points 0, 1/3, 2/3, 1 -> value x + 2y
        ("torch_bilinear_ac", [0, 1 / 3, 2 / 3, 1]),
        # half-pixel (cv2 / align_corners=False): (o + .5)/2 - .5 = -.25, .25, .75, 1.25, clamped
        ("cv2_linear", [0, 0.25, 0.75, 1]),
    ],
)
def test_upsample_bilinear_hand(method, axis_vals):
    v = np.array(axis_vals)
    expected = v[None, :] + 2 * v[:, None]
    out = upsample(A22, 4, method)
    assert out.dtype == np.float32 and out.shape == (4, 4)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("method", M.UPSAMPLE_METHODS)
def test_upsample_constant_and_shape(method):
    out = upsample(np.full((7, 7), 2.5), (14, 7), method)
    assert out.shape == (14, 7)
    np.testing.assert_allclose(out, 2.5, atol=1e-5)


@pytest.mark.parametrize("method", ["torch_bicubic", "cv2_cubic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_upsample_cubic_vs_slow(method, seed):
    a = np.random.default_rng(seed).normal(size=(3, 4))
    np.testing.assert_allclose(upsample(a, (7, 9), method), slow_cubic_upsample(a, 7, 9), atol=2e-5)


@pytest.mark.parametrize("method, ac", [("torch_bilinear_ac", True), ("cv2_linear", False)])
@pytest.mark.parametrize("seed", [0, 1])
def test_upsample_linear_vs_slow(method, ac, seed):
    a = np.random.default_rng(seed).normal(size=(3, 4))
    np.testing.assert_allclose(upsample(a, (7, 9), method), slow_linear_upsample(a, 7, 9, ac), atol=2e-5)


def test_upsample_unknown_method():
    with pytest.raises(ValueError, match="cv2_linear"):
        upsample(A22, 4, "nearest")


# ==========================================================================================
# binarisation rules
# ==========================================================================================


@pytest.mark.parametrize(
    "p, ge, gt",
    [
        # sorted [0,.5,.5,1], index 2 -> thr .5: >= keeps the tie, > drops it
        ([[0.0, 0.5], [0.5, 1.0]], [[0, 1], [1, 1]], [[0, 0], [0, 1]]),
        # thr == 1: strict > keeps nothing, but NoPrior's "< 1 -> 0" step leaves the 1s alone
        ([[0.0, 1.0], [1.0, 1.0]], [[0, 1], [1, 1]], [[0, 1], [1, 1]]),
        # minmax -> [1, 0, 2/3, 1/3]; sorted index 2 -> 2/3
        ([[4.0, 1.0], [3.0, 2.0]], [[1, 0], [1, 0]], [[1, 0], [0, 0]]),
        # constant 0.2: minmax no-op, thr .2: >= all; as coded: nothing > .2, all < 1 -> 0
        ([[0.2, 0.2], [0.2, 0.2]], [[1, 1], [1, 1]], [[0, 0], [0, 0]]),
        # constant 3: as coded the map stays 3 (nothing > 3, nothing < 1)
        ([[3.0, 3.0], [3.0, 3.0]], [[1, 1], [1, 1]], [[3, 3], [3, 3]]),
    ],
)
def test_median_binarisation_ge_vs_gt(p, ge, gt):
    p = np.array(p)
    np.testing.assert_array_equal(binarize_median_ge(p).astype(int), ge)
    np.testing.assert_array_equal(binarize_median_gt(p), gt)


def test_median_threshold_is_index_not_np_median():
    p = np.array([0.0, 0.2, 0.9, 1.0])
    assert median_threshold(p) == 0.9  # sorted index 4 // 2 = 2
    assert np.median(p) == pytest.approx(0.55)


def test_median_index_25088_vs_np_median_224_with_ties():
    # 25088 zeros, 100 pixels at 0.5, 24988 at 1.0 (n = 50176): sorted[25088] = 0.5 while
    # np.median = (sorted[25087] + sorted[25088]) / 2 = 0.25.
    rng = np.random.default_rng(0)
    q = np.concatenate([np.zeros(25088), np.full(100, 0.5), np.ones(24988)])
    q = rng.permutation(q).reshape(224, 224)
    assert median_threshold(q) == 0.5 and np.median(q) == 0.25
    # >= rule: identical either way (no value lies strictly between the two middle values)
    ge = binarize_median_ge(q)
    assert ge.sum() == 25088
    np.testing.assert_array_equal(ge, q >= np.median(q))
    # strict rule: index-25088 drops the 100 tied pixels, np.median would keep them
    gt = binarize_median_gt(q)
    assert gt.sum() == 24988
    assert (q > np.median(q)).sum() == 25088


@pytest.mark.parametrize("seed", SEEDS)
def test_median_binarisations_vs_slow(seed):
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 5, size=(6, 6)).astype(float)  # many ties
    np.testing.assert_array_equal(binarize_median_ge(p).astype(float), slow_bin_ge(p))
    np.testing.assert_array_equal(binarize_median_gt(p), slow_bin_gt_as_coded(p))
    q = rng.normal(size=(5, 7))  # odd-sized rows, non-square
    np.testing.assert_array_equal(binarize_median_ge(q).astype(float), slow_bin_ge(q))


# map: top-left 2x2 = 1.0, (0,2),(0,3) = 0.3, (1,2),(1,3) = 0.15, the other 8 pixels 0.05
DSOL_MAP = np.array(
    [
        [1.0, 1.0, 0.3, 0.3],
        [1.0, 1.0, 0.15, 0.15],
        [0.05, 0.05, 0.05, 0.05],
        [0.05, 0.05, 0.05, 0.05],
    ]
)


@pytest.mark.parametrize(
    "t, n_on, ciou_tl",
    [
        (0.5, 4, 1.0),  # eval.py (synthetic): only the 1.0s;       cIoU 4/4
        (0.2, 6, 4 / 6),  # eval_duet.py: + the two 0.3s;             4/(4+2)
        (0.1, 8, 4 / 8),  # tools.py (single): + the two 0.15s;        4/(4+4)
    ],
)
def test_relmax_dsol_thresholds(t, n_on, ciou_tl):
    b = binarize_relmax(DSOL_MAP, t)
    assert b.sum() == n_on
    top_left = mask_from([0, 1, 4, 5])
    assert ciou(b, top_left) == pytest.approx(ciou_tl)
    got = class_aware_ciou_dsol([DSOL_MAP], {3: top_left}, {3: 0}, t=t, size=4)
    assert got == pytest.approx(ciou_tl)


def test_relmax_is_strict():
    np.testing.assert_array_equal(binarize_relmax(np.array([0.5, 1.0]), 0.5), [False, True])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("t", [0.1, 0.2, 0.5])
def test_relmax_vs_slow(seed, t):
    p = np.random.default_rng(seed).random((5, 5))
    np.testing.assert_array_equal(binarize_relmax(p, t).astype(float), slow_relmax(p, t))


# ==========================================================================================
# GT builders
# ==========================================================================================


def test_flickr_consensus_values():
    # size 4, 256-px boxes: int(4 * v / 256) = v / 64 for multiples of 64
    annotators = [
        [[0, 0, 128, 128]],  # A: rows/cols 0:2
        [[64, 64, 192, 192]],  # B: 1:3
        [[64, 64, 128, 128], [128, 128, 256, 256]],  # C: 1:2 and D: 2:4
    ]
    # counts: (1,1) A+B+C = 3 -> 1.5 -> clipped 1; (2,2) B+D = 2 -> 1; single boxes -> 0.5
    expected = np.array(
        [
            [0.5, 0.5, 0.0, 0.0],
            [0.5, 1.0, 0.5, 0.0],
            [0.0, 0.5, 1.0, 0.5],
            [0.0, 0.0, 0.5, 0.5],
        ]
    )
    got = gt_map_flickr(annotators, size=4)
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) == {0.0, 0.5, 1.0}
    # a flat list of the same boxes gives the same map (each box counts once)
    flat = [b for a in annotators for b in a]
    np.testing.assert_array_equal(gt_map_flickr(flat, size=4), expected)


def test_flickr_truncation_at_224():
    # int(224 * 1 / 256) = int(0.875) = 0; int(224 * 255 / 256) = int(223.125) = 223
    g = gt_map_flickr([[[1, 1, 255, 255]]])
    assert g.shape == (224, 224)
    assert g[:223, :223].min() == 0.5 and g[223, :].max() == 0 and g[:, 223].max() == 0
    assert g.sum() == 0.5 * 223 * 223


@pytest.mark.parametrize("protocol", ["ezvsl", "noprior"])
@pytest.mark.parametrize(
    "box, n_px",
    [
        ([CORRUPT, 0.25, 0.5, 0.75], 16),  # x1 -> 0: rows 2:6, cols 0:4 (size 8)
        ([0.25, 0.25, CORRUPT, 0.75], 0),  # x2 -> 0: empty slice
        ([0.25, 0.25, -0.2, 0.75], 0),  # small negative x2 -> 0: empty (no wrap-around)
        ([0.5, 0.5, 1.5, 1.2], 16),  # > 1: ezvsl clips to 8, noprior int(12)/int(9.6) slice past the end
        ([0.6, 0.2, 0.4, 0.8], 0),  # degenerate x2 < x1
        ([0.25, 0.25, 0.75, 0.75], 16),
    ],
)
def test_vggss_corrupt_and_clipping(protocol, box, n_px):
    g = gt_map_vggss([box], size=8, protocol=protocol)
    assert g.sum() == n_px
    assert set(np.unique(g)) <= {0.0, 1.0}


def test_vggss_naive_unclipped_reading_would_wrap():
    # without the clip, int(8 * -0.2) = -1 and Python slicing cols 2:-1 is NOT empty
    naive = np.zeros((8, 8))
    naive[2:6, int(8 * 0.25) : int(8 * -0.2)] = 1
    assert naive.sum() == 20
    assert gt_map_vggss([[0.25, 0.25, -0.2, 0.75]], size=8).sum() == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_vggss_protocols_agree_and_match_slow(seed):
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(-0.3, 1.3, size=(3, 4)).tolist() + [[CORRUPT, 0.1, 0.6, 0.9]]
    a = gt_map_vggss(boxes, size=12, protocol="ezvsl")
    b = gt_map_vggss(boxes, size=12, protocol="noprior")
    np.testing.assert_array_equal(a, b)
    px = [[int(12 * min(max(v, 0.0), 1.0)) for v in box] for box in boxes]
    np.testing.assert_array_equal(a, slow_fill(12, px))


def test_vggss_unknown_protocol():
    with pytest.raises(ValueError):
        gt_map_vggss([[0, 0, 1, 1]], protocol="dsol")


@pytest.mark.parametrize(
    "box, n_dsol, n_noprior",
    [
        # size 8: 0.1 * 8 = 0.8. DSOL int(0.8 + 0.8) = 1 -> 1 px; NoPrior int(0.8) + int(0.8) = 0
        ([0.1, 0.1, 0.1, 0.1], 1, 0),
        # rows/cols 2:6 both ways
        ([0.25, 0.25, 0.5, 0.5], 16, 16),
        # x: int(2.4)=2 .. DSOL int(2.4+2.4)=4, NoPrior 2+2=4; y: int(0.8)=0 .. DSOL int(1.6+0.8)=2 vs 0+1=1
        ([0.3, 0.1, 0.3, 0.2], 4, 2),
    ],
)
def test_xywh_dsol_vs_noprior(box, n_dsol, n_noprior):
    assert gt_map_xywh([box], size=8).sum() == n_dsol
    assert gt_map_xywh([box], size=8, protocol="noprior").sum() == n_noprior


@pytest.mark.parametrize(
    "box, n_misread, n_correct",
    [
        # x=.5 y=.25 w=.25 h=.5 -> misread cols 4:2 (empty); correct rows 2:6, cols 4:6
        ([0.5, 0.25, 0.25, 0.5], 0, 8),
        # x=.125 y=.25 w=.5 h=.5 -> misread rows 2:4 cols 1:4 = 6 px; correct rows 2:6 cols 1:5
        ([0.125, 0.25, 0.5, 0.5], 6, 16),
    ],
)
def test_avgn_music_xywh_misread(box, n_misread, n_correct):
    assert gt_map_avgn_music([box], size=8).sum() == n_misread
    assert gt_map_xywh([box], size=8).sum() == n_correct


@pytest.mark.parametrize("seed", SEEDS)
def test_xywh_builders_vs_slow(seed):
    rng = np.random.default_rng(seed)
    boxes = [[*rng.uniform(0, 0.6, 2), *rng.uniform(0, 0.4, 2)] for _ in range(3)]
    s = 10
    dsol_px = []
    noprior_px = []
    misread_px = []
    for x, y, w, h in boxes:
        dsol_px.append([int(x * s), int(y * s), int(x * s + w * s), int(y * s + h * s)])
        xi, yi, wi, hi = int(s * x), int(s * y), int(s * w), int(s * h)
        noprior_px.append([xi, yi, xi + wi, yi + hi])
        misread_px.append([int(s * x), int(s * y), int(s * w), int(s * h)])
    np.testing.assert_array_equal(gt_map_xywh(boxes, size=s), slow_fill(s, dsol_px))
    np.testing.assert_array_equal(gt_map_xywh(boxes, size=s, protocol="noprior"), slow_fill(s, noprior_px))
    np.testing.assert_array_equal(gt_map_avgn_music(boxes, size=s), slow_fill(s, misread_px))


@pytest.mark.parametrize("seed", SEEDS)
def test_flickr_vs_slow(seed):
    rng = np.random.default_rng(seed)
    annotators = []
    for _ in range(3):
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            xs, ys = sorted(rng.integers(0, 257, 2).tolist()), sorted(rng.integers(0, 257, 2).tolist())
            boxes.append([xs[0], ys[0], xs[1], ys[1]])
        annotators.append(boxes)
    s = 16
    count = np.zeros((s, s))
    for boxes in annotators:
        for box in boxes:
            x1, y1, x2, y2 = (int(s * v / 256) for v in box)
            count += slow_fill(s, [[x1, y1, x2, y2]])
    expected = np.minimum(count / 2, 1)
    np.testing.assert_array_equal(gt_map_flickr(annotators, size=s), expected)


# ==========================================================================================
# cIoU, success rates, AUC (and the float-threshold tie quirk)
# ==========================================================================================


@pytest.mark.parametrize(
    "infer, gt, kw, expected",
    [
        ([[1, 1], [1, 0]], [[1, 0.5], [0, 0]], {}, 0.6),  # (1 + .5) / (1.5 + 1): consensus weights
        ([[0, 0], [0, 0]], [[1, 0], [0, 0]], {}, 0.0),  # nothing predicted
        ([[1, 1], [1, 1]], [[0, 0], [0, 0]], {}, 0.0),  # empty GT (corrupt boxes): 0 / 4
        ([[1, 0], [0, 0]], [[1, 0], [0, 0]], {}, 1.0),
        ([[1, 1], [0, 0]], [[1, 0], [1, 0]], {}, 1 / 3),  # 1 / (2 + 1)
        ([[0.4, 0.6], [1, 0]], [[1, 1], [0, 0]], {"infer_thr": 0.5}, 1 / 3),  # -> [[0,1],[1,0]]
        ([[2.0, 2.0], [0, 0]], [[1, 1], [0, 0]], {"infer_thr": 0.5}, 1.0),  # NoPrior constant-map 2s
    ],
)
def test_ciou_hand(infer, gt, kw, expected):
    assert ciou(np.array(infer), np.array(gt), **kw) == pytest.approx(expected)


def test_ciou_nan_on_empty_both():
    assert math.isnan(ciou(np.zeros((2, 2)), np.zeros((2, 2))))


@pytest.mark.parametrize("seed", SEEDS)
def test_ciou_vs_slow(seed):
    rng = np.random.default_rng(seed)
    infer = rng.integers(0, 2, (6, 6)).astype(float)
    gt = rng.choice([0.0, 0.5, 1.0], size=(6, 6))
    assert ciou(infer, gt) == pytest.approx(slow_ciou(infer, gt), rel=1e-12)


def exact_point_three_maps():
    # 8x8: gt = px 0-19 (20), infer = px 8-39 (32 = half, so every median rule keeps it):
    # ∩ = 12, infer outside gt = 20 -> 12 / (20 + 20) = 0.3, the same double as the literal 0.3
    gt = mask_from(range(0, 20), (8, 8))
    infer = mask_from(range(8, 40), (8, 8))
    return infer, gt


def test_ciou_of_exactly_point_three():
    infer, gt = exact_point_three_maps()
    c = ciou(infer, gt)
    assert c == 0.3
    assert 0.05 * 6 == 0.30000000000000004 and not (c >= 0.05 * 6)
    for binarize in (binarize_median_ge, binarize_median_gt, lambda m: binarize_relmax(m, 0.1)):
        assert ciou(binarize(infer), gt) == 0.3


@pytest.mark.parametrize(
    "cious, exact, expected",
    [
        # float 0.05*6 = 0.30000000000000004 > 0.3: curve 1 up to x = .25, 0 from x = .3000..04
        ([0.3], False, 0.25 + 0.025),
        ([0.3], True, 0.30 + 0.025),  # exact 0.3 counted
        # 0.05*3 = 0.15000000000000002 > 0.15
        ([0.15], False, 0.10 + 0.025),
        ([0.15], True, 0.15 + 0.025),
        ([1.0], False, 1.0),
        ([0.0], False, 0.025),  # only the x = 0 point is 1
        ([0.0, 1.0], False, 0.5 + 0.025 / 2),  # y = 1 at x = 0, 0.5 elsewhere
        ([0.52, 0.52], True, 0.5 + 0.025),
    ],
)
def test_auc_21_hand(cious, exact, expected):
    assert auc_21(cious, exact=exact) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("exact", [False, True])
def test_auc_vs_slow(seed, exact):
    rng = np.random.default_rng(seed)
    c = np.concatenate([rng.random(20), [0.05 * i for i in range(21)], [round(0.05 * i, 2) for i in range(21)]])
    assert auc_21(c, exact=exact) == pytest.approx(slow_auc(c, exact), abs=1e-12)


@pytest.mark.parametrize(
    "cious, thr, strict, expected",
    [
        ([0.2, 0.5, 0.7], 0.5, False, 2 / 3),
        ([0.2, 0.5, 0.7], 0.5, True, 1 / 3),
        ([0.3, 0.31, 0.1], 0.3, True, 1 / 3),  # AVGN Precision@30
        ([0.3], 0.05 * 6, False, 0.0),  # float threshold tie
        ([0.3], 0.3, False, 1.0),
        ([math.nan, 0.9], 0.5, False, 0.5),  # nan counts as a failure, stays in the denominator
    ],
)
def test_success_rate_hand(cious, thr, strict, expected):
    assert success_rate(cious, thr, strict) == pytest.approx(expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_success_rate_vs_slow(seed):
    c = np.random.default_rng(seed).random(30).round(1)
    for thr in (0.1, 0.3, 0.5):
        for strict in (False, True):
            assert success_rate(c, thr, strict) == slow_success(c, thr, strict)


def test_thresholds_21():
    f, e = thresholds_21(), thresholds_21(exact=True)
    assert f[6] == 0.30000000000000004 and e[6] == 0.3
    assert f[3] == 0.15000000000000002 and e[3] == 0.15
    assert f[10] == 0.5 == e[10]


# ==========================================================================================
# pixel AP (sklearn-equivalent) and the AVGN / NoPrior closed forms
# ==========================================================================================


@pytest.mark.parametrize(
    "y, s, expected",
    [
        ([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], (1 + 2 / 3) / 2),  # R steps 1/2 at P=1, 1/2 at P=2/3
        ([1, 0, 1], [0.2, 0.2, 0.1], 0.5 * 0.5 + 0.5 * 2 / 3),  # tie group {.2}: P=1/2, R=1/2
        ([0, 0, 0], [0.3, 0.2, 0.1], 0.0),  # no positive: 0 (sklearn >= 1.1)
        ([1, 1, 1], [0.3, 0.2, 0.1], 1.0),
        ([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], 0.25),  # constant score: positive rate
        ([0, 1, 0, 1], [1, 0, 0, 0], 0.5),  # binary: R=0 -> AP = π = 1/2
    ],
)
def test_pixel_ap_hand(y, s, expected):
    assert pixel_ap(np.array(y), np.array(s)) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["continuous", "ties", "binary", "consensus"])
def test_pixel_ap_vs_sklearn(seed, kind):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < rng.uniform(0.05, 0.6)
    if kind == "continuous":
        s = rng.normal(size=n) + y
    elif kind == "ties":
        s = rng.integers(0, 6, n) + y * rng.integers(0, 3, n)
    elif kind == "binary":
        s = (rng.random(n) < 0.5).astype(float)
    else:
        s = rng.choice([0.0, 0.5, 1.0], n)
    s = s.astype(np.float32)
    assert pixel_ap(y, s) == pytest.approx(sk.average_precision_score(y, s), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_ap_vs_slow(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(40) < 0.4
    s = rng.integers(0, 8, 40) / 7.0
    assert pixel_ap(y, s) == pytest.approx(slow_ap(y, s), rel=1e-12)


def test_pixel_ap_rejects_non_binary_truth():
    with pytest.raises(ValueError, match="binary"):
        pixel_ap(np.array([0, 0.5, 1]), np.array([0.1, 0.2, 0.3]))


def _prf(pred, truth):
    tp = np.sum(pred & truth)
    return tp / pred.sum(), tp / truth.sum(), truth.mean()  # precision, recall, positive rate


@pytest.mark.parametrize("seed", SEEDS)
def test_noprior_piap_closed_form(seed):
    # AP(y_true = gt, y_score = binary) = R·P + (1 − R)·π
    rng = np.random.default_rng(seed)
    gt = rng.random((16, 16)) < 0.3
    pred = rng.random((16, 16)) < 0.5
    p, r, pi = _prf(pred, gt)
    assert pixel_ap(gt, pred.astype(float)) == pytest.approx(r * p + (1 - r) * pi, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_avgn_swapped_ap_closed_form(seed):
    # AP(y_true = infer, y_score = gt) = R'·P' + (1 − R')·q, P' = TP/(TP+FN), R' = TP/(TP+FP)
    rng = np.random.default_rng(seed)
    gt = rng.random((16, 16)) < 0.3
    infer = rng.random((16, 16)) < 0.5
    tp = np.sum(infer & gt)
    fp = np.sum(infer & ~gt)
    fn = np.sum(~infer & gt)
    p_, r_, q = tp / (tp + fn), tp / (tp + fp), infer.mean()
    got = piap_avgn_as_coded(infer, gt.astype(float))
    assert got == pytest.approx(r_ * p_ + (1 - r_) * q, rel=1e-12)
    # and it is not the correct orientation
    assert got != pytest.approx(pixel_ap(gt, infer.astype(float)))


# ==========================================================================================
# AVGN
# ==========================================================================================


@pytest.mark.parametrize(
    "scores, expected",
    [
        ([0.0, 0.1, 0.2, 0.3, 0.4, 0.9, 1.0, 0.5], (0.9 + 1.0) / 2),  # n = 8: top 2
        ([0.0, 0.1, 0.2, 0.7, 1.0], (0.7 + 1.0) / 2),  # n = 5: -5 // 4 = -2 -> top 2
        ([0.4] * 16, 0.4),
    ],
)
def test_avgn_confidence(scores, expected):
    assert avgn_confidence(np.array(scores)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "cious, thr, bb, expected",
    [
        ([0.3, 0.31, 0.9], 0.3, None, 2 / 3),  # strict: 0.3 fails
        ([0.1, 0.11, 0.05], 0.1, None, 1 / 3),  # two-source precision_at_10
        ([0.5, 0.2, 0.9], 0.3, [1, 0, 1], 1.0),  # bb == 0 excluded
    ],
)
def test_avgn_precision_at(cious, thr, bb, expected):
    assert avgn_precision_at(cious, thr, bb) == pytest.approx(expected)


@pytest.mark.parametrize(
    "cious, confs, bb, pr, f1",
    [
        ([0.5, 0.1, 0.9], [0.6, 0.7, 0.2], None, (0.5, 0.5), 0.5),  # TP, FP, FN
        ([0.3, 0.29], [0.5, 0.5], None, (0.5, 1.0), 2 / 3),  # cIoU >= .3 is TP; conf >= .5 detects
        ([0.0], [0.9], [0], (0.0, 1.0), 0.0),  # detection without objects: FP; no TP+FN -> R = 1
        ([0.9], [0.1], [0], (1.0, 1.0), 1.0),  # nothing detected, nothing to find
        ([0.1], [0.2], None, (1.0, 0.0), 0.0),  # missed: FN; no TP+FP -> P = 1
    ],
)
def test_avgn_precision_recall_f1(cious, confs, bb, pr, f1):
    assert avgn_precision_recall(cious, confs, bb) == pytest.approx(pr)
    assert avgn_f1(cious, confs, bb) == pytest.approx(f1)


def slow_avgn_pr(cious, confs, bbs, ciou_thr=0.3, conf_thr=0.5):
    tp = fp = fn = 0
    for c, f, b in zip(cious, confs, bbs):
        if b == 0:
            if f >= conf_thr:
                fp += 1
        elif f >= conf_thr:
            if c >= ciou_thr:
                tp += 1
            else:
                fp += 1
        else:
            fn += 1
    p = 1.0 if tp + fp == 0 else tp / (tp + fp)
    r = 1.0 if tp + fn == 0 else tp / (tp + fn)
    return p, r


@pytest.mark.parametrize("seed", SEEDS)
def test_avgn_pr_vs_slow(seed):
    rng = np.random.default_rng(seed)
    c, f, b = rng.random(40).round(1), rng.random(40).round(1), rng.integers(0, 3, 40)
    assert avgn_precision_recall(c, f, b) == pytest.approx(slow_avgn_pr(c, f, b))
    p, r = slow_avgn_pr(c, f, b)
    assert avgn_f1(c, f, b) == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    keep = b > 0
    assert avgn_precision_at(c, 0.3, b) == pytest.approx(slow_success(c[keep], 0.3, strict=True))


# 4x4: raw cos/τ map, +30 on the top half (8 px), −30 on the bottom half
AVGN_MAP = np.where(np.arange(16).reshape(4, 4) < 8, 30.0, -30.0)


def test_evaluator_avgn_single_and_two_source():
    gt0 = mask_from([0, 1, 4, 5])  # top-left 2x2: infer (top half) ∩ gt = 4 -> 4 / (4 + 4) = .5
    gt1 = mask_from([4, 5, 8, 9])  # ∩ top half = 2 -> 2 / (4 + 6) = .2
    ev = Evaluator("avgn", size=4)
    rec = ev.add([AVGN_MAP], GroundTruth([gt0]))
    assert rec["ciou"] == [0.5]
    # conf = mean of the top 4 scores = (30 + 1/.03) / (2/.03) = 0.95
    assert rec["conf"][0] == pytest.approx((30 + 1 / 0.03) / (2 / 0.03))
    # swapped PIAP: truth = infer (8 px), score = gt: P' = 4/4, R' = 4/8, q = 8/16 -> .5 + .25
    assert rec["piap"] == [pytest.approx(0.75)]
    assert pixel_ap(gt0 > 0, (AVGN_MAP > 0).astype(float)) == pytest.approx(0.5)  # correct AP: R=1, P=.5
    s = ev.summary()
    assert s["precision"] == s["precision@30"] == 1.0 and s["f1@30"] == 1.0 and s["piap"] == pytest.approx(0.75)

    ev2 = Evaluator("avgn", size=4)
    ev2.add([AVGN_MAP, AVGN_MAP], GroundTruth([gt0, gt1]))
    s2 = ev2.summary()
    assert s2["n_slots"] == 2
    assert s2["precision@30"] == 0.5  # slot 0: .5 > .3; slot 1: .2 fails
    assert s2["precision"] == s2["precision@10"] == 1.0  # two-source run reports > 0.1
    assert s2["f1@30"] == pytest.approx(0.5)  # slot 1: detected (conf .95) but cIoU < .3 -> FP -> F1 0


def test_evaluator_avgn_needs_one_map_per_source():
    with pytest.raises(ValueError):
        Evaluator("avgn", size=4).add([AVGN_MAP], GroundTruth([mask_from([0]), mask_from([1])]))


# ==========================================================================================
# NoPrior greedy matching vs our Hungarian matching; no-map samples
# ==========================================================================================

GT0 = mask_from(range(0, 8))  # rows 0-1 (8 px)
GT1 = mask_from(range(8, 12))  # row 2 (4 px)
# each piece has exactly 8 ones of 16 -> both median rules keep exactly those pixels
PIECE_A = mask_from([0, 1, 2, 3, 4, 8, 9, 10])
PIECE_B = mask_from(range(0, 8))
M0 = np.concatenate([PIECE_A, PIECE_A])  # stacked canvas (k = 2 pieces of 4x4)
M1 = np.concatenate([PIECE_B, PIECE_B])
# cIoU matrix: M0/GT0 = 5/(8+3) = 5/11, M0/GT1 = 3/(4+5) = 1/3, M1/GT0 = 8/8 = 1, M1/GT1 = 0/(4+8) = 0


def test_greedy_noprior_hand():
    r = greedy_match_noprior([M0, M1], [GT0, GT1])
    # M0 first takes GT0 (5/11 > 1/3); GT0 zeroed; M1 then scores 0 everywhere -> argmax -> piece 0
    assert r.cious == [pytest.approx(5 / 11), 0.0]
    assert r.matched == [0, 0] and r.taken_before == [False, True]
    # CAP of M0 on GT0: TP 5, FP 3 -> P = 5/8, R = 5/8, π = 1/2 -> 25/64 + 3/8·1/2 = 37/64
    assert r.caps == [pytest.approx(37 / 64), 0.0]
    assert r.true
    # the greedy result depends on the map order
    r2 = greedy_match_noprior([M1, M0], [GT0, GT1])
    assert r2.cious == [1.0, pytest.approx(1 / 3)]


def test_greedy_vs_hungarian_protocols():
    gt = GroundTruth([GT0, GT1], stacked=True)
    no = Evaluator("noprior", size=4)
    no.add([M0, M1], gt)
    sn = no.summary()
    assert sn["ciou@0.5"] == 0.0 and sn["ciou@0.3"] == 0.5  # entries [5/11, 0]
    assert sn["cap"] == pytest.approx(37 / 128)  # (37/64 + 0) / 2
    # PIAP: summed pieces = 2 on px 0-4, 1 on 5-7 and 8-10 -> minmax, sorted[8] = .5, strict -> px 0-4
    # in both pieces; TP 5 (piece 0), FP 5 (piece 1), positives 12 of 32:
    # R·P + (1−R)·π = 5/12·1/2 + 7/12·3/8 = 41/96
    assert sn["piap"] == pytest.approx(41 / 96)
    assert sn["true"] == 1.0
    ours = Evaluator("streamloc", size=4)
    rec = ours.add([M0, M1], gt)
    # Hungarian: M0 -> GT1 (1/3), M1 -> GT0 (1): total 4/3 > greedy's 5/11
    assert rec["ciou"] == [1.0, pytest.approx(1 / 3)]
    so = ours.summary()
    assert so["ciou@0.5"] == 0.5 and so["ciou@0.3"] == 1.0 and so["mean_ciou"] == pytest.approx(2 / 3)
    # order does not matter for ours
    ours2 = Evaluator("streamloc", size=4)
    assert ours2.add([M1, M0], gt)["ciou"] == rec["ciou"]


def test_optimal_match_hand_and_vs_bruteforce():
    assert optimal_match(np.array([[5 / 11, 1 / 3], [1.0, 0.0]])) == [(0, 1), (1, 0)]
    rng = np.random.default_rng(0)
    for n_maps, n_src in [(2, 2), (3, 2), (2, 3), (4, 4), (1, 3)]:
        c = rng.random((n_maps, n_src))
        total = sum(c[m, j] for m, j in optimal_match(c))
        best = 0.0
        if n_maps >= n_src:
            for perm in itertools.permutations(range(n_maps), n_src):
                best = max(best, sum(c[perm[j], j] for j in range(n_src)))
        else:
            for perm in itertools.permutations(range(n_src), n_maps):
                best = max(best, sum(c[i, perm[i]] for i in range(n_maps)))
        assert total == pytest.approx(best)
        assert len(optimal_match(c)) == min(n_maps, n_src)


def slow_greedy(bin_pieces_per_map, gts):
    gts = [g.copy() for g in gts]
    out, caps = [], []
    for pieces in bin_pieces_per_map:
        scores = [slow_ciou((pieces[i] >= 0.5).astype(float), gts[i]) for i in range(len(gts))]
        best = 0
        for i in range(1, len(scores)):
            if scores[i] > scores[best]:
                best = i
        out.append(scores[best])
        caps.append(slow_ap(gts[best] > 0, pieces[best]))
        gts[best] = np.zeros_like(gts[best])
    out += [0] * (len(gts) - len(bin_pieces_per_map))
    caps += [0] * (len(gts) - len(bin_pieces_per_map))
    return out, caps


@pytest.mark.parametrize("seed", SEEDS)
def test_greedy_vs_slow(seed):
    rng = np.random.default_rng(seed)
    k = 2
    gts = [(rng.random((6, 6)) < 0.4).astype(float) for _ in range(k)]
    maps = [rng.normal(size=(12, 6)) for _ in range(rng.integers(1, 4))]
    r = greedy_match_noprior(maps, gts)
    pieces = [[slow_bin_gt_as_coded(p) for p in np.split(m.astype(np.float32), k)] for m in maps]
    slow_cious, slow_caps = slow_greedy(pieces, gts)
    assert r.cious == pytest.approx(slow_cious)
    assert r.caps == pytest.approx(slow_caps)
    assert cap_noprior(maps, gts) == pytest.approx(slow_caps)


def test_noprior_no_map_sample():
    r = greedy_match_noprior([], [GT0, GT1])
    assert r.cious == [] and r.caps == [] and not r.true
    assert piap_noprior([], [GT0, GT1]) is None
    assert cap_noprior([], [GT0, GT1]) == []
    gt = GroundTruth([GT0, GT1], stacked=True)
    ev = Evaluator("noprior", size=4)
    ev.add([M0, M1], gt)
    before = ev.summary()
    ev.add([], gt)
    after = ev.summary()
    # contributes nothing to cIoU / CAP / PIAP, but counts as a counting failure
    for key in ("ciou@0.5", "ciou@0.3", "auc", "cap", "piap", "n_entries"):
        assert after[key] == before[key]
    assert after["true"] == 0.5 and after["n_samples"] == 2


def test_noprior_missing_and_extra_maps():
    # one map for two sources -> its entry + one 0
    r = greedy_match_noprior([M1], [GT0, GT1])
    assert r.cious == [1.0, 0] and r.caps == [1.0, 0] and not r.true
    # three maps -> three entries (the extra one scores 0 against zeroed GTs)
    r3 = greedy_match_noprior([M1, M0, M0], [GT0, GT1])
    assert len(r3.cious) == 3 and r3.cious[2] == 0.0 and not r3.true


def test_noprior_shared_image_unions_sources():
    # MUSIC duet (concat_num 1): both sources are unioned into one GT and k = 1
    ev = Evaluator("noprior", size=4)
    rec = ev.add([PIECE_B], GroundTruth([GT0, GT1]))
    assert rec["ciou"] == [pytest.approx(8 / 12)]  # rows 0-1 vs the union rows 0-2
    assert rec["true"] is True  # one map == k = 1, although the duet has two sources
    assert ev.summary()["n_entries"] == 1


def test_noprior_piap_sums_maps_before_binarising():
    a = mask_from(range(0, 8))  # 1 on px 0-7
    b = mask_from(range(8, 16))  # 1 on px 8-15 ...
    b[3, 3] = 2.0  # ... and 2 on px 15
    # sum = 1 everywhere except px 15 = 2 -> minmax 0 / 1 -> sorted[8] = 0 -> strict keeps px 15
    gt = mask_from([15])
    assert piap_noprior([a, b], [gt]) == pytest.approx(1.0)
    # map a alone keeps px 0-7 (thr = 1, the 1s survive): R = 0 -> AP = π = 1/16
    assert piap_noprior([a], [gt]) == pytest.approx(1 / 16)


@pytest.mark.parametrize("seed", SEEDS)
def test_piap_noprior_vs_slow(seed):
    rng = np.random.default_rng(seed)
    gts = [(rng.random((6, 6)) < 0.3).astype(float) for _ in range(2)]
    maps = [rng.normal(size=(12, 6)) for _ in range(2)]
    total = (maps[0].astype(np.float32) + maps[1].astype(np.float32)).astype(np.float64)
    pieces = [slow_bin_gt_as_coded(p) for p in np.split(total, 2)]
    y = np.concatenate([g.ravel() for g in gts])
    s = np.concatenate([p.ravel() for p in pieces])
    assert piap_noprior(maps, gts) == pytest.approx(slow_ap(y, s), rel=1e-9)


# ==========================================================================================
# DSOL class-aware cIoU and NSA
# ==========================================================================================

# three cluster maps (softmax-like values)
D0 = DSOL_MAP
D1 = np.full((4, 4), 0.1)
D2 = np.where(np.arange(16).reshape(4, 4) % 4 >= 2, 0.9, 0.2)  # right half .9, left half exactly .2
CORR = np.zeros((10, 3))
CORR[5, 0] = 1  # class 5 -> cluster 0
CORR[9, 1] = CORR[9, 2] = 1  # class 9 -> clusters 1 (primary = argmax) and 2
TOP_LEFT = mask_from([0, 1, 4, 5])
RIGHT_HALF = mask_from([2, 3, 6, 7, 10, 11, 14, 15])


def test_nsa_hand_le_vs_lt():
    # D1: all .1 <= .2 -> 1; D2: left half exactly .2 counts (<=), right half .9 does not -> .5
    assert nsa_dsol([D0, D1, D2], [1, 2], size=4) == pytest.approx(0.75)
    assert nsa_dsol([D0, D1, D2], [2], size=None, thr=0.2) == 0.5
    # the paper's strict "< τ" would give 0 on D2
    assert np.mean(D2 < 0.2) == 0.0
    assert math.isnan(nsa_dsol([D0], [], size=None))


@pytest.mark.parametrize("seed", SEEDS)
def test_nsa_vs_slow(seed):
    rng = np.random.default_rng(seed)
    maps = [rng.random((5, 5)).round(1) for _ in range(4)]
    silent = [0, 2, 3]
    fr = []
    for c in silent:
        fr.append(sum(1 for v in maps[c].ravel() if v <= 0.2) / 25)
    assert nsa_dsol(maps, silent, size=None) == pytest.approx(sum(fr) / len(fr))


def test_class_aware_ciou_dsol_cluster_sum_and_corr_matrix():
    # class 9 = clusters 1 + 2: sum = .3 left, 1.0 right -> > .5 -> right half = GT -> 1
    assert class_aware_ciou_dsol([D0, D1, D2], {9: RIGHT_HALF}, CORR, t=0.5, size=4) == 1.0
    # cluster 2 alone with t = .2: > .18 -> everything (.2 > .18) -> 8 / 16
    assert class_aware_ciou_dsol([D0, D1, D2], {9: RIGHT_HALF}, {9: 2}, t=0.2, size=4) == 0.5
    # two sounding classes: mean of 1 (class 5, t=.5) and 1 (class 9)
    both = class_aware_ciou_dsol([D0, D1, D2], {5: TOP_LEFT, 9: RIGHT_HALF}, CORR, t=0.5, size=4)
    assert both == 1.0
    # boxes (normbox xywh) instead of masks: top-left quarter of a 4x4 image
    assert class_aware_ciou_dsol([D0, D1, D2], {5: [[0.0, 0.0, 0.5, 0.5]]}, {5: 0}, t=0.5, size=4) == 1.0


def test_evaluator_dsol_hand():
    ev = Evaluator("dsol", size=4, cluster_of_class=CORR, t=0.5)
    r1 = ev.add([D0, D1, D2], GroundTruth([TOP_LEFT], class_ids=[5]))
    assert r1["ciou"] == 1.0 and r1["nsa"] == pytest.approx(0.75)  # silent clusters {1, 2}
    r2 = ev.add([D0, D1, D2], GroundTruth([RIGHT_HALF], class_ids=[9]))
    # silent = {0, 2}: cluster 2 belongs to class 9 but is not its primary (as coded).
    # D0: 8 px at .05 + 2 at .15 <= .2 -> 10/16; D2: 8/16 -> mean .5625
    assert r2["ciou"] == 1.0 and r2["nsa"] == pytest.approx(0.5625)
    s = ev.summary()
    assert s["nsa"] == pytest.approx((0.75 + 0.5625) / 2)
    assert s["ciou@0.3"] == 1.0 and s["ciou@0.5"] == 1.0


def test_dsol_ciou_at_03_uses_float_threshold():
    # relmax (t = .1) of a 0/1 map keeps its ones; cIoU = 12 / 40 = 0.3 exactly
    infer, gt = exact_point_three_maps()
    ev = Evaluator("dsol", size=8, t=0.1)  # class-agnostic tools.py mode
    rec = ev.add([infer], GroundTruth([gt]))
    assert rec["ciou"] == 0.3
    s = ev.summary()
    assert s["ciou@0.3"] == 0.0  # results[6] compares with 0.05 * 6 = 0.30000000000000004
    assert success_rate([rec["ciou"]], 0.3) == 1.0  # NoPrior's literal 0.3 would count it
    st = Evaluator("streamloc", size=8)
    st.add([infer], GroundTruth([gt]))
    assert st.summary()["ciou@0.3"] == 1.0
    npr = Evaluator("noprior", size=8)
    npr.add([infer], GroundTruth([gt]))
    assert npr.summary()["ciou@0.3"] == 1.0
    assert npr.summary()["auc"] == pytest.approx(0.275)  # but its AUC uses the float 0.05·i


def slow_dsol_ciou(binary, gt):
    num = den = 0.0
    for i in range(gt.shape[0]):
        for j in range(gt.shape[1]):
            num += binary[i, j] * (1.0 if gt[i, j] > 0 else 0.0)
            den += gt[i, j] + (binary[i, j] if gt[i, j] == 0 else 0.0)
    return num / den


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("t", [0.1, 0.2, 0.5])
def test_class_aware_ciou_dsol_vs_slow(seed, t):
    rng = np.random.default_rng(seed)
    maps = [rng.random((6, 6)).astype(np.float32) for _ in range(3)]
    gts = {0: (rng.random((6, 6)) < 0.4).astype(float), 1: (rng.random((6, 6)) < 0.4).astype(float)}
    mapping = {0: [0], 1: [1, 2]}
    vals = [
        slow_dsol_ciou(slow_relmax(maps[0], t), gts[0]),
        slow_dsol_ciou(slow_relmax(maps[1] + maps[2], t), gts[1]),
    ]
    assert class_aware_ciou_dsol(maps, gts, mapping, t=t, size=6) == pytest.approx(np.mean(vals))


# ==========================================================================================
# Mix-and-Localize CAP / PIAP (paper §4.4, Eq. 5)
# ==========================================================================================

G0 = np.array([[1, 0], [0, 0]])
G1 = np.array([[0, 0], [0, 1]])
MA = np.array([[0.1, 0.2], [0.3, 0.9]])  # ranks G1's pixel first
MB = np.array([[0.9, 0.2], [0.3, 0.1]])  # ranks G0's pixel first


def test_cap_mixloc_hand():
    # swapped pairing is perfect: AP(G0, MB) = AP(G1, MA) = 1
    assert cap_mixloc([MA, MB], [G0, G1]) == 1.0
    # class-aware (fixed pairing MA↔G0, MB↔G1): G0's pixel ranked last of 4 -> AP 1/4 each
    assert cap_mixloc([MA, MB], [G0, G1], permutation_invariant=False) == 0.25
    # labelled dict form: class 3 -> MB, class 8 -> MA
    assert cap_mixloc({3: MB, 8: MA}, {3: G0, 8: G1}, permutation_invariant=False) == 1.0
    # one map for two sources: best single AP (1) over two sources -> 1/2
    assert cap_mixloc([MA], [G0, G1]) == 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_cap_mixloc_vs_bruteforce(seed):
    rng = np.random.default_rng(seed)
    gts = [(rng.random((5, 5)) < 0.3).astype(int) for _ in range(2)]
    for g in gts:
        g[0, 0] = 1
    maps = [rng.random((5, 5)) for _ in range(3)]
    best = max((slow_ap(gts[0], maps[p[0]]) + slow_ap(gts[1], maps[p[1]])) / 2 for p in itertools.permutations(range(3), 2))
    assert cap_mixloc(maps, gts) == pytest.approx(best, rel=1e-12)


def test_piap_mixloc_hand_and_vs_slow():
    a = np.array([[0.9, 0.0], [0.1, 0.0]])
    b = np.array([[0.0, 0.1], [0.0, 0.9]])
    # mean map ranks the union (px 0 and 3) first -> AP 1
    assert piap_mixloc([a, b], [G0, G1]) == 1.0
    rng = np.random.default_rng(0)
    maps = [rng.random((5, 5)) for _ in range(2)]
    gts = [(rng.random((5, 5)) < 0.3).astype(int) for _ in range(2)]
    union = np.maximum(gts[0], gts[1])
    mean = [[(maps[0][i, j] + maps[1][i, j]) / 2 for j in range(5)] for i in range(5)]
    assert piap_mixloc(maps, gts) == pytest.approx(slow_ap(union, np.array(mean)), rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_class_aware_ciou_mixloc_vs_bruteforce(seed):
    rng = np.random.default_rng(seed)
    gts = [(rng.random((5, 5)) < 0.3).astype(float) for _ in range(3)]
    maps = [(rng.random((5, 5)) < 0.5).astype(float) for _ in range(2)]
    # 2 maps, 3 sources: every injective map -> source assignment, unpaired source scores 0
    best = max(sum(slow_ciou(maps[i], gts[p[i]]) for i in range(2)) for p in itertools.permutations(range(3), 2))
    assert class_aware_ciou_mixloc(maps, gts) == pytest.approx(best / 3, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_avgn_confidence_vs_slow(seed):
    s = np.random.default_rng(seed).random(int(np.random.default_rng(seed).integers(5, 40)))
    vals = sorted(s.tolist())
    n_top = math.ceil(len(vals) / 4)
    assert avgn_confidence(s) == pytest.approx(sum(vals[-n_top:]) / n_top)


def test_class_aware_ciou_mixloc():
    assert class_aware_ciou_mixloc([G1, G0], [G0, G1]) == 1.0
    assert class_aware_ciou_mixloc([G1, G0], [G0, G1], permutation_invariant=False) == 0.0
    # one binary map covering both objects, two sources: cIoU 1/2 with either, one unpaired -> .25
    assert class_aware_ciou_mixloc([np.maximum(G0, G1)], [G0, G1]) == 0.25


# ==========================================================================================
# streamloc protocol: no-map samples, silent suppression, counting
# ==========================================================================================


def test_streamloc_no_map_counts_zero_for_every_source():
    gt = GroundTruth([GT0, GT1], stacked=True)
    ev = Evaluator("streamloc", size=4)
    ev.add([M0, M1], gt)
    rec = ev.add([], gt)
    assert rec["ciou"] == [0.0, 0.0] and rec["ap"] == [0.0, 0.0] and rec["piap"] == 0.0
    s = ev.summary()
    assert s["n_sources"] == 4  # never dropped
    assert s["ciou@0.3"] == 0.5 and s["mean_ciou"] == pytest.approx((1 + 1 / 3) / 4)
    assert s["counting_accuracy"] == 0.5
    np.testing.assert_array_equal(s["counting_confusion"], [[0, 0, 0], [0, 0, 0], [1, 0, 1]])


def test_streamloc_shared_image_and_silent_suppression():
    top_half = mask_from(range(0, 8))
    silent = mask_from([4, 5, 8, 9])  # (1,0),(1,1) predicted, (2,0),(2,1) not -> 2/4 suppressed
    gt = GroundTruth([TOP_LEFT], silent_masks=[silent])
    ev = Evaluator("streamloc", size=4)
    rec = ev.add([top_half], gt)
    assert rec["ciou"] == [0.5]  # 4 / (4 + 4)
    assert rec["ap"] == [pytest.approx(0.5)]  # continuous AP = binary here: R = 1, P = 1/2
    assert rec["silent_suppression"] == [0.5]
    ev.add([], GroundTruth([TOP_LEFT], silent_masks=[silent]))  # nothing predicted: fully suppressed
    assert ev.summary()["silent_suppression"] == pytest.approx(0.75)


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_streamloc_fixed_threshold_vs_slow(threshold):
    """``threshold=t``: a pixel is predicted when (p - min) / (max - min) >= t (literal loops)."""
    rng = np.random.default_rng(11)
    maps = [rng.random((4, 4)), rng.random((4, 4)) ** 3]
    gt = GroundTruth([TOP_LEFT, mask_from([10, 11, 14, 15])], silent_masks=[mask_from([2, 3])])
    rec = Evaluator("streamloc", size=4, threshold=threshold).add(maps, gt)
    binary = []
    for m in maps:
        lo, hi = min(m.flat), max(m.flat)
        binary.append([[1.0 if (m[i, j] - lo) / (hi - lo) >= threshold else 0.0 for j in range(4)] for i in range(4)])
    cious = [[ciou(np.array(b), g) for g in gt.masks] for b in binary]
    best = max(((0, 1), (1, 0)), key=lambda mj: cious[0][mj[0]] + cious[1][mj[1]])
    assert sorted(rec["ciou"]) == pytest.approx(sorted([cious[0][best[0]], cious[1][best[1]]]))
    silent_cells = [(0, 2), (0, 3)]
    kept = sum(1 for i, j in silent_cells if not any(b[i][j] for b in binary))
    assert rec["silent_suppression"] == [pytest.approx(kept / 2)]


@pytest.mark.parametrize("protocol, threshold", [("streamloc", 1.5), ("streamloc", -0.1), ("ezvsl", 0.5)])
def test_threshold_option_rejects_bad_values(protocol, threshold):
    with pytest.raises(ValueError, match="threshold"):
        Evaluator(protocol, size=4, threshold=threshold)


def test_silent_suppression_hand_and_vs_slow():
    assert silent_suppression(np.array([[1, 0], [0, 0]]), [np.array([[1, 1], [0, 0]])]) == [0.5]
    assert silent_suppression(np.zeros((2, 2)), [np.zeros((2, 2))]) == []  # empty mask skipped
    rng = np.random.default_rng(0)
    pred = rng.random((6, 6)) < 0.5
    masks = [rng.random((6, 6)) < 0.3 for _ in range(3)]
    for mask, got in zip(masks, silent_suppression(pred, masks)):
        inside = [(i, j) for i in range(6) for j in range(6) if mask[i, j]]
        assert got == pytest.approx(sum(1 for i, j in inside if not pred[i, j]) / len(inside))


@pytest.mark.parametrize(
    "pred, true, acc, confusion",
    [
        ([1, 2, 3, 0], [1, 2, 2, 1], 0.5, [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]),
        ([2, 2], [2, 2], 1.0, [[0, 0, 0], [0, 0, 0], [0, 0, 2]]),
    ],
)
def test_counting(pred, true, acc, confusion):
    assert counting_accuracy(pred, true) == acc
    np.testing.assert_array_equal(counting_confusion(pred, true), confusion)


@pytest.mark.parametrize("seed", SEEDS)
def test_counting_vs_slow(seed):
    rng = np.random.default_rng(seed)
    p, t = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
    assert counting_accuracy(p, t) == sum(1 for a, b in zip(p, t) if a == b) / 30
    cm = counting_confusion(p, t, max_count=2)
    slow = np.zeros((3, 3), dtype=int)
    for a, b in zip(p, t):
        slow[min(b, 2), min(a, 2)] += 1
    np.testing.assert_array_equal(cm, slow)


# ==========================================================================================
# EZ-VSL end to end, protocol registry
# ==========================================================================================


def test_evaluator_ezvsl_flickr_consensus():
    consensus = gt_map_flickr(
        [[[0, 0, 128, 128]], [[64, 64, 192, 192]], [[64, 64, 128, 128], [128, 128, 256, 256]]], size=4
    )
    ev = Evaluator("ezvsl", size=4)
    rec = ev.add([np.where(np.arange(16).reshape(4, 4) < 8, 1.0, 0.0)], GroundTruth([consensus]))
    # infer = rows 0-1: Σ infer·gt = 1 + 2 = 3; Σgt = 6; infer on gt == 0: 2 + 1 = 3 -> 3 / 9
    assert rec["ciou"] == pytest.approx(1 / 3)
    s = ev.summary()
    assert s["ap50"] == 0.0 and s["mean_ciou"] == pytest.approx(1 / 3)
    assert s["auc"] == pytest.approx(0.3 + 0.025)  # 1 up to x = .3, 0 from x = .35


def test_evaluator_ezvsl_upsamples_like_manual_pipeline():
    rng = np.random.default_rng(0)
    m7 = rng.normal(size=(7, 7))
    gt = gt_map_vggss([[0.2, 0.3, 0.6, 0.9]])
    for method in ("torch_bilinear_ac", "torch_bicubic"):
        ev = Evaluator("ezvsl", upsample=method)
        got = ev.add([m7], GroundTruth([gt]))["ciou"]
        assert got == ciou(binarize_median_ge(upsample(m7, 224, method)), gt)


def test_ezvsl_rejects_several_maps():
    with pytest.raises(ValueError):
        Evaluator("ezvsl", size=4).add([TOP_LEFT, TOP_LEFT], GroundTruth([TOP_LEFT]))


def test_protocol_registry():
    assert M.PROTOCOLS == {"ezvsl", "avgn", "noprior", "dsol", "streamloc"}
    with pytest.raises(ValueError) as err:
        Evaluator("lvs")
    for name in M.PROTOCOLS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown Evaluator options"):
        Evaluator("ezvsl", thr=0.5)


def test_gt_shape_checked():
    with pytest.raises(ValueError):
        Evaluator("ezvsl", size=8).add([TOP_LEFT], GroundTruth([TOP_LEFT]))
