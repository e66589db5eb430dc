"""Per-method inference cost on the CPU: parameters and forward time per window (eager fp32,
batch 1, each method's default config: 224x224 frame, its own audio window and front-end), plus
the full `Localizer.localize` tick (640x480 frame, 48 kHz audio resampled to the model's rate).

    python benchmarks/bench_methods.py [--repeats 30] [--threads 2] [--out methods_cpu.json]
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

from streamloc import Localizer  # noqa: E402
from streamloc.models import create_model, list_models  # noqa: E402


def bench(name: str, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    images, specs = model.example_inputs()
    with torch.inference_mode():
        for _ in range(warmup):
            model(images, specs)
        forward = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            model(images, specs)
            forward.append(time.perf_counter_ns() - t0)
    loc = Localizer(model, silence_dbfs=None)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    seconds = model.config.audio.window_seconds
    audio = (0.1 * rng.standard_normal(int(seconds * 48000) + 480)).astype(np.float32)
    for _ in range(warmup):
        loc.localize(frame, audio, 48000)
    ticks = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        loc.localize(frame, audio, 48000)
        ticks.append(time.perf_counter_ns() - t0)
    trainable = sum(p.numel() for p in model.parameters())
    return {
        "parameters": int(trainable),
        "outputs": list(model.output_names),
        "image": list(model.config.image.size),
        "audio": {"kind": model.config.audio.kind, "sample_rate": model.config.audio.sample_rate,
                  "window_seconds": model.config.audio.window_seconds,
                  "spectrogram": list(model.spectrogram_shape())},
        "forward_ms": percentiles(forward, unit=1e6),
        "localize_ms": percentiles(ticks, unit=1e6),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="methods_cpu.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"benchmark": "methods_cpu", "environment": environment(),
              "config": {"repeats": args.repeats, "warmup": args.warmup}, "methods": {}}
    for name in list_models():
        print(f"{name} ...", flush=True)
        report["methods"][name] = bench(name, args.repeats, args.warmup)
    path = write_json(args.out, report)
    print(f"wrote {path}")
    print(f"{'method':8s} {'params':>12s} {'forward p50':>12s} {'tick p50':>10s}")
    for name, r in report["methods"].items():
        print(f"{name:8s} {r['parameters']:12,d} {r['forward_ms']['p50']:10.1f}ms {r['localize_ms']['p50']:8.1f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
