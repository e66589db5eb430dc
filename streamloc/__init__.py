"""streamloc: real-time audio-visual sound source localization.

Looks at a camera, listens to a microphone and says, many times a second, which objects in the
picture make the sounds in the mixture, without being told how many there are.

>>> import streamloc
>>> streamloc.list_models()
['avgn', 'dsol', 'ezvsl', 'mixloc', 'noprior']
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Localizer",
    "TickResult",
    "SoundingObject",
    "StreamlocError",
    "create_model",
    "list_models",
    "load_bundled_model",
    "load_checkpoint",
    "save_checkpoint",
]

_LAZY = {
    "Localizer": "streamloc.localizer",
    "TickResult": "streamloc.types",
    "SoundingObject": "streamloc.types",
    "StreamlocError": "streamloc.errors",
    "create_model": "streamloc.models.registry",
    "list_models": "streamloc.models.registry",
    "load_bundled_model": "streamloc.bundled",
    "load_checkpoint": "streamloc.models.checkpoint",
    "save_checkpoint": "streamloc.models.checkpoint",
}


def __getattr__(name: str):
    # Lazy so that `import streamloc` stays cheap (no torch, no numba until needed).
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'streamloc' has no attribute {name!r}")
