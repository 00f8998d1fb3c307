"""``nanoxtal recipes ...``: clean, chemicals, evaluate, importance, train, predict, suggest.

Heavy imports happen inside the commands, so ``nanoxtal --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nanoxtal.arguments import json_object
from nanoxtal.environment import describe
from nanoxtal.files import atomic_write

EXIT_OK = 0
EXIT_FAILED = 1
REFERENCE_PRODUCTS = ("PbSe", "Ag2S", "Ni", "Cs2NaBiCl6")
# Names of evaluate.BASELINES and design.FORESTS, spelled here so that building the parser does
# not import scikit-learn (tests check they agree).
BASELINE_NAMES = ("random_forest", "extra_trees", "gradient_boosting")
FOREST_NAMES = ("random_forest", "extra_trees")


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

    from nanoxtal.recipes.chemicals import ChemicalError, Registry, product_formula

    table = pd.read_parquet(args.recipes, columns=["reagents", "product"])
    registry = Registry(args.registry)
    coverage = registry.coverage(name for names in table["reagents"] for name in names)
    unresolved = coverage[coverage["key"].isna()]
    products = []
    for product in sorted(set(table["product"])):
        try:
            products.append({"product": product, "formula": product_formula(product).formula})
        except ChemicalError as error:
            products.append({"product": product, "formula": None, "error": str(error)})
    total = int(coverage["occurrences"].sum())
    report = {
        "distinct_reagents": len(coverage),
        "occurrences": total,
        "resolved_occurrences": total - int(unresolved["occurrences"].sum()),
        "resolved_share": 1.0 - float(unresolved["occurrences"].sum()) / max(1, total),
        "by_kind": coverage.groupby("kind")["occurrences"].sum().astype(int).to_dict(),
        "unresolved": unresolved[["name", "occurrences"]].to_dict("records"),
        "products": len(products),
        "unparsable_products": [p for p in products if p["formula"] is None],
    }
    with atomic_write(args.out) as partial:
        partial.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_write(args.table) as partial:
        coverage.to_csv(partial, index=False)
    print(
        f"{report['resolved_share']:.2%} of {total} reagent occurrences resolved "
        f"({len(unresolved)} distinct names unresolved); {len(products)} products; wrote {args.out}"
    )
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.plots import confusion_figure, parity_figure
    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.clean import read_shape_classes
    from nanoxtal.recipes.ensemble import EnsemblePlan, cross_validate_transformer
    from nanoxtal.recipes.evaluate import cross_validate, leaky_reference, summarise
    from nanoxtal.recipes.featurize import featurize_evaluated
    from nanoxtal.recipes.intermediates import augment, summary
    from nanoxtal.train import TrainerSettings

    shapes = read_shape_classes(args.shapes)
    plan = EnsemblePlan(
        shape_classes=len(shapes),
        trainer=TrainerSettings.from_mapping(args.trainer, {"seed": args.seed}),
        **args.transformer,
    )
    table = pd.read_parquet(args.recipes)
    registry = Registry(args.registry)
    table, featurizer, features = featurize_evaluated(
        table, registry, args.max_size, args.vocabulary
    )
    metrics: dict[str, object] = {
        "recipes": len(table),
        "max_size_nm": args.max_size,
        "folds": args.folds,
        "seed": args.seed,
        "features": len(featurizer.columns),
        "held_out_products": list(args.products),
        "environment": describe(),
    }
    # (label suffix, augmented rows, their features) per training-data variant compared.
    variants: list[tuple[str, pd.DataFrame | None, pd.DataFrame | None]] = []
    if args.augment in ("none", "compare"):
        variants.append(("", None, None))
    if args.augment in ("on", "compare"):
        augmented = augment(
            table, registry, args.augment_conversions, args.augment_variants, args.seed
        )
        metrics["augmentation"] = summary(table, augmented) | {
            "conversions": list(args.augment_conversions),
            "max_variants": args.augment_variants,
        }
        print(
            f"intermediates: {len(augmented)} augmented rows from "
            f"{augmented['source_id'].nunique()} recipes "
            f"(expansion {metrics['augmentation']['expansion_factor']:.2f}x)"
        )
        variants.append(("+intermediates", augmented, featurizer.transform(augmented)))
    else:
        augmented = table.iloc[:0].assign(source_id=[], reactions=[])  # none: an empty table
    if args.augmented is not None:
        with atomic_write(args.augmented) as partial:
            augmented.to_parquet(partial, index=False)
    predictions = []
    figures = Path(args.figures)
    for model in args.models:
        for suffix, extra, extra_features in variants:
            label = f"{model}{suffix}"
            for protocol in ("random", "doi", "product"):
                if model == "transformer":
                    result = cross_validate_transformer(
                        table,
                        protocol,
                        args.work_dir / label,
                        plan,
                        args.folds,
                        args.seed,
                        args.products,
                        registry,
                        extra,
                        args.threads,
                    )
                else:
                    result = cross_validate(
                        table,
                        features,
                        protocol,
                        model,
                        args.folds,
                        args.seed,
                        args.products,
                        args.threads,
                        args.trees,
                        extra,
                        extra_features,
                    )
                result.insert(0, "model", label)
                result.insert(1, "protocol", protocol)
                predictions.append(result)
                scores = summarise(result, by_fold=protocol == "product")
                if protocol != "product":
                    scores |= summarise(result)
                metrics |= {f"{protocol}/{label}/{key}": value for key, value in scores.items()}
                print(
                    f"{label} {protocol}: "
                    + ", ".join(
                        f"{k} {v:.3f}"
                        for k, v in scores.items()
                        if k.endswith(("mae_nm", "accuracy"))
                    ),
                    flush=True,
                )
                if protocol != "product":
                    parity_figure(
                        result["size_nm"],
                        result["predicted_size_nm"],
                        f"{label}, {protocol} {args.folds}-fold",
                        figures / f"parity_{label}_{protocol}.png",
                    )
                    confusion_figure(
                        _confusion(result, len(shapes)),
                        shapes,
                        f"shape, {label}, {protocol} {args.folds}-fold",
                        figures / f"shape_confusion_{label}_{protocol}.png",
                    )
            if extra is not None and model != "transformer":
                # The reference's figures are reproduced by this leaky protocol, not by ours.
                pooled = leaky_reference(
                    table,
                    features,
                    extra,
                    extra_features,
                    model,
                    args.folds,
                    args.seed,
                    args.threads,
                    args.trees,
                )
                for rows, scores in (
                    ("original", summarise(pooled[pooled["original"]])),
                    ("all", summarise(pooled)),
                ):
                    metrics |= {f"leaky/{model}/{rows}/{k}": v for k, v in scores.items()}
                print(
                    f"{model} leaky (augmented before the split, diagnostic): "
                    + ", ".join(
                        f"{k} {metrics[f'leaky/{model}/original/{k}']:.3f}"
                        for k in ("size_mae_nm", "shape_accuracy")
                    ),
                    flush=True,
                )
    with atomic_write(args.predictions) as partial:
        pd.concat(predictions, ignore_index=True).to_parquet(partial, index=False)
    with atomic_write(args.out) as partial:
        partial.write_text(json.dumps(metrics, indent=2) + "\n")
    return EXIT_OK


def _importance(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from nanoxtal.plots import importance_figure
    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.featurize import featurize_evaluated
    from nanoxtal.recipes.importance import (
        chemical_groups,
        column_groups,
        permutation_importance,
        role_ranking,
    )

    table = pd.read_parquet(args.recipes)
    registry = Registry(args.registry)
    table, featurizer, features = featurize_evaluated(
        table, registry, args.max_size, args.vocabulary
    )
    settings = {
        "model": args.forest,
        "k": args.folds,
        "repeats": args.repeats,
        "seed": args.seed,
        "threads": args.threads,
        "trees": args.trees,
    }
    roles = column_groups(featurizer.columns, registry)
    # One set of forests per fold scores both groupings (no chemical is named like a role).
    result = permutation_importance(
        table, features, roles | chemical_groups(featurizer.columns), **settings
    )
    result["kind"] = np.where(result["group"].isin(list(roles)), "role", "chemical")
    chemicals = result[result["kind"] == "chemical"]
    roles = result[result["kind"] == "role"]
    with atomic_write(args.out) as partial:
        result.to_csv(partial, index=False)
    summary = {
        "recipes": len(table),
        "protocol": f"random {args.folds}-fold, permutation repeats {args.repeats}",
        "seed": args.seed,
        "size_ranking": role_ranking(roles, "size_mae_increase_nm"),
        "shape_ranking": role_ranking(roles, "shape_accuracy_drop"),
        "reference_ranking": ["composition", "precursor/ligand", "solvent"],
        "top_chemicals_size": chemicals["group"].head(10).tolist(),
    }
    with atomic_write(args.summary) as partial:
        partial.write_text(json.dumps(summary, indent=2) + "\n")
    shape_figure = args.figure.with_name(f"{args.figure.stem}_shape{args.figure.suffix}")
    for metric, label, path in (
        ("size_mae_increase_nm", "size MAE increase (nm)", args.figure),
        ("shape_accuracy_drop", "shape accuracy drop", shape_figure),
    ):
        top = chemicals.sort_values(metric, ascending=False).head(15)
        importance_figure(
            [
                ("by role", roles["group"].tolist(), roles[metric], roles[f"{metric}_std"]),
                ("by chemical (top 15)", top["group"].tolist(), top[metric], top[f"{metric}_std"]),
            ],
            label,
            path,
        )
    print("size importance by role: " + " > ".join(summary["size_ranking"]))
    return EXIT_OK


DEFAULT_MODEL = Path("results/recipes/models/forest.pkl")


def _train(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.clean import read_shape_classes
    from nanoxtal.recipes.design import RecipeForest

    model = RecipeForest.fit(
        pd.read_parquet(args.recipes),
        Registry(args.registry),
        read_shape_classes(args.shapes),
        args.vocabulary,
        args.trees,
        args.seed,
        args.threads,
        args.max_size,
        args.forest,
    )
    model.save(args.out)
    print(f"trained on {model.recipes} recipes up to {model.max_size_nm} nm; wrote {args.out}")
    return EXIT_OK


def _load_model(path: Path):
    from nanoxtal.recipes.design import RecipeForest

    if not path.is_file():
        raise SystemExit(
            f"nanoxtal: error: model {path} not found: run `snakemake --cores 2 {DEFAULT_MODEL}` "
            "or give --model"
        )
    return RecipeForest.load(path)


def _predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.design import RecipeInputError, read_recipes, validate_recipe

    model = _load_model(args.model)
    registry = Registry(args.registry)
    valid, failed = [], 0
    for path in args.recipes:
        try:
            records = read_recipes(path)
        except RecipeInputError as error:
            print(f"nanoxtal: error: {error}", file=sys.stderr)
            failed += 1
            continue
        for number, record in enumerate(records, start=1):
            try:
                valid.append(validate_recipe(record, f"{path} recipe {number}", registry))
            except RecipeInputError as error:
                print(f"nanoxtal: error: {error}", file=sys.stderr)
                failed += 1
    if valid:
        table = model.predict(pd.DataFrame(valid), registry)
        with atomic_write(args.out) as partial:
            table.to_csv(partial, index=False)
    print(f"{len(valid)} recipes predicted into {args.out}; {failed} rejected")
    return EXIT_FAILED if failed or not valid else EXIT_OK


def _suggest(args: argparse.Namespace) -> int:
    import pandas as pd

    from nanoxtal.recipes.chemicals import Registry
    from nanoxtal.recipes.design import suggest

    model = _load_model(args.model)
    try:
        table = suggest(
            model,
            pd.read_parquet(args.recipes),
            Registry(args.registry),
            args.product,
            args.size,
            args.shape,
            args.fix,
            args.candidates,
            args.top,
            args.seed,
        )
    except ValueError as error:
        print(f"nanoxtal: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    with atomic_write(args.out) as partial:
        table.to_csv(partial, index=False)
    best = table.iloc[0]
    print(
        f"{len(table)} suggestions for {args.product} at {args.size} nm in {args.out}; best: "
        f"{best['predicted_size_nm']:.2f} ± {best['predicted_size_std_nm']:.2f} nm, "
        f"{best['predicted_shape']} ({best['reagents']})"
    )
    return EXIT_OK


def _confusion(result, classes: int):
    import numpy as np

    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (result["shape_class"], result["predicted_shape_class"]), 1)
    return matrix


def add_commands(stages: argparse._SubParsersAction) -> None:
    """Register ``nanoxtal recipes`` and its verbs."""
    recipes = stages.add_parser(
        "recipes",
        help="synthesis recipes: clean, chemicals, evaluate, importance, train, predict, suggest",
    )
    verbs = recipes.add_subparsers(dest="verb", required=True, metavar="VERB")
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument(
        "--registry", type=Path, help="chemical registry .yaml (default: the package's)"
    )

    # Options of every verb that fits forests on the evaluated recipes.
    forests = argparse.ArgumentParser(add_help=False)
    forests.add_argument("--max-size", type=float, default=20.0, help="nm, as the reference")
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
        "chemicals", parents=[registry], help="resolve reagents and products; coverage report"
    )
    chemicals.add_argument("recipes", type=Path, help="tidy recipes (.parquet)")
    chemicals.add_argument("--out", type=Path, required=True, help="coverage report (.json)")
    chemicals.add_argument("--table", type=Path, required=True, help="per-name resolution (.csv)")
    chemicals.set_defaults(func=_chemicals)

    evaluate = verbs.add_parser(
        "evaluate", parents=[registry, forests], help="cross-validated size and shape models"
    )
    evaluate.add_argument("recipes", type=Path, help="tidy recipes (.parquet)")
    evaluate.add_argument("--shapes", type=Path, required=True, help="shape_classes.txt")
    evaluate.add_argument("--out", type=Path, required=True, help="metrics (.json)")
    evaluate.add_argument("--predictions", type=Path, required=True, help="out-of-fold .parquet")
    evaluate.add_argument("--figures", type=Path, required=True, help="folder for figures")
    evaluate.add_argument(
        "--models",
        nargs="+",
        choices=(*BASELINE_NAMES, "transformer"),
        default=["random_forest"],
    )
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
        "--transformer",
        type=json_object,
        default={},
        help="JSON of transformer settings (members, epochs, batch_size, arch, lr, ...)",
    )
    evaluate.add_argument(
        "--trainer", type=json_object, default={}, help="JSON of trainer settings (accelerator...)"
    )
    evaluate.add_argument(
        "--work-dir",
        type=Path,
        default=Path("results/recipes/transformer"),
        help="folder of the transformer runs (checkpoints, logs)",
    )
    evaluate.set_defaults(func=_evaluate)

    importance = verbs.add_parser(
        "importance",
        parents=[registry, forests],
        help="permutation importance by role and chemical",
    )
    importance.add_argument("recipes", type=Path, help="tidy recipes (.parquet)")
    importance.add_argument("--forest", choices=FOREST_NAMES, default="extra_trees")
    importance.add_argument("--out", type=Path, required=True, help="importances (.csv)")
    importance.add_argument("--summary", type=Path, required=True, help="rankings (.json)")
    importance.add_argument("--figure", type=Path, required=True, help="bar charts (.png)")
    importance.add_argument("--folds", type=int, default=5)
    importance.add_argument("--repeats", type=int, default=3, help="permutations per fold")
    importance.set_defaults(func=_importance)

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="trained recipe model")

    train = verbs.add_parser(
        "train", parents=[registry, forests], help="train the size/shape model"
    )
    train.add_argument("recipes", type=Path, help="tidy recipes (.parquet)")
    train.add_argument("--forest", choices=FOREST_NAMES, default="extra_trees")
    train.add_argument("--shapes", type=Path, required=True, help="shape_classes.txt")
    train.add_argument("--out", type=Path, required=True, help="model file (.pkl)")
    train.set_defaults(func=_train)

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
    design.add_argument(
        "--recipes",
        type=Path,
        default=Path("results/recipes/recipes.parquet"),
        help="tidy recipes the search starts from",
    )
    design.add_argument("--candidates", type=int, default=2000)
    design.add_argument("--top", type=int, default=10)
    design.add_argument("--seed", type=int, default=42)
    design.add_argument("--out", type=Path, required=True, help="suggestions (.csv)")
    design.set_defaults(func=_suggest)
