"""Backend latency and throughput benchmark (``streamloc bench``), with an in-process baseline.

For each backend and precision asked for (``--backend eager``, ``--backend tensorrt:fp16``, ...;
default: every backend available on the device) one run measures

1. **encoder latency** at batch 1: ``backend(images, spectrograms)`` with the outputs copied to
   the host (what the Localizer's "encoder" stage does);
2. **end-to-end latency**: ``Localizer.localize`` on a 640x480 BGR frame + 3 s of 48 kHz audio
   (resampling, spectrogram, image preprocessing -- on the GPU when the device is CUDA --, the
   backend, the numba IOI, masks and boxes at frame size, i.e. capture buffers in → object maps on
   the host), with each stage's own percentiles;
3. the **paper-style baseline** in the same process: eager fp32 PyTorch under ``torch.no_grad``
   with the official repos' inference path -- audio resampled by ``scipy.signal.resample_poly``,
   ``scipy.signal.spectrogram`` + ``log(x + 1e-7) / 12`` on the CPU, the image converted
   BGR→RGB, ``cv2.resize`` (bicubic) and normalised in numpy, new tensors built with
   ``torch.tensor`` and copied to the device on every call, one picture at a time -- followed by
   the same IOI and frame-size map resizing; the speed-up of every backend is reported as a ratio;
4. **multi-stream throughput**: for N = ``--streams`` (default 1, 2, 4, 8) sources, each backend
   built for the static batch N runs N windows as one encoder call (``Localizer.localize_batch``);
   windows/s for the encoder alone and end to end, and the baseline doing N windows one by one;
5. the encoder pair's FLOPs and the device's peak fp32 GEMM rate → the "FLOP limit" latency
   (and, when an int8 backend runs, the same FLOPs at the peak int8 GEMM rate).

A backend that cannot run here (not installed, no CUDA) or fails to build (a compiler error, a
missing library) is not measured and is listed with its reason under the report's ``skipped``
(``LABEL@batchN`` when only its batch-N build failed); the others are measured as usual.

Latencies are p50/p90/p99/max/mean and jitter (standard deviation) in ms over ``--ticks`` timed
calls after ``--warmup`` untimed ones, the backends interleaved in rounds of ``--round`` calls so
that load changes on a shared machine hit them alike. The JSON report (``--out``) has the keys of
:data:`REPORT_KEYS`: config, versions, device name and a SHA-256 of the inputs among them. Numbers
are only comparable within one run.

>>> parse_backend_spec("tensorrt:fp16")
('tensorrt', 'fp16')
>>> parse_backend_spec("onnx")
('onnx', 'fp32')
>>> round(percentiles([1e6, 2e6, 3e6])["p50"], 3)
2.0
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamloc.errors import BackendError, InputError

__all__ = [
    "REPORT_KEYS",
    "BenchConfig",
    "PaperBaseline",
    "parse_backend_spec",
    "default_backend_specs",
    "percentiles",
    "environment",
    "make_scene",
    "count_flops",
    "peak_gemm_flops",
    "peak_int8_gemm_ops",
    "interleaved",
    "run_benchmark",
    "format_report",
    "add_arguments",
    "main",
]

FRAME_HW = (480, 640)
AUDIO_RATE = 48000
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
REPORT_KEYS = (
    "benchmark", "config", "environment", "device", "input_sha256", "model_hash", "flops", "build_seconds",
    "skipped", "equivalence_max_abs_vs_eager", "encoder_ms", "end_to_end_ms", "throughput", "ratios",
)
BASELINE = "paper_baseline"


# -- small helpers ----------------------------------------------------------------------------
def parse_backend_spec(text: str) -> tuple[str, str]:
    """``"NAME[:PRECISION]"`` → ``(name, precision)``; precision defaults to fp32."""
    from streamloc.backends import BACKENDS

    name, _, precision = text.partition(":")
    precision = precision or "fp32"
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r} in --backend {text!r}; backends: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r} in --backend {text!r}; precisions: {', '.join(PRECISIONS)}")
    return name, precision


def _label(name: str, precision: str) -> str:
    return f"{name}:{precision}"


def default_backend_specs(device: str = "cpu") -> list[tuple[str, str]]:
    """Every backend and precision that can run on ``device`` here (eager first)."""
    from streamloc.backends import backend_unavailable_reason

    from streamloc.backends.eager import cpu_has_native_bf16

    on_cuda = str(device).startswith("cuda")
    specs = [("eager", "fp32")] + ([("eager", "fp16")] if on_cuda else [])
    if not on_cuda and cpu_has_native_bf16():
        specs.append(("eager", "bf16"))
    if backend_unavailable_reason("compile") is None:
        specs.append(("compile", "fp32"))
    if backend_unavailable_reason("onnx") is None:
        if not on_cuda:
            specs += [("onnx", "fp32"), ("onnx", "int8")]
        else:
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                specs.append(("onnx", "fp32"))
    if on_cuda and backend_unavailable_reason("tensorrt") is None:
        specs += [("tensorrt", "fp32"), ("tensorrt", "fp16")]
    return specs


def percentiles(samples_ns: Sequence[float], unit: float = 1e6) -> dict:
    """p50/p90/p99/max/mean and jitter (std) of nanosecond samples, in ``unit`` ns (1e6: ms)."""
    x = np.asarray(samples_ns, dtype=np.float64) / unit
    if x.size == 0:
        return {"n": 0}
    return {"n": int(x.size), "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max()), "mean": float(x.mean()),
            "jitter_std": float(x.std())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def environment() -> dict:
    """Versions of everything on the measured path, the CPU, the GPU (if any) and the load."""
    import datetime

    import torch

    import streamloc

    env = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "streamloc": streamloc.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "torch_threads": torch.get_num_threads(), "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": _load(),
    }
    for name in ("numpy", "numba", "scipy", "cv2", "soxr", "onnx", "onnxruntime", "onnxscript", "tensorrt",
                 "torch_tensorrt"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - not installed, or broken (a torch-tensorrt mismatch)
            env[name] = None
    return env


def _device_info(device) -> dict:
    import torch

    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "capability": f"sm_{major}{minor}",
                "memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    return {"type": device.type, "name": _cpu_model(), "threads": torch.get_num_threads()}


def _sync(device) -> None:
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def make_scene(seed: int = 0, streams: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``streams`` 640x480 BGR frames and 3-s 48 kHz audio windows (two tones + noise, a
    different pitch per stream), deterministic.

    >>> frames, audios = make_scene(0, streams=2)
    >>> frames[0].shape, audios[1].shape, audios[1].dtype
    ((480, 640, 3), (144000,), dtype('float32'))
    """
    rng = np.random.default_rng(seed)
    t = np.arange(3 * AUDIO_RATE) / AUDIO_RATE
    frames, audios = [], []
    for i in range(streams):
        frames.append(rng.integers(0, 256, (*FRAME_HW, 3), dtype=np.uint8))
        f0 = 440.0 * (1.0 + 0.25 * i)
        audio = 0.2 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 2.84 * f0 * t)
        audios.append((audio + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return frames, audios


class PaperBaseline:
    """The official repos' inference path, one picture at a time: scipy spectrogram and cv2 + numpy
    image on the CPU, fresh tensors copied to ``device``, eager fp32, outputs back to the host,
    then the same IOI and map resizing as the Localizer. Calls return ns per stage."""

    def __init__(self, model, device="cpu"):
        import cv2
        import torch

        try:
            import scipy.signal
        except ImportError as exc:
            raise BackendError(f"the paper-style baseline needs scipy ({exc}): pip install 'streamloc[bench]', "
                               "or run without it (--no-baseline)") from None
        cfg = model.config
        if cfg.audio.kind != "psd":
            raise BackendError(f"the paper-style baseline reproduces the scipy PSD front-end; {model.method!r} uses "
                               f"{cfg.audio.kind!r}: run with --no-baseline")
        self.torch, self.cv2, self.signal = torch, cv2, scipy.signal
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.audio = cfg.audio
        self.size = cfg.image.size
        self.mean = np.asarray(cfg.image.mean, np.float32)
        self.std = np.asarray(cfg.image.std, np.float32)

    def spectrogram(self, audio: np.ndarray, rate: int) -> np.ndarray:
        a = self.audio
        g = np.gcd(int(rate), int(a.sample_rate))
        wave = self.signal.resample_poly(audio.astype(np.float64), a.sample_rate // g, rate // g)[-a.num_samples:]
        _, _, spec = self.signal.spectrogram(wave, a.sample_rate, nperseg=a.nperseg, noverlap=a.noverlap)
        return np.log(spec + a.log_offset) / a.scale

    def image(self, frame: np.ndarray) -> np.ndarray:
        rgb = self.cv2.cvtColor(frame, self.cv2.COLOR_BGR2RGB)
        h, w = self.size
        img = self.cv2.resize(rgb, (w, h), interpolation=self.cv2.INTER_CUBIC).astype(np.float32) / 255.0
        return ((img - self.mean) / self.std).transpose(2, 0, 1)

    def __call__(self, frame: np.ndarray, audio: np.ndarray, rate: int) -> dict:
        torch = self.torch
        t0 = time.perf_counter_ns()
        spec = torch.tensor(self.spectrogram(audio, rate), dtype=torch.float32)[None, None].to(self.device)
        img = torch.tensor(self.image(frame))[None].to(self.device)
        t1 = time.perf_counter_ns()
        with torch.no_grad():
            outputs = self.model(img, spec)
        host = [o.cpu().numpy() for o in outputs]
        t2 = time.perf_counter_ns()
        _, objects = self.model.postprocess({name: h[0] for name, h in zip(self.model.output_names, host)})
        fh, fw = frame.shape[:2]
        maps = [self.cv2.resize(np.asarray(o.map, np.float32), (fw, fh), interpolation=self.cv2.INTER_CUBIC)
                for o in objects]
        t3 = time.perf_counter_ns()
        return {"preprocess": t1 - t0, "encoder": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0,
                "objects": len(maps)}


def count_flops(model, batch: int = 1, device="cpu") -> int:
    """FLOPs of one ``model.forward`` at ``batch`` (``torch.utils.flop_counter``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    images, specs = model.example_inputs(batch, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images, specs)
    return int(counter.get_total_flops())


def _ort_matmul(n: int, threads: int, integer: bool = False):
    """ONNX Runtime square GEMM at ``threads`` threads: float32 ``MatMul``, or with ``integer``
    uint8 x int8 -> int32 ``MatMulInteger`` (the MLAS kernels its quantized convolutions use)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    types = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32) if integer else (TensorProto.FLOAT,) * 3
    spec = [helper.make_tensor_value_info(x, t, [n, n]) for x, t in zip("ABC", types)]
    op = "MatMulInteger" if integer else "MatMul"
    graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["C"])], "mm", spec[:2], spec[2:])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda a, b: sess.run(None, {"A": a, "B": b})


