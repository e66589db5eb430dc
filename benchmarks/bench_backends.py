"""Inference backends on the CPU: eager fp32 vs torch.compile vs ONNX Runtime, against a
paper-style baseline, in one run.

Model: the ResNet-18 pair (NoPrior, random init, 224x224 image, 3 s at 22.05 kHz -> 257x276
spectrogram), fp32. Measures

  1. encoder-pair latency per backend (``backend(images, spectrograms)``) at batch 1 over
     ``--ticks`` calls after ``--warmup`` calls, and throughput at batch 4 (``--batch4-ticks``);
  2. end-to-end ``Localizer.localize`` latency (640x480 BGR frame + 3 s of 48 kHz audio:
     soxr resampling, torch spectrogram, OpenCV image preprocessing, backend, numba IOI, masks
     at frame size) per backend;
  3. in the same run, the paper-style baseline: eager fp32 PyTorch under ``torch.no_grad`` with
     the official repos' CPU preprocessing -- audio resampled with ``scipy.signal.resample_poly``,
     ``scipy.signal.spectrogram(nperseg=512, noverlap=274)`` + ``log(x + 1e-7) / 12``, the image
     converted BGR->RGB, ``cv2.resize`` (bicubic) and normalised in numpy, new tensors built on
     every call with ``torch.tensor`` -- followed by the same IOI post-processing and frame-size
     map resizing, so that the ratio measures the input pipeline + encoder;
  4. the encoder pair's FLOPs (``torch.utils.flop_counter.FlopCounterMode``) and the machine's
     peak fp32 GEMM rate (best of large ``torch.matmul``, ``numpy.matmul`` and ONNX Runtime
     ``MatMul`` at the same thread count: on AMD CPUs torch.matmul (MKL) can run well below
     MLAS, so torch.matmul alone would understate the machine) -> "FLOP limit" latency = FLOPs / peak.

Backends are timed interleaved (rounds of ``--round`` calls per backend) so that load changes
on a shared machine hit them alike. Numbers are only comparable within one run.

    python benchmarks/bench_backends.py [--ticks 200] [--warmup 20] [--threads 1]

Writes benchmarks/results/backends_cpu.json (``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, percentiles, write_json  # noqa: E402

from streamloc import Localizer  # noqa: E402
from streamloc.backends import create_backend  # noqa: E402
from streamloc.backends.cache import model_hash  # noqa: E402
from streamloc.features import resample  # noqa: E402
from streamloc.models import create_model  # noqa: E402

FRAME_HW = (480, 640)
AUDIO_RATE = 48000


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _versions() -> dict:
    out = {}
    for name in ("onnx", "onnxruntime", "onnxscript", "scipy", "cv2", "soxr"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


def make_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 640x480 BGR frame and 3 s of 48 kHz audio (two tones + noise), deterministic."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (*FRAME_HW, 3), dtype=np.uint8)
    t = np.arange(3 * AUDIO_RATE) / AUDIO_RATE
    audio = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t)
    audio = (audio + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    return frame, audio


class PaperBaseline:
    """The official repos' inference path, PIL-free: scipy audio, cv2 + numpy image, eager fp32."""

    def __init__(self, model):
        import cv2
        import scipy.signal

        self.cv2, self.signal = cv2, scipy.signal
        self.model = model.eval()
        cfg = model.config
        self.rate = cfg.audio.sample_rate
        self.samples = cfg.audio.num_samples
        self.size = cfg.image.size
        self.mean = np.asarray(cfg.image.mean, np.float32)
        self.std = np.asarray(cfg.image.std, np.float32)

    def spectrogram(self, audio: np.ndarray, rate: int) -> np.ndarray:
        g = np.gcd(int(rate), int(self.rate))
        wave = self.signal.resample_poly(audio.astype(np.float64), self.rate // g, rate // g)[-self.samples:]
        _, _, spec = self.signal.spectrogram(wave, self.rate, nperseg=512, noverlap=274)
        return np.log(spec + 1e-7) / 12.0

    def image(self, frame: np.ndarray) -> np.ndarray:
        rgb = self.cv2.cvtColor(frame, self.cv2.COLOR_BGR2RGB)
        h, w = self.size
        img = self.cv2.resize(rgb, (w, h), interpolation=self.cv2.INTER_CUBIC).astype(np.float32) / 255.0
        return ((img - self.mean) / self.std).transpose(2, 0, 1)

    def __call__(self, frame: np.ndarray, audio: np.ndarray, rate: int) -> dict:
        t0 = time.perf_counter_ns()
        spec = torch.tensor(self.spectrogram(audio, rate), dtype=torch.float32)[None, None]
        img = torch.tensor(self.image(frame))[None]
        t1 = time.perf_counter_ns()
        with torch.no_grad():
            outputs = self.model(img, spec)
        host = [o.cpu().numpy() for o in outputs]
        t2 = time.perf_counter_ns()
        item = {name: h[0] for name, h in zip(self.model.output_names, host)}
        _, objects = self.model.postprocess(item)
        fh, fw = frame.shape[:2]
        maps = [self.cv2.resize(np.asarray(o.map, np.float32), (fw, fh), interpolation=self.cv2.INTER_CUBIC)
                for o in objects]
        t3 = time.perf_counter_ns()
        return {"preprocess": t1 - t0, "encoder": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0,
                "objects": len(maps)}


def count_flops(model, batch: int = 1) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    images, specs = model.example_inputs(batch)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images, specs)
    return int(counter.get_total_flops())


