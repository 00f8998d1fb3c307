"""``nanoxtal tem train|soup|bank|pseudo|evaluate|pool``: build and score the segmenter.

The workflow runs these (``workflow/rules/tem.smk``); users measuring micrographs need only
``nanoxtal tem measure`` (``nanoxtal.tem.cli``). Argument parsing and file writing around
``nanoxtal.tem``'s library functions; heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nanoxtal.arguments import json_object, settings_from
from nanoxtal.environment import describe
from nanoxtal.files import atomic_write

if TYPE_CHECKING:
    from nanoxtal.tem.io import Split

EXIT_OK = 0


def _train(args: argparse.Namespace) -> int:
    from nanoxtal.tem.training import TrainSettings, train_segmenter
    from nanoxtal.train import TrainerSettings

    published = train_segmenter(
        args.out_dir,
        TrainSettings.from_mapping(args.settings),
        TrainerSettings.from_mapping(args.trainer, {"seed": args.seed}),
        banks=args.bank,
        init_from=args.init,
    )
    print(f"trained segmenter: {published}")
    return EXIT_OK


def _soup(args: argparse.Namespace) -> int:
    from nanoxtal.tem.module import average_segmenters

    try:
        out = average_segmenters(args.checkpoints, args.out)
    except (OSError, KeyError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    print(f"weight average of {len(args.checkpoints)} segmenters written to {out}")
    return EXIT_OK


def _bank(args: argparse.Namespace) -> int:
    from nanoxtal.tem.bank import labelled_bank, save_bank

    split = _split_from(args)
    if args.film_margin is not None and args.film_margin < 0:
        raise SystemExit(f"error: --film-margin must be >= 0 px, got {args.film_margin}")
    bank, splits = labelled_bank(dict(args.set), split, args.film_margin)
    save_bank(bank, args.out)
    record = {
        "sets": {name: str(folder) for name, folder in args.set},
        "film_margin_px": args.film_margin,
        **split.record(),
        "images": list(bank.names),
        "pixels": bank.pixels,
        "splits": splits,
    }
    if args.summary:
        with atomic_write(args.summary) as partial:
            partial.write_text(json.dumps(record, indent=2) + "\n")
    kind = "labelled" if args.film_margin is None else "film-only"
    trusted = f"{bank.pixels} px, {bank.trusted:.1%} trusted"
    print(f"{len(bank)} {kind} training images ({trusted}) written to {args.out}")
    return EXIT_OK


def _pseudo(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from nanoxtal.tem.bank import PseudoSettings, pseudo_bank, read_micrographs, save_bank
    from nanoxtal.tem.module import load_segmenter
    from nanoxtal.tem.segmentation import SegmentSettings

    settings = settings_from(PseudoSettings, args.settings, "pseudo-label")
    segment = SegmentSettings.from_mapping(args.segment)
    model = load_segmenter(args.model)
    images, names, failed = read_micrographs(args.images)
    for message in failed:
        print(f"skipped: {message}", file=sys.stderr)
    if not images:
        raise SystemExit(f"no readable image among {args.images}: nothing to pseudo-label")
    progress = tqdm(images, desc="pseudo-label", disable=args.no_progress)
    bank = pseudo_bank(model, progress, names, settings, segment)
    save_bank(bank, args.out)
    trusted = f"{bank.particles} particles, {bank.trusted:.1%} of pixels trusted"
    print(f"{len(bank)} pseudo-labelled images ({trusted}) written to {args.out}")
    return EXIT_OK if not failed else 1


def labelled_folder(text: str) -> tuple[str, Path]:
    """``NAME=FOLDER`` of a labelled set (argparse type)."""
    from nanoxtal.tem.io import LABELLED_SETS

    name, sep, folder = text.partition("=")
    if not sep or name not in LABELLED_SETS or not folder:
        raise argparse.ArgumentTypeError(
            f"expected NAME=FOLDER with NAME one of {', '.join(LABELLED_SETS)}, got {text!r}"
        )
    return name, Path(folder)


def _set_segment(text: str) -> tuple[str, dict]:
    """``NAME=JSON``: one labelled set's segment settings, over the common ``--segment``."""
    name, separator, settings = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    return name, json_object(settings)


