"""Object-id stability of the tracker on generated demo-style clips, with the bundled model.

Each clip (``streamloc dataset demo --seed S``: 15 s, three objects on a wallpaper, each sounding
in its own intervals, with a label map and a timeline) is localized at ``--rate`` ticks per second
(window ending at the tick, as live), the Localizer's objects are stored once, and every tracker
variant replays the same objects. A reported object belongs to the ground-truth object whose box holds
its heatmap's peak (the pointing game; no box or two boxes: a stray report). Per variant:

- ``id_switches``: over each ground-truth object's detections in time order, how often its id
  changes from one detection to the next (the MOT "IDSW" idea, without the occlusion rules);
- ``ids_per_object``: mean number of distinct ids a ground-truth object was given;
- ``merged_ids``: ids given to more than one ground-truth object.

Needs the benchmark sources (``streamloc dataset fetch``) to build the clips.

    python benchmarks/bench_tracking.py [--seeds 1 2 3 4 5 6 7 8] [--rate 10] [--out tracking_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, write_json  # noqa: E402

from streamloc import Localizer, load_bundled_model  # noqa: E402
from streamloc.backends.quantize import _decode_clip  # noqa: E402
from streamloc.tracking import REGIONS, ObjectTracker  # noqa: E402



def build_clip(seed: int, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "training.data.avpairs_cli", "--no-progress", "demo", "--out", str(out),
                    "--seed", str(seed)], check=True, capture_output=True)
    return out / "demo_clip.mp4"


def localize_clip(loc: Localizer, clip: Path, rate: float) -> tuple[list[float], list[list]]:
    frames, audio, sr = _decode_clip(clip)
    times = np.array([t for t, _ in frames])
    window = loc.model.config.audio.window_seconds
    ticks = np.arange(window, len(audio) / sr + 1e-9, 1.0 / rate)
    objects = []
    for t in ticks:
        end = int(round(t * sr))
        frame = frames[int(np.searchsorted(times, t, side="right")) - 1][1]
        objects.append(loc.localize(frame, audio[end - int(round(window * sr)):end], sr).objects)
    return ticks.tolist(), objects


def owner(heatmap: np.ndarray, boxes: dict[int, list[int]]) -> int | None:
    """The ground-truth object whose box holds the report's heatmap peak (the pointing game)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    inside = [g for g, (x1, y1, x2, y2) in boxes.items() if x1 <= x < x2 and y1 <= y < y2]
    return inside[0] if len(inside) == 1 else None


def score(sequence: list[list], owners: list[list], n_objects: int) -> dict:
    """Id stability of one tracker run: ``sequence[k]`` the ids of tick k, ``owners[k]`` their
    ground-truth objects (None: a stray report)."""
    ids_of: dict[int, list[int]] = {g: [] for g in range(n_objects)}
    gts_of_id: dict[int, set] = {}
    stray = 0
    for ids, gts in zip(sequence, owners):
        for i, g in zip(ids, gts):
            if g is None:
                stray += 1
                continue
            ids_of[g].append(i)
            gts_of_id.setdefault(i, set()).add(g)
    switches = sum(sum(a != b for a, b in zip(s, s[1:])) for s in ids_of.values())
    detected = [s for s in ids_of.values() if s]
    return {
        "id_switches": int(switches),
        "ids_per_object": float(np.mean([len(set(s)) for s in detected])) if detected else None,
        "merged_ids": int(sum(len(g) > 1 for g in gts_of_id.values())),
        "detections": int(sum(len(s) for s in detected)),
        "stray_reports": int(stray),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 9)))
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="tracking_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loc = Localizer(load_bundled_model())
    per_clip, totals = [], {r: {} for r in REGIONS}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="streamloc-tracking-") as tmp:
        for seed in args.seeds:
            clip = build_clip(seed, Path(tmp) / f"seed{seed}")
            meta = json.loads(clip.with_suffix(".json").read_text())
            boxes = {o["id"]: o["box_xyxy"] for o in meta["objects"]}
            ticks, objects = localize_clip(loc, clip, args.rate)
            owners = [[owner(o.heatmap, boxes) for o in objs] for objs in objects]
            entry = {"seed": seed, "ticks": len(ticks), "objects": [
                {k: o[k] for k in ("id", "label", "sounding_intervals_s")} for o in meta["objects"]],
                "reports_per_tick": float(np.mean([len(o) for o in objects])),
                "ticks_with_2plus_reports": int(sum(len(o) >= 2 for o in objects)), "trackers": {}}
            for region in REGIONS:
                tracker = ObjectTracker(region=region)
                sequence = [[o.id for o in tracker.update(list(objs))] for objs in objects]
                entry["trackers"][region] = score(sequence, owners, len(meta["objects"]))
            per_clip.append(entry)
            print(f"seed {seed}: {entry['ticks']} ticks, {entry['reports_per_tick']:.2f} reports/tick, "
                  f"{entry['ticks_with_2plus_reports']} ticks with >= 2; " + ", ".join(
                      f"{r}: {e['id_switches']} switches, {e['merged_ids']} merged ids"
                      for r, e in entry["trackers"].items()), flush=True)
    for region in REGIONS:
        rows = [c["trackers"][region] for c in per_clip]
        totals[region] = {k: int(sum(r[k] for r in rows)) for k in ("id_switches", "merged_ids", "detections",
                                                                    "stray_reports")}
        per_obj = [r["ids_per_object"] for r in rows if r["ids_per_object"] is not None]
        totals[region]["ids_per_object_mean"] = float(np.mean(per_obj)) if per_obj else None
    report = {
        "benchmark": "tracking id stability (bench_tracking.py)",
        "config": {"seeds": args.seeds, "rate": args.rate, "model": "bundled noprior_avpairs",
                   "object_mask": loc.object_mask, "mask_threshold": loc.mask_threshold,
                   "owner_rule": "the ground-truth box holding the report's heatmap peak",
                   "tracker": {k: getattr(ObjectTracker(), k) for k in ("vector_weight", "min_affinity",
                                                                        "max_missed")}},
        "environment": environment(),
        "seconds": time.perf_counter() - t0,
        "totals": totals,
        "clips": per_clip,
    }
    path = write_json(args.out, report)
    print(json.dumps(totals, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
