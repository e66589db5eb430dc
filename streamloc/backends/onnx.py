"""ONNX backend: the model exported once to a static-shape ONNX file (cached), run by ONNX Runtime.

Export uses the ``torch.export``-based ("dynamo") exporter with the shapes of
``model.example_inputs(batch)``; inputs are named ``images`` and ``spectrograms``, outputs
``model.output_names``. The file is cached under ``cache_dir("onnx")`` (``$STREAMLOC_CACHE/onnx``
or ``~/.cache/streamloc/onnx``), keyed by the model hash, the torch / onnxscript versions, the
opset and the shapes; its SHA-256 is checked on every load and a corrupt or unloadable file is
exported again.

On CPU the inputs are handed to ONNX Runtime as numpy views of the torch tensors and the outputs
come back as torch tensors sharing the numpy arrays' memory (no copies). With
``device="cuda"`` the CUDAExecutionProvider (package ``onnxruntime-gpu``) runs with I/O binding
on the torch tensors' device memory.

>>> from streamloc.models import create_model
>>> model = create_model("noprior", image={"size": (64, 64)})
>>> backend = OnnxBackend(model, batch=1)  # doctest: +SKIP
>>> [tuple(o.shape) for o in backend(*model.example_inputs(1))]  # doctest: +SKIP
[(1, 2, 2), (1, 512, 2, 2), (1, 512)]
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from streamloc.backends.cache import Artifact, StaticShapes, file_sha256, model_hash
from streamloc.backends.quantize import QUANTIZER
from streamloc.errors import BackendError

__all__ = ["OnnxBackend", "export_onnx", "default_opset", "INPUT_NAMES", "PRECISIONS"]

INPUT_NAMES = ("images", "spectrograms")
PRECISIONS = ("fp32", "int8")
_GRAPH_LEVELS = ("disable", "basic", "extended", "all")


def default_opset() -> int:
    """The opset torch's ONNX exporter targets natively (no version conversion)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_DEFAULT_OPSET)
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        return 18


