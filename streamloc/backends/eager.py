"""Eager PyTorch backend (fp32; fp16/bf16 autocast on GPU; bf16 autocast on CPUs with native bf16)."""

from __future__ import annotations

import torch

from streamloc.errors import BackendError


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class EagerBackend:
    """Runs the model as it is, under `torch.inference_mode`.

    >>> from streamloc.models import create_model
    >>> model = create_model("noprior")
    >>> backend = EagerBackend(model)
    >>> outputs = backend(*model.example_inputs())
    >>> len(outputs)
    3
    """

    name = "eager"

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device = "cpu", precision: str = "fp32"):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("device 'cuda' requested but CUDA is not available; use device='cpu'")
        if precision not in {"fp32", "fp16", "bf16"}:
            raise BackendError(f"precision must be fp32, fp16 or bf16, got {precision!r}"
                               + ("; int8 runs with the onnx backend on the CPU" if precision == "int8" else ""))
        if precision == "fp16" and self.device.type != "cuda":
            raise BackendError("fp16 autocast is only supported on CUDA; use precision='fp32' or 'bf16' on CPU")
        if precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            raise BackendError("this CPU has no native bfloat16 (AVX512-BF16 / AMX): bf16 would be emulated "
                               "and slower than fp32; use precision='fp32'")
        self.precision = precision
        self.model = model.to(self.device).eval()

    def __call__(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            if self.precision == "fp32":
                outputs = self.model(images, spectrograms)
            else:
                dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
                with torch.autocast(self.device.type, dtype=dtype):
                    outputs = self.model(images, spectrograms)
        return tuple(o.float() for o in outputs)

    def close(self) -> None:
        self.model = None
