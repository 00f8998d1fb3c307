"""``nanoxtal xrd ...``: structures, random crystals, simulation, training, evaluation, prediction.

Argument parsing and file writing only: each command calls the library (``nanoxtal.xrd.api``
and the stage's modules). Heavy imports happen inside the commands, so ``nanoxtal --help``
stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nanoxtal.arguments import json_object, settings_from
from nanoxtal.environment import describe
from nanoxtal.files import atomic_write

EXIT_OK = 0
EXIT_FAILED = 1


def _error(message: str) -> None:
    print(f"nanoxtal: error: {message}", file=sys.stderr)


def _write_json(path: Path, record: dict) -> None:
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(record, indent=2) + "\n")


def _named_source(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (name ``file``)."""
    name, separator, path = text.partition("=")
    if not separator:
        return "file", Path(text)
    if not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH or PATH")
    return name, Path(path)


def _structures(args: argparse.Namespace) -> int:
    from nanoxtal.xrd.structures import build_table, random_subset, read_sources, table_summary

    sources = []
    for name, path in args.sources:
        read = list(read_sources([path], name))
        sources.extend(random_subset(read, args.max_structures, args.seed))
    for option, names in (("--published", args.published), ("--prefer", args.prefer)):
        unknown = set(names) - {name for name, _ in args.sources}
        if unknown:
            _error(f"{option} names no source: {', '.join(sorted(unknown))}")
            return EXIT_FAILED
    table, rejects = build_table(
        sources,
        symprec=args.symprec,
        angle_tolerance=args.angle_tolerance,
        fractions=args.split,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
        published=args.published,
        prefer=args.prefer,
    )
    with atomic_write(args.out) as partial:
        table.to_parquet(partial, index=False)
    with atomic_write(args.rejects) as partial:
        rejects.to_csv(partial, index=False)
    summary = table_summary(
        len(sources), table, rejects, args.split, args.seed, args.symprec, args.angle_tolerance
    )
    if args.summary:
        _write_json(args.summary, summary)
    print(
        f"{len(table)} structures kept, {len(rejects)} rejected (reasons in {args.rejects}), "
        f"{summary['space_groups_present']} space groups; wrote {args.out}"
    )
    return EXIT_OK


