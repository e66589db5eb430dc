"""Localize the sounding objects of a video file offline and write an annotated copy + JSONL.

    python examples/offline_video.py clip.mp4 --model model.safetensors --out annotated.mp4
    python examples/offline_video.py clip.mp4                 # the bundled NoPrior model

Uses the streaming pipeline with the file played as a paced live source (real time): the ticks
see the file as they would see a camera and a microphone, at `--rate` per second, so a file takes
its own duration to process.
"""

from __future__ import annotations

import argparse

from streamloc import Localizer, load_bundled_model
from streamloc.io.media import MediaSource
from streamloc.io.sinks import AnnotatedVideoWriter, JsonlSink
from streamloc.pipeline import StreamingPipeline


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("--model", help="streamloc checkpoint (default: the bundled NoPrior model)")
    p.add_argument("--out", default="annotated.mp4")
    p.add_argument("--jsonl", default="annotated.jsonl")
    p.add_argument("--rate", type=float, default=10.0)
    args = p.parse_args(argv)

    localizer = Localizer.from_checkpoint(args.model) if args.model else Localizer(load_bundled_model())
    source = MediaSource(args.video, sample_rate=localizer.sample_rate, realtime=True)
    sinks = [JsonlSink(args.jsonl), AnnotatedVideoWriter(args.out, fps=args.rate, audio_rate=localizer.sample_rate)]
    with StreamingPipeline(localizer, source, sinks=sinks, rate=args.rate) as pipeline:
        summary = pipeline.run()
    print(pipeline.stats.format())
    print(f"wrote {args.out} and {args.jsonl} ({summary['counters'].get('ticks', 0)} ticks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
