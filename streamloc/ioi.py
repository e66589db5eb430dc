"""Iterative Object Identification (IOI) and union-find grouping, numba-accelerated.

NoPrior (CVPR 2024, Sec. 3.3-3.4, Algorithm 1) finds the sound-making objects of a frame without
knowing how many there are: it repeatedly takes the cell with the highest sound-associated score,
uses that cell's feature as an object vector, claims the cells that look more like that object
than like the background, removes them from the score map and goes on; the object vectors found
are then cleaned of background look-alikes and merged by cosine similarity (union-find).

This module is pure compute: numpy in, numpy out, no torch and no I/O.

Two rules are offered (:data:`RULES`):

``"official"`` (default)
    What the released code does (``lvs_loss``): Euclidean distances as torch's
    ``PairwiseDistance`` computes them (``||a - b + 1e-6||``), the loop runs at least once, the
    member map is ``-d_obj`` and a cell can be claimed only once.
``"paper"``
    Algorithm 1 as printed: inner products, ``while max(S) > eps``, the member map is the inner
    product map, a region may overlap earlier members' regions.  Our one addition: the seed
    cell always belongs to its own region, so that every iteration makes progress (printed
    literally, the loop never ends when ``<E_p, E_p> <= <E_p, E_n>``, since nothing is removed
    from ``S``).

Numerics.  The inputs are rounded to float32 once (pass float32, C-contiguous arrays to avoid a
copy).  Every decision -- ``d_obj < d_bg``, ``R_p > R_n``, ``cos > tau`` -- is defined on float64
sums over the channels taken in channel order, so it is reproducible and independent of SIMD
width or machine (``tests/streamloc/ioi_reference.py`` is the literal definition).  The kernels
evaluate the per-iteration distances / inner products in float32, vectorised across cells,
together with a rigorous error bound, and recompute the float64 sum only for the rare cells (or
bank pairs) whose float32 margin is smaller than that bound; the decisions are therefore exactly
those of the float64 definition.  Output maps are float32 (within ~1e-6 relative of the float64
values).

Edge cases of the official rule, reproduced on purpose: the loop always runs once, so a map that
is already below ``eps`` everywhere still yields one bank entry (the argmax cell's vector, with
the cells closer to it than to ``E_n``), which becomes one object unless it is background-like;
an entry that claimed no cell (the last one, when ``|R| = 0`` stopped the loop) can still form an
object with empty ``cells`` and ``score`` 0.0.  All-zero features and background give
``d_obj == d_bg`` everywhere, hence (with tau1 >= 0) one object with no cells.

Cost: each iteration makes one float32 pass over the features, bound by L2 bandwidth; on one
core of the development machine (Zen 5 VM, c = 512) a call takes roughly 8 + 2 T us at 7x7 and
12 + 5 T us at 14x14, T the number of iterations, which depends on the data: the official rule
goes on until every cell with a map value >= eps has been claimed.

The batched entry point treats every item on its own, exactly like the official code run with a
batch of one.  (The official batched loop keeps iterating until every item has finished and
appends zero object vectors for the items that finished early; those zero vectors take part in
the union-find.  We deliberately do not reproduce that artefact.)

The numba kernels compile lazily on the first call (and are cached on disk); importing this
module compiles nothing.  The very first call on a machine compiles for ~10 s; later processes
load the cache in well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from streamloc.errors import InputError

__all__ = ["RULES", "ObjectGroup", "identify_objects", "identify_objects_batch"]

RULES = ("official", "paper")

#: torch.nn.PairwiseDistance's default eps, added to the difference before the norm.
PAIRWISE_EPS = 1e-6
#: torch.nn.functional.cosine_similarity's default eps (a zero vector has cosine 0).
COSINE_EPS = 1e-8


@dataclass(frozen=True, eq=False)
class ObjectGroup:
    """One sound-making object found by :func:`identify_objects`.

    Attributes:
        members: ``(m,)`` int64, the iteration indices ``t`` of the object-bank entries that make
            up this object, ascending.
        vectors: ``(m, c)`` float32, the object vectors ``E_p`` of those members.
        cells: ``(h, w)`` bool, union of the grid cells claimed by the members' regions.
        map: ``(h, w)`` float32, mean of the members' localization maps (``-d_obj`` for the
            official rule, the inner-product map ``R_p`` for the paper rule).
        seed: ``(row, col)`` of the first member's seed cell.
        score: mean of the original ``sound_map`` over ``cells`` (0.0 when ``cells`` is empty).

    The arrays of the groups returned by one call may be views of shared buffers.  Equality is
    identity (``eq=False``): comparing arrays field by field has no single truth value.
    """

    members: np.ndarray
    vectors: np.ndarray
    cells: np.ndarray
    map: np.ndarray
    seed: tuple[int, int]
    score: float


# ----------------------------------------------------------------------------------------------
# numba kernels.
#
# Layout: features as (c, N) C-contiguous float32 (the (c, h, w) input as is).  Every pass over
# the features runs the channel loop outside and the cell loop inside, so it is vectorised across
# cells and streams the features once, front to back.
#
# Exactness.  A decision (d_obj < d_bg, R_p > R_n, cos > tau) is defined on float64 sums taken in
# channel order (`_exact_*`: no fastmath, hence no reassociation and no FMA contraction; the values
# are bit-identical to a plain Python loop over the channels).  The per-iteration passes run in
# float32 (`_approx_*`, fastmath limited to reassociation / FMA contraction, never nnan/ninf) and
# come with a rigorous error bound, doubled for safety; a decision is taken from the float32 value
# only when its margin exceeds that bound, otherwise the exact float64 value is computed for that
# cell (or pair).  The decisions are therefore those of the exact computation, whatever the
# float32 rounding did.  Tests can force the exact path everywhere with tol_scale = inf.
# ----------------------------------------------------------------------------------------------

_U32 = 2.0**-24  # unit roundoff of float32 (round to nearest)
_CB = 8  # channel block of the float32 passes
# decision status per cell
_OUT = 0
_IN = 1
_UNSURE = 2


@njit(cache=True, fastmath={"contract"})
def _approx_sqdist(feats, vec, dsq):
    """float32: dsq[p] ~ ||F_p - vec + 1e-6||^2."""
    c, n = feats.shape
    dl = np.float32(PAIRWISE_EPS)
    for p in range(n):
        dsq[p] = 0.0
    k = 0
    while k + _CB <= c:
        for p in range(n):
            d = dsq[p]
            for kk in range(k, k + _CB):
                x = (feats[kk, p] - vec[kk]) + dl
                d += x * x
            dsq[p] = d
        k += _CB
    while k < c:
        e = vec[k]
        for p in range(n):
            x = (feats[k, p] - e) + dl
            dsq[p] += x * x
        k += 1


@njit(cache=True, fastmath={"contract"})
def _approx_sqdist_dot(feats, vec, dsq, dot):
    """float32: dsq[p] ~ ||F_p - vec + 1e-6||^2 and dot[p] ~ <F_p, vec>, one pass."""
    c, n = feats.shape
    dl = np.float32(PAIRWISE_EPS)
    for p in range(n):
        dsq[p] = 0.0
        dot[p] = 0.0
    k = 0
    while k + _CB <= c:
        for p in range(n):
            d = dsq[p]
            g = dot[p]
            for kk in range(k, k + _CB):
                f = feats[kk, p]
                e = vec[kk]
                x = (f - e) + dl
                d += x * x
                g += f * e
            dsq[p] = d
            dot[p] = g
        k += _CB
    while k < c:
        e = vec[k]
        for p in range(n):
            f = feats[k, p]
            x = (f - e) + dl
            dsq[p] += x * x
            dot[p] += f * e
        k += 1


@njit(cache=True, fastmath={"contract"})
def _approx_dot(feats, vec, dot):
    """float32: dot[p] ~ <F_p, vec>."""
    c, n = feats.shape
    for p in range(n):
        dot[p] = 0.0
    k = 0
    while k + _CB <= c:
        for p in range(n):
            g = dot[p]
            for kk in range(k, k + _CB):
                g += feats[kk, p] * vec[kk]
            dot[p] = g
        k += _CB
    while k < c:
        e = vec[k]
        for p in range(n):
            dot[p] += feats[k, p] * e
        k += 1


@njit(cache=True, fastmath={"contract"})
def _approx_dot_sq(feats, vec, dot, fsq):
    """float32: dot[p] ~ <F_p, vec> and fsq[p] ~ ||F_p||^2, one pass."""
    c, n = feats.shape
    for p in range(n):
        dot[p] = 0.0
        fsq[p] = 0.0
    k = 0
    while k + _CB <= c:
        for p in range(n):
            g = dot[p]
            a = fsq[p]
            for kk in range(k, k + _CB):
                f = feats[kk, p]
                g += f * vec[kk]
                a += f * f
            dot[p] = g
            fsq[p] = a
        k += _CB
    while k < c:
        e = vec[k]
        for p in range(n):
            f = feats[k, p]
            dot[p] += f * e
            fsq[p] += f * f
        k += 1


@njit(cache=True, fastmath={"contract", "reassoc"})
def _approx_inner(a, b):
    """float32 <a, b> of two contiguous vectors, any summation order."""
    total = np.float32(0.0)
    for k in range(a.shape[0]):
        total += a[k] * b[k]
    return np.float64(total)


@njit(cache=True)
def _exact_sqdist_all(feats, vec, out):
    """out[p] = sum_k ((F[k,p] - vec[k]) + 1e-6)^2 in float64, channel order."""
    c, n = feats.shape
    for p in range(n):
        out[p] = 0.0
    for k in range(c):
        e = np.float64(vec[k])
        for p in range(n):
            d = (np.float64(feats[k, p]) - e) + PAIRWISE_EPS
            out[p] += d * d


@njit(cache=True)
def _exact_inner_all(feats, vec, out):
    """out[p] = sum_k F[k,p] * vec[k] in float64, channel order."""
    c, n = feats.shape
    for p in range(n):
        out[p] = 0.0
    for k in range(c):
        e = np.float64(vec[k])
        for p in range(n):
            out[p] += np.float64(feats[k, p]) * e


@njit(cache=True)
def _exact_sqdist_cell(feats, p, vec):
    total = 0.0
    for k in range(feats.shape[0]):
        d = (np.float64(feats[k, p]) - np.float64(vec[k])) + PAIRWISE_EPS
        total += d * d
    return total


@njit(cache=True)
def _exact_inner_cell(feats, p, vec):
    total = 0.0
    for k in range(feats.shape[0]):
        total += np.float64(feats[k, p]) * np.float64(vec[k])
    return total


@njit(cache=True)
def _exact_sq_cell(feats, p):
    total = 0.0
    for k in range(feats.shape[0]):
        f = np.float64(feats[k, p])
        total += f * f
    return total


@njit(cache=True)
def _exact_inner(a, b):
    total = 0.0
    for k in range(a.shape[0]):
        total += np.float64(a[k]) * np.float64(b[k])
    return total


@njit(cache=True)
def _exact_cos(a, b):
    """cos(a, b) = a.b / max(||a|| ||b||, 1e-8) (torch F.cosine_similarity's clamp), exact."""
    na = np.sqrt(_exact_inner(a, a))
    nb = np.sqrt(_exact_inner(b, b))
    return _exact_inner(a, b) / max(na * nb, COSINE_EPS)


@njit(cache=True)
def _tol_sqdist(s, nf, nv, c, scale):
    """Bound (x2) on |float32 ||f - v + 1e-6||^2 - exact| given the float32 value s and upper
    bounds nf >= ||f||, nv >= ||v||."""
    d = np.sqrt(s)
    a = _U32 * (nf + nv + d) + 1e-13 * np.sqrt(np.float64(c))
    return scale * 2.0 * ((c + 1) * _U32 * s + 2.0 * d * a + a * a) + 1e-30


@njit(cache=True)
def _cos_decide(dot, sq_a, sq_b, tau, c, scale):
    """Decide cos > tau from float32 approximations of <a, b> (within (c+1)u ||a|| ||b||) and of
    ||a||^2, ||b||^2 (within (c+1)u of their size); returns (decision, undecided)."""
    den = np.sqrt(sq_a) * np.sqrt(sq_b)
    if not (den >= 4.0 * COSINE_EPS and den < np.inf and abs(dot) < np.inf
            and sq_a >= 1e-30 and sq_b >= 1e-30):
        # near the 1e-8 clamp, float32 underflow or overflow: ask the exact path
        return False, True
    value = dot / den
    tol = scale * 4.0 * (c + 2) * _U32
    if value - tau > tol:
        return True, False
    if tau - value > tol:
        return False, False
    return False, True


@njit(cache=True, fastmath={"contract"})
def _classify_official(dsq, bsq, nf, ne, tol_b, maps, t, with_map, status, c, scale):
    """Per cell: map value -sqrt(dsq) (if with_map) and the status of d_obj < d_bg."""
    c13 = 1e-13 * np.sqrt(np.float64(c))
    for p in range(dsq.shape[0]):
        s = np.float64(dsq[p])
        d = np.sqrt(s)
        if with_map:
            maps[t, p] = np.float32(-d)
        a = _U32 * (nf[p] + ne + d) + c13
        tol = scale * 2.0 * ((c + 1) * _U32 * s + 2.0 * d * a + a * a) + tol_b[p] + 1e-30
        diff = s - bsq[p]
        st = np.int8(_UNSURE)
        if diff < -tol:
            st = np.int8(_IN)
        elif diff > tol:
            st = np.int8(_OUT)
        status[p] = st


@njit(cache=True, fastmath={"contract"})
def _classify_paper(dot, rn, nf, ne, bg_norm, maps, t, status, c, scale):
    """Per cell: map value R_p and the status of R_p > R_n."""
    k = scale * 2.0 * (c + 1) * _U32 * (ne + bg_norm)
    for p in range(dot.shape[0]):
        g = np.float64(dot[p])
        maps[t, p] = dot[p]
        tol = k * nf[p] + 1e-30
        diff = g - rn[p]
        st = np.int8(_UNSURE)
        if diff > tol:
            st = np.int8(_IN)
        elif diff < -tol:
            st = np.int8(_OUT)
        status[p] = st


@njit(cache=True)
def _first_argmax(values):
    best = 0
    top = values[0]
    for p in range(1, values.shape[0]):
        if values[p] > top:
            top = values[p]
            best = p
    return best


@njit(cache=True)
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@njit(cache=True)
def _grow_rows(buf, rows):
    """A copy of `buf` with room for `rows` rows (numba compiles one version per dtype)."""
    out = np.empty((rows, buf.shape[1]), buf.dtype)
    for i in range(buf.shape[0]):
        for j in range(buf.shape[1]):
            out[i, j] = buf[i, j]
    return out


@njit(cache=True)
def _grow_square_f32(buf, size):
    out = np.empty((size, size), np.float32)
    for i in range(buf.shape[0]):
        for j in range(buf.shape[1]):
            out[i, j] = buf[i, j]
    return out


@njit(cache=True)
def _prepare(smap, feats, bg, paper, tol_scale, ref, nf, tol_ref, ref_exact):
    """Validate finiteness and fill the per-cell constants of the loop.

    ref[p] ~ d_bg(p)^2 (official) or ~ R_n(p) (paper), float32 accuracy; nf[p] >= ||F_p||;
    tol_ref[p] bounds the error of ref[p] (official); ref_exact[p] = NaN (not computed yet), or
    the exact d_bg(p) (a distance) / R_n(p) where the float32 pass overflowed.
    Returns 0, or 1 / 2 / 3 when sound_map / features / background is not finite.
    """
    c, n = feats.shape
    bad = 0
    for p in range(n):
        bad += not np.isfinite(smap[p])
    if bad:
        return 1
    for k in range(c):
        bad += not np.isfinite(bg[k])
    if bad:
        return 3
    bg_norm = np.sqrt(_exact_inner(bg, bg))
    grow = 1.0 + 2.0 * (c + 1) * _U32
    tiny = c * 1e-44  # > what float32 underflow can lose from a sum of c squares
    # ||F_p|| <= ||F_p - E_n + 1e-6|| + ||E_n|| + sqrt(c) 1e-6  (official)
    shift = bg_norm + np.sqrt(np.float64(c)) * PAIRWISE_EPS
    tmp = np.empty(n, np.float32)
    tmp2 = np.empty(n, np.float32)
    if paper:
        _approx_dot_sq(feats, bg, tmp, tmp2)
    else:
        _approx_sqdist(feats, bg, tmp)
    for p in range(n):
        ref_exact[p] = np.nan
        ref[p] = tmp[p]
    if paper:
        for p in range(n):
            nf[p] = np.sqrt(np.float64(tmp2[p]) * grow + tiny)
            tol_ref[p] = 0.0
            bad += not (np.isfinite(ref[p]) and np.isfinite(nf[p]))
    else:
        for p in range(n):
            nf[p] = np.sqrt(ref[p] * grow + tiny) + shift
            tol_ref[p] = _tol_sqdist(ref[p], nf[p], bg_norm, c, tol_scale)
            bad += not np.isfinite(ref[p])
    if bad == 0:
        return 0
    # a NaN/inf feature, or a float32 overflow: settle those cells in float64
    for p in range(n):
        if paper:
            if np.isfinite(ref[p]) and np.isfinite(nf[p]):
                continue
            sq = _exact_sq_cell(feats, p)
            if not np.isfinite(sq):
                return 2
            ref_exact[p] = _exact_inner_cell(feats, p, bg)
            ref[p] = ref_exact[p]
            nf[p] = np.sqrt(sq * grow + tiny)
        else:
            if np.isfinite(ref[p]):
                continue
            exact = _exact_sqdist_cell(feats, p, bg)
            if not np.isfinite(exact):
                return 2
            ref_exact[p] = np.sqrt(exact)
            ref[p] = exact
            nf[p] = np.sqrt(exact * grow + tiny) + shift
            tol_ref[p] = _tol_sqdist(exact, nf[p], bg_norm, c, tol_scale)
    return 0


@njit(cache=True)
def _settle_unsure(feats, bg, e, paper, is_back, assigned, status, maps, t, ref_exact, cur):
    """Decide the cells whose float32 margin was too small, in float64 (the exact rule).
    Returns the number of cells settled."""
    n = status.shape[0]
    npend = 0
    for p in range(n):
        if status[p] == _UNSURE and (paper or not assigned[p]):
            npend += 1
    if npend == 0:
        return 0
    dense = npend * 4 > n
    if dense:
        if paper:
            _exact_inner_all(feats, e, cur)
        else:
            _exact_sqdist_all(feats, e, cur)
        if np.isnan(ref_exact).any():
            if paper:
                _exact_inner_all(feats, bg, ref_exact)
            else:
                _exact_sqdist_all(feats, bg, ref_exact)
                for p in range(n):
                    ref_exact[p] = np.sqrt(ref_exact[p])
    for p in range(n):
        if status[p] != _UNSURE or not (paper or not assigned[p]):
            continue
        if paper:
            rp = cur[p] if dense else _exact_inner_cell(feats, p, e)
            if np.isnan(ref_exact[p]):
                ref_exact[p] = _exact_inner_cell(feats, p, bg)
            maps[t, p] = np.float32(rp)
            status[p] = _IN if rp > ref_exact[p] else _OUT
        else:
            d = np.sqrt(cur[p] if dense else _exact_sqdist_cell(feats, p, e))
            if np.isnan(ref_exact[p]):
                ref_exact[p] = np.sqrt(_exact_sqdist_cell(feats, p, bg))
            if not is_back:
                maps[t, p] = np.float32(-d)
            status[p] = _IN if d < ref_exact[p] else _OUT
    return npend


@njit(cache=True)
def _union_find(t, bank, gdot, bank_sq, is_bg, tau2, tol_scale):
    """Union-find over the bank (official order).  Returns (label, n_groups, n_exact): label[j]
    = group id (in order of first member) or -1 for background entries."""
    c = bank.shape[1]
    n_exact = 0
    parent = np.arange(t)
    for j in range(t):
        if is_bg[j]:
            continue
        for k in range(j):
            same, unsure = _cos_decide(np.float64(gdot[j, k]), bank_sq[j], bank_sq[k], tau2, c,
                                       tol_scale)
            if unsure:
                same = _exact_cos(bank[j], bank[k]) > tau2
                n_exact += 1
            if same:
                rj = _find(parent, j)
                rk = _find(parent, k)
                if rj != rk:
                    parent[rk] = rj
    gid_of_root = np.full(t, -1, np.int64)
    label = np.full(t, -1, np.int64)
    n_groups = 0
    for j in range(t):
        if is_bg[j]:
            continue
        r = _find(parent, j)
        if gid_of_root[r] < 0:
            gid_of_root[r] = n_groups
            n_groups += 1
        label[j] = gid_of_root[r]
    return label, n_groups, n_exact


@njit(cache=True)
def _assemble(smap, h, w, t, label, n_groups, bank, maps, claims, seeds, n_exact):
    """Pack the groups: (ints, vectors, cells, maps, scores), see _ioi_kernel."""
    n = h * w
    c = bank.shape[1]
    offsets = np.zeros(n_groups + 1, np.int64)
    n_fg = 0
    for j in range(t):
        if label[j] >= 0:
            offsets[label[j] + 1] += 1
            n_fg += 1
    for g in range(n_groups):
        offsets[g + 1] += offsets[g]
    head = 6 + 3 * n_groups
    ints = np.empty(head + n_fg, np.int64)
    ints[0] = 0
    ints[1] = n_groups
    ints[2] = t
    ints[3] = t - n_fg
    ints[4] = n_exact
    for g in range(n_groups + 1):
        ints[5 + g] = offsets[g]
    vectors = np.empty((n_fg, c), np.float32)
    fill = offsets[:-1].copy()
    for j in range(t):
        g = label[j]
        if g >= 0:
            i = fill[g]
            ints[head + i] = j
            for k in range(c):
                vectors[i, k] = bank[j, k]
            fill[g] = i + 1
    gmaps = np.empty((n_groups, h, w), np.float32)
    gcells = np.zeros((n_groups, h, w), np.bool_)
    gscores = np.zeros(n_groups, np.float64)
    flat_maps = gmaps.reshape(n_groups, n)
    flat_cells = gcells.reshape(n_groups, n)
    acc = np.empty(n, np.float64)
    for g in range(n_groups):
        lo = offsets[g]
        hi = offsets[g + 1]
        first = seeds[ints[head + lo]]
        ints[6 + n_groups + 2 * g] = first // w
        ints[7 + n_groups + 2 * g] = first % w
        for p in range(n):
            acc[p] = 0.0
        for i in range(lo, hi):
            j = ints[head + i]
            for p in range(n):
                acc[p] += np.float64(maps[j, p])
                if claims[j, p]:
                    flat_cells[g, p] = True
        m = np.float64(hi - lo)
        total = 0.0
        count = 0
        for p in range(n):
            flat_maps[g, p] = np.float32(acc[p] / m)
            if flat_cells[g, p]:
                total += np.float64(smap[p])
                count += 1
        if count > 0:
            gscores[g] = total / count
    return ints, vectors, gcells, gmaps, gscores


@njit(cache=True, nogil=True)
def _ioi_kernel(smap2d, feats3d, bg, eps, tau1, tau2, paper, max_iter, tol_scale):
    """IOI loop + grouping for one item.

    smap2d (h, w) f32, feats3d (c, h, w) f32 C-contiguous, bg (c,) f32, max_iter >= 1.
    tol_scale scales the float32 error bounds (1.0; +inf sends every decision through the exact
    float64 path).  Returns (ints, vectors, cells, maps, scores):
    ints = [status, G, n_iter, n_background, n_exact, offsets (G+1), seeds (G x (row, col)),
    members (grouped: group g = members[offsets[g]:offsets[g+1]])], status 0 ok, 1 sound_map,
    2 features, 3 background not finite; vectors (n_members, c) in the same order as members;
    cells (G, h, w) bool; maps (G, h, w) f32; scores (G,) f64.  n_exact counts the decisions
    taken by the exact path.
    """
    h, w = smap2d.shape
    n = h * w
    smap = smap2d.reshape(n)
    feats = feats3d.reshape(feats3d.shape[0], n)
    ref = np.empty(n, np.float64)
    nf = np.empty(n, np.float64)
    tol_ref = np.empty(n, np.float64)
    ref_exact = np.empty(n, np.float64)
    err = _prepare(smap, feats, bg, paper, tol_scale, ref, nf, tol_ref, ref_exact)
    if err != 0:
        ints = np.zeros(6, np.int64)
        ints[0] = err
        return (ints, np.empty((0, feats.shape[0]), np.float32), np.empty((0, h, w), np.bool_),
                np.empty((0, h, w), np.float32), np.empty(0, np.float64))

    # ---- the IOI loop (written inline: each call level re-optimises its callees' code when
    # numba compiles it, so a flat call tree compiles faster)
    c = feats.shape[0]
    bg_sq = _exact_inner(bg, bg)
    bg_norm = np.sqrt(bg_sq)
    cap = min(max_iter, 8)
    bank = np.empty((cap, c), np.float32)
    maps = np.empty((cap, n), np.float32)
    claims = np.empty((cap, n), np.bool_)
    gdot = np.empty((cap, cap), np.float32)  # gdot[j, k] ~ <E_j, E_k>, rows of non-background j
    seeds = np.empty(max_iter, np.int64)
    bank_sq = np.empty(max_iter, np.float64)  # ~ ||E_t||^2
    is_bg = np.zeros(max_iter, np.bool_)
    score = smap.copy()  # `positive` (official) / S (paper)
    assigned = np.zeros(n, np.bool_)
    status = np.empty(n, np.int8)
    dsq = np.empty(n, np.float32)
    dot = np.empty(n, np.float32)
    cur = np.empty(n, np.float64)
    n_exact = 0
    t = 0
    while t < max_iter:
        seed = _first_argmax(score)
        if paper and not (np.float64(score[seed]) > eps):
            break
        if t == cap:
            cap = min(2 * cap, max_iter)
            bank = _grow_rows(bank, cap)
            maps = _grow_rows(maps, cap)
            claims = _grow_rows(claims, cap)
            gdot = _grow_square_f32(gdot, cap)
        for k in range(c):
            bank[t, k] = feats[k, seed]
        e = bank[t]
        seeds[t] = seed
        bank_sq[t] = _approx_inner(e, e)
        # background test of this entry (Sec. 3.4); known now, so a background entry's map,
        # which is never used, is not computed
        is_back, unsure = _cos_decide(_approx_inner(bg, e), bg_sq, bank_sq[t], tau1, c,
                                      tol_scale)
        if unsure:
            is_back = _exact_cos(bg, e) > tau1
            n_exact += 1
        is_bg[t] = is_back
        ne = nf[seed]
        if paper:
            _approx_dot(feats, e, dot)
            _classify_paper(dot, ref, nf, ne, bg_norm, maps, t, status, c, tol_scale)
        else:
            if is_back:
                _approx_sqdist(feats, e, dsq)
            else:
                _approx_sqdist_dot(feats, e, dsq, dot)
            _classify_official(dsq, ref, nf, ne, tol_ref, maps, t, not is_back, status, c,
                               tol_scale)
        n_exact += _settle_unsure(feats, bg, e, paper, is_back, assigned, status, maps, t,
                                  ref_exact, cur)
        if not is_back:
            for k in range(t):
                gdot[t, k] = dot[seeds[k]]
        if paper:
            status[seed] = _IN  # our one addition: the seed always belongs to its region
            for p in range(n):
                inside = status[p] == _IN
                claims[t, p] = inside
                if inside:
                    score[p] = 0.0
            t += 1
            continue
        count = 0
        for p in range(n):
            inside = status[p] == _IN and not assigned[p]
            claims[t, p] = inside
            if inside:
                assigned[p] = True
                score[p] = 0.0
                count += 1
            elif not is_back and not np.isfinite(maps[t, p]):  # float32 overflow
                maps[t, p] = np.float32(-np.sqrt(_exact_sqdist_cell(feats, p, e)))
        t += 1
        if count == 0:
            break
        top = np.float64(score[0])
        for p in range(1, n):
            if score[p] > top:
                top = np.float64(score[p])
        if top < eps:
            break

    # ---- grouping and packing
    label, n_groups, n_exact2 = _union_find(t, bank, gdot, bank_sq, is_bg, tau2, tol_scale)
    return _assemble(smap, h, w, t, label, n_groups, bank, maps, claims, seeds,
                     n_exact + n_exact2)


# ----------------------------------------------------------------------------------------------
# Python wrappers: validation and ObjectGroup assembly
# ----------------------------------------------------------------------------------------------


def _check_options(eps, tau1, tau2, rule, max_iter):
    if rule not in RULES:
        raise InputError(f"rule must be one of {RULES}, got {rule!r}")
    try:
        eps = float(eps)
        tau1 = float(tau1)
        tau2 = float(tau2)
    except (TypeError, ValueError) as exc:
        raise InputError(f"eps, tau1 and tau2 must be real numbers ({exc})") from None
    if not (math.isfinite(eps) and eps >= 0.0):
        raise InputError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (-1.0 <= tau1 <= 1.0):
        raise InputError(f"tau1 must lie in [-1, 1], got {tau1!r}")
    if not (-1.0 <= tau2 <= 1.0):
        raise InputError(f"tau2 must lie in [-1, 1], got {tau2!r}")
    if max_iter is not None:
        if isinstance(max_iter, (bool, np.bool_)) or not isinstance(max_iter, (int, np.integer)):
            raise InputError(f"max_iter must be None or an int >= 1, got {max_iter!r}")
        max_iter = int(max_iter)
        if max_iter < 1:
            raise InputError(f"max_iter must be None or an int >= 1, got {max_iter!r}")
    return eps, tau1, tau2, rule == "paper", max_iter


_F32 = np.dtype(np.float32)


def _as_float32(value, name, ndim, batched=False):
    if (type(value) is np.ndarray and value.dtype is _F32 and value.ndim == ndim
            and value.flags.c_contiguous and value.size):
        return value  # fast path: nothing to check or convert
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{name} must hold real numbers (float32/float64), got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise InputError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if 0 in arr.shape[1:] if batched else 0 in arr.shape:
        raise InputError(f"{name} must not be empty, got shape {arr.shape}")
    if arr.dtype == np.float32:
        return np.ascontiguousarray(arr)
    with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: reported below
        return np.ascontiguousarray(arr, dtype=np.float32)


def _raise_not_finite(status, names):
    name_map, name_feat, name_bg = names
    if status == 1:
        raise InputError(f"{name_map} contains NaN or inf")
    if status == 3:
        raise InputError(f"{name_bg} contains NaN or inf (or values too large for float32)")
    raise InputError(f"{name_feat} contains NaN or inf (or values too large for float32)")


_new_object = object.__new__


def _make_group(members, vectors, cells, map_, seed, score):
    # ObjectGroup(...) without the frozen dataclass's per-field object.__setattr__ calls (3x
    # faster; there is no __post_init__ to skip)
    group = _new_object(ObjectGroup)
    fields = group.__dict__
    fields["members"] = members
    fields["vectors"] = vectors
    fields["cells"] = cells
    fields["map"] = map_
    fields["seed"] = seed
    fields["score"] = score
    return group


def _run_one(smap, feats, bg, eps, tau1, tau2, paper, max_iter, names, tol_scale=1.0):
    n = smap.shape[0] * smap.shape[1]
    limit = n + 1 if max_iter is None else min(max_iter, n + 1)
    ints, vectors, cells, maps, scores = _ioi_kernel(smap, feats, bg, eps, tau1, tau2, paper,
                                                     limit, tol_scale)
    info = ints.tolist()
    if info[0]:
        _raise_not_finite(info[0], names)
    n_groups = info[1]
    if n_groups == 0:
        return []
    base = 6 + 3 * n_groups  # members start here
    score_list = scores.tolist()
    out = []
    for g in range(n_groups):
        lo = info[5 + g]
        hi = info[6 + g]
        out.append(_make_group(ints[base + lo:base + hi], vectors[lo:hi], cells[g], maps[g],
                               (info[6 + n_groups + 2 * g], info[7 + n_groups + 2 * g]),
                               score_list[g]))
    return out


def identify_objects(
    sound_map,
    features,
    background,
    *,
    eps: float = 0.1,
    tau1: float = 0.7,
    tau2: float = 0.6,
    rule: str = "official",
    max_iter: int | None = None,
) -> list[ObjectGroup]:
    """Find the sound-making objects of one frame (IOI loop + union-find grouping).

    Args:
        sound_map: ``(h, w)`` sound-associated map ``S_v`` (cosines, usually in [-1, 1]).
        features: ``(c, h, w)`` sound-associated visual features ``F^_v = F_v * S_v`` (already
            multiplied by the map; not multiplied again here).
        background: ``(c,)`` background vector ``E_n``.
        eps: stop threshold on the remaining map (official: stop once ``max < eps``; paper:
            continue while ``max > eps``).  Finite, >= 0.
        tau1: an object vector whose cosine with ``E_n`` exceeds ``tau1`` is background.
        tau2: two object vectors whose cosine exceeds ``tau2`` belong to the same object.
        rule: ``"official"`` (released code: distances, at least one iteration) or ``"paper"``
            (Algorithm 1: inner products); see the module docstring.
        max_iter: optional cap on the number of iterations (default: ``h*w + 1``, a bound the
            loop cannot exceed anyway).

    Returns:
        The objects found, ordered by their first member's iteration index; background-like
        bank entries are dropped.  May be empty.

    Raises:
        ValueError (:class:`streamloc.errors.InputError`): wrong number of dimensions,
        mismatched shapes, NaN or inf in an input, an unknown rule, or an option out of range.

    Inputs may be float32 or float64 and of any memory layout; they are rounded to float32 once.

    >>> import numpy as np
    >>> S = np.array([[0.9, 0.8, 0.0], [0.0, 0.0, 0.7]], np.float32)
    >>> F = np.zeros((2, 2, 3), np.float32)
    >>> F[0] = [[1, 1, 0], [0, 0, 0]]   # object A in the top-left cells
    >>> F[1] = [[0, 0, 0], [0, 0, 1]]   # object B in the bottom-right cell
    >>> F = F * S                       # sound-associated features
    >>> groups = identify_objects(S, F, np.zeros(2, np.float32))
    >>> [(g.seed, g.members.tolist(), int(g.cells.sum())) for g in groups]
    [((0, 0), [0], 2), ((1, 2), [1], 1)]
    >>> round(groups[0].score, 3)
    0.85
    """
    eps, tau1, tau2, paper, max_iter = _check_options(eps, tau1, tau2, rule, max_iter)
    smap = _as_float32(sound_map, "sound_map", 2)
    feats = _as_float32(features, "features", 3)
    bg = _as_float32(background, "background", 1)
    if feats.shape[1:] != smap.shape:
        raise InputError(
            f"features must have shape (c, h, w) with (h, w) = sound_map.shape {smap.shape}, "
            f"got {feats.shape}"
        )
    if bg.shape[0] != feats.shape[0]:
        raise InputError(
            f"background must have shape (c,) = ({feats.shape[0]},) to match features, "
            f"got {bg.shape}"
        )
    return _run_one(smap, feats, bg, eps, tau1, tau2, paper, max_iter,
                    ("sound_map", "features", "background"))


def identify_objects_batch(
    sound_maps,
    features,
    backgrounds,
    *,
    eps: float = 0.1,
    tau1: float = 0.7,
    tau2: float = 0.6,
    rule: str = "official",
    max_iter: int | None = None,
) -> list[list[ObjectGroup]]:
    """:func:`identify_objects` on every item of a batch, each item on its own.

    Args:
        sound_maps: ``(B, h, w)``; features: ``(B, c, h, w)``; backgrounds: ``(B, c)``.
        Keyword options as :func:`identify_objects`.

    Returns:
        ``B`` lists of :class:`ObjectGroup`, item ``i`` equal to
        ``identify_objects(sound_maps[i], features[i], backgrounds[i], ...)``.  This equals the
        official code run with batch size 1; its batched loop appends zero vectors for items
        that finished early, which we deliberately do not reproduce.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> S = rng.uniform(-1, 1, (3, 7, 7)).astype(np.float32)
    >>> F = rng.standard_normal((3, 16, 7, 7)).astype(np.float32) * S[:, None]
    >>> out = identify_objects_batch(S, F, F.mean(axis=(2, 3)))
    >>> len(out)
    3
    """
    eps, tau1, tau2, paper, max_iter = _check_options(eps, tau1, tau2, rule, max_iter)
    smaps = _as_float32(sound_maps, "sound_maps", 3, batched=True)
    feats = _as_float32(features, "features", 4, batched=True)
    bgs = _as_float32(backgrounds, "backgrounds", 2, batched=True)
    b = smaps.shape[0]
    if feats.shape[0] != b or feats.shape[2:] != smaps.shape[1:]:
        raise InputError(
            f"features must have shape (B, c, h, w) with (B, h, w) = sound_maps.shape "
            f"{smaps.shape}, got {feats.shape}"
        )
    if bgs.shape != (b, feats.shape[1]):
        raise InputError(
            f"backgrounds must have shape (B, c) = {(b, feats.shape[1])}, got {bgs.shape}"
        )
    return [
        _run_one(smaps[i], feats[i], bgs[i], eps, tau1, tau2, paper, max_iter,
                 (f"sound_maps[{i}]", f"features[{i}]", f"backgrounds[{i}]"))
        for i in range(b)
    ]
