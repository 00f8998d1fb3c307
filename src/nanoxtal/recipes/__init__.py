"""Recipe stage: tidy recipes, chemicals, features, synthesis models.

The main jobs for notebooks and scripts (``predict``, ``suggest``) live in
``nanoxtal.recipes.api`` and are importable from here: ``from nanoxtal import recipes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["predict", "suggest"]

if TYPE_CHECKING:
    from nanoxtal.recipes.api import predict, suggest


def __getattr__(name: str) -> Any:
    # The API imports torch and friends: loaded on first use, so that the command line's
    # ``--help`` and this stage's light modules stay fast to import.
    if name in __all__:
        from nanoxtal.recipes import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
