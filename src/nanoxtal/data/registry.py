"""Registry of the datasets nanoxtal reads: where each lives, what it holds, how to check it.

Every dataset is declared once, in ``datasets.yaml`` beside this module: its name, the folder it
occupies under a data root, its public source and licence, and the sha256 of every file. The
workflow and the command line only ever refer to datasets by name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

REGISTRY_FILE = "datasets.yaml"
_HASH_BLOCK_BYTES = 1 << 20


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or corrupt; the message says which and what to do."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset.

    Attributes:
        path: POSIX path relative to the dataset folder.
        sha256: Hex digest of the file's bytes.
        size: Size in bytes.
    """

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Dataset:
    """A dataset as the registry declares it.

    Attributes:
        name: Identifier used by the config, the workflow and the CLI (e.g. ``xrd_rruff``).
        folder: Folder of the dataset relative to a data root (e.g. ``xrd``).
        description: What the data is, in one line.
        source: Public origin (repository or paper) where a user can obtain it.
        licence: Licence under which it is redistributed.
        files: Every file of the dataset with its checksum.
    """

    name: str
    folder: str
    description: str
    source: str
    licence: str
    files: tuple[DataFile, ...]

    @property
    def size(self) -> int:
        """Total size of the dataset in bytes."""
        return sum(f.size for f in self.files)

    def location(self, root: Path | str) -> Path:
        """Folder where this dataset is expected under the data root ``root``."""
        return Path(root) / self.folder


def sha256_file(path: Path | str) -> str:
    """Return the hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _parse_dataset(name: str, entry: dict) -> Dataset:
    files = tuple(
        DataFile(path=path, sha256=meta["sha256"], size=int(meta["size"]))
        for path, meta in sorted(entry["files"].items())
    )
    return Dataset(
        name=name,
        folder=entry["folder"],
        description=entry["description"],
        source=entry["source"],
        licence=entry["licence"],
        files=files,
    )


def load_registry(text: str) -> dict[str, Dataset]:
    """Parse registry YAML text into datasets keyed by name.

    Args:
        text: YAML with a top-level ``datasets`` mapping of name to entry.

    Returns:
        The datasets, in the order they are declared.
    """
    raw = yaml.safe_load(text) or {}
    return {name: _parse_dataset(name, entry) for name, entry in raw.get("datasets", {}).items()}


@cache
def datasets() -> dict[str, Dataset]:
    """All datasets declared in the package's registry, keyed by name."""
    text = resources.files("nanoxtal.data").joinpath(REGISTRY_FILE).read_text(encoding="utf-8")
    return load_registry(text)


def get_dataset(name: str) -> Dataset:
    """Look up a dataset by name.

    Raises:
        DatasetError: If the registry declares no dataset of that name.
    """
    registry = datasets()
    if name not in registry:
        known = ", ".join(registry)
        raise DatasetError(f"unknown dataset {name!r}; the registry declares: {known}")
    return registry[name]


def how_to_get(dataset: Dataset, root: Path | str) -> str:
    """The sentence that tells a user where a dataset belongs and where to obtain it."""
    return (
        f"Put the files of dataset {dataset.name!r} ({dataset.description}) in "
        f"{dataset.location(root)} (data root: {Path(root)}). Public source: {dataset.source} "
        f"(licence: {dataset.licence}). Or set `data.mirror` in the config (`--mirror` on the "
        "command line) to a URL or folder mirroring the data root, to download it from there."
    )


def missing_files(dataset: Dataset, root: Path | str) -> list[Path]:
    """Files of ``dataset`` absent under the data root ``root`` (cheap: no hashing)."""
    base = dataset.location(root)
    return [base / f.path for f in dataset.files if not (base / f.path).is_file()]


def check_present(dataset: Dataset, root: Path | str) -> None:
    """Raise a clear error if any file of ``dataset`` is missing under ``root``.

    Raises:
        DatasetError: Naming the dataset, the expected path(s) and where to get the data.
    """
    missing = missing_files(dataset, root)
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(
            f"dataset {dataset.name!r} is missing {len(missing)} of {len(dataset.files)} files "
            f"(expected {shown}{more}). {how_to_get(dataset, root)}"
        )


def check_digest(dataset: Dataset, entry: DataFile, path: Path | str, actual: str) -> None:
    """Compare a file's computed sha256 with the registered one.

    Args:
        dataset: The dataset the file belongs to.
        entry: The registry's record of the file.
        path: Where the file was read from, a path or URL (named in the error).
        actual: The sha256 computed from the file's bytes.

    Raises:
        DatasetError: If ``actual`` differs from the registered digest.
    """
    if actual != entry.sha256:
        raise DatasetError(
            f"dataset {dataset.name!r}: file {path} is corrupt or a different version "
            f"(sha256 {actual}, expected {entry.sha256}). Replace it with the original from "
            f"{dataset.source}."
        )


def verify(dataset: Dataset, root: Path | str) -> None:
    """Check that every file of ``dataset`` is present under ``root`` with the right checksum.

    Raises:
        DatasetError: On the first missing or corrupt file.
    """
    check_present(dataset, root)
    base = dataset.location(root)
    for entry in dataset.files:
        path = base / entry.path
        check_digest(dataset, entry, path, sha256_file(path))


def manifest_entry(folder: Path, relative_to: Path) -> dict:
    """Build the registry ``files`` mapping for every file under ``folder``.

    Used by maintainers (``nanoxtal data manifest``) to declare or update a dataset.

    Args:
        folder: Folder whose files are hashed, recursively.
        relative_to: Folder the file paths are written relative to (the dataset folder).

    Returns:
        Mapping of relative POSIX path to ``{"sha256": ..., "size": ...}``, sorted by path.
    """
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return {
        p.relative_to(relative_to).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in files
    }
