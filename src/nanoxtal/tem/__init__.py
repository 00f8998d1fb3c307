"""TEM stage: synthetic micrographs, instance segmentation (U-Net + watershed), metrics.

The main jobs for notebooks and scripts (``measure_images``, ``pixel_size``, ``segment``) live in
``nanoxtal.tem.api`` and are importable from here: ``from nanoxtal import tem``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["measure_images", "pixel_size", "segment"]

if TYPE_CHECKING:
    from nanoxtal.tem.api import measure_images, pixel_size, segment


def __getattr__(name: str) -> Any:
    # The API imports torch and friends: loaded on first use, so that the command line's
    # ``--help`` and this stage's light modules stay fast to import.
    if name in __all__:
        from nanoxtal.tem import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