def _random(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.xrd.structures import RandomCrystalSettings, fill_space_groups, random_summary

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
    summary = random_summary(table, crystals, unfilled, settings, args.seed)
    if args.summary:
        _write_json(args.summary, summary)
    print(
        f"{len(crystals)} random crystals in {summary['space_groups_filled']} space groups "
        f"({len(unfilled)} places not filled, reasons in {args.rejects}); training split now "
        f"covers {summary['space_groups_in_train_after']} of 230 space groups; wrote {args.out}"
    )
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from collections import Counter

    from nanoxtal.xrd.api import read_and_simulate
    from nanoxtal.xrd.diffraction import SimulationError, peak_table

    patterns, failed, paths = [], 0, Counter()
    options = (args.wavelength, tuple(args.two_theta), args.debye_waller, not args.no_progress)
    simulated = read_and_simulate(args.structures, *options, workers=args.workers)
    for structure_id, result, path in simulated:
        paths[path] += 1
        if isinstance(result, SimulationError):
            failed += 1
            _error(f"{structure_id}: {result}")
            continue
        if path == "pymatgen":
            print(f"{structure_id}: read by pymatgen (the fast CIF reader refused it)")
        patterns.append((structure_id, result))
    table = peak_table(patterns)
    with atomic_write(args.out) as partial:
        table.to_parquet(partial, index=False)
    print(
        f"{len(patterns)} patterns ({len(table)} peaks) written to {args.out}; {failed} failed; "
        f"read: {paths['arrays']} by the fast reader or from tables, {paths['pymatgen']} by "
        f"pymatgen, {paths['unread']} by neither"
    )
    return EXIT_FAILED if failed else EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from nanoxtal.train import TrainerSettings
    from nanoxtal.xrd.training import TrainSettings, train_classifier

    settings = settings_from(TrainSettings, args.settings, "XRD training")
    trainer = TrainerSettings.from_mapping(args.trainer, {"seed": args.seed})
    published = train_classifier(args.structures, args.peaks, args.out_dir, settings, trainer)
    print(f"trained model: {published}")
    return EXIT_OK


def _finetune(args: argparse.Namespace) -> int:
    from nanoxtal.train import TrainerSettings
    from nanoxtal.xrd.references import load_references
    from nanoxtal.xrd.training import FinetuneSettings, finetune_classifier

    settings = settings_from(FinetuneSettings, args.settings, "XRD fine-tuning")
    trainer = TrainerSettings.from_mapping(args.trainer, {"seed": args.seed})
    references = None if args.references is None else load_references(args.references)
    published = finetune_classifier(
        args.model, args.measured, args.out_dir, settings, trainer, references
    )
    print(f"fine-tuned model: {published}; pattern library: {args.out_dir / 'library.npz'}")
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from nanoxtal.xrd.evaluate import evaluate_models, model_specs, single_phase_set
    from nanoxtal.xrd.references import load_references

    single_phase = None if args.single_phase is None else single_phase_set(args.single_phase)
    references = None if args.references is None else load_references(args.references)
    metrics = evaluate_models(
        model_specs(args.model),
        args.structures,
        args.peaks,
        args.measured,
        args.fraction,
        args.seed,
        args.test_size,
        figures=args.figures,
        single_phase=single_phase,
        references=references,
    )
    metrics["environment"] = describe()
    _write_json(args.out, metrics)
    for key, value in metrics.items():
        if key.endswith("accuracy"):
            print(f"{key}: {value:.3f}")
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from nanoxtal.xrd.api import choose_classifier, choose_library, choose_references
    from nanoxtal.xrd.evaluate import abstention_rule, predict_files

    chosen = choose_classifier(args.model)
    library, which = choose_library(False if args.no_library else args.library)
    references, named = choose_references(False if args.no_references else args.references)
    print(f"model: {chosen.describe}")
    print(f"library: {which}")
    print(f"references: {named}")
    threshold, on_final = abstention_rule(chosen.model, args.min_confidence, library, references)
    which_probability = "the final" if on_final else "the model's own"
    print(f"abstains below {which_probability} space-group probability {threshold:.3f}")
    table, errors = predict_files(
        chosen.model, args.inputs, args.wavelength, args.min_confidence, library, references
    )
    for message in errors:
        _error(message)
    with atomic_write(args.out) as partial:
        table.to_csv(partial, index=False)
    print(f"{len(table)} patterns predicted into {args.out}; {len(errors)} files failed")
    return EXIT_FAILED if errors else EXIT_OK


def _references(args: argparse.Namespace) -> int:
    from nanoxtal.xrd.references import references_from_tables

    references = references_from_tables(
        args.structures, args.peaks, args.sources or None, progress=not args.no_progress
    )
    print(
        f"{len(references)} reference phases ({len(set(references.space_group.tolist()))}"
        " space groups)"
    )
    if args.measured is not None:
        from nanoxtal.xrd.training import measured_set, rruff_split

        labelled = measured_set(args.measured)
        tune, _ = rruff_split(len(labelled.patterns), args.fraction, args.seed)
        tuned = labelled.subset(tune)
        references = references.fit_trust(tuned.patterns, tuned.space_group)
        print(
            f"trust of match 1's space group fitted on {len(tune)} patterns of {args.measured}"
            f" (fine-tune part, fraction {args.fraction}, seed {args.seed}):"
            f" {references.trust_space_group}; patterns whose match 1 is below similarity"
            f" {references.unlike_below:.3f} (1 % of those) are held back as unlike any phase"
        )
    references.save(args.out)
    print(f"written to {args.out}")
    return EXIT_OK


def _add_model_commands(verbs: argparse._SubParsersAction) -> None:
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
    train.set_defaults(func=_train)

    tune = verbs.add_parser("finetune", parents=[common], help="fine-tune on measured patterns")
    tune.add_argument("--model", type=Path, required=True, help="trained checkpoint")
    tune.add_argument("--measured", type=Path, required=True, help="labelled .npz (RRUFF)")
    tune.add_argument("--out-dir", type=Path, required=True)
    tune.add_argument(
        "--references",
        type=Path,
        help="reference phases (references.npz): also choose the thresholds of the model's"
        " answers moved by a library, references or both, each on its out-of-fold answers",
    )
    tune.set_defaults(func=_finetune)

    evaluate = verbs.add_parser("evaluate", help="metrics of trained models on fixed splits")
    evaluate.add_argument(
        "--model", action="append", required=True, metavar="NAME=SYNTHETIC,FINETUNED"
    )
    for name in ("--structures", "--peaks", "--measured"):
        evaluate.add_argument(name, type=Path, required=True)
    evaluate.add_argument("--fraction", type=float, default=0.5, help="fine-tune share")
    evaluate.add_argument("--seed", type=int, default=42)
    evaluate.add_argument("--test-size", type=int, default=2048)
    evaluate.add_argument("--out", type=Path, required=True, help="metrics .json")
    evaluate.add_argument("--figures", type=Path, required=True, help="folder for figures")
    evaluate.add_argument(
        "--references", type=Path, help="reference phases (references.npz) to score on RRUFF"
    )
    evaluate.add_argument(
        "--single-phase",
        type=Path,
        metavar="FOLDER",
        help="folder of measured <formula>.xy files with reference CIFs in FOLDER/references",
    )
    evaluate.set_defaults(func=_evaluate)

    references = verbs.add_parser(
        "references", help="clean renders of reference phases, named beside predictions"
    )
    references.add_argument("structures", type=Path, help="structure table (.parquet)")
    references.add_argument("--peaks", type=Path, required=True, help="its peak table")
    references.add_argument(
        "--sources", nargs="+", metavar="NAME", help="keep these sources only (default: all)"
    )
    references.add_argument("--out", type=Path, required=True, help="references .npz")
    references.add_argument(
        "--measured",
        type=Path,
        help="labelled measured patterns (rruff_dev.npz) whose fine-tune part fits how far a"
        " match is trusted (then a close match moves the prediction); default: names only",
    )
    references.add_argument("--fraction", type=float, default=0.5, help="fine-tune share")
    references.add_argument("--seed", type=int, default=42, help="seed of the split")
    references.add_argument("--no-progress", action="store_true")
    references.set_defaults(func=_references)

    predict = verbs.add_parser("predict", help="crystal system and space group of patterns")
    predict.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help=".xy/.xye/.csv/.txt, .xrdml or .npz"
    )
    predict.add_argument("--out", type=Path, required=True, help="predictions .csv")
    predict.add_argument(
        "--model", type=Path, help="checkpoint (default: results/xrd/models/best.ckpt)"
    )
    predict.add_argument(
        "--wavelength", type=float, help="Å, for files that do not state it (default Cu Kα)"
    )
    predict.add_argument(
        "--min-confidence",
        type=float,
        help="mark predictions with a lower space-group probability abstained (default: the"
        " model's own threshold, chosen when it was fine-tuned; 0 never abstains)",
    )
    library = predict.add_mutually_exclusive_group()
    library.add_argument(
        "--library",
        type=Path,
        help="labelled measured patterns searched beside the model (library.npz of finetune;"
        " default: the published results/xrd/models/library.npz when it exists)",
    )
    library.add_argument("--no-library", action="store_true", help="search no library")
    references = predict.add_mutually_exclusive_group()
    references.add_argument(
        "--references",
        type=Path,
        help="reference phases whose 3 closest matches are named beside each prediction"
        " (references.npz of `xrd references`; default: the published"
        " results/xrd/references.npz when it exists)",
    )
    references.add_argument("--no-references", action="store_true", help="name no reference phases")
    predict.set_defaults(func=_predict)


