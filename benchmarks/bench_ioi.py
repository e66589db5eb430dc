"""IOI + union-find latency on the CPU: the numba kernel vs a vectorised numpy version.

For 7x7 and 14x14 maps with c = 512 and realistic inputs (cell features clustered around 0-3
object prototypes and a background prototype, a cosine sound map, F^ = F * S, E_n as the official
code computes it), times `streamloc.ioi.identify_objects` call by call after warm-up (building the
ObjectGroup results included) and `ioi_numpy`, a vectorised numpy implementation of the same
algorithm written here, checked once on every input to give the same groups.

    python benchmarks/bench_ioi.py [--repeats 2000] [--seed 0] [--out ioi_cpu.json]

Writes benchmarks/results/<out>.  Importing this module has no side effects; other scripts call
`run_ioi_benchmark`.  The number of IOI iterations depends on the input (the official rule goes on
until every cell whose map value is >= eps has been claimed), so the report gives the iteration
statistics of the input pool and the latency per iteration count besides the percentiles.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = ((7, 7), (14, 14))
CHANNELS = 512
PAIRWISE_EPS = 1e-6
COSINE_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def make_scene(rng: np.random.Generator, c: int, h: int, w: int):
    """One realistic IOI input: (sound_map (h, w), features (c, h, w), background (c,)), float32.

    0-3 objects (elliptic blobs) plus background, each cell an L2-normalised noisy copy of its
    prototype; 0..all objects sound; audio vector = sum of the sounding prototypes plus some
    background leakage and noise; S = cos(F, audio) + noise, clipped to [-1, 1]; F^ = F * S;
    E_n = mean over all cells of F^ * (1 - sigmoid((S - 0.4) / 0.03)) (as the official code).
    """
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


# ----------------------------------------------------------------------------------------------
# the numpy version
# ----------------------------------------------------------------------------------------------


def ioi_numpy(sound_map, features, background, *, eps=0.1, tau1=0.7, tau2=0.6,
              rule="official", max_iter=None) -> list[dict]:
    """Vectorised numpy IOI + union-find (same algorithm and rules as streamloc.ioi).

    Float64 arithmetic on the float32-rounded inputs, one (N, c) temporary per iteration (the
    direct distance formula, as torch's PairwiseDistance); the union-find loop is plain Python.
    Returns groups as dicts with the ObjectGroup field names.
    """
    smap = np.asarray(sound_map, np.float32)
    h, w = smap.shape
    n = h * w
    c = features.shape[0]
    feats = np.asarray(features, np.float32).reshape(c, n).T.astype(np.float64)  # (N, c)
    bg = np.asarray(background, np.float32).astype(np.float64)
    limit = n + 1 if max_iter is None else max_iter
    score = smap.reshape(n).copy()
    seeds, maps, claims = [], [], []
    if rule == "official":
        d_bg = np.sqrt(np.square(feats - bg + PAIRWISE_EPS).sum(axis=1))
        assigned = np.zeros(n, bool)
        while True:
            seed = int(np.argmax(score))
            d_obj = np.sqrt(np.square(feats - feats[seed] + PAIRWISE_EPS).sum(axis=1))
            region = (d_obj < d_bg) & ~assigned
            assigned |= region
            score[region] = 0.0
            seeds.append(seed)
            maps.append(-d_obj)
            claims.append(region)
            if not region.any() or score.max() < eps or len(seeds) >= limit:
                break
    elif rule == "paper":
        r_n = feats @ bg
        while len(seeds) < limit and score.max() > eps:
            seed = int(np.argmax(score))
            r_p = feats @ feats[seed]
            region = r_p > r_n
            region[seed] = True
            score[region] = 0.0
            seeds.append(seed)
            maps.append(r_p)
            claims.append(region)
    else:
        raise ValueError(f"unknown rule {rule!r}")
    t = len(seeds)
    bank = feats[seeds]  # (T, c)
    norms = np.sqrt(np.square(bank).sum(axis=1))
    cos_bg = (bank @ bg) / np.maximum(norms * np.sqrt(bg @ bg), COSINE_EPS)
    cos = (bank @ bank.T) / np.maximum(np.outer(norms, norms), COSINE_EPS)
    is_bg = cos_bg > tau1
    linked = cos > tau2
    parent = list(range(t))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for j in range(t):
        if is_bg[j]:
            continue
        for k in np.flatnonzero(linked[j, :j]).tolist():
            rj, rk = find(j), find(k)
            if rj != rk:
                parent[rk] = rj
    by_root: dict[int, list[int]] = {}
    for j in range(t):
        if not is_bg[j]:
            by_root.setdefault(find(j), []).append(j)
    smap_flat = smap.reshape(n).astype(np.float64)
    groups = []
    for members in sorted(by_root.values()):
        cells = np.logical_or.reduce([claims[j] for j in members])
        seed = seeds[members[0]]
        groups.append({
            "members": np.asarray(members, np.int64),
            "vectors": bank[members].astype(np.float32),
            "cells": cells.reshape(h, w),
            "map": np.mean([maps[j] for j in members], axis=0).astype(np.float32).reshape(h, w),
            "seed": (seed // w, seed % w),
            "score": float(smap_flat[cells].mean()) if cells.any() else 0.0,
        })
    return groups


def _same_groups(kernel_groups, numpy_groups) -> bool:
    if len(kernel_groups) != len(numpy_groups):
        return False
    for a, b in zip(kernel_groups, numpy_groups):
        if (a.members.tolist() != b["members"].tolist() or a.seed != b["seed"]
                or not np.array_equal(a.cells, b["cells"])
                or not np.array_equal(a.vectors, b["vectors"])
                or not np.allclose(a.map, b["map"], rtol=1e-5, atol=1e-5)
                or abs(a.score - b["score"]) > 1e-9):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------


def _percentiles(samples_ns) -> dict:
    x = np.asarray(samples_ns, np.float64) / 1e3
    return {"n": int(x.size), "p50": float(np.percentile(x, 50)),
            "p90": float(np.percentile(x, 90)), "p99": float(np.percentile(x, 99)),
            "max": float(x.max()), "mean": float(x.mean())}


def _time_calls(fn, pool, calls: int) -> np.ndarray:
    """Per-call wall time (ns) of fn(*pool[i % len(pool)]) for i < calls."""
    out = np.empty(calls, np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        args = pool[i % len(pool)]
        t0 = clock()
        fn(*args)
        out[i] = clock() - t0
    return out


def _buckets(iterations, samples_ns) -> dict:
    x = np.asarray(samples_ns, np.float64) / 1e3
    out = {}
    for lo, hi in ((1, 1), (2, 4), (5, 8), (9, 16), (17, 32), (33, 10**9)):
        sel = (iterations >= lo) & (iterations <= hi)
        if sel.any():
            name = str(lo) if lo == hi else (f"{lo}-{hi}" if hi < 10**9 else f">={lo}")
            out[name] = {"n": int(sel.sum()), "p50": float(np.median(x[sel]))}
    return out


def _blas_single_thread():
    """Limit numpy's BLAS to one thread (the numba kernel uses one core) when threadpoolctl is
    available: fairer, and much steadier on a shared machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), None
    return threadpool_limits(limits=1, user_api="blas"), 1


