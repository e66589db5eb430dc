"""Inference backends: one protocol, ``backend(images, spectrograms) -> tuple of output tensors``
(in the order of ``model.output_names``, float32) and ``backend.close()``.

Only the static-shape encoder pair + head runs in a backend; the data-dependent IOI step stays in
numpy. Backends:

* ``eager`` -- PyTorch as is (always available; fp16/bf16 autocast on CUDA).
* ``compile`` -- ``torch.compile`` / TorchInductor, static shapes, fp32 (CPU and CUDA).
* ``onnx`` -- static-shape ONNX export (cached) run by ONNX Runtime (CPU, or CUDA with
  ``onnxruntime-gpu``), fp32 or int8 (CPU, :mod:`streamloc.backends.quantize`); extra ``streamloc[onnx]``.
* ``tensorrt`` -- ``torch.export`` → Torch-TensorRT engines (cached), fp32/fp16, CUDA only;
  extra ``streamloc[tensorrt]``.

The compiled backends are built for one batch size (``batch=``, default 1: what
``Localizer.localize`` sends); a call with fewer items is zero-padded, one with more runs in chunks.

>>> from streamloc.models import create_model
>>> model = create_model("noprior")
>>> backend = create_backend("eager", model)
>>> [tuple(o.shape) for o in backend(*model.example_inputs())]
[(1, 7, 7), (1, 512, 7, 7), (1, 512)]
>>> "eager" in available_backends()
True
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

from streamloc.backends.eager import EagerBackend

__all__ = [
    "BACKENDS",
    "EagerBackend",
    "available_backends",
    "backend_unavailable_reason",
    "create_backend",
    "add_backend_arguments",
    "backend_from_args",
]

# name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "eager": ("streamloc.backends.eager", "EagerBackend"),
    "compile": ("streamloc.backends.compile", "CompileBackend"),
    "onnx": ("streamloc.backends.onnx", "OnnxBackend"),
    "tensorrt": ("streamloc.backends.tensorrt", "TensorRTBackend"),
}


def backend_unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` can run on this machine (on some device), else why not."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}")
    if name == "eager":
        return None
    if name == "compile":
        try:
            import torch._inductor  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - pragma: no cover
            return f"torch inductor cannot be imported: {exc}"
        return None
    if name == "onnx":
        missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
        return f"{', '.join(missing)} not installed: pip install 'streamloc[onnx]'" if missing else None
    from streamloc.backends.tensorrt import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason()


def available_backends() -> list[str]:
    """Names of the backends that can be constructed on this machine, in ``BACKENDS`` order."""
    return [name for name in BACKENDS if backend_unavailable_reason(name) is None]


def create_backend(name: str, model, *, device="cpu", **options):
    """Build the backend ``name`` for ``model`` on ``device``.

    ``options`` go to the backend's constructor (e.g. ``batch=1``, ``threads=2`` for onnx,
    ``freezing=True`` for compile, ``precision="fp16"`` for tensorrt/eager). Unknown names raise
    ValueError listing the valid ones; a backend that cannot run here raises
    :class:`~streamloc.errors.BackendError` saying why.

    >>> create_backend("nope", None)
    Traceback (most recent call last):
    ...
    ValueError: unknown backend 'nope'; backends: eager, compile, onnx, tensorrt
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    backend_cls = getattr(importlib.import_module(module), cls)
    if name == "tensorrt" and device == "cpu":
        device = "cuda"  # TensorRT has no CPU device; the constructor says why if CUDA is missing
    return backend_cls(model, device=device, **options)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend``, ``--precision`` and ``--backend-batch`` to a command-line parser."""
    parser.add_argument("--backend", choices=list(BACKENDS), default="eager",
                        help="inference backend for the encoder pair (default eager)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], default="fp32",
                        help="backend precision (fp16 on CUDA; bf16 on CUDA and on CPUs with native bf16; "
                             "int8 with --backend onnx on the CPU, calibrated on the bundled clip; default fp32)")
    parser.add_argument("--backend-batch", type=int, default=1,
                        help="static batch of the compile/onnx/tensorrt backends (default 1)")


def backend_from_args(args: argparse.Namespace, model, *, device="cpu"):
    """The backend that ``add_backend_arguments``' options ask for (None for plain eager fp32,
    which the Localizer builds itself)."""
    name = getattr(args, "backend", "eager")
    precision = getattr(args, "precision", "fp32")
    if name == "eager":
        return None if precision == "fp32" else create_backend("eager", model, device=device, precision=precision)
    options = {"batch": getattr(args, "backend_batch", 1)}
    if precision != "fp32" or name == "tensorrt":
        options["precision"] = precision
    return create_backend(name, model, device=device, **options)