def _split_from(args: argparse.Namespace) -> Split:
    """The ``Split`` the split arguments name (argparse error for an impossible one)."""
    from nanoxtal.tem.io import Split

    try:
        return Split(args.split_seed, args.test_share, args.cv_folds, args.cv_fold)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error


def _evaluate(args: argparse.Namespace) -> int:
    from nanoxtal.tem.evaluate import evaluate_sets, shape_figure
    from nanoxtal.tem.module import load_segmenter

    model = load_segmenter(args.model) if args.model else None
    found = evaluate_sets(
        args.set,
        model,
        _split_from(args),
        args.segment,
        dict(args.set_segment),
        args.shapes_per_class,
        args.shapes_seed,
        progress=not args.no_progress,
    )
    if args.shapes_figure and found.shape_matrices:
        shape_figure(found.shape_matrices, args.shapes_figure)  # written atomically
    metrics = {"model": str(args.model) if args.model else None, "environment": describe()}
    _write_scores(args, metrics | found.metrics, found.per_image)
    return EXIT_OK


def _write_scores(args: argparse.Namespace, metrics: dict, per_image) -> None:
    """metrics.json, ``--per-image`` CSV and ``--figure``; the headline numbers printed."""
    import math

    from nanoxtal.tem.evaluate import evaluation_figure

    def number(value: object) -> object:  # NaN and infinity as null
        return float(value) if math.isfinite(float(value)) else None

    with atomic_write(args.out) as partial:
        partial.write_text(json.dumps(metrics, indent=2, default=number) + "\n")
    if args.per_image:
        with atomic_write(args.per_image) as partial:
            per_image.to_csv(partial, index=False)
    if args.figure:
        with atomic_write(args.figure) as partial:
            evaluation_figure(metrics, partial)
    headline = ("/ap50", "/semantic_miou", "/count_error", "/diameter_error")
    headline += ("/sample_diameter_error", "/dominant_accuracy", "/common_accuracy")
    for key, value in metrics.items():
        if key.endswith(headline) and isinstance(value, float):
            print(f"{key}: {value:.3f}")


def _pool(args: argparse.Namespace) -> int:
    from nanoxtal.tem.evaluate import pool_folds, read_folds

    try:
        metrics, table = pool_folds(*read_folds(args.folds))
    except ValueError as error:
        raise SystemExit(f"error: {', '.join(map(str, args.folds))}: {error}") from error
    _write_scores(args, metrics, table)
    return EXIT_OK


