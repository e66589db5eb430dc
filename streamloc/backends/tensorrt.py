"""TensorRT backend: ``torch.export`` → Torch-TensorRT dynamo compile, static shapes, fp32 or fp16.

The model is exported with the shapes of ``model.example_inputs(batch)`` on the GPU, compiled by
``torch_tensorrt.dynamo.compile`` into a graph of TensorRT engines, and saved as an
ExportedProgram (``torch_tensorrt.save(..., output_format="exported_program")``) under
``cache_dir("tensorrt")``, keyed by the GPU architecture, the TensorRT, Torch-TensorRT and torch
versions, the model hash, the precision and the shapes. Later constructions load it
(``torch_tensorrt.load``) instead of rebuilding (engine builds take minutes); a file whose SHA-256
does not match its sidecar, or that fails to load, is rebuilt.

Precision: ``"fp32"`` builds with TF32 disabled (matches eager fp32 within ~1e-4);
``"fp16"`` uses Torch-TensorRT's rule-based autocast (``enable_autocast``) where the installed
version has it, else the legacy ``enabled_precisions={fp16, fp32}``. Inputs and outputs stay
fp32 tensors on the GPU; output dtypes are checked against the precision on every call.

Needs a CUDA build of torch and ``pip install 'streamloc[tensorrt]'`` (torch-tensorrt of the
same minor version as torch). ``close()`` drops the engines and empties the CUDA cache.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import os
import time

import torch

from streamloc.backends.cache import Artifact, StaticShapes, model_hash
from streamloc.errors import BackendError

__all__ = ["TensorRTBackend", "tensorrt_unavailable_reason"]

PRECISIONS = ("fp32", "fp16")
INSTALL_HINT = "pip install 'streamloc[tensorrt]' next to a CUDA build of torch"


def tensorrt_unavailable_reason() -> str | None:
    """None when the tensorrt backend can run here, else why not (with the fix)."""
    problems = []
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        problems.append(f"CUDA is not available (torch {torch.__version__} is {build}, or no GPU is visible)")
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError as exc:
        if getattr(exc, "name", None) in (None, "torch_tensorrt"):
            problems.append(f"torch-tensorrt is not installed: {INSTALL_HINT}")
        else:
            problems.append(f"torch-tensorrt cannot be imported ({exc}): {INSTALL_HINT}")
    except Exception as exc:  # noqa: BLE001 - e.g. a torch / torch-tensorrt version mismatch (OSError, RuntimeError)
        problems.append(f"torch-tensorrt cannot be imported ({type(exc).__name__}: {exc}); it must match "
                        f"torch {torch.__version__}: {INSTALL_HINT}")
    return "; ".join(problems) if problems else None


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _settings_fields(torch_tensorrt) -> set[str]:
    try:
        return {f.name for f in dataclasses.fields(torch_tensorrt.dynamo.CompilationSettings)}
    except Exception:  # noqa: BLE001 - pragma: no cover
        return set()


class TensorRTBackend:
    """Runs ``model`` as TensorRT engines built by Torch-TensorRT (CUDA only).

    Args:
        model: a ``LocalizationModel``.
        device: a CUDA device (default ``"cuda"``).
        batch: the static batch; fewer items are padded, more run in chunks.
        precision: ``"fp32"`` (TF32 off) or ``"fp16"``.
        cache_dir: cache root instead of ``$STREAMLOC_CACHE`` / ``~/.cache/streamloc``.
        rebuild: build again even when a valid cached program exists.
        workspace_size: TensorRT builder workspace in bytes (0: TensorRT's default).
        optimization_level: TensorRT builder optimisation level 0-5 (None: TensorRT's default, 3).
        min_block_size: smallest run of operators converted to an engine (default 1: everything).

    Attributes: ``path``, ``built`` (True when this construction built the engines),
    ``build_seconds``.
    """

    name = "tensorrt"

    def __init__(self, model, *, device: str | torch.device = "cuda", batch: int = 1, precision: str = "fp32",
                 cache_dir: str | os.PathLike | None = None, rebuild: bool = False, workspace_size: int = 0,
                 optimization_level: int | None = None, min_block_size: int = 1):
        reason = tensorrt_unavailable_reason()
        if reason:
            raise BackendError(f"the tensorrt backend cannot run here: {reason}")
        import tensorrt
        import torch_tensorrt

        if precision not in PRECISIONS:
            raise BackendError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendError(f"the tensorrt backend runs on CUDA devices only, got {str(self.device)!r}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._trt = torch_tensorrt
        self.precision = precision
        self.batch = batch
        self.model = model.to(self.device).eval()
        self.output_names = tuple(model.output_names)
        self.shapes = StaticShapes.of_model(model, batch)
        self._allowed_dtypes = {torch.float32} if precision == "fp32" else {torch.float32, torch.float16}
        self._build_options = {"workspace_size": int(workspace_size), "min_block_size": int(min_block_size),
                               "optimization_level": optimization_level}
        major, minor = torch.cuda.get_device_capability(self.device)
        parts = {
            "format": "trt-ep-1",
            "gpu_arch": f"sm_{major}{minor}",
            "gpu": torch.cuda.get_device_name(self.device),
            "tensorrt": tensorrt.__version__,
            "torch_tensorrt": torch_tensorrt.__version__,
            "torch": torch.__version__,
            "model": model_hash(model),
            "method": getattr(model, "method", type(model).__name__),
            "precision": precision,
            "shapes": self.shapes.as_dict(),
            "outputs": list(self.output_names),
            "build": self._build_options,
        }
        self.artifact = Artifact("tensorrt", parts, ".ep", root=cache_dir)
        self.path = self.artifact.path
        self.built = False
        self.build_seconds: float | None = None
        self.module = None
        if rebuild or not self.artifact.valid():
            self._build()
        try:
            self._load()
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - a cached program that no longer loads
            if self.built:
                raise BackendError(f"cannot load the TensorRT program just built at {self.path}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            self._build()
            self._load()
        self._warmup()

    # -- build --------------------------------------------------------------------------------
    def _compile_kwargs(self) -> dict:
        trt = self._trt
        fields = _settings_fields(trt)
        kwargs: dict = {"device": self.device, "min_block_size": self._build_options["min_block_size"]}
        if self._build_options["workspace_size"]:
            kwargs["workspace_size"] = self._build_options["workspace_size"]
        if self._build_options["optimization_level"] is not None:
            kwargs["optimization_level"] = int(self._build_options["optimization_level"])
        if self.precision == "fp32":
            kwargs["disable_tf32"] = True  # eager fp32 matmuls do not use TF32 either
            kwargs["enabled_precisions"] = {torch.float32}
            if "use_explicit_typing" in fields:
                kwargs["use_explicit_typing"] = True
                kwargs.pop("enabled_precisions")  # deprecated alongside explicit typing
        elif "enable_autocast" in fields:
            kwargs["use_explicit_typing"] = True
            kwargs["enable_autocast"] = True
            low = "autocast_low_precision_type" if "autocast_low_precision_type" in fields else "low_precision_type"
            if low in fields:
                kwargs[low] = torch.float16
        else:
            kwargs["enabled_precisions"] = {torch.float16, torch.float32}
            if "use_explicit_typing" in fields:
                kwargs["use_explicit_typing"] = False
        if fields:  # drop options this torch-tensorrt version does not know (e.g. a removed one)
            kwargs = {k: v for k, v in kwargs.items() if k in fields}
        return kwargs

    def _build(self) -> None:
        trt = self._trt
        inputs = self.model.example_inputs(self.batch, device=self.device)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                program = torch.export.export(self.model, inputs, strict=False)
                compiled = trt.dynamo.compile(program, arg_inputs=list(inputs), **self._compile_kwargs())

            def save(tmp):
                if _accepts(trt.save, "arg_inputs"):
                    trt.save(compiled, str(tmp), output_format="exported_program", arg_inputs=list(inputs))
                else:  # pragma: no cover - older torch-tensorrt
                    trt.save(compiled, str(tmp), output_format="exported_program", inputs=list(inputs))

            self.artifact.invalidate()
            self.artifact.write(save, extra={"build_seconds": time.perf_counter() - t0})
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"TensorRT build of {type(self.model).__name__} ({self.precision}, batch "
                               f"{self.batch}) failed: {type(exc).__name__}: {exc}") from exc
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        self.build_seconds = time.perf_counter() - t0
        self.built = True

    def _load(self) -> None:
        trt = self._trt
        loader = getattr(trt, "load", None) or torch.export.load
        program = loader(str(self.path))
        self.module = program.module() if hasattr(program, "module") else program

    def _warmup(self) -> None:
        images, specs = self.model.example_inputs(self.batch, device=self.device)
        outputs = self._run(images, specs)
        torch.cuda.synchronize(self.device)
        if len(outputs) != len(self.output_names):
            raise BackendError(f"the TensorRT program returned {len(outputs)} outputs, expected {self.output_names}")
        with torch.no_grad():
            expected = self.model(images, specs)
        for name, got, ref in zip(self.output_names, outputs, expected):
            if tuple(got.shape) != tuple(ref.shape):
                raise BackendError(f"TensorRT output {name!r} has shape {tuple(got.shape)}, eager gives "
                                   f"{tuple(ref.shape)}; rebuild=True builds it again")

    # -- run ----------------------------------------------------------------------------------
    def _run(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        images = images.to(self.device, torch.float32).contiguous()
        spectrograms = spectrograms.to(self.device, torch.float32).contiguous()
        with torch.no_grad():
            outputs = self.module(images, spectrograms)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        outputs = tuple(outputs)
        for name, o in zip(self.output_names, outputs):
            if o.dtype not in self._allowed_dtypes:
                raise BackendError(f"TensorRT output {name!r} is {o.dtype}, expected one of "
                                   f"{sorted(str(d) for d in self._allowed_dtypes)} for precision {self.precision}")
        return tuple(o.float() for o in outputs)

    def __call__(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.module is None:
            raise BackendError("this tensorrt backend is closed")
        return self.shapes.run(self._run, images, spectrograms)

    def close(self) -> None:
        """Release the TensorRT engines (and their GPU memory)."""
        self.module = None
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return (f"TensorRTBackend(path={str(self.path)!r}, device={str(self.device)!r}, batch={self.batch}, "
                f"precision={self.precision!r})")
