"""The ``nanoxtal`` command line: ``nanoxtal <stage> <verb> ...``. Argument parsing only.

Every verb calls library functions, processes every item of a batch even when some fail, prints
one clear line per failure on stderr and exits non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import yaml

from nanoxtal import __version__
from nanoxtal.data import DatasetError, datasets, get_dataset, import_dataset, verify
from nanoxtal.data.registry import Dataset, manifest_entry, missing_files
from nanoxtal.recipes.cli import add_commands as recipe_commands
from nanoxtal.tem.cli import add_commands as tem_commands
from nanoxtal.xrd.cli import add_commands as xrd_commands

EXIT_OK = 0
EXIT_FAILED = 1


def _error(message: str) -> None:
    print(f"nanoxtal: error: {message}", file=sys.stderr)


def _selected(names: Sequence[str]) -> list[Dataset]:
    """Datasets named on the command line (all when none), failing early on an unknown name."""
    return [get_dataset(name) for name in names] if names else list(datasets().values())


def _for_each(items: Iterable[Dataset], action: Callable[[Dataset], str]) -> int:
    """Run ``action`` on every dataset, report each outcome, and return the exit status."""
    failed = 0
    for dataset in items:
        try:
            print(f"{dataset.name}: {action(dataset)}")
        except DatasetError as error:
            failed += 1
            _error(str(error))
    return EXIT_FAILED if failed else EXIT_OK


def _data_list(args: argparse.Namespace) -> int:
    print(f"{'dataset':<18} {'files':>5} {'MB':>8}  {'present':<8} source")
    for dataset in datasets().values():
        present = (
            "-" if args.root is None else ("no" if missing_files(dataset, args.root) else "yes")
        )
        print(
            f"{dataset.name:<18} {len(dataset.files):>5} {dataset.size / 1e6:>8.2f}  "
            f"{present:<8} {dataset.source}"
        )
    return EXIT_OK


def _data_verify(args: argparse.Namespace) -> int:
    def action(dataset: Dataset) -> str:
        verify(dataset, args.root)
        return f"ok ({len(dataset.files)} files, sha256 verified)"

    return _for_each(_selected(args.datasets), action)


def _data_import(args: argparse.Namespace) -> int:
    def action(dataset: Dataset) -> str:
        target = import_dataset(
            dataset, args.root, args.dest, mirror=args.mirror, progress=not args.no_progress
        )
        return f"imported {len(dataset.files)} files into {target}"

    return _for_each(_selected(args.datasets), action)


def _data_manifest(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        _error(f"{args.folder} is not a folder")
        return EXIT_FAILED
    entry = {"files": manifest_entry(args.folder, args.folder)}
    print(yaml.safe_dump(entry, sort_keys=False), end="")
    return EXIT_OK


def _add_data_commands(stages: argparse._SubParsersAction) -> None:
    data = stages.add_parser("data", help="list, verify and import the registered datasets")
    verbs = data.add_subparsers(dest="verb", required=True, metavar="VERB")

    listing = verbs.add_parser("list", help="list the registered datasets")
    listing.add_argument("--root", type=Path, help="data root to check for presence")
    listing.set_defaults(func=_data_list)

    check = verbs.add_parser("verify", help="check files and sha256 checksums under a data root")
    check.add_argument("datasets", nargs="*", metavar="DATASET", help="names (default: all)")
    check.add_argument("--root", type=Path, required=True, help="data root")
    check.set_defaults(func=_data_verify)

    copy = verbs.add_parser("import", help="verified, atomic copy of datasets into a folder")
    copy.add_argument("datasets", nargs="*", metavar="DATASET", help="names (default: all)")
    copy.add_argument("--root", type=Path, required=True, help="local data root")
    copy.add_argument("--dest", type=Path, required=True, help="destination, e.g. resources")
    copy.add_argument(
        "--mirror", help="URL or folder mirroring the data root, to download missing files from"
    )
    copy.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    copy.set_defaults(func=_data_import)

    manifest = verbs.add_parser(
        "manifest", help="print the registry `files` entry (sha256, size) for a dataset folder"
    )
    manifest.add_argument("folder", type=Path, help="the dataset's folder")
    manifest.set_defaults(func=_data_manifest)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nanoxtal`` command."""
    parser = argparse.ArgumentParser(
        prog="nanoxtal",
        description="Machine learning for colloidal nanocrystal synthesis and powder XRD.",
    )
    parser.add_argument("--version", action="version", version=f"nanoxtal {__version__}")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _add_data_commands(stages)
    xrd_commands(stages)
    recipe_commands(stages)
    tem_commands(stages)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, ValueError, OSError) as error:
        _error(str(error))
        return EXIT_FAILED
