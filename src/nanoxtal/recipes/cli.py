"""``nanoxtal recipes ...``: clean, chemicals, evaluate, importance, train, predict, suggest.

Heavy imports happen inside the commands, so ``nanoxtal --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nanoxtal.arguments import json_object
from nanoxtal.files import atomic_write
from nanoxtal.recipes.lab_cli import add_lab_commands

EXIT_OK = 0
EXIT_FAILED = 1
REFERENCE_PRODUCTS = ("PbSe", "Ag2S", "Ni", "Cs2NaBiCl6")
# Names of evaluate.BASELINES and design.FORESTS, spelled here so that building the parser does
# not import scikit-learn (tests check they agree).
BASELINE_NAMES = ("random_forest", "extra_trees", "gradient_boosting")
FOREST_NAMES = ("random_forest", "extra_trees")
MODEL_NAMES = (*BASELINE_NAMES, "transformer")
# Options of every verb that fits forests on the evaluated recipes (dest = keyword argument).
FOREST_OPTIONS = ("max_size_nm", "vocabulary", "trees", "threads", "seed")


def _clean(args: argparse.Namespace) -> int:
    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.clean import clean_recipes, read_shape_classes, read_sheet

    sheet = read_sheet(args.sheet)
    table, rejects, repairs = clean_recipes(
        sheet, read_shape_classes(args.shapes), Registry(args.registry).role_hint
    )
    with atomic_write(args.out) as partial:
        table.to_parquet(partial, index=False)
    with atomic_write(args.rejects) as partial:
        rejects.to_csv(partial, index=False)
    with atomic_write(args.repairs) as partial:
        repairs.to_csv(partial, index=False)
    print(
        f"{len(table)} of {len(sheet)} recipes kept; {len(rejects)} rejected "
        f"({args.rejects}), {len(repairs)} values repaired ({args.repairs}); wrote {args.out}"
    )
    return EXIT_OK


def _chemicals(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.recipes.chemicals import Registry, coverage_report

    table = pd.read_parquet(args.recipes, columns=["reagents", "product"])
    coverage = coverage_report(table, Registry(args.registry))
    report = coverage.report
    with atomic_write(args.out) as partial:
        partial.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_write(args.table) as partial:
        coverage.names.to_csv(partial, index=False)
    print(
        f"{report['resolved_share']:.2%} of {report['occurrences']} reagent occurrences resolved "
        f"({len(report['unresolved'])} distinct names unresolved); {report['products']} "
        f"products; wrote {args.out}"
    )
    return EXIT_OK


def _forests(args: argparse.Namespace) -> dict[str, object]:
    """The ``forests`` options, named as the library's keyword arguments."""
    return {name: getattr(args, name) for name in FOREST_OPTIONS}


def _evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.clean import read_shape_classes
    from nanoxtal.recipes.ensemble import EnsemblePlan
    from nanoxtal.recipes.evaluate import evaluate_models, write_evaluation_figures
    from nanoxtal.train import TrainerSettings

    shapes = read_shape_classes(args.shapes)
    trainer = TrainerSettings.from_mapping(args.trainer, {"seed": args.seed})
    result = evaluate_models(
        pd.read_parquet(args.recipes),
        Registry(args.registry),
        models=args.models,
        k=args.folds,
        products=args.products,
        augment=args.augment,
        conversions=args.augment_conversions,
        max_variants=args.augment_variants,
        plan=EnsemblePlan(shape_classes=len(shapes), trainer=trainer, **args.transformer),
        work_dir=args.work_dir,
        progress=lambda line: print(line, flush=True),
        **_forests(args),
    )
    if args.augmented is not None:
        with atomic_write(args.augmented) as partial:
            result.augmented.to_parquet(partial, index=False)
    write_evaluation_figures(result.predictions, shapes, args.figures)
    with atomic_write(args.predictions) as partial:
        result.predictions.to_parquet(partial, index=False)
    with atomic_write(args.out) as partial:
        partial.write_text(json.dumps(result.metrics, indent=2) + "\n")
    return EXIT_OK