def _ort_matmul(n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ABC"]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm", spec[:2], spec[2:])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda a, b: sess.run(None, {"A": a, "B": b})


def peak_gemm_flops(threads: int, sizes=(1024, 2048), repeats: int = 10) -> dict:
    """Best fp32 square GEMM rate (FLOP/s) with ``threads`` threads: torch.matmul (MKL here),
    numpy (OpenBLAS) and ONNX Runtime's MatMul (MLAS). On AMD CPUs MKL can run well below MLAS,
    so the torch figure alone may understate the machine; the peak is the best of the three."""
    impls = {"torch.matmul": lambda a, b: torch.matmul(a, b), "numpy.matmul": np.matmul}
    rates: dict[str, dict[str, float]] = {name: {} for name in [*impls, "onnxruntime.MatMul"]}
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        calls = {"torch.matmul": (impls["torch.matmul"], torch.from_numpy(a), torch.from_numpy(b)),
                 "numpy.matmul": (np.matmul, a, b)}
        try:
            calls["onnxruntime.MatMul"] = (_ort_matmul(n, threads), a, b)
        except Exception:  # noqa: BLE001 - onnx not installed
            rates.pop("onnxruntime.MatMul", None)
        for name, (fn, x, y) in calls.items():
            fn(x, y)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(x, y)
                best = min(best, time.perf_counter() - t0)
            rates[name][str(n)] = 2.0 * n ** 3 / best
    best_name, best_n = max(((k, n) for k, v in rates.items() for n in v), key=lambda kn: rates[kn[0]][kn[1]])
    return {"flops_per_s": rates[best_name][best_n], "impl": best_name, "size": int(best_n),
            "torch_matmul_flops_per_s": max(rates["torch.matmul"].values()), "by_impl": rates}