def _import_onnx_stack():
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise BackendError(f"the onnx backend needs {', '.join(missing)}: pip install 'streamloc[onnx]'")
    import onnxruntime

    return onnxruntime


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints, warnings and info logs (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model, path: str | os.PathLike, *, batch: int = 1, opset: int | None = None) -> Path:
    """Export ``model`` (a ``LocalizationModel``) to a self-contained static-shape ONNX file.

    Raises BackendError, chaining the exporter's exception, when the export fails.
    """
    _import_onnx_stack()
    import onnx

    opset = default_opset() if opset is None else int(opset)
    path = Path(path)
    if any(p.device.type != "cpu" for p in model.parameters()) or any(b.device.type != "cpu" for b in model.buffers()):
        model = copy.deepcopy(model).to("cpu")
    was_training = model.training
    model.eval()
    inputs = model.example_inputs(batch)
    try:
        with _quiet():
            program = torch.onnx.export(
                model, inputs, None, input_names=list(INPUT_NAMES), output_names=list(model.output_names),
                opset_version=opset, dynamo=True, external_data=False, optimize=True, verbose=False,
            )
            if program is None:  # pragma: no cover - only the TorchScript exporter returns None
                raise RuntimeError("torch.onnx.export returned no ONNXProgram")
            program.save(str(path), external_data=False)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(
            f"ONNX export of {type(model).__name__} (batch {batch}, opset {opset}) failed: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from exc
    finally:
        model.train(was_training)
    names = [o.name for o in proto.graph.output]
    if names != list(model.output_names):
        raise BackendError(f"exported ONNX outputs are {names}, expected {list(model.output_names)}")
    return path


def _calibration_key(calibration) -> str:
    """Cache-key part naming the calibration data: the bundled clip's hash, or the inputs' hash."""
    from streamloc.backends.quantize import bundled_clip, calibration_hash

    if calibration is not None:
        return "inputs:" + calibration_hash(calibration)
    with bundled_clip() as clip:
        return "bundled:" + file_sha256(clip)


class OnnxBackend:
    """Runs ``model`` through ONNX Runtime with the static batch ``batch``.

    Args:
        model: a ``LocalizationModel``.
        device: ``"cpu"`` (CPUExecutionProvider) or ``"cuda"``/``"cuda:N"`` (CUDAExecutionProvider,
            needs ``onnxruntime-gpu``; inputs and outputs stay on the GPU).
        batch: the batch size the graph is exported with. Calls with fewer items are padded, with
            more items run in chunks (see ``StaticShapes``).
        threads: ONNX Runtime intra-op threads (None: ``torch.get_num_threads()``).
        opset: ONNX opset (None: the exporter's native one, see ``default_opset()``).
        graph_optimization: ``"all"`` (default), ``"extended"``, ``"basic"`` or ``"disable"``.
        cache_dir: cache root instead of ``$STREAMLOC_CACHE`` / ``~/.cache/streamloc``.
        rebuild: export again even when a valid cached file exists.
        precision: ``"fp32"`` or ``"int8"`` (CPU only: post-training static quantization of the
            convolutions, see :mod:`streamloc.backends.quantize`; outputs stay float32).
        calibration: int8 only -- calibration inputs, a list of ``(images, spectrograms)`` pairs
            with batch 1 (default: :func:`~streamloc.backends.quantize.calibration_windows` of the
            bundled demo clip).

    Attributes: ``path`` (the .onnx file), ``exported`` (True when this construction exported it,
    False when it came from the cache), ``providers`` (as the session reports them),
    ``quantization`` (int8: the accuracy guard's report, see
    :func:`~streamloc.backends.quantize.quantize_onnx`).
    """

    name = "onnx"

    def __init__(self, model, *, device: str | torch.device = "cpu", batch: int = 1, threads: int | None = None,
                 opset: int | None = None, graph_optimization: str = "all",
                 cache_dir: str | os.PathLike | None = None, rebuild: bool = False, precision: str = "fp32",
                 calibration=None):
        ort = _import_onnx_stack()
        import onnxscript

        if precision not in PRECISIONS:
            raise BackendError(f"the onnx backend runs {' or '.join(PRECISIONS)}, got precision={precision!r}")
        if precision == "fp32" and calibration is not None:
            raise BackendError("calibration data is for precision='int8' only")
        if graph_optimization not in _GRAPH_LEVELS:
            raise BackendError(f"graph_optimization must be one of {_GRAPH_LEVELS}, got {graph_optimization!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise BackendError(f"threads must be a non-negative integer (0: ONNX Runtime's default), got {threads!r}")
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise BackendError(f"the onnx backend runs on 'cpu' or 'cuda', got device {str(self.device)!r}")
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendError("device 'cuda' requested but CUDA is not available; use device='cpu'")
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("onnxruntime has no CUDAExecutionProvider here "
                                   f"(available: {ort.get_available_providers()}): pip install onnxruntime-gpu "
                                   "matching your CUDA version, or use device='cpu'")
            if precision == "int8":
                raise BackendError("onnx int8 runs on the CPU execution provider only; on a GPU use "
                                   "backend 'tensorrt' (fp16) or onnx fp32")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        self.model = model
        self.output_names = tuple(model.output_names)
        self.shapes = StaticShapes.of_model(model, batch)
        self.batch = batch
        self.opset = default_opset() if opset is None else int(opset)
        parts = {
            "format": "onnx-1",
            "model": model_hash(model),
            "method": getattr(model, "method", type(model).__name__),
            "torch": torch.__version__,
            "onnxscript": onnxscript.__version__,
            "opset": self.opset,
            "shapes": self.shapes.as_dict(),
            "outputs": list(self.output_names),
        }
        self.precision = precision
        self._calibration = calibration
        if precision == "int8":
            parts.update(precision="int8", onnxruntime=ort.__version__, quantizer=QUANTIZER,
                         calibration=_calibration_key(calibration))
        self.artifact = Artifact("onnx", parts, ".onnx", root=cache_dir)
        self.path = self.artifact.path

        self.exported = False
        if rebuild or not self.artifact.valid():
            self._export()
        try:
            self.session = self._session(ort, threads, graph_optimization)
        except Exception as exc:  # noqa: BLE001 - a file that passed its hash check but does not load
            if self.exported:
                raise BackendError(f"ONNX Runtime cannot load the exported model {self.path}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            self._export()
            self.session = self._session(ort, threads, graph_optimization)
        self.providers = tuple(self.session.get_providers())
        #: int8: what the accuracy guard did (float modules kept, output agreement), else None
        self.quantization = (self.artifact.metadata() or {}).get("quantization") if precision == "int8" else None
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs != list(self.output_names):
            raise BackendError(f"{self.path} has outputs {outputs}, expected {list(self.output_names)}; "
                               "rebuild=True exports it again")
        self._output_shapes = [tuple(o.shape) for o in self.session.get_outputs()]
        if any(not s or s[0] != batch for s in self._output_shapes):
            raise BackendError(f"every output must have the batch as first dimension, got {self._output_shapes}")
        self._binding = self.session.io_binding() if self.device.type == "cuda" else None

    # -- build --------------------------------------------------------------------------------
    def _export(self) -> None:
        self.artifact.invalidate()
        if self.precision == "int8":
            from streamloc.backends.quantize import calibration_windows, quantize_onnx

            windows = self._calibration if self._calibration is not None else calibration_windows(self.model)

            report: dict = {}

            def build(tmp: Path) -> None:
                fp32 = tmp.with_name(tmp.stem + ".fp32.onnx")
                try:
                    export_onnx(self.model, fp32, batch=self.batch, opset=self.opset)
                    report.update(quantize_onnx(fp32, tmp, windows, batch=self.batch, input_names=INPUT_NAMES,
                                                min_agreement=QUANTIZER["min_agreement"]))
                finally:
                    fp32.unlink(missing_ok=True)

            self.artifact.write(build, extra={"quantization": report})
        else:
            self.artifact.write(lambda tmp: export_onnx(self.model, tmp, batch=self.batch, opset=self.opset))
        self.exported = True

    def _session(self, ort, threads, graph_optimization):
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        so.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
        so.inter_op_num_threads = 1
        # ORT's worker threads busy-wait after each run by default; on a small CPU that steals the
        # cores the next tick's preprocessing and the IOI step need.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # errors only
        if self.device.type == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.threads = so.intra_op_num_threads
        return ort.InferenceSession(str(self.path), sess_options=so, providers=providers)

    # -- run ----------------------------------------------------------------------------------
    def _run_cpu(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = {
            INPUT_NAMES[0]: images.detach().to("cpu", torch.float32).contiguous().numpy(),
            INPUT_NAMES[1]: spectrograms.detach().to("cpu", torch.float32).contiguous().numpy(),
        }
        outputs = self.session.run(None, feeds)
        return tuple(torch.from_numpy(np.asarray(o)) for o in outputs)

    def _run_cuda(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        idx = self.device.index
        inputs = [t.detach().to(self.device, torch.float32).contiguous() for t in (images, spectrograms)]
        outputs = [torch.empty(s, dtype=torch.float32, device=self.device) for s in self._output_shapes]
        for name, t in zip(INPUT_NAMES, inputs):
            binding.bind_input(name, "cuda", idx, np.float32, tuple(t.shape), t.data_ptr())
        for name, t in zip(self.output_names, outputs):
            binding.bind_output(name, "cuda", idx, np.float32, tuple(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch kernels
        self.session.run_with_iobinding(binding)  # synchronises its own stream before returning
        return tuple(outputs)

    def __call__(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.session is None:
            raise BackendError("this onnx backend is closed")
        run = self._run_cuda if self.device.type == "cuda" else self._run_cpu
        return self.shapes.run(run, images, spectrograms)

    def close(self) -> None:
        self.session = None
        self._binding = None
        self.model = None

    def __repr__(self) -> str:
        return (f"OnnxBackend(path={str(self.path)!r}, precision={self.precision!r}, batch={self.batch}, opset={self.opset}, "
                f"providers={list(getattr(self, 'providers', ()))})")
