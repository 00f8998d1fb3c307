"""Datasets: the registry (what exists, checksums) and the importer (verified copies)."""

from __future__ import annotations

from nanoxtal.data.importer import import_dataset
from nanoxtal.data.registry import (
    DataFile,
    Dataset,
    DatasetError,
    check_present,
    datasets,
    get_dataset,
    missing_files,
    verify,
)

__all__ = [
    "DataFile",
    "Dataset",
    "DatasetError",
    "check_present",
    "datasets",
    "get_dataset",
    "import_dataset",
    "missing_files",
    "verify",
]
