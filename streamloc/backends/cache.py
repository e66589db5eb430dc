"""Cache keys and paths for built artifacts (ONNX files, TensorRT ExportedPrograms), and the
static-shape helpers the compiled backends share.

An artifact lives under ``cache_root() / kind / "<key>.<suffix>"`` next to a ``<key>.json``
sidecar holding the key's parts and the artifact's SHA-256: a file whose hash does not match (a
partial write, a corrupt disk, a hand edit) is treated as absent and rebuilt. Files are written
to a temporary name in the same folder and renamed, so a crash never leaves a half-written
artifact under the final name, and two processes building the same key both end with a whole
file.

The key is a hash of everything the artifact depends on: the model (its class, config and every
parameter and buffer, see :func:`model_hash`), the library versions and the static shapes.

>>> import torch
>>> from streamloc.models import create_model
>>> key = cache_key({"model": model_hash(create_model("noprior")), "opset": 20})
>>> len(key)
24
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamloc.errors import InputError
from streamloc.hashing import file_sha256  # noqa: F401 - part of this module's API

__all__ = [
    "ENV_VAR",
    "cache_root",
    "cache_dir",
    "model_hash",
    "cache_key",
    "file_sha256",
    "Artifact",
    "StaticShapes",
]

ENV_VAR = "STREAMLOC_CACHE"


def cache_root() -> Path:
    """``$STREAMLOC_CACHE`` when set, else ``~/.cache/streamloc`` (honouring ``$XDG_CACHE_HOME``)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "streamloc"


def cache_dir(kind: str, root: str | os.PathLike | None = None) -> Path:
    """The folder for artifacts of one kind (``"onnx"``, ``"tensorrt"``), created on demand."""
    path = (Path(root).expanduser() if root is not None else cache_root()) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, default=_json_default, separators=(",", ":")).encode()


def model_hash(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of a model's identity: class, method config and every parameter and buffer
    (name, dtype, shape and bytes). Two models with the same hash compute the same function;
    changing one weight, the config or the class changes it."""
    h = hashlib.sha256()
    cls = type(model)
    h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    config = getattr(model, "config", None)
    if config is not None:
        as_dict = config.to_dict() if hasattr(config, "to_dict") else repr(config)
        h.update(_canonical(as_dict))
    for name, tensor in sorted(model.state_dict(keep_vars=False).items()):
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        t = t.to("cpu").contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw bits
            t = t.view(torch.int16)
        if t.numel():
            h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


def cache_key(parts: Mapping[str, Any], length: int = 24) -> str:
    """A short hex key for a mapping of JSON-able parts (order-independent)."""
    return hashlib.sha256(_canonical(dict(parts))).hexdigest()[:length]


class Artifact:
    """One cached file ``<dir>/<key><suffix>`` with its JSON sidecar ``<dir>/<key>.json``.

    ``valid()`` is True only when both exist, the sidecar's parts equal the expected ones and the
    file's SHA-256 matches the one recorded when it was written. ``write(build)`` calls
    ``build(tmp_path)`` to produce the file under a temporary name, then publishes it atomically.
    """

    def __init__(self, kind: str, parts: Mapping[str, Any], suffix: str, root: str | os.PathLike | None = None):
        self.parts = json.loads(_canonical(dict(parts)))
        self.key = cache_key(self.parts)
        self.dir = cache_dir(kind, root)
        self.path = self.dir / f"{self.key}{suffix}"
        self.meta_path = self.dir / f"{self.key}.json"

    def metadata(self) -> dict | None:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None

    def valid(self) -> bool:
        meta = self.metadata()
        if not meta or meta.get("parts") != self.parts or not self.path.is_file():
            return False
        try:
            return file_sha256(self.path) == meta.get("sha256")
        except OSError:
            return False

    def invalidate(self) -> None:
        """Remove the file and its sidecar (missing ones are fine)."""
        for p in (self.meta_path, self.path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def write(self, build: Callable[[Path], None], extra: Mapping[str, Any] | None = None) -> Path:
        # The temporary name keeps the real suffix (some savers check it) and starts with a dot.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.key}.tmp.", suffix=self.path.suffix, dir=self.dir)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            build(tmp_path)
            digest = file_sha256(tmp_path)
            os.chmod(tmp_path, 0o644)  # mkstemp makes it 0600; cached artifacts are shareable
            os.replace(tmp_path, self.path)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()
        meta = {"parts": self.parts, "sha256": digest, "file": self.path.name, **(dict(extra) if extra else {})}
        fd, tmp_meta = tempfile.mkstemp(prefix=f".{self.key}.", suffix=".json.tmp", dir=self.dir)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(meta, indent=2, default=_json_default) + "\n")
        os.chmod(tmp_meta, 0o644)
        os.replace(tmp_meta, self.meta_path)
        return self.path


class StaticShapes:
    """The fixed input shapes of a compiled graph, and running any batch size through it.

    A graph built for batch ``B`` gets ``n`` items: ``n == B`` runs as is, ``n < B`` is padded
    with zeros (outputs sliced back to ``n``), ``n > B`` runs in chunks of ``B``. Every output's
    first dimension must be the batch. Other dimensions must match exactly (``InputError``).
    """

    def __init__(self, images: Sequence[int], spectrograms: Sequence[int]):
        self.images = tuple(int(v) for v in images)
        self.spectrograms = tuple(int(v) for v in spectrograms)
        if self.images[0] != self.spectrograms[0]:
            raise ValueError(f"batch mismatch: images {self.images}, spectrograms {self.spectrograms}")
        self.batch = self.images[0]

    @classmethod
    def of_model(cls, model, batch: int) -> "StaticShapes":
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        images, specs = model.example_inputs(batch)
        return cls(images.shape, specs.shape)

    def as_dict(self) -> dict:
        return {"images": list(self.images), "spectrograms": list(self.spectrograms)}

    def check(self, images: torch.Tensor, spectrograms: torch.Tensor) -> int:
        """Number of items; InputError when the per-item shapes differ from the built ones."""
        if images.ndim != len(self.images) or tuple(images.shape[1:]) != self.images[1:]:
            raise InputError(f"images must have shape (N, {', '.join(map(str, self.images[1:]))}) as the "
                             f"backend was built for, got {tuple(images.shape)}")
        if spectrograms.ndim != len(self.spectrograms) or tuple(spectrograms.shape[1:]) != self.spectrograms[1:]:
            raise InputError(f"spectrograms must have shape (N, {', '.join(map(str, self.spectrograms[1:]))}) "
                             f"as the backend was built for, got {tuple(spectrograms.shape)}")
        if images.shape[0] != spectrograms.shape[0]:
            raise InputError(f"images and spectrograms differ in batch size: {images.shape[0]} vs "
                             f"{spectrograms.shape[0]}")
        return int(images.shape[0])

    def run(self, fn: Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]],
            images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``fn`` on exactly-``batch``-sized inputs, for any number of items."""
        n = self.check(images, spectrograms)
        b = self.batch
        if n == b:
            return tuple(fn(images, spectrograms))
        chunks = []
        for start in range(0, n, b):
            img, spec = images[start:start + b], spectrograms[start:start + b]
            m = img.shape[0]
            if m < b:
                img = torch.cat([img, img.new_zeros((b - m, *img.shape[1:]))])
                spec = torch.cat([spec, spec.new_zeros((b - m, *spec.shape[1:]))])
            chunks.append(tuple(o[:m] for o in fn(img, spec)))
        if len(chunks) == 1:
            return chunks[0]
        return tuple(torch.cat(parts) for parts in zip(*chunks))
