"""``nanoxtal recipes lab-example|lab-check|label|check``: a lab's syntheses as labelled recipes.

Argument parsing and file writing around ``nanoxtal.recipes.lab``; heavy imports happen inside
the commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nanoxtal.files import atomic_write

EXIT_OK = 0


def _example(args: argparse.Namespace) -> int:
    from nanoxtal.recipes.lab import write_example_lab

    truth = write_example_lab(args.out, args.seed)
    print(f"example lab of {len(truth)} samples written to {args.out} (truth in truth.csv)")
    return EXIT_OK


def _lab_check(args: argparse.Namespace) -> int:
    from nanoxtal.recipes.lab import read_lab

    lab = read_lab(args.root, args.name)
    images = sum(len(files) for files in lab.micrographs.values())
    print(f"{lab.name}: {len(lab.recipes)} samples, {images} micrographs; sheet and folders valid")
    return EXIT_OK


def _label(args: argparse.Namespace) -> int:
    from nanoxtal.recipes.clean import read_shape_classes
    from nanoxtal.recipes.lab import LabelSettings, label_samples, read_lab, read_measured

    lab = read_lab(args.root, args.name)
    samples, summary = read_measured([args.measured / sample for sample in lab.micrographs])
    settings = LabelSettings(args.min_particles, args.min_shape_support)
    labelled, rejects = label_samples(
        lab, samples, summary, read_shape_classes(args.shapes), settings
    )
    with atomic_write(args.out) as partial:
        labelled.to_parquet(partial, index=False)
    with atomic_write(args.rejects) as partial:
        rejects.to_csv(partial, index=False)
    print(
        f"{lab.name}: {len(labelled)} of {len(lab.recipes)} samples labelled into {args.out};"
        f" {rejects['sample'].nunique()} without a label (reasons in {args.rejects})"
    )
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.clean import read_shape_classes
    from nanoxtal.recipes.design import RecipeForest
    from nanoxtal.recipes.lab import check_lab

    registry = Registry(args.registry)
    labelled = pd.read_parquet(args.labelled)
    # The published set alone: a lab's samples are never their own training data here.
    forest = {key: getattr(args, key) for key in ("vocabulary", "trees", "seed", "threads")}
    table, shapes = pd.read_parquet(args.recipes), read_shape_classes(args.shapes)
    model = RecipeForest.fit(
        table, registry, shapes, max_size_nm=args.max_size_nm, model=args.forest, **forest
    )
    if len(labelled):
        check, metrics = check_lab(model.predict(labelled, registry), labelled)
    else:
        check, metrics = pd.DataFrame(), {"samples": 0}
    metrics |= {"trained_on": str(args.recipes), "recipes_trained_on": model.recipes}
    with atomic_write(args.out) as partial:
        check.to_csv(partial, index=False)
    with atomic_write(args.metrics) as partial:
        partial.write_text(json.dumps(metrics, indent=2) + "\n")
    print(", ".join(f"{key} {value}" for key, value in metrics.items()))
    return EXIT_OK


def add_lab_commands(
    verbs: argparse._SubParsersAction,
    registry: argparse.ArgumentParser,
    forests: argparse.ArgumentParser,
) -> None:
    """Register the lab verbs under ``nanoxtal recipes`` (parents: ``--registry``, forests)."""
    example = verbs.add_parser("lab-example", help="write a small example lab to try the loop")
    example.add_argument("--out", type=Path, required=True, help="the lab's folder")
    example.add_argument("--seed", type=int, default=7, help="seed of the micrographs")
    example.set_defaults(func=_example)

    check_sheet = verbs.add_parser("lab-check", help="check a lab's sheet and folders")
    check_sheet.add_argument("root", type=Path, help="the lab's folder")
    check_sheet.add_argument("--name", help="the lab's name (default: its folder's)")
    check_sheet.set_defaults(func=_lab_check)

    label = verbs.add_parser("label", help="a lab's measured samples as labelled recipes")
    label.add_argument("root", type=Path, help="the lab's folder")
    label.add_argument(
        "--measured", type=Path, required=True,
        help="folder of the samples' 'tem measure' outputs, one subfolder per sample",
    )  # fmt: skip
    label.add_argument("--shapes", type=Path, required=True, help="shape_classes.txt")
    label.add_argument("--name", help="the lab's name (default: its folder's)")
    label.add_argument("--out", type=Path, required=True, help="labelled recipes (.parquet)")
    label.add_argument("--rejects", type=Path, required=True, help="samples left out (.csv)")
    label.add_argument("--min-particles", type=int, default=100, help="least measured")
    label.add_argument(
        "--min-shape-support", type=float, default=0.6,
        help="least share of measured particles that support the dominant shape",
    )  # fmt: skip
    label.set_defaults(func=_label)

    check = verbs.add_parser(
        "check", parents=[registry, forests],
        help="train on the published recipes, predict a lab's labelled samples beside their"
        " measurements",
    )  # fmt: skip
    check.add_argument("recipes", type=Path, help="published tidy recipes (.parquet)")
    check.add_argument("labelled", type=Path, help="a lab's labelled recipes (.parquet)")
    check.add_argument("--shapes", type=Path, required=True, help="shape_classes.txt")
    check.add_argument("--forest", choices=("random_forest", "extra_trees"), default="extra_trees")
    check.add_argument("--out", type=Path, required=True, help="check.csv")
    check.add_argument("--metrics", type=Path, required=True, help="check.json")
    check.set_defaults(func=_check)
