"""Argument types shared by the command-line verbs of every stage."""

from __future__ import annotations

import argparse
import json


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
