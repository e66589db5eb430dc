"""Files shipped inside the package: the demo clip and the bundled NoPrior (IOI/OSC) model.

The bundled model (``streamloc/assets/demo/noprior_avpairs.safetensors``, ~24 MB) was trained on
CPU by ``training/recipes/avpairs_demo.py`` on the synthetic avpairs benchmark (frozen
EfficientNet-Lite0, audio ResNet-18); its model card ``noprior_avpairs.md`` beside it says how it
was trained and what it scores. It is what ``streamloc demo`` and ``streamloc run`` use when no
``--model`` is given — a starting point, not a model for every scene: for your own scenes train or
convert one and pass it explicitly. Nothing here touches the network.

>>> bundled_asset(BUNDLED_CLIP).name
'demo_clip.mp4'
>>> model = load_bundled_model()
>>> type(model).__name__, model.config.visual_backbone, model.config.ioi_rule
('NoPrior', 'efficientnet_lite0', 'paper')
"""

from __future__ import annotations

from importlib import resources

from streamloc.errors import CheckpointError

__all__ = ["BUNDLED_CLIP", "BUNDLED_MODEL", "BUNDLED_MODEL_CARD", "bundled_asset", "load_bundled_model"]

BUNDLED_CLIP = "demo_clip.mp4"
BUNDLED_MODEL = "noprior_avpairs.safetensors"
BUNDLED_MODEL_CARD = "noprior_avpairs.md"
_ASSETS = ("assets", "demo")


def bundled_asset(name: str):
    """The installed file ``streamloc/assets/demo/NAME`` (an ``importlib.resources`` Traversable;
    check ``.is_file()``)."""
    return resources.files("streamloc").joinpath(*_ASSETS, name)


def load_bundled_model(*, device="cpu"):
    """The bundled NoPrior model, in eval mode on ``device``.

    Raises :class:`~streamloc.errors.CheckpointError` when the file is not installed (a source
    tree without its assets) or fails to load.
    """
    from streamloc.models.checkpoint import load_checkpoint

    res = bundled_asset(BUNDLED_MODEL)
    if not res.is_file():
        raise CheckpointError(f"the bundled model (streamloc/assets/demo/{BUNDLED_MODEL}) is not installed: "
                              "pass your own checkpoint (--model FILE.safetensors) or reinstall streamloc")
    with resources.as_file(res) as path:
        return load_checkpoint(path, device=device).eval()
