"""Powder X-ray diffraction: structures, simulation, rendering, models, evaluation.

The main jobs for notebooks and scripts (``predict``, ``read_pattern``, ``render``,
``simulate``) live in
``nanoxtal.xrd.api`` and are importable from here: ``from nanoxtal import xrd``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["predict", "read_pattern", "render", "simulate"]

if TYPE_CHECKING:
    from nanoxtal.xrd.api import predict, read_pattern, render, simulate


def __getattr__(name: str) -> Any:
    # The API imports torch and friends: loaded on first use, so that the command line's
    # ``--help`` and this stage's light modules stay fast to import.
    if name in __all__:
        from nanoxtal.xrd import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