def add_model_commands(
    verbs: argparse._SubParsersAction,
    segment: argparse.ArgumentParser,
    progress: argparse.ArgumentParser,
) -> None:
    """Register the segmenter's verbs under ``nanoxtal tem``.

    Args:
        verbs: ``nanoxtal tem``'s subparsers.
        segment: Parent parser of ``--segment``.
        progress: Parent parser of ``--no-progress``.
    """
    # The labelled sets and their fixed train/test split (shared by bank and evaluate).
    split = argparse.ArgumentParser(add_help=False)
    split.add_argument(
        "--set", type=labelled_folder, action="append", required=True, metavar="NAME=FOLDER",
        help="a labelled set and its folder, e.g. msa_em=data/tem/msa_em; repeatable",
    )  # fmt: skip
    split.add_argument("--split-seed", type=int, default=42, help="seed of the fixed split")
    split.add_argument(
        "--test-share", type=float, default=0.5, help="share of each set kept for evaluation"
    )
    split.add_argument(
        "--cv-folds", type=int, default=0, metavar="K",
        help="cross-validation inside the training part: K folds (0: none, use the test part)",
    )  # fmt: skip
    split.add_argument(
        "--cv-fold", type=int, default=0, metavar="I",
        help="the fold left out of the bank and scored by evaluate, 0..K-1",
    )  # fmt: skip
    scores = argparse.ArgumentParser(add_help=False)
    scores.add_argument("--out", type=Path, required=True, help="metrics JSON")
    scores.add_argument("--per-image", type=Path, help="per-image CSV")
    scores.add_argument("--figure", type=Path, help="PNG of the headline metrics")

    train = verbs.add_parser("train", help="train the segmentation network")
    train.add_argument("--out-dir", type=Path, required=True, help="e.g. results/tem/synthetic")
    train.add_argument("--settings", type=json_object, default={}, help="TrainSettings JSON")
    train.add_argument("--trainer", type=json_object, default={}, help="JSON trainer settings")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument(
        "--bank", type=Path, action="append", default=[],
        help="real image bank (.npz from 'tem bank' or 'tem pseudo') to mix in; repeatable",
    )  # fmt: skip
    train.add_argument("--init", type=Path, help="checkpoint whose weights the network starts from")
    train.set_defaults(func=_train)

    soup = verbs.add_parser("soup", help="average the weights of segmenters (model soup)")
    soup.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT", help="one or more")
    soup.add_argument("--out", type=Path, required=True, help="the averaged checkpoint")
    soup.set_defaults(func=_soup)

    bank = verbs.add_parser("bank", parents=[split], help="store labelled training images")
    bank.add_argument("--out", type=Path, required=True, help="bank file (.npz)")
    bank.add_argument("--summary", type=Path, help="JSON record of the images and split")
    bank.add_argument(
        "--film-margin", type=float, metavar="PX",
        help="a film bank: trust only the film farther than PX from every labelled particle"
        " or box, so the network learns what is not a particle (e.g. textured supports)",
    )  # fmt: skip
    bank.set_defaults(func=_bank)

    pseudo = verbs.add_parser(
        "pseudo", parents=[segment, progress], help="pseudo-label micrographs with a teacher"
    )
    pseudo.add_argument("images", nargs="+", type=Path, help="image files or folders")
    pseudo.add_argument("--model", type=Path, required=True, help="teacher checkpoint")
    pseudo.add_argument("--out", type=Path, required=True, help="bank file (.npz)")
    pseudo.add_argument("--settings", type=json_object, default={}, help="PseudoSettings JSON")
    pseudo.set_defaults(func=_pseudo)

    evaluate = verbs.add_parser(
        "evaluate", parents=[split, scores, segment, progress],
        help="score the model and the classical baseline on the held-out part of labelled sets"
        " (or, with --cv-folds, on one fold of their training part)",
    )  # fmt: skip
    evaluate.add_argument("--model", type=Path, help="segmenter checkpoint (else baseline only)")
    evaluate.add_argument(
        "--set-segment", type=_set_segment, action="append", default=[], metavar="NAME=JSON",
        help="segment settings of one set over --segment, e.g."
        """ stem_boxes='{"polarity": "auto", "scales": [1, 0.5, 0.25]}'""",
    )  # fmt: skip
    evaluate.add_argument(
        "--shapes-per-class", type=int, default=0, metavar="N",
        help="also score the shape classes on N simulated micrographs per class (0: skip)",
    )  # fmt: skip
    evaluate.add_argument("--shapes-seed", type=int, default=2025, help="seed of those images")
    evaluate.add_argument("--shapes-figure", type=Path, help="PNG of the shape confusion matrices")
    evaluate.set_defaults(func=_evaluate)

    pool = verbs.add_parser(
        "pool", parents=[scores], help="pool the scored folds of a cross-validation"
    )
    pool.add_argument(
        "folds", nargs="+", type=Path, metavar="FOLD_DIR",
        help="folder of one fold's 'tem evaluate --cv-fold' output: metrics.json, per_image.csv",
    )  # fmt: skip
    pool.set_defaults(func=_pool)
