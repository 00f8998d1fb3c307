"""Argument types shared by the command-line verbs of every stage."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

Settings = TypeVar("Settings")


def json_object(text: str) -> dict:
    """A JSON object given on the command line (settings blocks from the workflow).

    Raises:
        argparse.ArgumentTypeError: Not JSON, or not an object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def settings_from(cls: type[Settings], values: Mapping[str, Any], what: str) -> Settings:
    """A settings dataclass from a mapping (JSON, a config block); defaults fill the rest.

    Args:
        cls: The dataclass.
        values: Field values.
        what: How messages name the settings, e.g. ``"trainer"``.

    Raises:
        ValueError: A key that is not a field (named, with the known ones), or a value of the
            wrong kind.
    """
    known = sorted(item.name for item in fields(cls))
    unknown = sorted(set(values) - set(known))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise ValueError(f"unknown {what} setting {names}; known settings: {known}")
    try:
        return cls(**values)
    except TypeError as error:  # e.g. a string where a number belongs
        raise ValueError(f"invalid {what} settings: {error}") from error