def _best_seconds(fn, *args, repeats: int, device=None) -> float:
    """Fastest of ``repeats`` timed calls after one untimed call (synchronising CUDA if given)."""
    fn(*args)
    _sync(device)
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        _sync(device)
        out = min(out, time.perf_counter() - t0)
    return out


def peak_int8_gemm_ops(threads: int, sizes=(1024, 2048), repeats: int = 5) -> dict:
    """Best uint8 x int8 -> int32 square-GEMM rate (ops/s, multiply + add counted as 2) of ONNX
    Runtime's MatMulInteger (MLAS, the kernels its quantized convolutions use) on the CPU."""
    rates = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        b = rng.integers(-128, 128, (n, n), dtype=np.int8)
        rates[str(n)] = 2.0 * n**3 / _best_seconds(_ort_matmul(n, threads, integer=True), a, b, repeats=repeats)
    n = max(rates, key=rates.get)
    return {"ops_per_s": rates[n], "impl": "onnxruntime.MatMulInteger", "size": int(n), "by_size": rates}


def peak_gemm_flops(threads: int, device="cpu", sizes=(1024, 2048), repeats: int = 5) -> dict:
    """Best fp32 square-GEMM rate (FLOP/s). CPU: the best of torch.matmul (MKL), numpy (OpenBLAS)
    and ONNX Runtime's MatMul (MLAS) at ``threads`` threads -- on AMD CPUs MKL can run well below
    MLAS, so torch alone would understate the machine. CUDA: torch.matmul in fp32 (TF32 as
    torch is set) and fp16 (reported, not used for the limit)."""
    import torch

    device = torch.device(device)
    rates: dict[str, dict[str, float]] = {}

    def best(fn, *args):
        return _best_seconds(fn, *args, repeats=repeats, device=device)

    if device.type == "cuda":
        sizes = tuple(sorted({*sizes, 4096, 8192}))
        for dtype, name in ((torch.float32, "torch.matmul"), (torch.float16, "torch.matmul.fp16")):
            for n in sizes:
                a = torch.randn(n, n, device=device, dtype=dtype)
                b = torch.randn(n, n, device=device, dtype=dtype)
                rates.setdefault(name, {})[str(n)] = 2.0 * n**3 / best(torch.matmul, a, b)
        fp32 = rates["torch.matmul"]
        n = max(fp32, key=fp32.get)
        return {"flops_per_s": fp32[n], "impl": "torch.matmul", "size": int(n),
                "torch_matmul_flops_per_s": fp32[n], "fp16_flops_per_s": max(rates["torch.matmul.fp16"].values()),
                "by_impl": rates}
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        calls: dict[str, tuple[Callable, Any, Any]] = {
            "torch.matmul": (torch.matmul, torch.from_numpy(a), torch.from_numpy(b)),
            "numpy.matmul": (np.matmul, a, b)}
        try:
            calls["onnxruntime.MatMul"] = (_ort_matmul(n, threads), a, b)
        except Exception:  # noqa: BLE001 - onnx not installed
            pass
        for name, (fn, x, y) in calls.items():
            rates.setdefault(name, {})[str(n)] = 2.0 * n**3 / best(fn, x, y)
    name, n = max(((k, n) for k, v in rates.items() for n in v), key=lambda kn: rates[kn[0]][kn[1]])
    return {"flops_per_s": rates[name][n], "impl": name, "size": int(n),
            "torch_matmul_flops_per_s": max(rates["torch.matmul"].values()), "by_impl": rates}


