"""Inference backends vs the paper-style baseline: ``streamloc bench`` run from the repository.

The benchmark itself lives in :mod:`streamloc.bench` (installed with the package as
``streamloc bench``); this script only changes the default output to
``benchmarks/results/backends_cpu.json`` (``--out`` to change it). All options:

    python benchmarks/bench_backends.py --help
    python benchmarks/bench_backends.py [--ticks 1000] [--warmup 20] [--backend eager --backend onnx]
        [--device cuda] [--streams 1 --streams 8] [--threads 2] [--out PATH]
"""

from __future__ import annotations

from pathlib import Path

from streamloc.bench import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(default_out=RESULTS / "backends_cpu.json", prog="bench_backends.py"))