def add_commands(stages: argparse._SubParsersAction) -> None:
    """Register ``nanoxtal xrd`` and its verbs."""
    xrd = stages.add_parser("xrd", help="powder X-ray diffraction: structures, simulation")
    verbs = xrd.add_subparsers(dest="verb", required=True, metavar="VERB")

    structures = verbs.add_parser(
        "structures", help="symmetrize, label and split structures (CIF files/folders, CSV)"
    )
    structures.add_argument(
        "sources",
        nargs="+",
        type=_named_source,
        metavar="[NAME=]SOURCE",
        help="CIF file, folder of CIFs or CSV(.gz) with a cif column, named by the source it "
        "is (the table's `source` column; default 'file'); a phase two sources hold is kept "
        "from the first unless --prefer names another",
    )
    structures.add_argument(
        "--published",
        action="append",
        default=[],
        metavar="NAME",
        help="a source whose CIFs' own space groups and settings are used (e.g. AMCSD); "
        "others have their symmetry detected",
    )
    structures.add_argument(
        "--prefer",
        action="append",
        default=[],
        metavar="NAME",
        help="a source whose copy of a phase another source also holds is kept (e.g. AMCSD's"
        " measured structures; default: the first source's), best first",
    )
    structures.add_argument("--out", type=Path, required=True, help="structure table (.parquet)")
    structures.add_argument("--rejects", type=Path, required=True, help="rejects, reasons (.csv)")
    structures.add_argument("--summary", type=Path, help="counts, seed and split settings (.json)")
    structures.add_argument("--symprec", type=float, default=0.01, help="spglib tolerance, Å")
    structures.add_argument("--angle-tolerance", type=float, default=5.0, help="degrees")
    structures.add_argument(
        "--split", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST")
    )
    structures.add_argument("--seed", type=int, default=42)
    structures.add_argument(
        "--max-structures", type=int, help="random subset of this size of each source"
    )
    structures.add_argument("--workers", type=int, default=1, help="processes")
    structures.add_argument("--no-progress", action="store_true")
    structures.set_defaults(func=_structures)

    random = verbs.add_parser("random", help="random crystals (PyXtal) filling rare space groups")
    random.add_argument("structures", type=Path, help="structure table (.parquet)")
    random.add_argument("--out", type=Path, required=True, help="random crystals (.parquet)")
    random.add_argument("--rejects", type=Path, required=True, help="unfilled places (.csv)")
    random.add_argument("--summary", type=Path, help="counts and settings (.json)")
    random.add_argument("--per-group", type=int, default=20, help="fill groups up to this many")
    random.add_argument("--max-species", type=int, default=3, help="elements per crystal")
    random.add_argument("--max-atoms", type=int, default=120, help="atoms per conventional cell")
    random.add_argument("--attempts", type=int, default=30, help="draws before giving up")
    random.add_argument("--seed", type=int, default=42)
    random.add_argument("--workers", type=int, default=1, help="processes")
    random.add_argument("--no-progress", action="store_true")
    random.set_defaults(func=_random)

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
    simulate.add_argument("--workers", type=int, default=1, help="processes")
    simulate.add_argument("--no-progress", action="store_true")
    simulate.set_defaults(func=_simulate)
    _add_model_commands(verbs)
