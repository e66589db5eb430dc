"""Localization models: encoders, one file per method head, the registry and checkpoints.

>>> from streamloc.models import create_model, list_models
>>> model = create_model("ezvsl", object_prior="none")
>>> model.output_names
('avl', 'prior')
"""

from streamloc.models.base import GridObject, LocalizationModel, ModelConfig
from streamloc.models.registry import create_model, get_model_class, list_models, register_model

__all__ = [
    "GridObject",
    "LocalizationModel",
    "ModelConfig",
    "create_model",
    "get_model_class",
    "list_models",
    "register_model",
]
