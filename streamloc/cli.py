"""The `streamloc` command line. Errors are printed as one readable line, not a traceback."""

from __future__ import annotations

import argparse
import json
import sys

from streamloc.errors import StreamlocError


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import numba
    import numpy
    import torch

    import streamloc
    from streamloc.backends import BACKENDS, backend_unavailable_reason
    from streamloc.bundled import BUNDLED_MODEL, bundled_asset
    from streamloc.models import list_models

    info = {
        "streamloc": streamloc.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "models": list_models(),
        "backends": {name: backend_unavailable_reason(name) or "available" for name in BACKENDS},
        "bundled_model": BUNDLED_MODEL if bundled_asset(BUNDLED_MODEL).is_file() else None,
    }
    print(json.dumps(info, indent=2))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from streamloc.models.convert import convert_checkpoint

    extra = {"dictionary": args.dictionary} if args.dictionary else {}
    report = convert_checkpoint(args.method, args.src, args.dst, trust_pickle=args.trust_pickle, **extra)
    print(f"converted {report['tensors']} tensors from {args.src} -> {args.dst}")
    for name in report.get("dropped", []):
        print(f"  dropped {name}")
    for note in report.get("notes", []):
        print(f"  note: {note}")
    return 0


def _load_localizer(args: argparse.Namespace):
    from streamloc.backends import backend_from_args
    from streamloc.localizer import Localizer
    from streamloc.models.checkpoint import load_checkpoint

    if args.model:
        model = load_checkpoint(args.model)
    else:
        from streamloc.bundled import BUNDLED_MODEL, BUNDLED_MODEL_CARD, load_bundled_model

        model = load_bundled_model()
        print(f"streamloc: no --model given: using the bundled {BUNDLED_MODEL} (trained on the synthetic "
              f"avpairs benchmark; its card: streamloc/assets/demo/{BUNDLED_MODEL_CARD}); pass --model "
              "FILE.safetensors for your own", file=sys.stderr)
    backend = backend_from_args(args, model, device=args.device)
    masks = {k: getattr(args, k) for k in ("object_mask", "mask_threshold") if hasattr(args, k)}  # `run` only
    return Localizer(model, device=args.device, backend=backend, **masks)


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    localizer = _load_localizer(args)
    rate = localizer.sample_rate
    if args.media:
        from streamloc.io.media import MediaSource

        video = MediaSource(args.media, sample_rate=rate, realtime=not args.fast, loop=args.loop)
        audio = None
    else:
        from streamloc.io.camera import CameraSource
        from streamloc.io.microphone import MicrophoneSource

        video = CameraSource(_camera_spec(args.camera))
        audio = MicrophoneSource(_mic_spec(args.mic), sample_rate=rate)
    sinks = _open_sinks(jsonl=args.jsonl, record=args.record, display=not args.no_display,
                        fps=args.rate, audio_rate=rate)
    pipeline, summary = _run_pipeline(localizer, video, audio, sinks, rate=args.rate,
                                      align=args.align, duration=args.duration)
    print(f"stopped: {summary['stop_reason']}")
    print(pipeline.stats.format())
    for path in (args.jsonl, args.record):
        if path:
            print(f"wrote {path}")
    return 0


def _open_sinks(*, jsonl=None, record=None, display: bool = False, fps: float = 10.0,
                audio_rate: int | None = None) -> list:
    """The sinks of `run` and `demo`; if one cannot open, those already open are closed."""
    sinks = []
    try:
        if jsonl:
            from streamloc.io.sinks import JsonlSink

            sinks.append(JsonlSink(jsonl))
        if record:
            from streamloc.io.sinks import AnnotatedVideoWriter

            sinks.append(AnnotatedVideoWriter(record, fps=fps, audio_rate=audio_rate))
        if display:
            from streamloc.io.sinks import OverlayWindow

            sinks.append(OverlayWindow())
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def _run_pipeline(localizer, video, audio, sinks: list, **options):
    """Run a `StreamingPipeline` to its end; the sinks are flushed and closed whatever happens.

    Returns (pipeline, its run summary).
    """
    from streamloc.pipeline import StreamingPipeline

    try:
        pipeline = StreamingPipeline(localizer, video, audio, sinks=sinks, **options)
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    with pipeline:
        summary = pipeline.run()
    return pipeline, summary


def _cmd_demo(args: argparse.Namespace) -> int:
    from streamloc.demo import run_demo

    run_demo(args.out, display=args.display, model=args.model, clip=args.clip, rate=args.rate,
             fast=args.fast, threads=args.threads, device=args.device, backend=args.backend,
             precision=args.precision, backend_batch=args.backend_batch)
    return 0


def _camera_spec(text: str):
    return int(text) if text.isdigit() else text


def _mic_spec(text: str):
    return int(text) if text.isdigit() else text


