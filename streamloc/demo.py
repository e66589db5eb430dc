"""`streamloc demo`: the bundled clip through the full live pipeline, headless by default.

The clip (``streamloc/assets/demo/demo_clip.mp4``, 15 s, a violin, a cow and a silent drum kit
that start and stop sounding; its timeline is in ``demo_clip.json``) is played as a paced live
source (:class:`~streamloc.io.media.MediaSource`, real time) into the
:class:`~streamloc.pipeline.StreamingPipeline` with the bundled NoPrior model
(``noprior_avpairs.safetensors``, EfficientNet-Lite0 visual encoder). It writes::

    OUT/demo.mp4       the annotated video (objects, ids, HUD) with the clip's audio
    OUT/demo.jsonl     one JSON record per tick
    OUT/summary.json   ticks, latency percentiles, files, model and clip SHA-256, the clip's timeline

and prints the latency summary and the files written. Command line::

    streamloc demo                       # ./streamloc-demo/, about 16 s
    streamloc demo --display --out /tmp/d --backend compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from importlib import resources
from pathlib import Path

from streamloc.bundled import BUNDLED_CLIP, BUNDLED_MODEL, bundled_asset
from streamloc.errors import CheckpointError, DeviceError, InputError, StreamlocError
from streamloc.hashing import file_sha256

__all__ = ["BUNDLED_CLIP", "BUNDLED_MODEL", "SUMMARY_FORMAT", "bundled_asset", "run_demo"]

SUMMARY_FORMAT = "streamloc-demo-summary/1"


def _resolve(stack: contextlib.ExitStack, given, name: str, what: str, how: str) -> tuple[Path, bool]:
    """(path, bundled?) of a user-given file or the bundled asset ``name``."""
    if given is not None:
        return Path(given), False
    res = bundled_asset(name)
    if not res.is_file():
        raise (CheckpointError if what == "model" else StreamlocError)(
            f"the bundled demo {what} (streamloc/assets/demo/{name}) is not installed: {how}")
    return Path(stack.enter_context(resources.as_file(res))), True


def _clip_timeline(clip: Path) -> list | None:
    """The timeline of the clip's ``.json`` description (written by the avpairs builder), if any."""
    meta = clip.with_suffix(".json")
    try:
        d = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    objects = {o["id"]: o["label"] for o in d.get("objects", [])}
    return [{**seg, "labels": [objects.get(i) for i in seg["sounding"]]} for seg in d.get("timeline", [])]


def run_demo(out_dir: str | os.PathLike = "streamloc-demo", *, display: bool = False, model=None, clip=None,
             rate: float = 10.0, fast: bool = False, threads: int | None = None, device: str = "cpu",
             backend: str = "eager", precision: str = "fp32", backend_batch: int = 1,
             quiet: bool = False) -> dict:
    """Play the demo clip through the live pipeline; write ``demo.mp4``, ``demo.jsonl`` and
    ``summary.json`` into ``out_dir`` (created) and return the summary.

    Args:
        out_dir: output folder.
        display: also show the overlay window (needs a display).
        model: a streamloc checkpoint; default the bundled ``noprior_avpairs.safetensors``.
        clip: an A/V file; default the bundled ``demo_clip.mp4``.
        rate: ticks per second.
        fast: read the clip as fast as possible instead of in real time (for tests; few ticks).
        threads: torch CPU threads (None: torch's default).
        device, backend, precision, backend_batch: as ``streamloc run``.
        quiet: print nothing (by default the latency summary and the files written).

    Raises :class:`~streamloc.errors.StreamlocError` (one line) for a missing bundled model or
    clip, an unreadable checkpoint or media file, or an output folder that cannot be written;
    the outputs already written are flushed and closed.

    Example (about 16 s paced; ``fast=True`` takes a few seconds)::

        from streamloc.demo import run_demo

        summary = run_demo("streamloc-demo", model="model.safetensors")
        print(summary["ticks"], summary["latency_ms"]["e2e"]["p50"], summary["files"])
    """
    from streamloc.cli import _load_localizer, _open_sinks, _run_pipeline

    if not rate or rate <= 0:
        raise InputError(f"rate must be > 0 ticks per second, got {rate}")
    out = Path(out_dir)
    with contextlib.ExitStack() as stack:
        model_path, model_bundled = _resolve(
            stack, model, BUNDLED_MODEL, "model",
            "pass --model FILE.safetensors (model=...) or reinstall streamloc")
        clip_path, clip_bundled = _resolve(
            stack, clip, BUNDLED_CLIP, "clip", "pass --clip FILE.mp4 (clip=...) or reinstall streamloc")
        if display:
            from streamloc.io.sinks import display_problem

            problem = display_problem()
            if problem:  # before any output exists
                raise DeviceError(f"cannot open the demo window: {problem}; run without --display "
                                  "(display=False): the annotated video is written either way")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DeviceError(f"cannot create the output folder {out}: {e.strerror or e}") from None
        from streamloc.io.media import MediaSource, probe_media

        info = probe_media(clip_path)  # a bad clip fails before the model loads
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        localizer = _load_localizer(argparse.Namespace(
            model=str(model_path), device=device, backend=backend, precision=precision,
            backend_batch=backend_batch))
        # unpaced, the whole file arrives at once: keep all of its audio in the ring
        ring_s = max(10.0, (info.duration_s or 0.0) + 5.0) if fast else 10.0
        video = MediaSource(clip_path, sample_rate=localizer.sample_rate, realtime=not fast, ring_seconds=ring_s)
        files = {"video": out / "demo.mp4", "jsonl": out / "demo.jsonl"}
        sinks = _open_sinks(jsonl=files["jsonl"], record=files["video"], display=display, fps=rate,
                            audio_rate=localizer.sample_rate)
        recorder = sinks[1]
        # unpaced runs are short: time every tick (the localizer is warmed up before the clock starts)
        pipeline, run = _run_pipeline(localizer, video, None, sinks, rate=rate, **({"warmup": 0} if fast else {}))
        stats = pipeline.stats.summary()
        summary = {
            "format": SUMMARY_FORMAT,
            "ticks": int(stats["counters"].get("ticks", 0)),
            "stop_reason": run["stop_reason"],
            "paced": not fast,
            "rate_hz": float(rate),
            "warmup_ticks_not_timed": stats["warmup_skipped"],
            "latency_ms": stats["stages"],
            "counters": stats["counters"],
            "frames_written": recorder.frames_written,
            "audio_seconds_written": round(recorder.audio_seconds_written, 3),
            "model": {"path": str(model_path), "bundled": model_bundled, "sha256": file_sha256(model_path),
                      "method": localizer.model.method},
            "clip": {"path": str(clip_path), "bundled": clip_bundled, "sha256": file_sha256(clip_path),
                     "duration_s": info.duration_s, "timeline": _clip_timeline(clip_path)},
            "device": device,
            "backend": backend,
            "precision": precision,
            "files": {},
        }
        files["summary"] = out / "summary.json"
        summary["files"] = {k: str(p) for k, p in files.items() if k == "summary" or p.is_file()}
        try:
            files["summary"].write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        except OSError as e:
            raise DeviceError(f"cannot write {files['summary']}: {e.strerror or e}") from None
    if not quiet:
        print(f"stopped: {run['stop_reason']}")
        print(pipeline.stats.format())
        for p in summary["files"].values():
            print(f"wrote {p}")
    return summary