def _theil_sen(x, y) -> tuple[float, float]:
    """Median of pairwise slopes and the matching median intercept (robust line fit)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    i, j = np.triu_indices(x.size, 1)
    dx = x[j] - x[i]
    ok = dx != 0
    if not ok.any():
        return float(np.median(y)), 0.0
    slope = float(np.median((y[j] - y[i])[ok] / dx[ok]))
    return float(np.median(y - slope * x)), slope


def _cpu_model() -> str:
    """'model name' of /proc/cpuinfo, with its family / model numbers and the widest SIMD."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    flags = info.get("flags", "").split()
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    return (f"{info.get('model name', 'unknown')} (family {info.get('cpu family', '?')}, "
            f"model {info.get('model', '?')}, {simd})")


def _environment() -> dict:
    import numba

    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run_ioi_benchmark(repeats: int = 2000, seed: int = 0, *, pool_size: int = 64,
                      numpy_repeats: int | None = None,
                      rules: tuple[str, ...] = ("official", "paper")) -> dict:
    """Benchmark the IOI post-processor; returns a JSON-serialisable dict.

    For each grid size in SIZES and each rule: a pool of `pool_size` realistic inputs (c = 512,
    fixed seed), one warm-up pass over the pool (JIT compilation / cache load, numpy check),
    then `repeats` timed calls of the numba version cycling through the pool and `numpy_repeats`
    (default repeats // 10, at least 20) of the numpy version.  Latencies in microseconds.
    """
    from streamloc.ioi import _ioi_kernel, identify_objects

    numpy_repeats = max(20, repeats // 10) if numpy_repeats is None else numpy_repeats
    options = {"eps": 0.1, "tau1": 0.7, "tau2": 0.6}
    report = {
        "benchmark": "ioi_cpu",
        "config": {"repeats": repeats, "numpy_repeats": numpy_repeats, "seed": seed,
                   "pool_size": pool_size, "channels": CHANNELS,
                   "sizes": [f"{h}x{w}" for h, w in SIZES], "rules": list(rules), **options,
                   "inputs": "make_scene: 0-3 object prototypes + background, cosine sound map, "
                             "F^ = F * S, E_n = mean(F^ * Neg) (official)"},
        "environment": _environment(),
        "results": {},
    }
    t_start = time.perf_counter()
    for h, w in SIZES:
        rng = np.random.default_rng([seed, h, w])
        pool = [make_scene(rng, CHANNELS, h, w) for _ in range(pool_size)]
        per_size = {}
        for rule in rules:
            opts = dict(options, rule=rule)

            def run_numba(s, f, b, _o=opts):
                return identify_objects(s, f, b, **_o)

            def run_numpy(s, f, b, _o=opts):
                return ioi_numpy(s, f, b, **_o)

            # warm-up (compilation / cache load) and the one-time equality check
            mismatches = sum(not _same_groups(run_numba(*x), run_numpy(*x)) for x in pool)
            stats = np.array([_ioi_kernel(s, f, b, options["eps"], options["tau1"],
                                          options["tau2"], rule == "paper", h * w + 1,
                                          1.0)[0][:5] for s, f, b in pool])
            iterations, n_groups = stats[:, 2], stats[:, 1]
            numba_ns = _time_calls(run_numba, pool, repeats)
            limit, blas_threads = _blas_single_thread()
            with limit:
                numpy_ns = _time_calls(run_numpy, pool, numpy_repeats)
            scene_of_call = np.arange(repeats) % pool_size
            it_per_call = iterations[scene_of_call]
            fixed, per_iter = _theil_sen(iterations, [
                np.median(numba_ns[scene_of_call == i]) / 1e3 if (scene_of_call == i).any()
                else np.nan for i in range(pool_size)])
            numba = _percentiles(numba_ns)
            numpy_ = _percentiles(numpy_ns)
            per_size[rule] = {
                "numpy_equals_numba": mismatches == 0,
                "numpy_mismatches": int(mismatches),
                "iterations": {"mean": float(iterations.mean()),
                               "p50": float(np.median(iterations)),
                               "p90": float(np.percentile(iterations, 90)),
                               "max": int(iterations.max())},
                "objects": {"mean": float(n_groups.mean()),
                            "histogram": {str(k): int(v) for k, v in
                                          zip(*np.unique(n_groups, return_counts=True))}},
                "numba_us": numba,
                "numpy_us": numpy_,
                "numpy_blas_threads": blas_threads,
                "speedup_p50": numpy_["p50"] / numba["p50"],
                "speedup_mean": numpy_["mean"] / numba["mean"],
                "numba_us_by_iterations": _buckets(it_per_call, numba_ns),
                # robust (Theil-Sen) fit of the per-input median latency: fixed + k * iterations
                "numba_fit_us": {"fixed": fixed, "per_iteration": per_iter},
            }
        report["results"][f"{h}x{w}"] = per_size
    report["wall_s"] = time.perf_counter() - t_start
    if hasattr(os, "getloadavg"):
        report["environment"]["load_average_1min_end"] = os.getloadavg()[0]
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ioi_cpu.json")
    args = parser.parse_args(argv)
    report = run_ioi_benchmark(repeats=args.repeats, seed=args.seed)
    path = RESULTS / args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    for size, per_rule in report["results"].items():
        for rule, r in per_rule.items():
            print(f"  {size:5s} {rule:8s} iterations p50 {r['iterations']['p50']:5.1f} "
                  f"mean {r['iterations']['mean']:6.1f} | numba p50 {r['numba_us']['p50']:8.1f} us "
                  f"p99 {r['numba_us']['p99']:8.1f} us | numpy p50 {r['numpy_us']['p50']:9.1f} us "
                  f"p99 {r['numpy_us']['p99']:9.1f} us | x{r['speedup_p50']:.1f}"
                  f"{'' if r['numpy_equals_numba'] else '  (numpy MISMATCH)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
