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
    from streamloc.models import list_models

    info = {
        "streamloc": streamloc.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "models": list_models(),
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


def build_parser() -> argparse.ArgumentParser:
    import streamloc

    parser = argparse.ArgumentParser(prog="streamloc", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamloc {streamloc.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, devices and the available models")
    p.set_defaults(func=_cmd_info)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
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