def interleaved(fns: dict[str, Callable[[], Any]], ticks: int, warmup: int, round_size: int) -> dict[str, list[int]]:
    """Call every fn ``warmup`` times, then ``ticks`` times in interleaved rounds of ``round_size``
    calls per fn; returns the ns of each timed call per fn.

    >>> out = interleaved({"a": lambda: None, "b": lambda: None}, ticks=5, warmup=1, round_size=2)
    >>> [len(v) for v in out.values()]
    [5, 5]
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[int]] = {name: [] for name in fns}
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


# -- the run ----------------------------------------------------------------------------------
@dataclasses.dataclass
class BenchConfig:
    """What :func:`run_benchmark` measures (the ``streamloc bench`` options)."""

    backends: list[tuple[str, str]] | None = None  # None: default_backend_specs(device)
    ticks: int = 1000
    warmup: int = 20
    round: int = 10
    device: str = "cpu"
    streams: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8])
    throughput_ticks: int | None = None  # None: max(5, ticks // 10)
    model: str = "noprior"
    image_size: int | None = None
    threads: int | None = None
    baseline: bool = True
    peak: bool = True
    cache_dir: str | None = None
    seed: int = 0

    def check(self) -> None:
        for name in ("ticks", "round"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be ≥ 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be ≥ 0, got {self.warmup}")
        if not self.streams or any(n < 1 for n in self.streams):
            raise InputError(f"--streams must be ≥ 1, got {self.streams}")


def _to_host(outputs) -> list[np.ndarray]:
    return [o.detach().to("cpu").numpy() for o in outputs]


def _resolve(cfg: BenchConfig):
    """(device, backend specs to run, {label: why skipped}); explicit unavailable ones raise."""
    import torch

    from streamloc.backends import backend_unavailable_reason

    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError("--device cuda requested but CUDA is not available (a CPU-only torch or no GPU); "
                               "use --device cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    explicit = cfg.backends is not None
    specs = list(dict.fromkeys(cfg.backends if explicit else default_backend_specs(str(device))))
    skipped: dict[str, str] = {}
    for name, precision in list(specs):
        reason = backend_unavailable_reason(name)
        if reason is None and precision == "int8" and (name != "onnx" or device.type == "cuda"):
            reason = "int8 is an onnx precision on the CPU (ONNX Runtime static quantization)"
        elif reason is None and precision not in ("fp32", "int8") and device.type != "cuda":
            from streamloc.backends.eager import cpu_has_native_bf16

            if not (name == "eager" and precision == "bf16" and cpu_has_native_bf16()):
                reason = f"{precision} needs a CUDA device" + (
                    "" if precision == "fp16" or name != "eager" else " or a CPU with native bf16")
        if reason:
            if explicit:
                raise BackendError(f"backend {_label(name, precision)} cannot run here: {reason}")
            skipped[_label(name, precision)] = reason
            specs.remove((name, precision))
    return device, specs, skipped


class _Run:
    """State shared by the parts of one benchmark run (model, inputs, built backends)."""

    def __init__(self, cfg: BenchConfig, device, specs, skipped: dict, threads: int, cache_dir: str, log):
        import torch

        from streamloc.backends.export import load_model

        self.cfg, self.device, self.specs, self.skipped, self.threads, self.cache_dir, self.log = (
            cfg, device, specs, skipped, threads, cache_dir, log)
        torch.manual_seed(cfg.seed)
        self.options: dict[str, Any] = {}
        if cfg.model == "noprior" and not Path(cfg.model).exists():
            # tau1 = 1 keeps every identified object (a random-init model's would all be rejected
            # as background), so the IOI, the frame-size masks and their boxes are in the tick.
            self.options["tau1"] = 1.0
        self.model = load_model(cfg.model, image_size=cfg.image_size, **self.options).to(device).eval()
        n_max = max(cfg.streams)
        self.frames, self.audios = make_scene(cfg.seed, n_max)
        g = torch.Generator().manual_seed(cfg.seed)
        shapes = [t.shape for t in self.model.example_inputs(n_max)]
        self.images, self.specs_in = (torch.randn(s, generator=g).to(device) for s in shapes)
        digest = hashlib.sha256()
        for arr in (*self.frames, *self.audios, self.images.cpu().numpy(), self.specs_in.cpu().numpy()):
            digest.update(np.ascontiguousarray(arr).tobytes())
        self.input_sha256 = digest.hexdigest()
        self.backends: dict[str, Any] = {}
        self.build: dict[str, float] = {}
        self.baseline = PaperBaseline(self.model, device) if cfg.baseline else None

    def build_backend(self, name: str, precision: str, batch: int, key: str):
        from streamloc.backends import create_backend

        options: dict[str, Any] = {}
        if name != "eager":
            options["batch"] = batch
        if name == "onnx":
            options["threads"] = self.threads
        if name in ("onnx", "tensorrt"):
            options["cache_dir"] = self.cache_dir
        if precision != "fp32" or name == "tensorrt":
            options["precision"] = precision
        t0 = time.perf_counter()
        backend = create_backend(name, self.model, device=self.device, **options)
        self.build[key] = time.perf_counter() - t0
        return backend

    def inputs(self, n: int):
        return self.images[:n].contiguous(), self.specs_in[:n].contiguous()

    @staticmethod
    def encoder_fn(backend, images, specs):
        return lambda: _to_host(backend(images, specs))  # .cpu() is the host sync on CUDA

    # -- parts ----------------------------------------------------------------------------------
    def equivalence(self) -> dict[str, float]:
        from streamloc.backends import EagerBackend

        x = self.inputs(1)
        reference = _to_host(EagerBackend(self.model, device=self.device)(*x))
        return {label: max(float(np.abs(o - r).max()) for o, r in zip(_to_host(b(*x)), reference))
                for label, b in self.backends.items()}

    def encoder_latency(self) -> dict[str, dict]:
        cfg = self.cfg
        fns = {k: self.encoder_fn(b, *self.inputs(1)) for k, b in self.backends.items()}
        return {k: percentiles(v) for k, v in interleaved(fns, cfg.ticks, cfg.warmup, cfg.round).items()}

    def end_to_end(self) -> dict[str, dict]:
        from streamloc.localizer import Localizer

        cfg = self.cfg
        frame, audio = self.frames[0], self.audios[0]
        stages: dict[str, dict[str, list[float]]] = {}
        objects: dict[str, list[int]] = {}

        def localizer_tick(label, loc):
            def run():
                r = loc.localize(frame, audio, AUDIO_RATE)
                for stage, ms in r.timings_ms.items():
                    stages.setdefault(label, {}).setdefault(stage, []).append(ms * 1e6)
                objects.setdefault(label, []).append(len(r.objects))
            return run

        def baseline_tick():
            r = self.baseline(frame, audio, AUDIO_RATE)
            for stage in ("preprocess", "encoder", "postprocess", "total"):
                stages.setdefault(BASELINE, {}).setdefault(stage, []).append(r[stage])
            objects.setdefault(BASELINE, []).append(r["objects"])

        fns = {BASELINE: baseline_tick} if self.baseline is not None else {}
        for label, b in self.backends.items():
            fns[label] = localizer_tick(label, Localizer(self.model, device=self.device, backend=b))
        wall = interleaved(fns, cfg.ticks, cfg.warmup, cfg.round)
        return {label: {  # the stage samples include the warm-up calls: drop them
            "wall_ms": percentiles(samples),
            "stages_ms": {s: percentiles(v[cfg.warmup:]) for s, v in stages[label].items()},
            "objects_per_tick_mean": float(np.mean(objects[label][cfg.warmup:])),
        } for label, samples in wall.items()}

    def throughput(self, n: int, ticks: int) -> dict[str, dict]:
        """windows/s with ``n`` sources per call: encoder alone and end to end per backend (built
        for batch ``n``), and the baseline doing the ``n`` windows one by one."""
        from streamloc.localizer import Localizer

        batch_backends = {}
        try:
            for name, precision in self.specs:
                label = _label(name, precision)
                if n == 1 or name == "eager":  # eager has no static batch
                    batch_backends[label] = self.backends[label]
                    continue
                try:
                    batch_backends[label] = self.build_backend(name, precision, n, f"{label}@batch{n}")
                except Exception as exc:  # noqa: BLE001 - measure the others at this N
                    self.skipped[f"{label}@batch{n}"] = f"build failed: {type(exc).__name__}: {exc}"
                    self.log(f"skipping {label} at batch {n}: {self.skipped[f'{label}@batch{n}']}")
            frames, audios = self.frames[:n], self.audios[:n]
            fns = {f"encoder|{k}": self.encoder_fn(b, *self.inputs(n)) for k, b in batch_backends.items()}
            for k, b in batch_backends.items():
                loc = Localizer(self.model, device=self.device, backend=b)
                fns[f"e2e|{k}"] = lambda loc=loc: loc.localize_batch(frames, audios, AUDIO_RATE)
            if self.baseline is not None:
                fns[f"e2e|{BASELINE}"] = lambda: [self.baseline(f, a, AUDIO_RATE) for f, a in zip(frames, audios)]
            samples = interleaved(fns, ticks, max(1, min(self.cfg.warmup, 3)), max(1, self.cfg.round // 2))
        finally:
            for label, b in batch_backends.items():
                if b is not self.backends[label]:
                    b.close()
        out: dict[str, dict] = {}
        for key, v in samples.items():
            kind, label = key.split("|")
            p = percentiles(v)
            out.setdefault(label, {})[kind] = {"batch_latency_ms": p, "windows_per_s": n * 1e3 / p["mean"],
                                               "windows_per_s_p50": n * 1e3 / p["p50"]}
        return out


def _ratios(encoder_ms: dict, end_to_end: dict, throughput: dict, flop_limit_ms: float | None,
            int8_limit_ms: float | None = None) -> dict:
    ratios: dict[str, dict] = {}
    if "eager:fp32" in encoder_ms:
        ratios["encoder_speedup_vs_eager_fp32_p50"] = {
            k: encoder_ms["eager:fp32"]["p50"] / v["p50"] for k, v in encoder_ms.items()}
    if BASELINE in end_to_end:
        base = end_to_end[BASELINE]["wall_ms"]
        ratios["e2e_speedup_vs_paper_baseline_p50"] = {
            k: base["p50"] / v["wall_ms"]["p50"] for k, v in end_to_end.items() if k != BASELINE}
        ratios["e2e_speedup_vs_paper_baseline_p99"] = {
            k: base["p99"] / v["wall_ms"]["p99"] for k, v in end_to_end.items() if k != BASELINE}
        ratios["throughput_vs_paper_baseline"] = {
            k: {n: e["e2e"]["windows_per_s"] / throughput[BASELINE][n]["e2e"]["windows_per_s"] for n, e in v.items()}
            for k, v in throughput.items() if k != BASELINE}
    if flop_limit_ms:
        ratios["e2e_p50_over_flop_limit"] = {k: v["wall_ms"]["p50"] / flop_limit_ms for k, v in end_to_end.items()}
        ratios["encoder_p50_over_flop_limit"] = {k: v["p50"] / flop_limit_ms for k, v in encoder_ms.items()}
    if int8_limit_ms:  # the int8 backends against the int8 GEMM rate too (stricter: depthwise/heads stay float)
        ratios["e2e_p50_over_int8_flop_limit"] = {
            k: v["wall_ms"]["p50"] / int8_limit_ms for k, v in end_to_end.items() if k.endswith(":int8")}
    return ratios


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> dict:
    """Run the benchmark described by ``cfg``; returns the JSON-able report (keys :data:`REPORT_KEYS`).

    >>> report = run_benchmark(BenchConfig(backends=[("eager", "fp32")], ticks=2, warmup=0,
    ...                                    streams=[2], image_size=64, peak=False))  # doctest: +SKIP
    >>> sorted(report["throughput"]["eager:fp32"])  # doctest: +SKIP
    ['2']
    """
    import tempfile

    import torch

    from streamloc.backends.cache import model_hash

    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    device, specs, skipped = _resolve(cfg)
    load_start = _load()
    with tempfile.TemporaryDirectory(prefix="streamloc-bench-") as tmp:
        run = _Run(cfg, device, specs, skipped, threads, cfg.cache_dir or tmp, log)
        model = run.model
        mhash = model_hash(model)
        log(f"device {device} ({_device_info(device)['name']}), threads {threads}, load {load_start}, "
            f"model {cfg.model} {mhash[:12]}, backends {[_label(*s) for s in specs]}")

        flops_b1 = count_flops(model, 1, device)
        flops: dict[str, Any] = {"encoder_pair_batch1": flops_b1}
        flop_limit_ms = None
        if cfg.peak:
            peak = peak_gemm_flops(threads, device)
            flop_limit_ms = flops_b1 / peak["flops_per_s"] * 1e3
            flops.update({"peak_gemm": peak, "flop_limit_ms": flop_limit_ms,
                          "flop_limit_ms_torch_matmul_peak": flops_b1 / peak["torch_matmul_flops_per_s"] * 1e3})
            log(f"encoder pair {flops_b1 / 1e9:.2f} GFLOP; peak GEMM {peak['flops_per_s'] / 1e9:.1f} GFLOP/s "
                f"({peak['impl']}); FLOP limit {flop_limit_ms:.2f} ms")
            if device.type == "cpu" and any(p == "int8" for _, p in specs):
                peak8 = peak_int8_gemm_ops(threads)
                flops.update({"peak_gemm_int8": peak8, "flop_limit_ms_int8": flops_b1 / peak8["ops_per_s"] * 1e3})
                log(f"peak int8 GEMM {peak8['ops_per_s'] / 1e9:.1f} Gop/s; int8 limit "
                    f"{flops['flop_limit_ms_int8']:.2f} ms (every FLOP at the int8 rate)")
        try:
            for name, precision in list(specs):
                label = _label(name, precision)
                try:
                    run.backends[label] = run.build_backend(name, precision, 1, label)
                except Exception as exc:  # noqa: BLE001 - one backend's failure must not lose the others
                    skipped[label] = f"build failed: {type(exc).__name__}: {exc}"
                    specs.remove((name, precision))
                    log(f"skipping {label}: {skipped[label]}")
            if not run.backends:
                raise BackendError("no backend could be built: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
            log("build s: " + ", ".join(f"{k} {v:.1f}" for k, v in run.build.items()))
            equivalence = run.equivalence()
            encoder_ms = run.encoder_latency()
            log("encoder p50 ms: " + ", ".join(f"{k} {v['p50']:.2f}" for k, v in encoder_ms.items()))
            end_to_end = run.end_to_end()
            log("end-to-end p50 ms: " + ", ".join(f"{k} {v['wall_ms']['p50']:.2f}" for k, v in end_to_end.items()))
            throughput: dict[str, dict[str, dict]] = {}
            t_ticks = cfg.throughput_ticks or max(5, cfg.ticks // 10)
            for n in cfg.streams:
                for label, entry in run.throughput(n, t_ticks).items():
                    throughput.setdefault(label, {})[str(n)] = entry
                log(f"{n} stream(s), windows/s end to end: " + ", ".join(
                    f"{k} {v[str(n)]['e2e']['windows_per_s']:.1f}" for k, v in throughput.items() if str(n) in v))
        finally:
            for b in run.backends.values():
                b.close()
    env = environment()
    env["load_average_1min_start"] = load_start
    env["load_average_1min_end"] = _load()
    return {
        "benchmark": "streamloc bench",
        "config": {
            "model": cfg.model if not run.options else f"{cfg.model} (untrained, {run.options})",
            "image": list(model.config.image.size), "audio_rate": model.config.audio.sample_rate,
            "window_s": model.config.audio.window_seconds, "spectrogram": list(model.spectrogram_shape()),
            "frame": [*FRAME_HW, 3], "input_audio_rate": AUDIO_RATE, "backends": [_label(*s) for s in specs],
            "ticks": cfg.ticks, "warmup": cfg.warmup, "round": cfg.round, "streams": list(cfg.streams),
            "throughput_ticks": t_ticks, "threads": threads, "device": str(device), "seed": cfg.seed,
            "baseline": cfg.baseline, "preprocess_on_device": device.type == "cuda",
            "encoder_ms": "backend(images, spectrograms) + outputs copied to the host, batch 1",
            "end_to_end_ms": "Localizer.localize: 640x480 BGR uint8 + 3 s at 48 kHz in, objects on the host out",
        },
        "environment": env,
        "device": _device_info(device),
        "input_sha256": run.input_sha256,
        "model_hash": mhash,
        "flops": flops,
        "build_seconds": run.build,
        "skipped": skipped,
        "equivalence_max_abs_vs_eager": equivalence,
        "encoder_ms": encoder_ms,
        "end_to_end_ms": end_to_end,
        "throughput": throughput,
        "ratios": _ratios(encoder_ms, end_to_end, throughput, flop_limit_ms, flops.get("flop_limit_ms_int8")),
    }


def format_report(report: dict) -> str:
    """The report as Markdown tables (latency per backend, then windows/s per stream count)."""
    ratios = report["ratios"]
    limit = report["flops"].get("flop_limit_ms")
    speed = ratios.get("e2e_speedup_vs_paper_baseline_p50", {})
    header = ["backend", "encoder p50", "e2e p50", "e2e p90", "e2e p99", "e2e max", "jitter", "× baseline p50",
              "p50 / FLOP limit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, e in report["end_to_end_ms"].items():
        w = e["wall_ms"]
        enc = report["encoder_ms"].get(label, {}).get("p50")
        stats = (f"{w[k]:.2f}" for k in ("p50", "p90", "p99", "max", "jitter_std"))
        cells = ["" if enc is None else f"{enc:.2f}", *stats,
                 f"{speed[label]:.2f}" if label in speed else "", f"{w['p50'] / limit:.2f}" if limit else ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("(ms" + (f"; FLOP limit {limit:.2f} ms" if limit else "") + ")")
    limit8 = report["flops"].get("flop_limit_ms_int8")
    if limit8:
        lines.append(f"(int8 FLOP limit {limit8:.2f} ms, every FLOP at the int8 GEMM rate; p50 / int8 limit: " + ", ".join(
            f"{k} {v:.2f}" for k, v in ratios.get("e2e_p50_over_int8_flop_limit", {}).items()) + ")")
    if report["throughput"]:
        ns = sorted({int(n) for v in report["throughput"].values() for n in v})
        lines += ["", "| windows/s (encoder / end to end) | " + " | ".join(f"N={n}" for n in ns) + " |",
                  "|---|" + "---|" * len(ns)]
        for label, v in report["throughput"].items():
            cells = []
            for n in ns:
                e = v.get(str(n), {})
                enc = e.get("encoder", {}).get("windows_per_s")
                cells.append(("" if enc is None else f"{enc:.1f} / ") + f"{e['e2e']['windows_per_s']:.1f}" if e else "")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if report["skipped"]:
        lines += ["", "not measured:"] + [f"- {label}: {why}" for label, why in report["skipped"].items()]
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, *, default_out: str | os.PathLike = "streamloc-bench.json") -> None:
    """The ``streamloc bench`` options."""
    parser.add_argument("--backend", action="append", dest="backends", metavar="NAME[:PRECISION]",
                        help="backend to measure, repeatable: eager, compile, onnx, tensorrt, with :fp16/:bf16 "
                             "on CUDA (eager:bf16 also on CPUs with native bf16; onnx:int8 on the CPU; default: "
                             "every backend available on the device)")
    parser.add_argument("--ticks", type=int, default=1000, help="timed calls per backend (default 1000)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per backend first (default 20)")
    parser.add_argument("--round", type=int, default=10, help="calls per backend per interleaved round (default 10)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1; default cpu)")
    parser.add_argument("--streams", type=int, action="append", metavar="N",
                        help="sources batched into one encoder call for the throughput part, repeatable "
                             "(default 1 2 4 8)")
    parser.add_argument("--throughput-ticks", type=int, help="timed calls per backend and N (default ticks/10, ≥ 5)")
    parser.add_argument("--model", default="noprior",
                        help="streamloc checkpoint or model name (default: an untrained noprior ResNet-18 pair)")
    parser.add_argument("--image-size", type=int, help="model input size S (S x S; default the model's)")
    parser.add_argument("--threads", type=int, help="torch / ONNX Runtime intra-op threads (default torch's)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the paper-style baseline")
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-GEMM measurement (no FLOP limit)")
    parser.add_argument("--cache-dir", help="cache root for built onnx/tensorrt files (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(default_out), help=f"JSON report path (default {default_out})")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        backends=[parse_backend_spec(b) for b in args.backends] if args.backends else None,
        ticks=args.ticks, warmup=args.warmup, round=args.round, device=args.device,
        streams=args.streams or [1, 2, 4, 8], throughput_ticks=args.throughput_ticks, model=args.model,
        image_size=args.image_size, threads=args.threads, baseline=not args.no_baseline, peak=not args.no_peak,
        cache_dir=args.cache_dir, seed=args.seed,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run, write ``args.out``, print the tables (what ``streamloc bench`` does)."""
    report = run_benchmark(config_from_args(args), log=lambda s: print(s, flush=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}\n")
    print(format_report(report))
    return 0


def main(argv: Sequence[str] | None = None, *, default_out: str | os.PathLike = "streamloc-bench.json",
         prog: str | None = None) -> int:
    """Stand-alone entry point (``benchmarks/bench_backends.py``); errors as one line."""
    from streamloc.errors import StreamlocError

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, default_out=default_out)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except StreamlocError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
