"""Inference backends: one protocol, `backend(images, spectrograms) -> tuple of output tensors`.

Only the static-shape encoder pair + head runs in a backend; the data-dependent IOI step stays in
numpy. `eager` is always available.
"""

from streamloc.backends.eager import EagerBackend

__all__ = ["EagerBackend", "create_backend"]


def create_backend(name: str, model, *, device="cpu", **options):
    """Build the backend `name` for `model` on `device`."""
    if name == "eager":
        return EagerBackend(model, device=device, **options)
    raise ValueError(f"unknown backend {name!r}; available here: eager")