def interleaved(fns: dict, ticks: int, warmup: int, round_size: int) -> dict[str, list[int]]:
    """Call every fn warmup times, then ticks times in interleaved rounds; ns per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    done = 0
    while done < ticks:
        n = min(round_size, ticks - done)
        for name, fn in fns.items():
            for _ in range(n):
                t0 = time.perf_counter_ns()
                fn()
                samples[name].append(time.perf_counter_ns() - t0)
        done += n
    return samples


def build_backends(model, batch: int, threads: int, cache_dir: str, with_freezing: bool) -> tuple[dict, dict]:
    backends, build = {}, {}
    backends["eager"] = create_backend("eager", model)
    build["eager"] = 0.0
    t0 = time.perf_counter()
    backends["compile"] = create_backend("compile", model, batch=batch)
    build["compile"] = time.perf_counter() - t0
    if with_freezing:
        t0 = time.perf_counter()
        backends["compile_freezing"] = create_backend("compile", model, batch=batch, freezing=True)
        build["compile_freezing"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    backends["onnx"] = create_backend("onnx", model, batch=batch, threads=threads, cache_dir=cache_dir)
    build["onnx"] = time.perf_counter() - t0
    return backends, build


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=200, help="timed calls per backend (latency, batch 1)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per backend first")
    parser.add_argument("--batch4-ticks", type=int, default=50, help="timed batch-4 calls per backend")
    parser.add_argument("--round", type=int, default=10, help="calls per backend per interleaved round")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and ONNX Runtime intra-op threads (default: torch's default)")
    parser.add_argument("--no-batch4", action="store_true", help="skip the batch-4 throughput part")
    parser.add_argument("--cache-dir", default=None, help="backend cache root (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="backends_cpu.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_start = _load()
    tmp = tempfile.TemporaryDirectory(prefix="streamloc-bench-") if args.cache_dir is None else None
    cache_dir = args.cache_dir or tmp.name

    torch.manual_seed(args.seed)
    # tau1 = 1 keeps every identified object (a random-init model's objects would all be rejected
    # as background), so the IOI, the masks at frame size and their boxes are part of the tick.
    model = create_model("noprior", tau1=1.0).eval()
    frame, audio = make_scene(args.seed)
    images, specs = model.example_inputs(1)
    g = torch.Generator().manual_seed(args.seed)
    images, specs = torch.randn(images.shape, generator=g), torch.randn(specs.shape, generator=g)
    digest = hashlib.sha256()
    for arr in (frame, audio, images.numpy(), specs.numpy()):
        digest.update(np.ascontiguousarray(arr).tobytes())
    print(f"threads {threads}, load {load_start}, model {model_hash(model)[:12]}", flush=True)

    # -- FLOPs and the GEMM peak ------------------------------------------------------------------
    flops = count_flops(model, 1)
    peak = peak_gemm_flops(threads)
    flop_limit_ms = flops / peak["flops_per_s"] * 1e3
    print(f"encoder pair {flops / 1e9:.2f} GFLOP; peak GEMM {peak['flops_per_s'] / 1e9:.1f} GFLOP/s "
          f"({peak['impl']}, n={peak['size']}; torch.matmul "
          f"{peak['torch_matmul_flops_per_s'] / 1e9:.1f}); FLOP limit {flop_limit_ms:.1f} ms", flush=True)

    # -- batch 1: encoder latency -----------------------------------------------------------------
    backends, build = build_backends(model, 1, threads, cache_dir, with_freezing=True)
    print("build s:", {k: round(v, 1) for k, v in build.items()}, flush=True)
    eager_out = backends["eager"](images, specs)
    equivalence = {}
    for name, b in backends.items():
        out = b(images, specs)
        equivalence[name] = max(float((o - r).abs().max()) for o, r in zip(out, eager_out))
    enc = interleaved({k: (lambda b=b: b(images, specs)) for k, b in backends.items()},
                      args.ticks, args.warmup, args.round)
    encoder_b1 = {k: percentiles(v, unit=1e6) for k, v in enc.items()}
    print("encoder b1 p50 ms:", {k: round(v["p50"], 1) for k, v in encoder_b1.items()}, flush=True)

    # -- end to end: Localizer per backend + the paper-style baseline ------------------------------
    localizers = {k: Localizer(model, backend=backends[k]) for k in ("eager", "compile", "onnx")}
    baseline = PaperBaseline(model)
    stage_samples: dict[str, dict[str, list[int]]] = {k: {} for k in [*localizers, "baseline"]}
    objects: dict[str, list[int]] = {k: [] for k in stage_samples}

    def tick_localizer(name):
        loc = localizers[name]

        def run():
            r = loc.localize(frame, audio, AUDIO_RATE)
            for stage, ms in r.timings_ms.items():
                stage_samples[name].setdefault(stage, []).append(int(ms * 1e6))
            objects[name].append(len(r.objects))
        return run

    def tick_baseline():
        r = baseline(frame, audio, AUDIO_RATE)
        for stage in ("preprocess", "encoder", "postprocess", "total"):
            stage_samples["baseline"].setdefault(stage, []).append(r[stage])
        objects["baseline"].append(r["objects"])

    fns = {"baseline": tick_baseline, **{k: tick_localizer(k) for k in localizers}}
    e2e = interleaved(fns, args.ticks, args.warmup, args.round)
    warm = args.warmup  # the stage samples include the warm-up calls: drop them
    end_to_end = {}
    for name, wall in e2e.items():
        end_to_end[name] = {
            "wall_ms": percentiles(wall, unit=1e6),
            "stages_p50_ms": {s: float(np.percentile(v[warm:], 50)) / 1e6 for s, v in stage_samples[name].items()},
            "objects_per_tick_mean": float(np.mean(objects[name][warm:])),
        }
    print("e2e p50 ms:", {k: round(v["wall_ms"]["p50"], 1) for k, v in end_to_end.items()}, flush=True)
    # the baseline's spectrogram vs the library's torch frontend on the same audio
    with torch.no_grad():
        wave = resample(audio, AUDIO_RATE, model.config.audio.sample_rate)[-model.config.audio.num_samples:]
        lib_spec = localizers["eager"].frontend(torch.from_numpy(np.ascontiguousarray(wave))[None])
    base_spec = baseline.spectrogram(audio, AUDIO_RATE)
    _, _, same_wave = baseline.signal.spectrogram(wave.astype(np.float64), baseline.rate, nperseg=512, noverlap=274)
    spec_diff = {  # frontend fidelity (same samples) and resampler difference (soxr vs resample_poly)
        "same_wave_max_abs": float(np.abs(lib_spec[0, 0].numpy() - np.log(same_wave + 1e-7) / 12.0).max()),
        "pipeline_max_abs": float(np.abs(lib_spec[0, 0].numpy() - base_spec).max()),
    }

    # -- batch 4: throughput ----------------------------------------------------------------------
    throughput = {}
    if not args.no_batch4:
        for b in backends.values():
            b.close()
        backends4, build4 = build_backends(model, 4, threads, cache_dir, with_freezing=False)
        print("build b4 s:", {k: round(v, 1) for k, v in build4.items()}, flush=True)
        img4, spec4 = model.example_inputs(4)
        t4 = interleaved({k: (lambda b=b: b(img4, spec4)) for k, b in backends4.items()},
                         args.batch4_ticks, max(2, args.warmup // 4), max(1, args.round // 2))
        for k, v in t4.items():
            p = percentiles(v, unit=1e6)
            throughput[k] = {"latency_ms": p, "items_per_s": 4 * 1e3 / p["p50"], "build_seconds": build4[k]}
        print("b4 items/s:", {k: round(v["items_per_s"], 1) for k, v in throughput.items()}, flush=True)
        for b in backends4.values():
            b.close()

    # -- ratios -----------------------------------------------------------------------------------
    base_p50 = end_to_end["baseline"]["wall_ms"]["p50"]
    ratios = {
        "e2e_speedup_vs_paper_baseline_p50": {k: base_p50 / v["wall_ms"]["p50"] for k, v in end_to_end.items()},
        "e2e_speedup_vs_paper_baseline_p99": {
            k: end_to_end["baseline"]["wall_ms"]["p99"] / v["wall_ms"]["p99"] for k, v in end_to_end.items()},
        "encoder_speedup_vs_eager_p50": {k: encoder_b1["eager"]["p50"] / v["p50"] for k, v in encoder_b1.items()},
        "e2e_p50_over_flop_limit": {k: v["wall_ms"]["p50"] / flop_limit_ms for k, v in end_to_end.items()},
        "encoder_p50_over_flop_limit": {k: v["p50"] / flop_limit_ms for k, v in encoder_b1.items()},
    }
    if throughput:
        ratios["batch4_throughput_vs_eager"] = {
            k: v["items_per_s"] / throughput["eager"]["items_per_s"] for k, v in throughput.items()}

    env = environment()
    env.update(_versions())
    env["load_average_1min_start"] = load_start
    env["load_average_1min_end"] = _load()
    report = {
        "benchmark": "bench_backends",
        "config": {
            "model": "noprior (ResNet-18 pair, random init, tau1=1.0)", "image": list(model.config.image.size),
            "audio_rate": model.config.audio.sample_rate, "window_s": model.config.audio.window_seconds,
            "spectrogram": list(model.spectrogram_shape()), "frame": [*FRAME_HW, 3], "input_audio_rate": AUDIO_RATE,
            "ticks": args.ticks, "warmup": args.warmup, "batch4_ticks": args.batch4_ticks, "round": args.round,
            "threads": threads, "onnx_threads": threads, "seed": args.seed,
            "compile": {"mode": "default", "freezing_variant": True},
        },
        "environment": env,
        "input_sha256": digest.hexdigest(),
        "model_hash": model_hash(model),
        "flops": {"encoder_pair_batch1": flops, "peak_gemm": peak, "flop_limit_ms": flop_limit_ms,
                  "flop_limit_ms_torch_matmul_peak": flops / peak["torch_matmul_flops_per_s"] * 1e3},
        "build_seconds": build,
        "equivalence_max_abs_vs_eager": equivalence,
        "baseline_spectrogram_vs_library": spec_diff,
        "encoder_batch1_ms": encoder_b1,
        "end_to_end_ms": end_to_end,
        "batch4_throughput": throughput,
        "ratios": ratios,
    }
    path = write_json(args.out, report)
    print(f"\nwrote {path}\n")
    print(f"| {'path':<22} | {'p50 ms':>8} | {'p99 ms':>8} | {'x baseline p50':>14} | {'p50 / FLOP limit':>16} |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 10}|{'-' * 16}|{'-' * 18}|")
    for k, v in encoder_b1.items():
        print(f"| encoder {k:<14} | {v['p50']:8.1f} | {v['p99']:8.1f} | {'':>14} | "
              f"{v['p50'] / flop_limit_ms:16.2f} |")
    for k, v in end_to_end.items():
        w = v["wall_ms"]
        print(f"| e2e {k:<18} | {w['p50']:8.1f} | {w['p99']:8.1f} | "
              f"{ratios['e2e_speedup_vs_paper_baseline_p50'][k]:14.2f} | {w['p50'] / flop_limit_ms:16.2f} |")
    print(f"FLOP limit {flop_limit_ms:.1f} ms ({flops / 1e9:.2f} GFLOP at {peak['flops_per_s'] / 1e9:.1f} GFLOP/s)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
