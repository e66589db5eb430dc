"""Tests of streamloc.ioi: kernel vs the literal reference, edge cases, validation, API."""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from streamloc import ioi
from streamloc.ioi import RULES, ObjectGroup, identify_objects, identify_objects_batch


def _load_reference():
    # loaded by path: tests/ is not a package, and the reference must not be importable by the
    # library by accident
    path = pathlib.Path(__file__).resolve().parent / "ioi_reference.py"
    spec = importlib.util.spec_from_file_location("_streamloc_ioi_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _load_reference()
NAMES = ("sound_map", "features", "background")


# ----------------------------------------------------------------------------------------------
# input generators
# ----------------------------------------------------------------------------------------------


def make_scene(rng, c, h, w):
    """Inputs resembling NoPrior's: L2-normalised cell features clustered around 0-3 object
    prototypes and a background prototype, a cosine sound map against an audio vector made of the
    sounding prototypes (plus some background leakage), F^ = F * S, and E_n = the official
    mean of F^ * Neg over all cells."""
    n_obj = int(rng.integers(0, 4))
    n_sound = int(rng.integers(0, n_obj + 1)) if n_obj else 0
    protos = rng.standard_normal((n_obj + 1, c))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    label = np.zeros((h, w), np.int64)
    rows, cols = np.mgrid[0:h, 0:w]
    for k in range(1, n_obj + 1):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.15, 0.45) * h + 0.5, rng.uniform(0.15, 0.45) * w + 0.5
        label[((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0] = k
    sigma = rng.uniform(0.2, 1.0)
    feats = protos[label] + sigma * rng.standard_normal((h, w, c)) / np.sqrt(c)
    feats /= np.linalg.norm(feats, axis=2, keepdims=True)
    aud = protos[1 : n_sound + 1].sum(0) + rng.uniform(0.0, 0.6) * protos[0]
    aud = aud + 0.3 * rng.standard_normal(c) / np.sqrt(c)
    aud /= np.linalg.norm(aud)
    smap = np.clip(feats @ aud + rng.normal(0, 0.05, (h, w)), -1, 1)
    fhat = feats * smap[..., None]
    neg = 1.0 - 1.0 / (1.0 + np.exp(-(smap - 0.4) / 0.03))
    bg = (fhat * neg[..., None]).mean(axis=(0, 1))
    return (smap.astype(np.float32), np.ascontiguousarray(fhat.transpose(2, 0, 1), np.float32),
            bg.astype(np.float32))


def make_noise(rng, c, h, w):
    """Unstructured: a uniform map in [-1, 1], random unit features times the map, E_n = mean
    of the low-map cells."""
    smap = rng.uniform(-1, 1, (h, w))
    feats = rng.standard_normal((c, h, w))
    feats /= np.linalg.norm(feats, axis=0, keepdims=True)
    fhat = feats * smap
    low = smap < 0.3
    bg = fhat[:, low].mean(axis=1) if low.any() else np.zeros(c)
    return smap.astype(np.float32), fhat.astype(np.float32), bg.astype(np.float32)


def make_quantized(rng, c, h, w):
    """Coarse grids of values, so that distances and inner products tie exactly: drives the
    kernel's exact (float64) fallback."""
    smap = rng.integers(-1, 5, (h, w)) / 4.0
    fhat = rng.integers(-1, 2, (c, h, w)) * 0.5 * smap
    bg = rng.integers(-1, 2, c) * 0.25
    return smap.astype(np.float32), fhat.astype(np.float32), bg.astype(np.float32)


def make_near_tie(rng, c, h, w):
    """Cells placed within ~1e-8..1e-4 (relative) of the decision boundary of the first
    iteration -- the bisector of E_t = F^(seed) and E_n (official) or the hyperplane
    <F, E_t> = <F, E_n> (paper) -- so that float32 rounding alone could flip the decisions."""
    n = h * w
    smap = rng.uniform(-0.5, 0.8, n)
    seed = int(rng.integers(n))
    smap[seed] = 0.95
    e_t = rng.standard_normal(c) / np.sqrt(c)
    e_n = 0.5 * rng.standard_normal(c) / np.sqrt(c)
    axis = e_t - e_n
    unit = axis / np.linalg.norm(axis)
    feats = np.empty((n, c))
    for p in range(n):
        v = rng.standard_normal(c) / np.sqrt(c)
        v -= (v @ unit) * unit  # on the boundary hyperplane through 0
        offset = rng.choice([-1, 1]) * 10.0 ** rng.uniform(-8, -4)
        if rng.random() < 0.5:  # official rule: the bisector of E_t and E_n, shifted by -1e-6
            feats[p] = 0.5 * (e_t + e_n) + v - 1e-6 + offset * axis
        else:  # paper rule: <F, E_t - E_n> = 0
            feats[p] = v + offset * axis
    feats[seed] = e_t
    return (smap.reshape(h, w).astype(np.float32),
            np.ascontiguousarray(feats.T.reshape(c, h, w), np.float32), e_n.astype(np.float32))


KINDS = {"scene": make_scene, "noise": make_noise, "quantized": make_quantized,
         "near_tie": make_near_tie}

# (kind, rule, c, h, w, eps, tau1, tau2, max_iter, count)
RANDOM_TABLE = [
    ("scene", "official", 16, 7, 7, 0.1, 0.7, 0.6, None, 60),
    ("scene", "official", 64, 7, 7, 0.1, 0.7, 0.6, None, 30),
    ("scene", "official", 32, 5, 9, 0.1, 0.7, 0.6, None, 30),
    ("scene", "official", 8, 3, 4, 0.1, 0.7, 0.6, None, 40),
    ("scene", "official", 64, 7, 7, 0.2, 0.8, 0.5, None, 20),
    ("scene", "official", 64, 7, 7, 0.05, 0.6, 0.7, None, 20),
    ("scene", "official", 24, 14, 14, 0.1, 0.7, 0.6, None, 8),
    ("scene", "official", 64, 14, 14, 0.1, 0.7, 0.6, 40, 6),
    ("scene", "official", 512, 7, 7, 0.1, 0.7, 0.6, None, 8),
    ("scene", "official", 512, 14, 14, 0.1, 0.7, 0.6, 8, 6),
    ("noise", "official", 16, 7, 7, 0.1, 0.7, 0.6, None, 30),
    ("quantized", "official", 4, 5, 5, 0.1, 0.7, 0.6, None, 60),
    ("near_tie", "official", 64, 7, 7, 0.1, 0.7, 0.6, 4, 20),
    ("near_tie", "official", 512, 7, 7, 0.1, 0.7, 0.6, 3, 6),
    ("scene", "paper", 16, 7, 7, 0.1, 0.7, 0.6, None, 60),
    ("scene", "paper", 64, 7, 7, 0.1, 0.7, 0.6, None, 30),
    ("scene", "paper", 32, 5, 9, 0.1, 0.7, 0.6, None, 30),
    ("scene", "paper", 8, 3, 4, 0.1, 0.7, 0.6, None, 40),
    ("scene", "paper", 64, 7, 7, 0.3, 0.8, 0.5, None, 20),
    ("scene", "paper", 64, 7, 7, 0.05, 0.6, 0.3, None, 20),
    ("scene", "paper", 24, 14, 14, 0.1, 0.7, 0.6, None, 8),
    ("scene", "paper", 512, 7, 7, 0.1, 0.7, 0.6, None, 8),
    ("scene", "paper", 512, 14, 14, 0.1, 0.7, 0.6, None, 8),
    ("noise", "paper", 16, 7, 7, 0.1, 0.7, 0.6, None, 30),
    ("quantized", "paper", 4, 5, 5, 0.1, 0.7, 0.6, None, 60),
    ("near_tie", "paper", 64, 7, 7, 0.1, 0.7, 0.6, 4, 20),
    ("near_tie", "paper", 512, 7, 7, 0.1, 0.7, 0.6, 3, 6),
]


def _table_id(row):
    kind, rule, c, h, w, eps, tau1, tau2, max_iter, count = row
    return f"{kind}-{rule}-c{c}-{h}x{w}-eps{eps}-t{tau1}-{tau2}-mi{max_iter}"


def _table_inputs(row):
    kind, _rule, c, h, w = row[:5]
    seed = sum(map(ord, _table_id(row)))  # fixed, distinct per row
    rng = np.random.default_rng(seed)
    for _ in range(row[-1]):
        yield KINDS[kind](rng, c, h, w)


def _kernel_stats(smap, feats, bg, *, eps, tau1, tau2, rule, max_iter=None, tol_scale=1.0):
    n = smap.size
    limit = n + 1 if max_iter is None else min(max_iter, n + 1)
    ints = ioi._ioi_kernel(smap, feats, bg, eps, tau1, tau2, rule == "paper", limit, tol_scale)[0]
    # [status, n_groups, n_iter, n_background, n_exact]
    return ints[:5].tolist()


def assert_matches_reference(groups, expected, shape):
    h, w = shape
    assert len(groups) == len(expected["groups"])
    for got, exp in zip(groups, expected["groups"]):
        assert isinstance(got, ObjectGroup)
        assert got.members.dtype == np.int64
        assert got.members.tolist() == exp["members"]
        assert got.vectors.dtype == np.float32
        np.testing.assert_array_equal(got.vectors, np.asarray(exp["vectors"], np.float32))
        assert got.cells.dtype == np.bool_ and got.cells.shape == (h, w)
        assert np.flatnonzero(got.cells).tolist() == exp["cells"]
        assert got.map.dtype == np.float32 and got.map.shape == (h, w)
        np.testing.assert_allclose(got.map.ravel(), exp["map"], rtol=1e-5, atol=1e-5)
        assert got.seed == exp["seed"]
        assert all(type(v) is int for v in got.seed)
        assert type(got.score) is float
        assert got.score == pytest.approx(exp["score"], rel=1e-12, abs=1e-12)


def assert_same_groups(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.members, y.members)
        np.testing.assert_array_equal(x.vectors, y.vectors)
        np.testing.assert_array_equal(x.cells, y.cells)
        np.testing.assert_array_equal(x.map, y.map)
        assert x.seed == y.seed
        assert x.score == y.score


# ----------------------------------------------------------------------------------------------
# kernel == literal reference on random inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", RANDOM_TABLE, ids=_table_id)
def test_kernel_matches_reference(row):
    _kind, rule, _c, h, w, eps, tau1, tau2, max_iter, _count = row
    opts = dict(eps=eps, tau1=tau1, tau2=tau2, rule=rule, max_iter=max_iter)
    for smap, feats, bg in _table_inputs(row):
        expected = REF.reference_identify(smap, feats, bg, **opts)
        assert_matches_reference(identify_objects(smap, feats, bg, **opts), expected, (h, w))
        # the same with every decision forced through the exact float64 path
        forced = ioi._run_one(smap, feats, bg, eps, tau1, tau2, rule == "paper", max_iter,
                              NAMES, tol_scale=math.inf)
        assert_matches_reference(forced, expected, (h, w))


@pytest.mark.parametrize("rule", RULES)
def test_random_set_is_not_vacuous(rule):
    """Over the random set of the table above, every outcome the comparison is meant to cover
    did occur (the kernel equals the reference there, so its statistics are the reference's)."""
    count = {"0 groups": 0, "1 group": 0, ">=2 groups": 0, "background rejections": 0,
             "exact fallbacks": 0, "multi-member groups": 0, "iterations > 1": 0}
    for row in RANDOM_TABLE:
        if row[1] != rule:
            continue
        _kind, _rule, _c, _h, _w, eps, tau1, tau2, max_iter, _count = row
        opts = dict(eps=eps, tau1=tau1, tau2=tau2, rule=rule, max_iter=max_iter)
        for smap, feats, bg in _table_inputs(row):
            _status, n_groups, n_iter, n_bg, n_exact = _kernel_stats(smap, feats, bg, **opts)
            count["0 groups" if n_groups == 0 else "1 group" if n_groups == 1 else
                  ">=2 groups"] += 1
            count["background rejections"] += n_bg
            count["exact fallbacks"] += n_exact
            count["iterations > 1"] += n_iter > 1
            groups = identify_objects(smap, feats, bg, **opts)
            count["multi-member groups"] += sum(len(g.members) > 1 for g in groups)
    required = dict(count)
    if rule == "paper":
        # the paper rule's regions are wide; merged bank entries are rare there
        required.pop("multi-member groups")
    assert all(v > 0 for v in required.values()), count


@pytest.mark.parametrize("rule", RULES)
def test_near_tie_set_needs_the_exact_fallback(rule):
    """The near-tie inputs are sensitive: with the float32 error bounds set to zero (decisions
    from float32 values whenever they differ at all) the kernel disagrees with the reference on
    some of them, while with the bounds (test above) it never does."""
    mismatches = 0
    for row in RANDOM_TABLE:
        if row[0] != "near_tie" or row[1] != rule:
            continue
        _kind, _rule, _c, h, w, eps, tau1, tau2, max_iter, _count = row
        for smap, feats, bg in _table_inputs(row):
            expected = REF.reference_identify(smap, feats, bg, eps=eps, tau1=tau1, tau2=tau2,
                                              rule=rule, max_iter=max_iter)
            unguarded = ioi._run_one(smap, feats, bg, eps, tau1, tau2, rule == "paper",
                                     max_iter, NAMES, tol_scale=0.0)
            try:
                assert_matches_reference(unguarded, expected, (h, w))
            except AssertionError:
                mismatches += 1
    assert mismatches > 0


# ----------------------------------------------------------------------------------------------
# edge cases
# ----------------------------------------------------------------------------------------------


def _unit(rng, c):
    v = rng.standard_normal(c)
    return v / np.linalg.norm(v)


def _check_both(smap, feats, bg, **opts):
    """Kernel (default and forced-exact) == reference; returns the kernel's groups."""
    expected = REF.reference_identify(smap, feats, bg, **opts)
    groups = identify_objects(smap, feats, bg, **opts)
    assert_matches_reference(groups, expected, smap.shape)
    forced = ioi._run_one(np.asarray(smap, np.float32), np.asarray(feats, np.float32),
                          np.asarray(bg, np.float32), opts.get("eps", 0.1), opts.get("tau1", 0.7),
                          opts.get("tau2", 0.6), opts.get("rule", "official") == "paper",
                          opts.get("max_iter"), NAMES, tol_scale=math.inf)
    assert_matches_reference(forced, expected, smap.shape)
    return groups


def test_map_below_eps():
    rng = np.random.default_rng(3)
    c, h, w = 32, 3, 4
    smap = np.full((h, w), 0.05, np.float32)
    smap[1, 2] = 0.08
    feats = (rng.standard_normal((c, h, w)) * smap).astype(np.float32)
    bg = np.zeros(c, np.float32)
    # paper rule: checked before the first iteration -> nothing
    assert _check_both(smap, feats, bg, rule="paper") == []
    # official rule: the mandatory first iteration runs anyway and its entry stands as an object
    groups = _check_both(smap, feats, bg, rule="official")
    assert _kernel_stats(smap, feats, bg, eps=0.1, tau1=0.7, tau2=0.6, rule="official")[2] == 1
    assert len(groups) == 1
    (g,) = groups
    assert g.members.tolist() == [0] and g.seed == (1, 2)
    assert g.cells[1, 2]
    np.testing.assert_array_equal(g.vectors[0], feats[:, 1, 2])
    assert g.score == pytest.approx(float(smap[g.cells].astype(np.float64).mean()))
    # ... unless that entry is background-like
    assert identify_objects(smap, feats, feats[:, 1, 2].copy(), rule="official") == []


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("value", [0.5, 0.05])
def test_one_by_one_map(rule, value):
    rng = np.random.default_rng(4)
    smap = np.array([[value]], np.float32)
    feats = (rng.standard_normal((16, 1, 1)) * value).astype(np.float32)
    bg = (0.1 * rng.standard_normal(16)).astype(np.float32)
    groups = _check_both(smap, feats, bg, rule=rule)
    if rule == "paper" and value < 0.1:
        assert groups == []
    else:
        assert len(groups) == 1
        assert groups[0].seed == (0, 0) and groups[0].cells.tolist() == [[True]]
        assert groups[0].score == pytest.approx(value)


@pytest.mark.parametrize("rule", RULES)
def test_argmax_ties_first_index_wins(rule):
    rng = np.random.default_rng(5)
    c, h, w = 16, 3, 4
    smap = np.full((h, w), -0.2, np.float32)
    smap.flat[5] = 0.9  # (1, 1)
    smap.flat[2] = 0.9  # (0, 2): same value, earlier flat index
    a, b = _unit(rng, c), _unit(rng, c)
    b -= (b @ a + 0.3) * a  # <a, b> < 0: two distinct objects under both rules
    b /= np.linalg.norm(b)
    feats = np.zeros((c, h, w))
    feats[:, 0, 2] = a
    feats[:, 1, 1] = b
    feats *= smap
    feats = feats.astype(np.float32)
    bg = np.zeros(c, np.float32)
    groups = _check_both(smap, feats, bg, rule=rule)
    assert [g.seed for g in groups][:2] == [(0, 2), (1, 1)]


def test_all_cells_claimed_in_one_step():
    rng = np.random.default_rng(6)
    c, h, w = 32, 4, 5
    u = _unit(rng, c)
    smap = rng.uniform(0.5, 1.0, (h, w)).astype(np.float32)
    feats = (u[:, None, None] * smap).astype(np.float32)
    bg = (-0.1 * u).astype(np.float32)
    groups = _check_both(smap, feats, bg, rule="official")
    assert _kernel_stats(smap, feats, bg, eps=0.1, tau1=0.7, tau2=0.6, rule="official")[2] == 1
    assert len(groups) == 1
    assert groups[0].cells.all()
    assert groups[0].score == pytest.approx(float(smap.astype(np.float64).mean()))


@pytest.mark.parametrize("rule", RULES)
def test_constant_map(rule):
    rng = np.random.default_rng(7)
    smap, feats, bg = make_scene(rng, 16, 6, 6)
    smap = np.full_like(smap, 0.5)
    feats = (feats / np.maximum(np.abs(feats).max(), 1e-6) * 0.5).astype(np.float32)
    groups = _check_both(smap, feats, bg, rule=rule)
    assert groups and groups[0].seed == (0, 0)


def test_zero_features_official():
    c, h, w = 8, 3, 3
    smap = np.linspace(-0.5, 0.9, h * w).reshape(h, w).astype(np.float32)
    feats = np.zeros((c, h, w), np.float32)
    bg = np.zeros(c, np.float32)
    groups = _check_both(smap, feats, bg, rule="official")
    # d_obj == d_bg everywhere -> nothing claimed, one iteration; the zero entry has cosine 0
    # with E_n, so it is not background: one object without cells
    assert len(groups) == 1
    (g,) = groups
    assert g.members.tolist() == [0] and g.seed == (2, 2) and not g.cells.any()
    assert g.score == 0.0
    np.testing.assert_allclose(g.map, -math.sqrt(c) * 1e-6, rtol=1e-5)


def test_zero_features_paper():
    c, h, w = 8, 3, 3
    smap = np.linspace(-0.5, 0.9, h * w).reshape(h, w).astype(np.float32)
    feats = np.zeros((c, h, w), np.float32)
    groups = _check_both(smap, feats, np.zeros(c, np.float32), rule="paper")
    # only the seed is ever claimed; zero vectors never merge -> one object per cell above eps
    assert len(groups) == int((smap > 0.1).sum())
    assert all(g.cells.sum() == 1 for g in groups)
    # with a nonzero background as well
    _check_both(smap, feats, np.ones(c, np.float32), rule="paper")


@pytest.mark.parametrize("rule", RULES)
def test_max_iter(rule):
    rng = np.random.default_rng(8)
    for _ in range(10):
        smap, feats, bg = make_noise(rng, 8, 6, 6)
        groups = _check_both(smap, feats, bg, rule=rule, max_iter=2)
        assert all(g.members.max() < 2 for g in groups)
        assert _kernel_stats(smap, feats, bg, eps=0.1, tau1=0.7, tau2=0.6, rule=rule,
                             max_iter=2)[2] <= 2


def test_float32_overflow_in_the_fast_path_is_exact():
    # finite float32 values whose squares overflow float32: the float64 path takes over
    rng = np.random.default_rng(9)
    smap, feats, bg = make_scene(rng, 16, 5, 5)
    feats = feats.copy()
    feats[:, 0, 0] *= np.float32(3e19)
    for rule in RULES:
        groups = _check_both(smap, feats, bg, rule=rule)
        for g in groups:
            assert np.isfinite(g.map).all()


# ----------------------------------------------------------------------------------------------
# input handling and validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_dtypes_and_layouts(rule):
    rng = np.random.default_rng(10)
    smap, feats, bg = make_scene(rng, 16, 7, 7)
    base = identify_objects(smap, feats, bg, rule=rule)
    variants = [
        (smap.astype(np.float64), feats.astype(np.float64), bg.astype(np.float64)),
        (np.asfortranarray(smap), np.asfortranarray(feats), bg),
        (smap.T.copy().T, feats.transpose(0, 2, 1).copy().transpose(0, 2, 1),
         bg[::-1].copy()[::-1]),
        (smap.tolist(), feats.tolist(), bg.tolist()),
    ]
    for s, f, b in variants:
        assert_same_groups(identify_objects(s, f, b, rule=rule), base)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("which", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(rule, which, bad):
    rng = np.random.default_rng(11)
    inputs = dict(zip(NAMES, make_scene(rng, 8, 4, 4)))
    arr = inputs[which].copy()
    arr.flat[arr.size // 2] = bad
    inputs[which] = arr
    with pytest.raises(ValueError, match=which):
        identify_objects(inputs["sound_map"], inputs["features"], inputs["background"], rule=rule)


def test_float64_values_too_large_for_float32_raise():
    rng = np.random.default_rng(12)
    smap, feats, bg = make_scene(rng, 8, 4, 4)
    feats = feats.astype(np.float64)
    feats[0, 0, 0] = 1e300
    with pytest.raises(ValueError, match="features"):
        identify_objects(smap, feats, bg)


_S, _F, _B = (3, 4), (8, 3, 4), (8,)


@pytest.mark.parametrize(
    "smap_shape, feat_shape, bg_shape, message",
    [
        ((12,), _F, _B, "sound_map"),
        ((1, 3, 4), _F, _B, "sound_map"),
        (_S, (3, 4), _B, "features"),
        (_S, (8, 4, 3), _B, "features"),
        (_S, (8, 3, 5), _B, "features"),
        (_S, _F, (7,), "background"),
        (_S, _F, (8, 1), "background"),
        (_S, _F, (), "background"),
        ((0, 4), (8, 0, 4), _B, "sound_map"),
        (_S, (0, 3, 4), (0,), "features"),
    ],
)
def test_wrong_shapes_raise(smap_shape, feat_shape, bg_shape, message):
    with pytest.raises(ValueError, match=message):
        identify_objects(np.zeros(smap_shape, np.float32), np.zeros(feat_shape, np.float32),
                         np.zeros(bg_shape, np.float32))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(rule="unknown"), "rule"),
        (dict(rule="Official"), "rule"),
        (dict(rule=None), "rule"),
        (dict(eps=-0.1), "eps"),
        (dict(eps=float("nan")), "eps"),
        (dict(eps=float("inf")), "eps"),
        (dict(tau1=1.5), "tau1"),
        (dict(tau1=float("nan")), "tau1"),
        (dict(tau2=-1.01), "tau2"),
        (dict(tau2="high"), "tau"),
        (dict(max_iter=0), "max_iter"),
        (dict(max_iter=2.0), "max_iter"),
        (dict(max_iter=True), "max_iter"),
    ],
)
def test_bad_options_raise(options, message):
    rng = np.random.default_rng(13)
    smap, feats, bg = make_scene(rng, 8, 4, 4)
    with pytest.raises(ValueError, match=message):
        identify_objects(smap, feats, bg, **options)
    with pytest.raises(ValueError, match=message):
        identify_objects_batch(smap[None], feats[None], bg[None], **options)


def test_wrong_dtype_raises():
    with pytest.raises(ValueError, match="sound_map"):
        identify_objects(np.zeros((2, 2), complex), np.zeros((3, 2, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="features"):
        identify_objects(np.zeros((2, 2)), np.zeros((3, 2, 2), object), np.zeros(3))


def test_options_at_the_limits_are_accepted():
    rng = np.random.default_rng(14)
    smap, feats, bg = make_scene(rng, 8, 4, 4)
    for opts in (dict(eps=0.0), dict(tau1=-1.0, tau2=1.0), dict(tau1=1.0, tau2=-1.0),
                 dict(max_iter=1), dict(max_iter=np.int64(3)), dict(eps=5.0)):
        _check_both(smap, feats, bg, **opts)


# ----------------------------------------------------------------------------------------------
# batch
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_batch_equals_per_item(rule):
    rng = np.random.default_rng(15)
    items = [make_scene(rng, 16, 7, 7) for _ in range(4)] + [make_noise(rng, 16, 7, 7)]
    smaps, feats, bgs = (np.stack(x) for x in zip(*items))
    batched = identify_objects_batch(smaps, feats, bgs, rule=rule, tau2=0.5)
    assert len(batched) == len(items)
    for got, (s, f, b) in zip(batched, items):
        assert_same_groups(got, identify_objects(s, f, b, rule=rule, tau2=0.5))
    # float64, non-contiguous batch
    batched64 = identify_objects_batch(smaps.astype(np.float64)[::-1][::-1],
                                       np.asfortranarray(feats), bgs.astype(np.float64),
                                       rule=rule, tau2=0.5)
    for a, b in zip(batched64, batched):
        assert_same_groups(a, b)


def test_batch_validation():
    rng = np.random.default_rng(16)
    items = [make_scene(rng, 8, 4, 4) for _ in range(3)]
    smaps, feats, bgs = (np.stack(x) for x in zip(*items))
    with pytest.raises(ValueError, match="features"):
        identify_objects_batch(smaps, feats[:2], bgs)
    with pytest.raises(ValueError, match="backgrounds"):
        identify_objects_batch(smaps, feats, bgs[:, :4])
    with pytest.raises(ValueError, match="sound_maps"):
        identify_objects_batch(smaps[0], feats, bgs)
    bad = feats.copy()
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"features\[2\]"):
        identify_objects_batch(smaps, bad, bgs)
    assert identify_objects_batch(smaps[:0], feats[:0], bgs[:0]) == []


# ----------------------------------------------------------------------------------------------
# API surface
# ----------------------------------------------------------------------------------------------


def test_object_group_is_frozen_and_well_typed():
    rng = np.random.default_rng(17)
    smap, feats, bg = make_scene(rng, 16, 7, 7)
    groups = identify_objects(smap, feats, bg, tau1=1.0)
    assert groups
    g = groups[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.score = 1.0  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(ObjectGroup)] == [
        "members", "vectors", "cells", "map", "seed", "score"]
    assert g.vectors.shape == (len(g.members), 16)
    assert np.all(np.diff(g.members) > 0)
    firsts = [int(x.members[0]) for x in groups]
    assert firsts == sorted(firsts)


def test_rules_constant():
    assert RULES == ("official", "paper")


def test_docstring_examples():
    result = doctest.testmod(ioi, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_import_compiles_nothing():
    code = (
        "import sys\n"
        "import streamloc.ioi as m\n"
        "from numba.core.registry import CPUDispatcher\n"
        "ds = [v for v in vars(m).values() if isinstance(v, CPUDispatcher)]\n"
        "assert len(ds) > 5, ds\n"
        "compiled = [d.py_func.__name__ for d in ds if d.signatures]\n"
        "assert not compiled, compiled\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok', len(ds))\n"
    )
    root = pathlib.Path(ioi.__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
