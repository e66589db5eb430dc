"""Soak benchmark (not a test): run the streaming pipeline on a looping media source for a given
time and report memory (RSS over time), dropped/skipped ticks and latency percentiles.

    python benchmarks/soak.py --minutes 10 [--model CKPT] [--rate 10] [--out soak_cpu.json]

Without --media a 10-s H.264 + AAC clip is generated with PyAV (moving squares + tones). Memory
must stay flat: the JSON reports RSS at the start (after warm-up) and end, the maximum, and the
slope of a least-squares fit over the run (MiB per minute).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, write_json  # noqa: E402

from streamloc import Localizer  # noqa: E402
from streamloc.io.media import MediaSource  # noqa: E402
from streamloc.models import create_model  # noqa: E402
from streamloc.models.checkpoint import load_checkpoint  # noqa: E402
from streamloc.pipeline import StreamingPipeline  # noqa: E402


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_clip(path: Path, seconds: int = 10, fps: int = 15, rate: int = 48000) -> Path:
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 320, 240, "yuv420p"
        a = out.add_stream("aac", rate=rate)
        a.layout = "mono"
        for i in range(seconds * fps):
            img = np.full((240, 320, 3), 40, np.uint8)
            x = int(20 + 200 * (0.5 + 0.5 * np.sin(i / fps)))
            img[80:160, x:x + 60] = (0, 200, 255)
            for packet in v.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        t = np.arange(seconds * rate) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.3 * t) > 0)).astype(np.float32)
        for start in range(0, tone.size, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in a.encode(frame):
                out.mux(packet)
        for stream in (v, a):
            for packet in stream.encode(None):
                out.mux(packet)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--media", help="A/V file to loop (default: a generated 10-s clip)")
    p.add_argument("--model", help="streamloc checkpoint (default: untrained NoPrior, ResNet-18 pair)")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="soak_cpu.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_checkpoint(args.model) if args.model else create_model("noprior")
    loc = Localizer(model)
    tmp = tempfile.TemporaryDirectory()
    media = Path(args.media) if args.media else make_clip(Path(tmp.name) / "soak.mp4")
    source = MediaSource(media, sample_rate=loc.sample_rate, realtime=True, loop=True)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sampler():
        t0 = time.monotonic()
        while not stop.wait(args.sample_every):
            samples.append((time.monotonic() - t0, rss_mib()))

    pipe = StreamingPipeline(loc, source, rate=args.rate, duration=args.minutes * 60)
    thread = threading.Thread(target=sampler, daemon=True)
    with pipe:
        rss_start = rss_mib()
        thread.start()
        summary = pipe.run()
    stop.set()
    thread.join()
    t = np.array([s[0] for s in samples]) / 60.0
    m = np.array([s[1] for s in samples])
    # skip the first minute (allocator warm-up, first loop of the file) for the trend
    keep = t >= min(1.0, t.max() / 4) if t.size else t
    slope = float(np.polyfit(t[keep], m[keep], 1)[0]) if keep.sum() >= 3 else None
    counters = summary["counters"]
    ticks = counters.get("ticks", 0)
    report = {
        "benchmark": "soak",
        "environment": environment(),
        "config": {"minutes": args.minutes, "rate": args.rate, "model": args.model or "noprior (untrained)",
                   "media": str(media) if args.media else "generated 10-s clip, looped"},
        "memory_mib": {"after_start": rss_start, "end": float(m[-1]) if m.size else None,
                       "max": float(m.max()) if m.size else None,
                       "slope_mib_per_min_after_first_minute": slope,
                       "samples": [[round(a, 2), round(b, 2)] for a, b in samples]},
        "ticks": ticks,
        "ticks_expected": int(args.minutes * 60 * args.rate),
        "counters": counters,
        "latency_ms": summary["stages"],
        "loops_completed": source.loops_completed,
        "stop_reason": summary["stop_reason"],
        "audio_ring": summary["audio_ring"],
    }
    path = write_json(args.out, report)
    e2e = summary["stages"].get("e2e", {})
    print(f"wrote {path}")
    print(f"ticks {ticks} / {report['ticks_expected']} expected, skipped {counters.get('ticks_skipped', 0)}, "
          f"late {counters.get('late_ticks', 0)}, loops {source.loops_completed}")
    print(f"RSS {rss_start:.1f} -> {report['memory_mib']['end']} MiB (max {report['memory_mib']['max']}), "
          f"slope {slope} MiB/min")
    if e2e:
        print(f"e2e latency p50 {e2e['p50']:.1f} ms, p99 {e2e['p99']:.1f} ms, max {e2e['max']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
