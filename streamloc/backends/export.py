"""Deployment export: a model as a static-shape ONNX file or a Torch-TensorRT ExportedProgram.

``streamloc export --format {onnx,tensorrt} MODEL OUT`` calls :func:`export_model`; MODEL is a
streamloc ``.safetensors`` checkpoint or a registry name (an untrained model, for trying the
tool chain). Only the static-shape encoder pair + head is exported (``model.forward``); the
spectrogram, the image preprocessing and the data-dependent IOI step stay in the runtime.

* ``onnx``: inputs ``images`` ``(B, 3, H, W)`` and ``spectrograms`` ``(B, 1, F, T)``, outputs
  ``model.output_names``, all float32 with fixed shapes, opset ``streamloc.backends.onnx.default_opset()``
  (torch's exporter's native one, 20 with torch 2.13: implemented by every onnxruntime the ``onnx`` extra
  allows, ≥ 1.20; pass ``opset=`` for an older runtime). The file's ``metadata_props`` hold the
  streamloc version, method, config, model hash and shapes. fp32 only: for fp16 build the engine
  from the fp32 file (``trtexec --onnx=model.onnx --fp16``) or use ``--format tensorrt``.
* ``tensorrt``: ``torch.export`` → ``torch_tensorrt.dynamo.compile`` → ExportedProgram (the
  :class:`~streamloc.backends.tensorrt.TensorRTBackend` build, which also fills the on-disk cache),
  fp32 or fp16, for the GPU it is built on; a ``<OUT>.json`` sidecar holds the metadata. Needs CUDA
  and ``torch-tensorrt``.

After writing, the file is run once on seeded random inputs and compared with eager fp32 PyTorch;
the largest absolute difference per output is reported and an error is raised above ``atol``.

>>> from streamloc.models import create_model
>>> model = create_model("noprior", image={"size": (64, 64)}, audio={"window_seconds": 1.0})
>>> report = export_model(model, "model.onnx")  # doctest: +SKIP
>>> report.max_abs_diff  # doctest: +SKIP
{'sound_map': 2.4e-07, 'features': 1.2e-07, 'background': 1.9e-09}
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from streamloc.backends.cache import StaticShapes, model_hash
from streamloc.errors import BackendError, InputError

__all__ = ["FORMATS", "DEFAULT_ATOL", "ExportReport", "load_model", "export_model"]

FORMATS = ("onnx", "tensorrt")
# Outputs are cosine maps and unit-norm features in [-1, 1]: fp32 graphs match eager to ~1e-6.
# int8 (ONNX, CPU) is checked on real windows of the calibration clip, not on random inputs.
DEFAULT_ATOL = {"fp32": 1e-3, "fp16": 5e-2, "int8": 5e-2}


@dataclasses.dataclass
class ExportReport:
    """What :func:`export_model` wrote and how well it matched eager fp32."""

    format: str
    path: Path
    precision: str
    batch: int
    device: str
    shapes: dict
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    model_hash: str
    metadata: dict
    max_abs_diff: dict[str, float]
    atol: float
    runtime: str
    seconds: float

    def summary(self) -> str:
        """One line per fact, for the command line."""
        worst = max(self.max_abs_diff.values()) if self.max_abs_diff else float("nan")
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
        return "\n".join([
            f"wrote {self.path} ({self.format}, {self.precision}, batch {self.batch}, {self.seconds:.1f} s)",
            f"  inputs  {', '.join(f'{n} {tuple(self.shapes[n])}' for n in self.input_names)}",
            f"  outputs {', '.join(self.output_names)}",
            f"  model hash {self.model_hash[:16]}",
            f"  check ({self.runtime} vs eager fp32): max abs diff {worst:.3e} (tolerance {self.atol:g}; {diffs})",
        ])


def load_model(spec: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None, **options: Any):
    """The model named by ``spec``: a streamloc checkpoint (``.safetensors``) or a registry name
    (an untrained model built with ``options``). ``image_size`` (``S`` or ``(H, W)``) changes the
    input picture size (the encoders are fully convolutional; the maps change size with it).

    >>> load_model("noprior", image_size=64).config.image.size
    (64, 64)
    >>> load_model("nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamloc.errors.InputError: 'nope' is neither a checkpoint file nor a model name; models: avgn, ...
    """
    from streamloc.models import create_model, list_models
    from streamloc.models.checkpoint import load_checkpoint

    size = None
    if image_size is not None:
        size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    text = str(spec)
    if text in list_models() and not Path(text).is_file():
        if size is not None:
            options = {**options, "image": {**dict(options.get("image", {})), "size": size}}
        return create_model(text, **options).eval()
    path = Path(text)
    if not path.is_file():
        raise InputError(f"{text!r} is neither a checkpoint file nor a model name; models: {', '.join(list_models())}")
    model = load_checkpoint(path)
    if (size is not None and tuple(model.config.image.size) != size) or options:
        config = model.config.to_dict()
        if size is not None:
            config["image"] = {**config["image"], "size": size}
        resized = create_model(model.method, config, **options)
        try:
            resized.load_state_dict(model.state_dict())
        except RuntimeError as exc:
            raise InputError(f"{path} cannot be rebuilt with image size {size} / options {options}: "
                             f"{str(exc).splitlines()[0]}") from None
        resized.checkpoint_metadata = getattr(model, "checkpoint_metadata", None)
        model = resized
    return model.eval()


def _seeded_inputs(model, batch: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images, specs = model.example_inputs(batch)
    return (torch.randn(images.shape, generator=g).to(device), torch.randn(specs.shape, generator=g).to(device))


def _metadata(model, *, fmt: str, precision: str, shapes: StaticShapes, extra: Mapping[str, Any]) -> dict[str, str]:
    import streamloc

    checkpoint = getattr(model, "checkpoint_metadata", None) or {}
    meta = {
        "streamloc_version": streamloc.__version__,
        "streamloc_export_format": fmt,
        "method": getattr(model, "method", type(model).__name__),
        "model_hash": model_hash(model),
        "config": json.dumps(model.config.to_dict(), sort_keys=True, default=str),
        "precision": precision,
        "input_shapes": json.dumps({"images": list(shapes.images), "spectrograms": list(shapes.spectrograms)}),
        "output_names": json.dumps(list(model.output_names)),
        "torch": torch.__version__,
        "provenance": json.dumps(checkpoint.get("provenance", {}), sort_keys=True),
    }
    meta.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in extra.items()})
    return meta


def _max_diffs(names, outputs, reference) -> dict[str, float]:
    if len(outputs) != len(reference):
        raise BackendError(f"the exported model returned {len(outputs)} outputs, expected {len(reference)} ({names})")
    out = {}
    for name, got, ref in zip(names, outputs, reference):
        got = torch.as_tensor(got).detach().float().cpu()
        ref = ref.detach().float().cpu()
        if tuple(got.shape) != tuple(ref.shape):
            raise BackendError(f"exported output {name!r} has shape {tuple(got.shape)}, eager gives {tuple(ref.shape)}")
        out[name] = float((got - ref).abs().max())
    return out


def _export_onnx(model, out: Path, *, batch: int, device: torch.device, opset: int | None,
                 precision: str = "fp32", calibration_clip: str | os.PathLike | None = None):
    from streamloc.backends.onnx import INPUT_NAMES, _import_onnx_stack, default_opset, export_onnx

    ort = _import_onnx_stack()
    import onnx

    opset = default_opset() if opset is None else int(opset)
    shapes = StaticShapes.of_model(model, batch)
    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    cpu_model = (model if on_cpu else copy.deepcopy(model).to("cpu")).eval()
    tmp = out.with_name(f".{out.name}.tmp")
    tmp32 = out.with_name(f".{out.name}.fp32.tmp")
    extra: dict[str, Any] = {"opset": opset, "checked_with": f"onnxruntime {ort.__version__}"}
    windows = None
    try:
        if precision == "int8":
            from streamloc.backends.quantize import QUANTIZER, calibration_windows, quantize_onnx

            windows = calibration_windows(cpu_model, clip=calibration_clip)
            export_onnx(cpu_model, tmp32, batch=batch, opset=opset)
            q = quantize_onnx(tmp32, tmp, windows, batch=batch, input_names=INPUT_NAMES,
                              min_agreement=QUANTIZER["min_agreement"])
            extra.update(quantizer=QUANTIZER, quantization=q,
                         calibration=str(calibration_clip) if calibration_clip else "bundled demo clip")
        else:
            export_onnx(cpu_model, tmp, batch=batch, opset=opset)
        proto = onnx.load(str(tmp))
        meta = _metadata(cpu_model, fmt="onnx", precision=precision, shapes=shapes, extra=extra)
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        for t in (tmp, tmp32):
            t.unlink(missing_ok=True)

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError("--device cuda checks the ONNX file with onnxruntime's CUDAExecutionProvider, which "
                               "is not installed: pip install onnxruntime-gpu (or check on --device cpu)")
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(out), providers=providers)
    names = [o.name for o in session.get_outputs()]
    if [i.name for i in session.get_inputs()] != list(INPUT_NAMES) or names != list(model.output_names):
        raise BackendError(f"{out}: inputs/outputs are {[i.name for i in session.get_inputs()]} / {names}, expected "
                           f"{list(INPUT_NAMES)} / {list(model.output_names)}")
    if windows is not None:  # int8: real windows (random inputs lie outside the calibrated ranges)
        pick = [windows[i % len(windows)] for i in range(1, batch + 1)]
        images, specs = (torch.cat([w[k] for w in pick]) for k in (0, 1))
    else:
        images, specs = _seeded_inputs(cpu_model, batch, torch.device("cpu"))
    outputs = session.run(None, {INPUT_NAMES[0]: images.numpy(), INPUT_NAMES[1]: specs.numpy()})
    with torch.inference_mode():
        reference = cpu_model(images, specs)
    runtime = f"onnxruntime {ort.__version__} {session.get_providers()[0]}"
    return shapes, meta, _max_diffs(model.output_names, outputs, reference), runtime, INPUT_NAMES


def _export_tensorrt(model, out: Path, *, batch: int, precision: str, device: torch.device,
                     cache_dir: str | os.PathLike | None):
    from streamloc.backends.tensorrt import TensorRTBackend, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason:
        raise BackendError(f"--format tensorrt cannot run here: {reason}")
    if device.type != "cuda":
        raise BackendError(f"--format tensorrt builds engines on a CUDA device, got --device {device}; "
                           "use --device cuda")
    # The backend's build: torch.export → torch_tensorrt.dynamo.compile → ExportedProgram in the
    # cache (reused by `--backend tensorrt` later), loaded back and shape-checked; we copy it out.
    backend = TensorRTBackend(model, device=device, batch=batch, precision=precision, cache_dir=cache_dir)
    try:
        images, specs = _seeded_inputs(model, batch, backend.device)
        outputs = backend(images, specs)
        before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true fp32 reference
        try:
            with torch.inference_mode():
                reference = model.to(backend.device).eval()(images, specs)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
        diffs = _max_diffs(model.output_names, outputs, reference)
        parts = backend.artifact.parts
        shutil.copyfile(backend.path, out)
    finally:
        backend.close()
    shapes = StaticShapes.of_model(model, batch)
    meta = _metadata(model, fmt="tensorrt-exported-program", precision=precision, shapes=shapes,
                     extra={k: parts[k] for k in ("gpu_arch", "gpu", "tensorrt", "torch_tensorrt")})
    sidecar = out.with_name(out.name + ".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    runtime = f"torch-tensorrt {parts['torch_tensorrt']} (TensorRT {parts['tensorrt']}) on {parts['gpu']}"
    return shapes, meta, diffs, runtime, ("images", "spectrograms")


def export_model(model, out: str | os.PathLike, *, format: str = "onnx", precision: str = "fp32", batch: int = 1,
                 device: str | torch.device = "cpu", opset: int | None = None, atol: float | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 calibration_clip: str | os.PathLike | None = None) -> ExportReport:
    """Export ``model`` to ``out`` as ``format`` (``"onnx"`` or ``"tensorrt"``) with static batch
    ``batch``, check it against eager fp32 and return an :class:`ExportReport`.

    Raises :class:`~streamloc.errors.BackendError` when the format cannot be produced here (missing
    package, no CUDA for TensorRT, unsupported precision) or the check exceeds ``atol`` (default
    ``DEFAULT_ATOL[precision]``), and :class:`~streamloc.errors.InputError` for bad arguments.
    ``precision="int8"`` (ONNX only, for CPU runtimes): static int8 quantization calibrated on
    ``calibration_clip`` (default: the bundled demo clip), see :mod:`streamloc.backends.quantize`.

    >>> export_model(None, "x.plan", format="plan")
    Traceback (most recent call last):
    ...
    streamloc.errors.InputError: unknown export format 'plan'; formats: onnx, tensorrt
    """
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}")
    if precision not in DEFAULT_ATOL:
        raise InputError(f"precision must be one of {', '.join(DEFAULT_ATOL)}, got {precision!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    if format == "onnx" and precision not in ("fp32", "int8"):
        raise BackendError("ONNX export is fp32 or int8; build an fp16 engine from the fp32 file (trtexec "
                           "--onnx=OUT --fp16) or use --format tensorrt --precision fp16")
    if format == "tensorrt" and precision == "int8":
        raise BackendError("TensorRT export is fp32 or fp16 here; int8 is --format onnx (CPU runtimes)")
    if calibration_clip is not None and precision != "int8":
        raise InputError("--calibration is for --precision int8 only")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available() and format == "onnx":
        raise BackendError("--device cuda requested but CUDA is not available; use --device cpu")
    out = Path(out)
    if out.parent and not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")
    atol = DEFAULT_ATOL[precision] if atol is None else float(atol)
    t0 = time.perf_counter()
    if format == "onnx":
        shapes, meta, diffs, runtime, inputs = _export_onnx(model, out, batch=batch, device=device, opset=opset,
                                                            precision=precision, calibration_clip=calibration_clip)
    else:
        shapes, meta, diffs, runtime, inputs = _export_tensorrt(model, out, batch=batch, precision=precision,
                                                                device=device, cache_dir=cache_dir)
    report = ExportReport(
        format=format, path=out, precision=precision, batch=batch, device=str(device),
        shapes={"images": list(shapes.images), "spectrograms": list(shapes.spectrograms)},
        input_names=tuple(inputs), output_names=tuple(model.output_names), model_hash=meta["model_hash"],
        metadata=meta, max_abs_diff=diffs, atol=atol, runtime=runtime, seconds=time.perf_counter() - t0,
    )
    worst = max(diffs.values())
    if not worst <= atol:  # also catches NaN
        raise BackendError(f"{out} was written but its outputs differ from eager fp32 by {worst:.3e} (> {atol:g}): "
                           + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return report
