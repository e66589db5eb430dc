"""The five evaluation protocols on one deterministic synthetic prediction set.

    python benchmarks/eval_protocols.py [--n 200] [--seed 0] [--out benchmarks/results/eval_protocols]

Builds ``--n`` samples (fixed seed) of blurred-box predictions of varying quality against box
ground truths, in scene types chosen to hit every difference between the protocols
(``training/metrics.py`` table, ``official-impls.md`` §6):

=================== ===========================================================================
scene type          what it exercises
=================== ===========================================================================
``single``          one source, one map (7², 14², 28² maps: every up-sampling path)
``consensus``       one source with a Flickr-style consensus GT ({0, 0.5, 1} weights)
``two``             two sources in one image, maps in source order with the right classes
``two_swapped``     two sources, the maps in swapped order *and* claiming the other class
                    (class-aware AVGN / DSOL punish it; NoPrior greedy / ours are label-free)
``no_map``          sources but no predicted map (NoPrior drops the sample; ours scores 0;
                    single-map protocols see a flat map)
``extra_map``       one source, a good map plus a spurious one claiming another class
                    (counting; NoPrior appends the extra map's 0; AVGN drops it)
``silent``          one source plus a visible silent object the map partly leaks onto
                    (our silent suppression)
``ties``            a quantised full-resolution map {0, 0.5, 1} covering < half the image:
                    ``>= median`` keeps the whole image, NoPrior's ``> median`` only the box,
                    DSOL's ``p > t·max p`` is unaffected
``stacked``         NoPrior's vertical concatenation of two single-source images, maps over the
                    (2h, w) canvas (only NoPrior and ours evaluate it)
``empty``           no sounding source, one map and a silent object
=================== ===========================================================================

Writes the predictions ``.npz`` to ``benchmarks/results/tmp/eval_protocols/predictions.npz``
(git-ignored; its sha256 is in the report), then ``training.evaluate.evaluate`` with all five
protocols writes ``report.json`` and the PNG plots to ``--out``; this script adds
``scene_breakdown.json`` (mean per-sample cIoU per scene type and protocol) and ``summary.md``.
Everything written there is deterministic for a given seed and library versions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.evaluate import PROTOCOL_ORDER, Sample, evaluate, save_predictions  # noqa: E402
from training.metrics import GroundTruth  # noqa: E402

S = 224
CLASSES = ["guitar", "piano", "violin", "drum", "flute"]
CLASS_COLORS = [(200, 120, 40), (40, 40, 40), (150, 60, 30), (200, 40, 40), (170, 170, 190)]
SCENES = [  # (type, count per 200)
    ("single", 60),
    ("consensus", 15),
    ("two", 40),
    ("two_swapped", 20),
    ("no_map", 10),
    ("extra_map", 15),
    ("silent", 15),
    ("ties", 10),
    ("stacked", 10),
    ("empty", 5),
]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "eval_protocols"
NPZ_PATH = ROOT / "benchmarks" / "results" / "tmp" / "eval_protocols" / "predictions.npz"


# ----------------------------------------------------------------------------- geometry


def rand_box(rng: np.random.Generator, lo: float = 0.2, hi: float = 0.45, avoid=None) -> tuple:
    """A normalised ``(x, y, w, h)`` box; ``avoid``: try not to overlap that box much."""
    for _ in range(50):
        w, h = rng.uniform(lo, hi, 2)
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        box = (x, y, w, h)
        if avoid is None or overlap(box, avoid) < 0.1:
            return box
    return box


def overlap(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


def box_mask(box, size: int = S) -> np.ndarray:
    x, y, w, h = box
    x1, y1, x2, y2 = (int(np.clip(v, 0, 1) * size) for v in (x, y, x + w, y + h))
    m = np.zeros((size, size), np.float64)
    m[y1:y2, x1:x2] = 1
    return m


def render_box(box, res: int) -> np.ndarray:
    """Fraction of each of ``res × res`` cells covered by the box (anti-aliased indicator)."""
    x, y, w, h = box
    edges = np.linspace(0, 1, res + 1)
    cx = np.clip(np.minimum(edges[1:], x + w) - np.maximum(edges[:-1], x), 0, None) * res
    cy = np.clip(np.minimum(edges[1:], y + h) - np.maximum(edges[:-1], y), 0, None) * res
    return np.outer(cy, cx)


def jitter(box, quality: float, rng: np.random.Generator):
    """The predicted box: centre and size perturbed more as ``quality`` drops."""
    x, y, w, h = box
    spread = (1 - quality) * 0.3
    cx = np.clip(x + w / 2 + rng.normal(0, spread), 0.05, 0.95)
    cy = np.clip(y + h / 2 + rng.normal(0, spread), 0.05, 0.95)
    w2 = float(np.clip(w * np.exp(rng.normal(0, 0.3 * (1 - quality) + 0.05)), 0.05, 0.9))
    h2 = float(np.clip(h * np.exp(rng.normal(0, 0.3 * (1 - quality) + 0.05)), 0.05, 0.9))
    return (cx - w2 / 2, cy - h2 / 2, w2, h2)


def blurred_map(boxes_amps, res: int, quality: float, rng: np.random.Generator, rows: int = 1) -> np.ndarray:
    """A raw "object map": blurred boxes (with amplitudes) on a ``(rows·res, res)`` grid plus noise
    that grows as ``quality`` drops. ``boxes_amps``: ``[(piece, box, amplitude), ...]``."""
    m = np.zeros((rows * res, res), np.float64)
    for piece, box, amp in boxes_amps:
        m[piece * res : (piece + 1) * res] += amp * render_box(box, res)
    sigma = max(0.6, 0.07 * res)
    m = cv2.GaussianBlur(m, (0, 0), sigma)
    m += rng.uniform(0, 1, m.shape) * (0.05 + 0.4 * (1 - quality))
    m *= rng.uniform(0.4, 1.0) / max(m.max(), 1e-6)  # softmax-like scale, not normalised
    return m.astype(np.float32)


def draw_image(boxes_classes, silent_boxes, rng, rows: int = 1) -> np.ndarray:
    bg = rng.integers(90, 170, 3)
    img = np.empty((rows * S, S, 3), np.uint8)
    img[:] = bg
    for piece, box, c in boxes_classes:
        x, y, w, h = (int(v * S) for v in box)
        cv2.rectangle(img, (x, piece * S + y), (x + w - 1, piece * S + y + h - 1), CLASS_COLORS[c], -1)
    for piece, box in silent_boxes:
        x, y, w, h = (int(v * S) for v in box)
        cv2.rectangle(img, (x, piece * S + y), (x + w - 1, piece * S + y + h - 1), (60, 110, 60), -1)
    return img


# ----------------------------------------------------------------------------- scenes


def make_sample(kind: str, i: int, rng: np.random.Generator) -> Sample:
    res = int(rng.choice([7, 14, 14, 28]))
    q = float(rng.uniform(0.2, 1.0))
    cls = [int(c) for c in rng.choice(len(CLASSES), size=2, replace=False)]
    sid = f"{i:03d}-{kind}"
    if kind in ("single", "consensus", "no_map", "extra_map", "silent", "ties"):
        # Flickr-like large boxes; smaller ones where a second object must fit, and for the
        # quantised map (it must leave more than half of the image at exactly 0).
        lo, hi = {"silent": (0.35, 0.6), "extra_map": (0.35, 0.6), "ties": (0.25, 0.45)}.get(kind, (0.45, 0.85))
        box = rand_box(rng, lo, hi)
        masks = [box_mask(box)]
        if kind == "consensus":  # second annotator's box: overlap 1, the rest 0.5
            other = jitter(box, 0.7, rng)
            masks = [np.clip(0.5 * box_mask(box) + 0.5 * box_mask(other), 0, 1)]
        silent_boxes, silent_masks = [], []
        if kind == "silent":
            sbox = rand_box(rng, 0.25, 0.4, avoid=box)
            silent_boxes, silent_masks = [(0, sbox)], [box_mask(sbox)]
        if kind == "no_map":
            maps, claims = [], []
        elif kind == "ties":
            pred = box_mask(jitter(box, q, rng))
            ring = cv2.dilate(pred.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(np.float64)
            maps, claims = [(0.5 * ring + 0.5 * pred).astype(np.float32)], [cls[0]]
        else:
            parts = [(0, jitter(box, q, rng), 1.0)]
            if kind == "silent":
                parts.append((0, jitter(silent_boxes[0][1], 0.9, rng), float(rng.uniform(0.0, 0.9))))
            maps, claims = [blurred_map(parts, res, q, rng)], [cls[0]]
            if kind == "extra_map":
                spurious = rand_box(rng, 0.25, 0.45, avoid=box)
                maps.append(blurred_map([(0, spurious, 1.0)], res, 0.5, rng))
                claims.append(cls[1])
        gt = GroundTruth(masks, class_ids=[cls[0]], silent_masks=silent_masks)
        img = draw_image([(0, box, cls[0])], silent_boxes, rng)
        return Sample(maps, gt, map_class_ids=claims, image=img, sample_id=sid)
    if kind in ("two", "two_swapped"):
        b0 = rand_box(rng, 0.3, 0.5)
        b1 = rand_box(rng, 0.3, 0.5, avoid=b0)
        q1 = float(np.clip(q + rng.normal(0, 0.15), 0.1, 1.0))
        m0 = blurred_map([(0, jitter(b0, q, rng), 1.0)], res, q, rng)
        m1 = blurred_map([(0, jitter(b1, q1, rng), 1.0)], res, q1, rng)
        maps, claims = ([m0, m1], cls) if kind == "two" else ([m1, m0], cls)  # swapped: m1 claims class 0
        gt = GroundTruth([box_mask(b0), box_mask(b1)], class_ids=cls)
        img = draw_image([(0, b0, cls[0]), (0, b1, cls[1])], [], rng)
        return Sample(maps, gt, map_class_ids=list(claims), image=img, sample_id=sid)
    if kind == "stacked":
        b0, b1 = rand_box(rng, 0.45, 0.85), rand_box(rng, 0.45, 0.85)
        style = i % 3
        if style == 2:  # one map lighting both pieces
            maps = [blurred_map([(0, jitter(b0, q, rng), 1.0), (1, jitter(b1, q, rng), 1.0)], res, q, rng, rows=2)]
            claims = [cls[0]]
        else:
            m0 = blurred_map([(0, jitter(b0, q, rng), 1.0)], res, q, rng, rows=2)
            m1 = blurred_map([(1, jitter(b1, q, rng), 1.0)], res, q, rng, rows=2)
            maps, claims = ([m0, m1], cls) if style == 0 else ([m1, m0], cls[::-1])
        gt = GroundTruth([box_mask(b0), box_mask(b1)], class_ids=cls, stacked=True)
        img = draw_image([(0, b0, cls[0]), (1, b1, cls[1])], [], rng, rows=2)
        return Sample(maps, gt, map_class_ids=list(claims), image=img, sample_id=sid)
    if kind == "empty":
        sbox = rand_box(rng, 0.3, 0.5)
        maps = [blurred_map([(0, jitter(sbox, 0.5, rng), 0.6)], res, 0.3, rng)]
        gt = GroundTruth([], silent_masks=[box_mask(sbox)])
        img = draw_image([], [(0, sbox)], rng)
        return Sample(maps, gt, map_class_ids=[cls[0]], image=img, sample_id=sid)
    raise ValueError(kind)


def make_samples(n: int = 200, seed: int = 0) -> tuple[list[Sample], list[str]]:
    total = sum(c for _, c in SCENES)
    kinds = [k for k, c in SCENES for _ in range(max(1, round(c * n / total)))][:n]
    while len(kinds) < n:
        kinds.append("single")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(kinds))
    kinds = [kinds[j] for j in order]
    samples = [make_sample(kind, i, np.random.default_rng([seed, i])) for i, kind in enumerate(kinds)]
    return samples, kinds


# ----------------------------------------------------------------------------- main


def breakdown(report: dict, kinds: list[str]) -> dict:
    out: dict = {}
    for protocol, entry in report["protocols"].items():
        per = entry["per_sample"]
        table = {}
        for kind, _ in SCENES:
            idx = [i for i, k in enumerate(kinds) if k == kind]
            vals = [float(np.mean([0.0 if v is None else v for v in per[i]])) for i in idx if per[i]]
            table[kind] = {
                "n_samples": len(idx),
                "n_scored": len(vals),
                "mean_ciou": float(np.mean(vals)) if vals else None,
            }
        out[protocol] = table
    return out


def headline(protocol: str, summary: dict) -> str:
    keys = {
        "ezvsl": ["ap50", "mean_ciou", "auc"],
        "avgn": ["precision", "precision@30", "precision@10", "piap", "f1@30"],
        "noprior": ["ciou@0.5", "ciou@0.3", "auc", "cap", "piap", "true"],
        "dsol": ["ciou@0.3", "ciou@0.5", "auc", "nsa"],
        "streamloc": [
            "ciou@0.5", "ciou@0.3", "mean_ciou", "auc", "cap", "piap", "silent_suppression", "counting_accuracy",
        ],
    }[protocol]
    return ", ".join(f"{k} {summary[k]:.3f}" if summary.get(k) is not None else f"{k} n/a" for k in keys)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--npz", default=str(NPZ_PATH))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    samples, kinds = make_samples(args.n, args.seed)
    sha = save_predictions(args.npz, samples, size=S, class_names=CLASSES)
    t1 = time.perf_counter()
    out = Path(args.out)
    report = evaluate(args.npz, list(PROTOCOL_ORDER), out, plots=True, progress=not args.quiet, per_sample=True)
    t2 = time.perf_counter()
    try:  # a repository-relative path in the committed report, not this machine's
        report["input"]["path"] = Path(args.npz).resolve().relative_to(ROOT).as_posix()
        (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    except ValueError:
        pass

    scenes = breakdown(report, kinds)
    (out / "scene_breakdown.json").write_text(
        json.dumps(
            {"seed": args.seed, "n": args.n, "predictions_sha256": sha, "scenes": dict(SCENES), "by_protocol": scenes},
            indent=2,
        )
        + "\n"
    )
    lines = [
        "# Evaluation protocols on one synthetic prediction set",
        "",
        f"`python benchmarks/eval_protocols.py --n {args.n} --seed {args.seed}`: {args.n} samples, "
        f"predictions sha256 `{sha[:16]}…`.",
        "Numbers are each protocol's own `Evaluator.summary()` (see `report.json` for counts, options and curves).",
        "",
        "| protocol | evaluated | adapted | skipped | headline numbers |",
        "|---|---|---|---|---|",
    ]
    for protocol, entry in report["protocols"].items():
        c = entry["counts"]
        counts = f"{c['evaluated']} | {c['adapted']} | {c['skipped']}"
        lines.append(f"| {protocol} | {counts} | {headline(protocol, entry['summary'])} |")
    lines += ["", "Mean per-sample cIoU by scene type (`-`: not evaluated by that protocol):", ""]
    lines.append("| scene | n | " + " | ".join(report["protocols"]) + " |")
    lines.append("|---|---|" + "---|" * len(report["protocols"]))
    for kind, _ in SCENES:
        n_kind = scenes[next(iter(scenes))][kind]["n_samples"]
        cells = []
        for protocol in report["protocols"]:
            v = scenes[protocol][kind]["mean_ciou"]
            cells.append("-" if v is None else f"{v:.3f}")
        lines.append(f"| {kind} | {n_kind} | " + " | ".join(cells) + " |")
    lines += ["", "Plots: " + ", ".join(f"`{name}`" for name in report["plots"]), ""]
    (out / "summary.md").write_text("\n".join(lines))
    if not args.quiet:
        print("\n".join(lines))
        print(f"\ngenerate {t1 - t0:.1f} s, evaluate {t2 - t1:.1f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
