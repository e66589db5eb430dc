"""Slow, literal reference of the IOI loop and the union-find grouping (tests only).

A transcription of NoPrior's IOI module (paper Sec. 3.3-3.4, Algorithm 1, and the official
``lvs_loss`` loop) in plain Python: lists, ``math`` and ``for`` loops; numpy is used only to read
the input arrays and to hand results back.  It shares no code with ``streamloc.ioi`` on purpose.

Arithmetic conventions (the ones ``streamloc.ioi`` documents):

* the inputs are rounded to float32 once; every value is then a Python float (IEEE double);
* distances, inner products and norms are sums over the channels taken in channel order
  0, 1, ..., c-1, one term at a time (no ``sum()``, no ``math.fsum``);
* torch's PairwiseDistance adds its eps (1e-6) to the difference: ``(a - b) + 1e-6``;
* cosine similarity is ``dot / max(sqrt(|a|^2) * sqrt(|b|^2), 1e-8)``.
"""

from __future__ import annotations

import math

import numpy as np

PAIRWISE_EPS = 1e-6
COSINE_EPS = 1e-8


def _read(sound_map, features, background):
    """Float32-rounded inputs as Python lists: map (N,), cells (N lists of c), background (c,)."""
    s = np.asarray(sound_map, dtype=np.float32)
    f = np.asarray(features, dtype=np.float32)
    b = np.asarray(background, dtype=np.float32)
    h, w = s.shape
    c = f.shape[0]
    smap = s.reshape(-1).tolist()
    # cells[p][k] = F^(p)[k], p = row * w + col (row-major)
    cells = f.reshape(c, h * w).T.tolist()
    bg = b.tolist()
    return h, w, smap, cells, bg


def _pairwise_distance(x, y):
    total = 0.0
    for k in range(len(x)):
        diff = (x[k] - y[k]) + PAIRWISE_EPS
        total = total + diff * diff
    return math.sqrt(total)


def _inner(x, y):
    total = 0.0
    for k in range(len(x)):
        total = total + x[k] * y[k]
    return total


def _cosine(x, y):
    nx = math.sqrt(_inner(x, x))
    ny = math.sqrt(_inner(y, y))
    return _inner(x, y) / max(nx * ny, COSINE_EPS)


def _first_argmax(values):
    best = 0
    for p in range(1, len(values)):
        if values[p] > values[best]:
            best = p
    return best


def _official_loop(smap, cells, bg, eps, max_iter):
    n = len(smap)
    positive = list(smap)
    assigned = [False] * n
    d_bg = [_pairwise_distance(cells[p], bg) for p in range(n)]
    bank, seeds, maps, claims = [], [], [], []
    while True:
        seed = _first_argmax(positive)
        e_p = list(cells[seed])
        d_obj = [_pairwise_distance(cells[p], e_p) for p in range(n)]
        region = []
        for p in range(n):
            if d_obj[p] < d_bg[p] and not assigned[p]:
                region.append(p)
        for p in region:
            assigned[p] = True
            positive[p] = 0.0
        bank.append(e_p)
        seeds.append(seed)
        maps.append([-d for d in d_obj])
        claims.append(set(region))
        if len(region) == 0:
            break
        if max(positive) < eps:
            break
        if len(bank) >= max_iter:
            break
    return bank, seeds, maps, claims


def _paper_loop(smap, cells, bg, eps, max_iter):
    n = len(smap)
    s = list(smap)
    r_n = [_inner(cells[p], bg) for p in range(n)]
    bank, seeds, maps, claims = [], [], [], []
    while len(bank) < max_iter and max(s) > eps:
        seed = _first_argmax(s)
        e_p = list(cells[seed])
        r_p = [_inner(cells[p], e_p) for p in range(n)]
        region = set()
        for p in range(n):
            if r_p[p] > r_n[p] or p == seed:
                region.add(p)
        for p in region:
            s[p] = 0.0
        bank.append(e_p)
        seeds.append(seed)
        maps.append(list(r_p))
        claims.append(region)
    return bank, seeds, maps, claims


def _find(parent, x):
    # recursive find with path compression, as in the official helper
    if parent[x] != x:
        parent[x] = _find(parent, parent[x])
    return parent[x]


def _group(bank, bg, tau1, tau2):
    t = len(bank)
    parent = list(range(t))
    background = [False] * t
    for j in range(t):
        if _cosine(bg, bank[j]) > tau1:
            background[j] = True
            continue
        for k in range(j):
            if _cosine(bank[j], bank[k]) > tau2:
                root_j = _find(parent, j)
                root_k = _find(parent, k)
                if root_j != root_k:
                    parent[root_k] = root_j
    by_root = {}
    for j in range(t):
        if not background[j]:
            by_root.setdefault(_find(parent, j), []).append(j)
    groups = sorted(by_root.values(), key=lambda members: members[0])
    return groups, background


def reference_identify(
    sound_map, features, background, *, eps=0.1, tau1=0.7, tau2=0.6, rule="official", max_iter=None
):
    """Literal IOI + grouping.  Returns a dict:

    ``groups``: list (ordered by first member) of dicts with ``members`` (list of int),
    ``vectors`` (list of lists), ``cells`` (sorted list of flat indices), ``map`` (list of N
    floats), ``seed`` ((row, col)), ``score`` (float); plus ``n_iter`` (bank size T),
    ``background`` (list of bool per bank entry), ``seeds`` (flat seed index per bank entry).
    """
    h, w, smap, cells, bg = _read(sound_map, features, background)
    n = h * w
    limit = n + 1 if max_iter is None else max_iter
    if rule == "official":
        bank, seeds, maps, claims = _official_loop(smap, cells, bg, eps, limit)
    elif rule == "paper":
        bank, seeds, maps, claims = _paper_loop(smap, cells, bg, eps, limit)
    else:
        raise ValueError(rule)
    member_lists, is_background = _group(bank, bg, tau1, tau2)
    groups = []
    for members in member_lists:
        claimed = set()
        for j in members:
            claimed |= claims[j]
        mean_map = []
        for p in range(n):
            total = 0.0
            for j in members:
                total = total + maps[j][p]
            mean_map.append(total / len(members))
        cell_list = sorted(claimed)
        if cell_list:
            total = 0.0
            for p in cell_list:
                total = total + smap[p]
            score = total / len(cell_list)
        else:
            score = 0.0
        first_seed = seeds[members[0]]
        groups.append(
            {
                "members": list(members),
                "vectors": [list(bank[j]) for j in members],
                "cells": cell_list,
                "map": mean_map,
                "seed": (first_seed // w, first_seed % w),
                "score": score,
            }
        )
    return {
        "groups": groups,
        "n_iter": len(bank),
        "background": is_background,
        "seeds": list(seeds),
    }