def _cmd_devices(args: argparse.Namespace) -> int:
    from streamloc.io.devices import describe_devices

    print(describe_devices(args.max_camera))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from streamloc.backends.export import export_model, load_model

    model = load_model(args.model, image_size=args.image_size)
    device = args.device or ("cuda" if args.format == "tensorrt" else "cpu")
    report = export_model(model, args.out, format=args.format, precision=args.precision, batch=args.batch,
                          device=device, opset=args.opset, atol=args.atol, calibration_clip=args.calibration)
    print(report.summary())
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from streamloc.bench import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    import inspect

    import streamloc
    from streamloc.backends import add_backend_arguments
    from streamloc.localizer import OBJECT_MASKS, Localizer

    localizer_defaults = {k: v.default for k, v in inspect.signature(Localizer).parameters.items()}

    parser = argparse.ArgumentParser(prog="streamloc", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamloc {streamloc.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, devices and the available models")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("run", help="localize sounding objects live (camera + mic) or in a media file")
    p.add_argument("--camera", default="0", help="camera index, video file, image pattern or URL (default 0)")
    p.add_argument("--mic", default="default", help="microphone index or name substring (default: default)")
    p.add_argument("--media", help="A/V file to play as a live source instead of camera + mic")
    p.add_argument("--fast", action="store_true", help="with --media: read as fast as possible, not paced")
    p.add_argument("--loop", action="store_true", help="with --media: loop the file")
    p.add_argument("--model", help="streamloc checkpoint (.safetensors; default: the bundled NoPrior model)")
    p.add_argument("--rate", type=float, default=10.0, help="ticks per second (default 10)")
    p.add_argument("--align", choices=["end", "center"], default="end",
                   help="audio window ends at the frame (live) or is centred on it (papers)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--no-display", action="store_true", help="no overlay window")
    p.add_argument("--record", metavar="OUT.mp4", help="write the annotated video with its audio")
    p.add_argument("--jsonl", metavar="OUT.jsonl", help="write one JSON record per tick")
    p.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    # No defaults here (SUPPRESS: absent unless given): the Localizer holds them, the help quotes them.
    p.add_argument("--object-mask", choices=OBJECT_MASKS, default=argparse.SUPPRESS,
                   help="an object's mask: 'heatmap' (its heatmap >= --mask-threshold) or 'cells' (the grid "
                        f"cells IOI claimed); default {localizer_defaults['object_mask']!r}")
    p.add_argument("--mask-threshold", type=float, default=argparse.SUPPRESS,
                   help=f"heatmap threshold of the masks (default {localizer_defaults['mask_threshold']})")
    add_backend_arguments(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="play the bundled demo clip through the live pipeline and write an annotated video")
    p.add_argument("--out", default="streamloc-demo", metavar="DIR",
                   help="folder for demo.mp4, demo.jsonl and summary.json (default ./streamloc-demo)")
    p.add_argument("--display", action="store_true", help="also show the overlay window")
    p.add_argument("--model", help="streamloc checkpoint (default: the bundled NoPrior model)")
    p.add_argument("--clip", help="A/V file to play instead of the bundled clip")
    p.add_argument("--rate", type=float, default=10.0, help="ticks per second (default 10)")
    p.add_argument("--fast", action="store_true", help="read the clip as fast as possible, not paced (tests)")
    p.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    add_backend_arguments(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("devices", help="list audio inputs and probe cameras")
    p.add_argument("--max-camera", type=int, default=4, help="probe camera indexes 0..N-1 (default 4)")
    p.set_defaults(func=_cmd_devices)

    sub.add_parser("dataset", help="fetch sources and build the audio-visual benchmark (see `streamloc dataset -h`)",
                   add_help=False)
    sub.add_parser("eval", help="evaluate predicted maps with the official protocols (see `streamloc eval -h`)",
                   add_help=False)

    p = sub.add_parser("convert", help="convert an official checkpoint to a streamloc .safetensors")
    p.add_argument("--from", dest="method", required=True, choices=["ezvsl", "avgn", "noprior", "mixloc", "dsol"])
    p.add_argument("src", help="official checkpoint (.pth / .ckpt / .pth.tar)")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling (runs code from the file: only for files you trust)")
    p.add_argument("--dictionary", help="DSOL stage two: the object dictionary .npy (K x 512)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("export", help="export a model for deployment (static-shape ONNX or TensorRT ExportedProgram)")
    p.add_argument("--format", required=True, choices=["onnx", "tensorrt"])
    p.add_argument("model", metavar="MODEL", help="streamloc checkpoint (.safetensors) or model name (untrained)")
    p.add_argument("out", metavar="OUT", help="output file (.onnx, or .ep for tensorrt)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="fp32 (default); fp16 for tensorrt (for ONNX build fp16 engines from the fp32 file); "
                        "int8 for onnx (CPU runtimes: static quantization with an accuracy guard)")
    p.add_argument("--calibration", metavar="CLIP",
                   help="int8: A/V file whose windows calibrate the activation ranges (default the bundled demo clip)")
    p.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    p.add_argument("--image-size", type=int, help="input picture size S (S x S; default the model's)")
    p.add_argument("--device", help="cpu (onnx default) or cuda (tensorrt; onnx: check with the CUDA provider)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's native one)")
    p.add_argument("--atol", type=float, help="largest accepted difference to eager fp32 (default 1e-3 fp32, 5e-2 fp16 and int8)")
    p.set_defaults(func=_cmd_export)

    from streamloc.bench import add_arguments as add_bench_arguments

    p = sub.add_parser("bench", help="latency / throughput of the inference backends vs a paper-style baseline")
    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["dataset"]:  # the benchmark builder has its own parser (training extra)
        from training.data.avpairs_cli import main as dataset_main

        return dataset_main(argv[1:])
    if argv[:1] == ["eval"]:  # the evaluator has its own parser (training extra)
        try:
            from training.evaluate import main as evaluate_main
        except ImportError as exc:
            print(f"streamloc: error: `streamloc eval` needs the training extra ({exc}); "
                  "pip install 'streamloc[train]'", file=sys.stderr)
            return 2
        return evaluate_main(argv[1:], prog="streamloc eval")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StreamlocError as exc:
        print(f"streamloc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamloc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
