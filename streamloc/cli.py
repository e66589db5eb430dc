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


def build_parser() -> argparse.ArgumentParser:
    import streamloc

    parser = argparse.ArgumentParser(prog="streamloc", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamloc {streamloc.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, devices and the available models")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
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