def _importance(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.importance import recipe_importance, write_importance_figures

    table, registry = pd.read_parquet(args.recipes), Registry(args.registry)
    result = recipe_importance(
        table, registry, args.forest, args.folds, args.repeats, **_forests(args)
    )
    with atomic_write(args.out) as partial:
        result.importances.to_csv(partial, index=False)
    with atomic_write(args.summary) as partial:
        partial.write_text(json.dumps(result.summary, indent=2) + "\n")
    write_importance_figures(result.importances, args.figure)
    print("size importance by role: " + " > ".join(result.summary["size_ranking"]))
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.clean import read_shape_classes
    from nanoxtal.recipes.design import RecipeForest

    # The published recipes and the labelled ones of each lab (``recipes label``).
    table = pd.concat([pd.read_parquet(p) for p in [args.recipes, *args.add]], ignore_index=True)
    registry, shapes = Registry(args.registry), read_shape_classes(args.shapes)
    model = RecipeForest.fit(table, registry, shapes, model=args.forest, **_forests(args))
    model.save(args.out)
    print(f"trained on {model.recipes} recipes up to {model.max_size_nm} nm; wrote {args.out}")
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from nanoxtal.recipes.api import predict, recipe_model, validate_recipes
    from nanoxtal.recipes.chemicals import Registry

    chosen = recipe_model(args.model)
    print(f"model: {chosen.describe}")
    registry = Registry(args.registry)
    checked = validate_recipes(args.recipes, registry)
    for error in checked.errors:
        print(f"nanoxtal: error: {error}", file=sys.stderr)
    if len(checked.table):
        table = predict(checked.table, chosen.model, registry)
        with atomic_write(args.out) as partial:
            table.to_csv(partial, index=False)
    print(f"{len(checked.table)} recipes predicted into {args.out}; {len(checked.errors)} rejected")
    return EXIT_FAILED if checked.errors or checked.table.empty else EXIT_OK


def _suggest(args: argparse.Namespace) -> int:
    from nanoxtal.recipes.api import recipe_model, suggest

    chosen = recipe_model(args.model)
    print(f"model: {chosen.describe}")
    search = {"fix": args.fix, "candidates": args.candidates, "top": args.top, "seed": args.seed}
    table = suggest(
        args.product, args.size, args.shape, chosen.model, args.recipes, args.registry, **search
    )
    with atomic_write(args.out) as partial:
        table.to_csv(partial, index=False)
    best = table.iloc[0]
    print(
        f"{len(table)} suggestions for {args.product} at {args.size} nm in {args.out}; best: "
        f"{best['predicted_size_nm']:.2f} ± {best['predicted_size_std_nm']:.2f} nm, "
        f"{best['predicted_shape']} ({best['reagents']})"
    )
    return EXIT_OK


def add_commands(stages: argparse._SubParsersAction) -> None:
    """Register ``nanoxtal recipes`` and its verbs."""
    recipes = stages.add_parser(
        "recipes",
        help="synthesis recipes: clean, chemicals, evaluate, importance, train, predict, suggest",
    )
    verbs = recipes.add_subparsers(dest="verb", required=True, metavar="VERB")
    # Options shared by several verbs.
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument("--registry", type=Path, help="chemical registry YAML (default: bundled)")
    tidy = argparse.ArgumentParser(add_help=False)
    tidy.add_argument("recipes", type=Path, help="tidy recipes (.parquet)")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", type=Path, help="model .pkl or folder (default: published)")
    forests = argparse.ArgumentParser(add_help=False)  # FOREST_OPTIONS
    forests.add_argument(
        "--max-size", dest="max_size_nm", type=float, default=20.0, help="nm, as the reference"
    )
    forests.add_argument("--vocabulary", type=int, default=60, help="reagents with own column")
    forests.add_argument("--trees", type=int, default=300, help="trees / boosting iterations")
    forests.add_argument("--threads", type=int, default=1)
    forests.add_argument("--seed", type=int, default=42)

    clean = verbs.add_parser("clean", parents=[registry], help="tidy the raw recipe workbook")
    clean.add_argument("sheet", type=Path, help="raw_recipe_dataset.xlsx")
    clean.add_argument("--shapes", type=Path, required=True, help="shape_classes.txt")
    clean.add_argument("--out", type=Path, required=True, help="tidy recipes (.parquet)")
    clean.add_argument("--rejects", type=Path, required=True, help="rejected rows (.csv)")
    clean.add_argument("--repairs", type=Path, required=True, help="repaired values (.csv)")
    clean.set_defaults(func=_clean)

    chemicals = verbs.add_parser(
        "chemicals", parents=[tidy, registry], help="resolve reagents and products; coverage report"
    )
    chemicals.add_argument("--out", type=Path, required=True, help="coverage report (.json)")
    chemicals.add_argument("--table", type=Path, required=True, help="per-name resolution (.csv)")
    chemicals.set_defaults(func=_chemicals)

    evaluate = verbs.add_parser(
        "evaluate", parents=[tidy, registry, forests], help="cross-validated size and shape models"
    )
    evaluate.add_argument("--shapes", type=Path, required=True, help="shape_classes.txt")
    evaluate.add_argument("--out", type=Path, required=True, help="metrics (.json)")
    evaluate.add_argument("--predictions", type=Path, required=True, help="out-of-fold .parquet")
    evaluate.add_argument("--figures", type=Path, required=True, help="folder for figures")
    evaluate.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=["random_forest"])
    evaluate.add_argument("--folds", type=int, default=5)
    evaluate.add_argument("--products", nargs="*", default=list(REFERENCE_PRODUCTS))
    evaluate.add_argument(
        "--augment",
        choices=("none", "on", "compare"),
        default="compare",
        help="reaction-intermediate augmentation of the training folds; compare: with and without",
    )
    evaluate.add_argument(
        "--augment-conversions",
        type=float,
        nargs="+",
        default=[1.0, 0.5],
        help="fractions of the limiting reagent turned into the intermediate",
    )
    evaluate.add_argument(
        "--augment-variants", type=int, default=10, help="augmented rows per recipe, at most"
    )
    evaluate.add_argument("--augmented", type=Path, help="write the augmented rows (.parquet)")
    evaluate.add_argument(
        "--transformer", type=json_object, default={}, help="JSON ensemble settings (EnsemblePlan)"
    )
    evaluate.add_argument("--trainer", type=json_object, default={}, help="JSON trainer settings")
    work = Path("results/recipes/transformer")
    evaluate.add_argument("--work-dir", type=Path, default=work, help="transformer runs' folder")
    evaluate.set_defaults(func=_evaluate)

    importance = verbs.add_parser(
        "importance", parents=[tidy, registry, forests], help="permutation importance of roles"
    )
    importance.add_argument("--forest", choices=FOREST_NAMES, default="extra_trees")
    importance.add_argument("--out", type=Path, required=True, help="importances (.csv)")
    importance.add_argument("--summary", type=Path, required=True, help="rankings (.json)")
    importance.add_argument("--figure", type=Path, required=True, help="bar charts (.png)")
    importance.add_argument("--folds", type=int, default=5)
    importance.add_argument("--repeats", type=int, default=3, help="permutations per fold")
    importance.set_defaults(func=_importance)

    train = verbs.add_parser(
        "train", parents=[tidy, registry, forests], help="train the size/shape model"
    )
    train.add_argument("--forest", choices=FOREST_NAMES, default="extra_trees")
    train.add_argument("--shapes", type=Path, required=True, help="shape_classes.txt")
    train.add_argument("--out", type=Path, required=True, help="model file (.pkl)")
    train.add_argument("--add", type=Path, action="append", default=[], help="labelled .parquet")
    train.set_defaults(func=_train)
    add_lab_commands(verbs, registry, forests)

    predict = verbs.add_parser(
        "predict", parents=[registry, model], help="size and shape of new recipes"
    )
    predict.add_argument(
        "recipes", type=Path, nargs="+", help="recipes (.csv with ';'-separated lists, or .yaml)"
    )
    predict.add_argument("--out", type=Path, required=True, help="predictions (.csv)")
    predict.set_defaults(func=_predict)

    design = verbs.add_parser(
        "suggest", parents=[registry, model], help="recipes predicted to hit a size and shape"
    )
    design.add_argument("--product", required=True, help="product formula, e.g. PbSe")
    design.add_argument("--size", type=float, required=True, help="target mean size (nm)")
    design.add_argument("--shape", help="target shape class, e.g. sphere")
    design.add_argument("--fix", nargs="*", default=[], help="reagents every suggestion uses")
    design.add_argument("--recipes", type=Path, help="tidy recipes to start from (.parquet)")
    design.add_argument("--candidates", type=int, default=2000)
    design.add_argument("--top", type=int, default=10)
    design.add_argument("--seed", type=int, default=42)
    design.add_argument("--out", type=Path, required=True, help="suggestions (.csv)")
    design.set_defaults(func=_suggest)
