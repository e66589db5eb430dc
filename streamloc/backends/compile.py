"""``torch.compile`` backend: the model compiled by TorchInductor for static shapes, fp32.

Defaults: on CPU mode ``"default"`` (C++/OpenMP kernels, oneDNN convolutions), on CUDA mode
``"max-autotune"`` (Triton GEMM/conv autotuning and CUDA graphs). Optional inductor *freezing*
(``freezing=True``: weights folded as constants and pre-packed for oneDNN) compiles in a steady
~10 s but measured no faster than plain ``"default"`` for the ResNet-18 pair on a 2-core AVX-512
CPU (``benchmarks/bench_backends.py``: 69.7 ms p50 both, eager 78.5 ms, ONNX Runtime 43.2 ms at
one thread). ``mode="max-autotune"`` can be asked for on CPU too but was not benchmarked. The first call compiles; the constructor does it (warm-up)
on ``model.example_inputs(batch)`` so that the first real tick does not pay for it.

With ``freezing=True`` the compiled graph holds a copy of the weights taken at compile time:
changing the model's parameters afterwards does not change the backend's outputs (build a new
backend). Calls run under ``torch.no_grad`` (freezing only applies without autograd).

Inductor caches its compiled kernels on disk (``$TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_$USER``): the first compilation on a machine takes about a minute on a
2-core CPU, later ones a few seconds.
"""

from __future__ import annotations

import time

import torch

from streamloc.backends.cache import StaticShapes
from streamloc.errors import BackendError

__all__ = ["CompileBackend"]

_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompileBackend:
    """Runs ``model`` compiled with ``torch.compile`` (inductor).

    Args:
        model: a ``LocalizationModel``.
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
        batch: the static batch compiled for; fewer items are padded, more run in chunks.
        mode: inductor mode; None: ``"default"`` on CPU, ``"max-autotune"`` on CUDA
            (``"max-autotune-no-cudagraphs"`` when ``cudagraphs=False``).
        freezing: inductor freezing (constant-folded, pre-packed weights; default False).
        cudagraphs: on CUDA, whether the default mode uses CUDA graphs (default True).
        warmup: compile in the constructor (default True); otherwise the first call does.
        options: extra inductor options (``torch._inductor.config`` names) merged over the mode's.

    Attributes: ``compile_seconds`` (warm-up time), ``mode``, ``options``.
    """

    name = "compile"

    def __init__(self, model, *, device: str | torch.device = "cpu", batch: int = 1, mode: str | None = None,
                 freezing: bool = False, cudagraphs: bool = True, warmup: bool = True,
                 fullgraph: bool = True, options: dict | None = None, precision: str = "fp32"):
        if precision != "fp32":
            raise BackendError(f"the compile backend runs fp32 only, got precision={precision!r}; "
                               "use the eager backend's autocast or the tensorrt backend for fp16")
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise BackendError(f"the compile backend runs on 'cpu' or 'cuda', got {str(self.device)!r}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("device 'cuda' requested but CUDA is not available; use device='cpu'")
        on_cuda = self.device.type == "cuda"
        if mode is None:
            mode = ("max-autotune" if cudagraphs else "max-autotune-no-cudagraphs") if on_cuda else "default"
        if mode not in _MODES:
            raise BackendError(f"mode must be one of {_MODES}, got {mode!r}")
        from torch._inductor import list_mode_options

        # torch.compile takes a mode or options, not both: spell the mode out as its options.
        opts = dict(list_mode_options(mode))
        if not on_cuda:
            opts.pop("triton.cudagraphs", None)
        opts["freezing"] = bool(freezing)
        opts.update(options or {})
        self.mode = mode
        self.options = opts
        self.freezing = bool(freezing)
        self.cudagraphs = bool(opts.get("triton.cudagraphs", False))
        self.model = model.to(self.device).eval()
        self.output_names = tuple(model.output_names)
        self.shapes = StaticShapes.of_model(model, batch)
        self.batch = batch
        try:
            self._compiled = torch.compile(self.model, fullgraph=fullgraph, dynamic=False, backend="inductor",
                                           options=opts)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"torch.compile failed: {type(exc).__name__}: {exc}") from exc
        self.compile_seconds: float | None = None
        if warmup:
            self.warmup()

    def warmup(self) -> float:
        """Compile now (on example inputs of the static shapes); returns the seconds it took."""
        images, specs = self.model.example_inputs(self.batch, device=self.device)
        t0 = time.perf_counter()
        try:
            outputs = self._run(images, specs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 - inductor needs a C++ compiler (CPU) or Triton (CUDA)
            raise BackendError(
                f"torch.compile of {type(self.model).__name__} failed on {self.device}: {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''} (inductor needs a C++ compiler "
                "on CPU and Triton on CUDA; the eager backend always works)"
            ) from exc
        self.compile_seconds = time.perf_counter() - t0
        if len(outputs) != len(self.output_names):
            raise BackendError(f"compiled model returned {len(outputs)} outputs, expected {self.output_names}")
        return self.compile_seconds

    def _run(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        images = images.to(self.device, torch.float32)
        spectrograms = spectrograms.to(self.device, torch.float32)
        with torch.no_grad():
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            outputs = self._compiled(images, spectrograms)
            if self.cudagraphs:  # CUDA-graph outputs are overwritten by the next replay
                outputs = tuple(o.clone() for o in outputs)
        return tuple(outputs)

    def __call__(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._compiled is None:
            raise BackendError("this compile backend is closed")
        return self.shapes.run(self._run, images, spectrograms)

    def close(self) -> None:
        self._compiled = None
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return (f"CompileBackend(device={str(self.device)!r}, batch={self.batch}, mode={self.mode!r}, "
                f"freezing={self.freezing})")
