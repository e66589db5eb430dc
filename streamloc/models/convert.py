"""Official checkpoints → streamloc safetensors checkpoints.

Each method's model file defines `from_official(obj, **extra) -> (config, state_dict, notes)` reading
the layout its official repository writes (reference §x.6/§x.7: DDP `module.` prefixes, Lightning
`model.` prefixes and hyper-parameter pickles, DataParallel wrappers). This module reads the file
safely, dispatches, checks every tensor lands, and writes the result.

    streamloc convert --from ezvsl best.pth ezvsl.safetensors
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from streamloc.errors import CheckpointError
from streamloc.hashing import file_sha256

METHODS = ("ezvsl", "noprior", "mixloc", "dsol", "avgn")


def unwrap_state_dict(obj: Any, *, containers: tuple[str, ...] = ("state_dict", "model"),
                      prefixes: tuple[str, ...] = ("module.",)) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint object, with wrapper prefixes stripped.

    `containers` are the dict keys tried in order (a plain state dict is accepted as is); each
    prefix in `prefixes` is removed where every key carries it (DDP/DataParallel `module.`,
    Lightning `model.`).
    """
    state = obj
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in containers:
            if key in obj and isinstance(obj[key], Mapping):
                state = obj[key]
                break
        else:
            raise CheckpointError(
                f"no state dict found in the checkpoint (looked for keys {list(containers)}; it has "
                f"{sorted(map(str, obj))[:10]})"
            )
    if not isinstance(state, Mapping) or not _is_state_dict(state):
        raise CheckpointError("the checkpoint does not hold a dict of tensors")
    state = dict(state)
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_state_dict(d: Mapping) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and all(isinstance(v, torch.Tensor) for v in d.values())


def convert_checkpoint(method: str, src: str | Path, dst: str | Path, *, trust_pickle: bool = False,
                       config: dict | None = None, **extra: Any) -> dict:
    """Convert the official checkpoint `src` of `method` into a streamloc checkpoint `dst`.

    Returns a report: converted/dropped tensor names and notes. Raises CheckpointError naming every
    tensor that is missing, unexpected or mis-shaped.
    """
    from streamloc.models.checkpoint import load_foreign_state_dict, save_checkpoint
    from streamloc.models.registry import create_model

    if method not in METHODS:
        raise CheckpointError(f"unknown method {method!r}; convertible: {', '.join(METHODS)}")
    module = importlib.import_module(f"streamloc.models.{method}")
    src = Path(src)
    obj = load_foreign_state_dict(src, trust_pickle=trust_pickle)
    cfg, state, notes = module.from_official(obj, **extra)
    cfg = {**cfg, **(config or {})}
    model = create_model(method, cfg)
    expected = model.state_dict()
    external = tuple(model.external_prefixes())
    own = {k: v for k, v in expected.items() if not (external and k.startswith(external))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{src} does not fit the {method!r} model: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"mis-shaped {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in mismatched[:8]]}"
        )
    model.load_state_dict({k: state[k].to(expected[k].dtype) for k in state}, strict=False)
    provenance = {"converted_from": src.name, "source_sha256": file_sha256(src), "method": method,
                  "notes": notes.get("notes", []), "dropped": notes.get("dropped", [])}
    save_checkpoint(model, dst, provenance=provenance)
    return {"method": method, "tensors": len(state), **notes}
