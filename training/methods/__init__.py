"""One file per paper: its loss and training step on top of a `streamloc.models` model.

>>> from training.methods import list_methods
>>> "noprior" in list_methods()
True
"""

from training.methods.base import TrainingMethod, create_method, list_methods, register_method

__all__ = ["TrainingMethod", "create_method", "list_methods", "register_method"]
