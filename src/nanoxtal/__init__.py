"""nanoxtal: machine learning for colloidal nanocrystal synthesis and powder XRD symmetry.

One import per stage (``from nanoxtal import tem, xrd, recipes``) gives its main jobs as
functions returning pandas tables; ``nanoxtal.load_model`` loads any stage's trained model.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("nanoxtal")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "load_model"]

if TYPE_CHECKING:
    from nanoxtal.models import load_model


def __getattr__(name: str) -> Any:
    # Loaded on first use: the model loader imports torch.
    if name == "load_model":
        from nanoxtal.models import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
