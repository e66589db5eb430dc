"""Checkpoints: safetensors tensors + JSON metadata; foreign files read without unsafe unpickling.

Format (`streamloc_format` 1): the model's state dict as safetensors, with string metadata
`method`, `config` (JSON), `preprocessing` (JSON: audio frontend + image preprocessing),
`library_version`, `provenance` (JSON, free-form: how the weights were made) and `external` (JSON:
state-dict prefixes whose frozen weights come from an installed package, with a hash checked on
load, so a checkpoint does not carry weights the package already ships).

>>> import tempfile, os
>>> from streamloc.models import create_model
>>> from streamloc.models.checkpoint import save_checkpoint, load_checkpoint
>>> model = create_model("noprior")
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> save_checkpoint(model, path, provenance={"note": "random init"})
>>> load_checkpoint(path).method
'noprior'
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from streamloc.errors import CheckpointError

FORMAT_VERSION = "1"


def _tensor_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _split_external(model, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    prefixes = tuple(model.external_prefixes())
    external = {}
    for prefix in prefixes:
        part = {k: v for k, v in state.items() if k.startswith(prefix)}
        external[prefix] = _tensor_digest(part)
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)} if prefixes else dict(state)
    return kept, external


def save_checkpoint(model, path: str | os.PathLike, *, provenance: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = None) -> None:
    """Write `model` to `path` as safetensors with its metadata.

    `dtype` (e.g. torch.float16) stores floating tensors at lower precision; they are cast back to
    the model's dtype on load.
    """
    from safetensors.torch import save_file

    import streamloc

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    state, external = _split_external(model, state)
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    config = model.config.to_dict()
    metadata = {
        "streamloc_format": FORMAT_VERSION,
        "method": model.method,
        "config": json.dumps(config, sort_keys=True),
        "preprocessing": json.dumps({"audio": config["audio"], "image": config["image"]}, sort_keys=True),
        "library_version": streamloc.__version__,
        "provenance": json.dumps(provenance or {}, sort_keys=True),
        "external": json.dumps(external, sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the final name


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a streamloc checkpoint (without loading its tensors)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:
        hint = ""
        if path.suffix in {".pth", ".pt", ".ckpt", ".tar"}:
            hint = " It looks like a PyTorch pickle file: convert it with `streamloc convert`."
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc}).{hint}") from None
    if raw.get("streamloc_format") is None or "method" not in raw:
        raise CheckpointError(
            f"{path} is a safetensors file but not a streamloc checkpoint (no streamloc metadata); "
            "convert foreign weights with `streamloc convert`"
        )
    meta: dict[str, Any] = dict(raw)
    for key in ("config", "preprocessing", "provenance", "external"):
        try:
            meta[key] = json.loads(raw.get(key, "{}"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON ({exc})") from None
    return meta


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    method: str | None = None):
    """Build the model a checkpoint describes and load its weights.

    Raises CheckpointError naming every missing, unexpected or mis-shaped tensor, or the method
    mismatch when `method` is given.
    """
    from safetensors.torch import load_file

    from streamloc.models.registry import create_model, list_models

    meta = read_metadata(path)
    if meta.get("streamloc_format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('streamloc_format')!r} is not supported by this "
            f"streamloc (format {FORMAT_VERSION}); upgrade streamloc"
        )
    name = meta["method"]
    if method is not None and name != method:
        raise CheckpointError(f"{path} holds a {name!r} model, not {method!r}")
    if name not in list_models():
        raise CheckpointError(f"{path} holds an unknown method {name!r}; known: {', '.join(list_models())}")
    try:
        model = create_model(name, meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its config does not build a {name!r} model: {exc}") from None
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: the tensor data is corrupt or truncated ({exc})") from None

    expected = model.state_dict()
    external = meta.get("external", {})
    for prefix, digest in external.items():
        part = {k: v for k, v in expected.items() if k.startswith(prefix)}
        if _tensor_digest(part) != digest:
            raise CheckpointError(
                f"{path}: the packaged weights under {prefix!r} differ from those the checkpoint was "
                "trained with (a different version of their package is installed)"
            )
    expected_own = {k: v for k, v in expected.items() if not k.startswith(tuple(external))}
    missing = sorted(set(expected_own) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected_own))
    mismatched = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected_own[k].shape)}"
        for k in sorted(set(tensors) & set(expected_own))
        if tuple(tensors[k].shape) != tuple(expected_own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing tensors {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_short(mismatched)}")
        raise CheckpointError(f"{path} does not match the {name!r} model: " + "; ".join(parts))
    state = {k: tensors[k].to(expected_own[k].dtype) for k in expected_own}
    model.load_state_dict(state, strict=False)
    model.checkpoint_metadata = meta
    return model.to(device).eval()


def _short(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" … ({len(items) - limit} more)" if len(items) > limit else "")


def load_foreign_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Read a foreign PyTorch checkpoint (.pth/.ckpt/.pth.tar) safely.

    Uses `torch.load(weights_only=True)`, which refuses arbitrary Python objects. A file that needs
    full unpickling (e.g. a Lightning checkpoint storing an argparse Namespace) raises
    CheckpointError unless `trust_pickle=True` is passed explicitly — only for files you trust,
    since unpickling can run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None and "safe_globals" not in str(exc):
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt pickle data)") from None
        if not trust_pickle:
            what = f"e.g. {found.group(1)}" if found else "non-tensor objects"
            raise CheckpointError(
                f"{path} stores Python objects ({what}) that can only be read by unsafe unpickling. "
                "If you trust its origin, pass --trust-pickle (trust_pickle=True)."
            ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    return torch.load(str(path), map_location="cpu", weights_only=False)  # explicit user opt-in


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
