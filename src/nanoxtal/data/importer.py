"""Import registered datasets into the workflow's ``resources/`` folder, verified and atomically.

A dataset is copied file by file from a local data root, or downloaded from a mirror of that root
(an ``http(s)://`` or ``file://`` URL, or a folder) when the local copy is missing. Every byte is
hashed while it is written, so what lands in ``resources/`` is exactly what the registry declares.
The copy is assembled in a hidden temporary folder beside the destination and renamed into place
only when complete: an interrupted or failed import leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from nanoxtal import __version__
from nanoxtal.data.registry import (
    DataFile,
    Dataset,
    DatasetError,
    check_digest,
    how_to_get,
)

RECEIPT_NAME = "_import.json"
_COPY_BLOCK_BYTES = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60


def mirror_url(mirror: str, dataset: Dataset, entry: DataFile) -> str:
    """URL of one dataset file on a mirror of the data root.

    Args:
        mirror: Base URL (``http(s)://``, ``file://``) or local folder mirroring the data root.
        dataset: The dataset the file belongs to.
        entry: The file.

    Returns:
        A URL that ``urllib`` can open.
    """
    if "://" not in mirror:
        mirror = Path(mirror).resolve().as_uri()
    relative = urllib.parse.quote(f"{dataset.folder}/{entry.path}")
    return f"{mirror.rstrip('/')}/{relative}"


def _copy_hashed(source: BinaryIO, target: Path, progress: tqdm) -> str:
    """Stream ``source`` into ``target``, returning the sha256 of the bytes written."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        while block := source.read(_COPY_BLOCK_BYTES):
            digest.update(block)
            out.write(block)
            progress.update(len(block))
    return digest.hexdigest()


def _fetch_file(
    dataset: Dataset,
    entry: DataFile,
    root: Path,
    target: Path,
    mirror: str | None,
    progress: tqdm,
) -> tuple[str, str]:
    """Copy one file from the data root, else download it from the mirror.

    Returns:
        The sha256 of the bytes written and where they came from (path or URL).
    """
    local = dataset.location(root) / entry.path
    if local.is_file():
        with open(local, "rb") as source:
            return _copy_hashed(source, target, progress), str(local)
    if mirror is None:
        raise DatasetError(
            f"dataset {dataset.name!r}: file {local} is missing. {how_to_get(dataset, root)}"
        )
    url = mirror_url(mirror, dataset, entry)
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as source:
            return _copy_hashed(source, target, progress), url
    except (urllib.error.URLError, OSError) as error:
        raise DatasetError(
            f"dataset {dataset.name!r}: file {local} is missing and downloading {url} failed "
            f"({error}). {how_to_get(dataset, root)}"
        ) from error


def _write_receipt(folder: Path, dataset: Dataset, root: Path, mirror: str | None) -> None:
    receipt = {
        "dataset": dataset.name,
        "data_root": str(root.resolve()),
        "mirror": mirror,
        "source": dataset.source,
        "licence": dataset.licence,
        "files": len(dataset.files),
        "bytes": dataset.size,
        "sha256_verified": True,
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "nanoxtal_version": __version__,
    }
    (folder / RECEIPT_NAME).write_text(json.dumps(receipt, indent=2) + "\n", encoding="utf-8")


def _replace_folder(staged: Path, target: Path) -> None:
    """Move ``staged`` to ``target``; an existing ``target`` is removed only after the move."""
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{staged.name}")
        target.rename(retired)
        staged.rename(target)
        shutil.rmtree(retired)
    else:
        staged.rename(target)


def import_dataset(
    dataset: Dataset,
    root: Path | str,
    dest: Path | str,
    *,
    mirror: str | None = None,
    progress: bool = True,
) -> Path:
    """Copy (or download) a dataset into ``dest/<name>/``, verifying every file's sha256.

    Args:
        dataset: The registered dataset.
        root: Local data root; files found there are copied.
        dest: Folder that receives the dataset (e.g. ``resources``).
        mirror: Mirror of the data root to download missing files from, or ``None`` for
            offline use (then a missing file is an error).
        progress: Show a progress bar (bytes) on stderr.

    Returns:
        The folder holding the imported dataset, ``dest/<name>``.

    Raises:
        DatasetError: A file is missing (and cannot be downloaded) or its checksum is wrong.
            Nothing is left in ``dest`` in that case.
    """
    root, dest = Path(root), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / dataset.name
    # Hidden staging folder on the same file system, so the final rename is atomic.
    staged = dest / f".{dataset.name}.partial-{uuid.uuid4().hex[:8]}"
    staged.mkdir()
    try:
        with tqdm(
            total=dataset.size, unit="B", unit_scale=True, desc=dataset.name, disable=not progress
        ) as bar:
            for entry in dataset.files:
                path = staged / entry.path
                path.parent.mkdir(parents=True, exist_ok=True)
                digest, origin = _fetch_file(dataset, entry, root, path, mirror, bar)
                check_digest(dataset, entry, origin, digest)
        _write_receipt(staged, dataset, root, mirror)
        _replace_folder(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged)
    return target
