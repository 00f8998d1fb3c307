"""nanoxtal: machine learning for colloidal nanocrystal synthesis and powder XRD symmetry."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nanoxtal")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
