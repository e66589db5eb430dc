"""Core runtime benchmark (CPU): the IOI post-processor and the Localizer tick, in one run.

Measures
  1. IOI + union-find per tick on 7x7 and 14x14 maps (c = 512): numba kernel vs a vectorised numpy
     version of the same algorithm (from bench_ioi);
  2. `Localizer.localize` latency per stage on a 640x480 frame + 3 s of 48 kHz audio with
     (a) the ResNet-18 pair (NoPrior, 7x7), (b) EfficientNet-Lite0 + audio ResNet-18 (NoPrior),
     (c) the ResNet-18 pair at 14x14 (layer4 stride 1), eager fp32 on the CPU.

    python benchmarks/bench_core.py [--ticks 200] [--warmup 20] [--out core_cpu.json]

Writes benchmarks/results/<out>. Numbers are only comparable within one run (same machine, load).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, percentiles, write_json  # noqa: E402
from bench_ioi import run_ioi_benchmark  # noqa: E402

from streamloc import Localizer  # noqa: E402
from streamloc.models import create_model  # noqa: E402

CONFIGS = {
    "resnet18_pair_7x7": {"visual_backbone": "resnet18"},
    "efficientnet_lite0_resnet18_7x7": {"visual_backbone": "efficientnet_lite0", "freeze_visual": True},
    "resnet18_pair_14x14": {"visual_backbone": "resnet18_s16"},
}


def bench_localizer(options: dict, ticks: int, warmup: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = create_model("noprior", **options)
    loc = Localizer(model)
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(3 * 48000)).astype(np.float32)
    stages: dict[str, list[int]] = {}
    counts = []
    for i in range(warmup + ticks):
        t0 = time.perf_counter_ns()
        result = loc.localize(frame, audio, 48000)
        wall = time.perf_counter_ns() - t0
        if i < warmup:
            continue
        counts.append(len(result.objects))
        for name, ms in result.timings_ms.items():
            stages.setdefault(name, []).append(int(ms * 1e6))
        stages.setdefault("wall", []).append(wall)
    params = sum(p.numel() for p in model.parameters())
    return {
        "options": options,
        "parameters": int(params),
        "input": {"frame": [480, 640, 3], "audio_rate": 48000, "model_rate": model.config.audio.sample_rate},
        "grid": list(result.sound_map.shape),
        "objects_per_tick_mean": float(np.mean(counts)),
        "latency_ms": {name: percentiles(v, unit=1e6) for name, v in stages.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--ioi-repeats", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="core_cpu.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    report = {"benchmark": "core_cpu", "environment": environment(),
              "config": {"ticks": args.ticks, "warmup": args.warmup, "ioi_repeats": args.ioi_repeats}}
    print("IOI post-processor ...", flush=True)
    report["ioi"] = run_ioi_benchmark(repeats=args.ioi_repeats)
    report["localizer"] = {}
    for name, options in CONFIGS.items():
        print(f"Localizer {name} ...", flush=True)
        report["localizer"][name] = bench_localizer(options, args.ticks, args.warmup)
    path = write_json(args.out, report)

    print(f"\nwrote {path}")
    for name, r in report["localizer"].items():
        lat = r["latency_ms"]
        print(f"  {name:34s} total p50 {lat['total']['p50']:7.2f} ms  p99 {lat['total']['p99']:7.2f} ms"
              f"  (encoder p50 {lat['encoder']['p50']:.2f} ms, post {lat['postprocess']['p50']:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
