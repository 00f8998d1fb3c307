"""The ``nanoxtal`` command line: ``nanoxtal <stage> <verb> ...``. Argument parsing only.

Every verb calls library functions, processes every item of a batch even when some fail, prints
one clear line per failure on stderr and exits non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import yaml

from nanoxtal import __version__
from nanoxtal.arguments import json_object, settings_from
from nanoxtal.data import DatasetError, datasets, get_dataset, import_dataset, verify
from nanoxtal.data.registry import Dataset, manifest_entry, missing_files
from nanoxtal.environment import describe
from nanoxtal.files import atomic_write
from nanoxtal.recipes.cli import add_commands as recipe_commands
from nanoxtal.tem.cli import add_commands as tem_commands

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


def _xrd_structures(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from nanoxtal.xrd.structures import CRYSTAL_SYSTEMS, build_table, read_sources

    sources = list(read_sources(args.sources))
    if args.max_structures is not None and len(sources) > args.max_structures:
        rng = np.random.default_rng(args.seed)
        chosen = np.sort(rng.choice(len(sources), args.max_structures, replace=False))
        sources = [sources[i] for i in chosen]
    table, rejects = build_table(
        sources,
        symprec=args.symprec,
        angle_tolerance=args.angle_tolerance,
        fractions=args.split,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
    )
    with atomic_write(args.out) as partial:
        table.to_parquet(partial, index=False)
    with atomic_write(args.rejects) as partial:
        rejects.to_csv(partial, index=False)
    summary = {
        "structures_read": len(sources),
        "kept": len(table),
        "rejected": len(rejects),
        "reject_reasons": rejects["reason"].str.split(":").str[0].value_counts().to_dict(),
        "seed": args.seed,
        "split_fractions": list(args.split),
        "split_by": "reduced formula",
        "symprec": args.symprec,
        "angle_tolerance": args.angle_tolerance,
        "per_split": table["split"].value_counts().to_dict(),
        "space_groups_present": int(table["space_group"].nunique()),
        "per_crystal_system": {
            CRYSTAL_SYSTEMS[k]: int(v)
            for k, v in table["crystal_system"].value_counts().sort_index().items()
        },
    }
    if args.summary:
        with atomic_write(args.summary) as partial:
            partial.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{len(table)} structures kept, {len(rejects)} rejected (reasons in {args.rejects}), "
        f"{summary['space_groups_present']} space groups; wrote {args.out}"
    )
    return EXIT_OK


def _xrd_random(args: argparse.Namespace) -> int:
    import json

    import pandas as pd

    from nanoxtal.xrd.structures import RandomCrystalSettings, fill_space_groups

    table = pd.read_parquet(args.structures)
    settings = RandomCrystalSettings(
        per_group=args.per_group,
        max_species=args.max_species,
        max_atoms=args.max_atoms,
        attempts=args.attempts,
    )
    crystals, unfilled = fill_space_groups(
        table, settings, args.seed, args.workers, progress=not args.no_progress
    )
    with atomic_write(args.out) as partial:
        crystals.to_parquet(partial, index=False)
    with atomic_write(args.rejects) as partial:
        unfilled.to_csv(partial, index=False)
    train_groups = set(table.loc[table["split"] == "train", "space_group"])
    summary = {
        "seed": args.seed,
        "per_group": args.per_group,
        "max_species": args.max_species,
        "max_atoms": args.max_atoms,
        "crystals": len(crystals),
        "unfilled": len(unfilled),
        "space_groups_filled": int(crystals["space_group"].nunique()),
        "space_groups_in_train_before": len(train_groups),
        "space_groups_in_train_after": len(train_groups | set(crystals["space_group"])),
    }
    if args.summary:
        with atomic_write(args.summary) as partial:
            partial.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{len(crystals)} random crystals in {summary['space_groups_filled']} space groups "
        f"({len(unfilled)} places not filled, reasons in {args.rejects}); training split now "
        f"covers {summary['space_groups_in_train_after']} of 230 space groups; wrote {args.out}"
    )
    return EXIT_OK


def _simulation_inputs(paths: Sequence[Path]) -> Iterator[tuple[str, object]]:
    """(id, SiteArrays or Structure or error message) for every structure of the inputs."""
    import pandas as pd

    from nanoxtal.xrd.diffraction import SimulationError, SiteArrays
    from nanoxtal.xrd.structures import StructureError, parse_cif, read_sources

    for path in paths:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path, columns=["id", "lattice", "species", "frac_coords"])
            for row in table.itertuples(index=False):
                try:
                    yield row.id, SiteArrays.from_ordered(row.lattice, row.species, row.frac_coords)
                except SimulationError as error:
                    yield row.id, str(error)
            continue
        for source in read_sources([path]):
            if source.error is not None:
                yield source.id, source.error
                continue
            try:
                yield source.id, parse_cif(source.cif)
            except StructureError as error:
                yield source.id, str(error)


def _xrd_simulate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from nanoxtal.xrd.diffraction import SimulationError, peak_table, stick_pattern

    patterns, failed = [], 0
    for structure_id, item in tqdm(
        _simulation_inputs(args.structures),
        desc="simulate",
        unit="structure",
        disable=args.no_progress,
    ):
        try:
            if isinstance(item, str):
                raise SimulationError(item)
            pattern = stick_pattern(
                item, args.wavelength, tuple(args.two_theta), debye_waller=args.debye_waller
            )
        except SimulationError as error:
            failed += 1
            _error(f"{structure_id}: {error}")
            continue
        patterns.append((structure_id, pattern))
    table = peak_table(patterns)
    with atomic_write(args.out) as partial:
        table.to_parquet(partial, index=False)
    print(f"{len(patterns)} patterns ({len(table)} peaks) written to {args.out}; {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


def _trainer_settings(args: argparse.Namespace):
    from nanoxtal.train import TrainerSettings

    return TrainerSettings.from_mapping(args.trainer, {"seed": args.seed})


def _xrd_train(args: argparse.Namespace) -> int:
    from nanoxtal.xrd.training import TrainSettings, train_classifier

    published = train_classifier(
        args.structures,
        args.peaks,
        args.out_dir,
        settings_from(TrainSettings, args.settings, "XRD training"),
        _trainer_settings(args),
    )
    print(f"trained model: {published}")
    return EXIT_OK


def _xrd_finetune(args: argparse.Namespace) -> int:
    from nanoxtal.xrd.training import FinetuneSettings, finetune_classifier

    published = finetune_classifier(
        args.model,
        args.measured,
        args.out_dir,
        settings_from(FinetuneSettings, args.settings, "XRD fine-tuning"),
        _trainer_settings(args),
    )
    print(f"fine-tuned model: {published}; pattern library: {args.out_dir / 'library.npz'}")
    return EXIT_OK


def _xrd_evaluate(args: argparse.Namespace) -> int:
    import json

    from nanoxtal.xrd.evaluate import evaluate_models

    models = {}
    for spec in args.model:
        name, _, paths = spec.partition("=")
        synthetic, _, finetuned = paths.partition(",")
        models[name] = {"synthetic": Path(synthetic), "finetuned": Path(finetuned)}
    single_phase = None
    if args.single_phase is not None:
        single_phase = (sorted(args.single_phase.glob("*.xy")), args.single_phase / "references")
    metrics = evaluate_models(
        models,
        args.structures,
        args.peaks,
        args.measured,
        args.fraction,
        args.seed,
        args.test_size,
        figures=args.figures,
        single_phase=single_phase,
    )
    metrics["environment"] = describe()
    with atomic_write(args.out) as partial:
        partial.write_text(json.dumps(metrics, indent=2) + "\n")
    for key, value in metrics.items():
        if key.endswith("accuracy"):
            print(f"{key}: {value:.3f}")
    return EXIT_OK


def _xrd_predict(args: argparse.Namespace) -> int:
    from nanoxtal.xrd.evaluate import predict_files
    from nanoxtal.xrd.library import LibraryError, load_library
    from nanoxtal.xrd.module import load_classifier

    if not args.model.is_file():
        _error(f"model {args.model} not found: train one (snakemake) or give --model")
        return EXIT_FAILED
    library = None
    if args.library is not None:
        try:
            library = load_library(args.library)
        except LibraryError as error:
            _error(str(error))
            return EXIT_FAILED
    table, errors = predict_files(
        load_classifier(args.model), args.inputs, args.wavelength, args.min_confidence, library
    )
    for message in errors:
        _error(message)
    with atomic_write(args.out) as partial:
        table.to_csv(partial, index=False)
    print(f"{len(table)} patterns predicted into {args.out}; {len(errors)} files failed")
    return EXIT_FAILED if errors else EXIT_OK


def _add_xrd_model_commands(verbs: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--settings", type=json_object, default={}, help="JSON of settings")
    common.add_argument("--trainer", type=json_object, default={}, help="JSON trainer settings")
    common.add_argument("--seed", type=int, default=42)

    train = verbs.add_parser("train", parents=[common], help="train a classifier on sticks")
    train.add_argument(
        "--structures",
        type=Path,
        nargs="+",
        required=True,
        help="structure tables (.parquet), e.g. the database's and the random crystals'",
    )
    train.add_argument("--peaks", type=Path, required=True)
    train.add_argument("--out-dir", type=Path, required=True, help="e.g. results/xrd/xrdnet")
    train.set_defaults(func=_xrd_train)

    tune = verbs.add_parser("finetune", parents=[common], help="fine-tune on measured patterns")
    tune.add_argument("--model", type=Path, required=True, help="trained checkpoint")
    tune.add_argument("--measured", type=Path, required=True, help="labelled .npz (RRUFF)")
    tune.add_argument("--out-dir", type=Path, required=True)
    tune.set_defaults(func=_xrd_finetune)

    evaluate = verbs.add_parser("evaluate", help="metrics of trained models on fixed splits")
    evaluate.add_argument(
        "--model", action="append", required=True, metavar="NAME=SYNTHETIC,FINETUNED"
    )
    evaluate.add_argument("--structures", type=Path, required=True)
    evaluate.add_argument("--peaks", type=Path, required=True)
    evaluate.add_argument("--measured", type=Path, required=True)
    evaluate.add_argument("--fraction", type=float, default=0.5, help="fine-tune share")
    evaluate.add_argument("--seed", type=int, default=42)
    evaluate.add_argument("--test-size", type=int, default=2048)
    evaluate.add_argument("--out", type=Path, required=True, help="metrics .json")
    evaluate.add_argument("--figures", type=Path, required=True, help="folder for figures")
    evaluate.add_argument(
        "--single-phase",
        type=Path,
        metavar="FOLDER",
        help="folder of measured <formula>.xy files with reference CIFs in FOLDER/references",
    )
    evaluate.set_defaults(func=_xrd_evaluate)

    predict = verbs.add_parser("predict", help="crystal system and space group of patterns")
    predict.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help=".xy/.xye/.csv/.txt, .xrdml or .npz"
    )
    predict.add_argument("--out", type=Path, required=True, help="predictions .csv")
    predict.add_argument("--model", type=Path, default=Path("results/xrd/models/best.ckpt"))
    predict.add_argument(
        "--wavelength", type=float, help="Å, for files that do not state it (default Cu Kα)"
    )
    predict.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        help="mark predictions with a lower space-group probability abstained",
    )
    predict.add_argument(
        "--library",
        type=Path,
        help="labelled measured patterns searched beside the model (library.npz of finetune)",
    )
    predict.set_defaults(func=_xrd_predict)


def _add_xrd_commands(stages: argparse._SubParsersAction) -> None:
    xrd = stages.add_parser("xrd", help="powder X-ray diffraction: structures, simulation")
    verbs = xrd.add_subparsers(dest="verb", required=True, metavar="VERB")

    structures = verbs.add_parser(
        "structures", help="symmetrize, label and split structures (CIF files/folders, CSV)"
    )
    structures.add_argument("sources", nargs="+", type=Path, metavar="SOURCE")
    structures.add_argument("--out", type=Path, required=True, help="structure table (.parquet)")
    structures.add_argument(
        "--rejects", type=Path, required=True, help="rejects with reasons (.csv)"
    )
    structures.add_argument("--summary", type=Path, help="counts, seed and split settings (.json)")
    structures.add_argument("--symprec", type=float, default=0.01, help="spglib tolerance, Å")
    structures.add_argument("--angle-tolerance", type=float, default=5.0, help="degrees")
    structures.add_argument(
        "--split", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST")
    )
    structures.add_argument("--seed", type=int, default=42)
    structures.add_argument("--max-structures", type=int, help="random subset of this size")
    structures.add_argument("--workers", type=int, default=1, help="processes")
    structures.add_argument("--no-progress", action="store_true")
    structures.set_defaults(func=_xrd_structures)

    random = verbs.add_parser(
        "random", help="random symmetric crystals (PyXtal) filling rare space groups"
    )
    random.add_argument("structures", type=Path, help="structure table (.parquet)")
    random.add_argument("--out", type=Path, required=True, help="random crystals (.parquet)")
    random.add_argument("--rejects", type=Path, required=True, help="unfilled places (.csv)")
    random.add_argument("--summary", type=Path, help="counts and settings (.json)")
    random.add_argument(
        "--per-group", type=int, default=20, help="fill each space group up to this many"
    )
    random.add_argument("--max-species", type=int, default=3, help="elements per crystal")
    random.add_argument("--max-atoms", type=int, default=120, help="atoms per conventional cell")
    random.add_argument("--attempts", type=int, default=30, help="draws before giving up")
    random.add_argument("--seed", type=int, default=42)
    random.add_argument("--workers", type=int, default=1, help="processes")
    random.add_argument("--no-progress", action="store_true")
    random.set_defaults(func=_xrd_random)

    simulate = verbs.add_parser("simulate", help="stick patterns (hkl, 2θ, d, intensity)")
    simulate.add_argument(
        "structures",
        nargs="+",
        type=Path,
        metavar="STRUCTURES",
        help="CIF files/folders, CSV(.gz) with a cif column, or a structure table (.parquet)",
    )
    simulate.add_argument("--out", type=Path, required=True, help="peak table (.parquet)")
    simulate.add_argument("--wavelength", default="CuKa", help="line name (CuKa, MoKa1, ...) or Å")
    simulate.add_argument(
        "--two-theta", type=float, nargs=2, default=(5.0, 90.0), metavar=("MIN", "MAX")
    )
    simulate.add_argument("--debye-waller", type=float, help="isotropic B for all atoms, Å²")
    simulate.add_argument("--no-progress", action="store_true")
    simulate.set_defaults(func=_xrd_simulate)
    _add_xrd_model_commands(verbs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nanoxtal`` command."""
    parser = argparse.ArgumentParser(
        prog="nanoxtal",
        description="Machine learning for colloidal nanocrystal synthesis and powder XRD.",
    )
    parser.add_argument("--version", action="version", version=f"nanoxtal {__version__}")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _add_data_commands(stages)
    _add_xrd_commands(stages)
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
