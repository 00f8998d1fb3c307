from __future__ import annotations

import json

import pandas as pd

from nanoxtal.cli import main
from nanoxtal.environment import describe


def test_clean_chemicals_evaluate(tmp_path, workbook):
    path, shapes = workbook
    table = tmp_path / "recipes.parquet"
    args = ["recipes", "clean", str(path), "--shapes", str(shapes), "--out", str(table)]
    args += ["--rejects", str(tmp_path / "rej.csv"), "--repairs", str(tmp_path / "rep.csv")]
    assert main(args) == 0
    assert len(pd.read_parquet(table)) == 5
    assert len(pd.read_csv(tmp_path / "rej.csv")) == 4

    report = tmp_path / "chemicals.json"
    args = ["recipes", "chemicals", str(table), "--out", str(report)]
    assert main([*args, "--table", str(tmp_path / "chemicals.csv")]) == 0
    coverage = json.loads(report.read_text())
    assert coverage["resolved_share"] == 1.0 and coverage["unparsable_products"] == []

    # Enough rows to cross-validate: the good recipe with varied temperatures.
    recipes = pd.read_parquet(table)
    many = pd.concat([recipes] * 8, ignore_index=True)
    many["recipe_id"] = range(len(many))
    many["doi"] = [f"d{i % 4}" for i in range(len(many))]
    many["reaction_temperature_c"] = 100 + 5 * many.index
    many["size_nm"] = 2 + 0.2 * many.index
    many.to_parquet(tmp_path / "many.parquet", index=False)
    args = ["recipes", "evaluate", str(tmp_path / "many.parquet"), "--shapes", str(shapes)]
    args += ["--out", str(tmp_path / "m.json"), "--predictions", str(tmp_path / "p.parquet")]
    args += ["--figures", str(tmp_path / "fig"), "--models", "random_forest", "transformer"]
    args += [
        "--folds",
        "2",
        "--work-dir",
        str(tmp_path / "runs"),
        "--trainer",
        '{"accelerator": "cpu"}',
    ]
    args += [
        "--transformer",
        '{"members": 2, "epochs": 1, "arch": {"width": 8, "heads": 2, "layers": 1}}',
    ]
    args += ["--products", "CdSe", "--trees", "10", "--augmented", str(tmp_path / "a.parquet")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["recipes"] == 40  # all sizes up to 9.8 nm
    assert metrics["environment"] == describe()  # the machine it was measured on
    for model in ("random_forest", "random_forest+intermediates", "transformer+intermediates"):
        for key in (f"random/{model}/size_mae_nm", f"doi/{model}/shape_accuracy"):
            assert metrics[key] >= 0
    # PbO + OA and Se + TOP react: 3 subsets x 2 conversions; the recipe with nonanoic acid
    # as well has 7 subsets x 2, capped at 10 (each of the 5 recipes is there 8 times).
    augmented = pd.read_parquet(tmp_path / "a.parquet")
    assert metrics["augmentation"]["augmented_rows"] == len(augmented) == (4 * 6 + 10) * 8
    assert set(augmented["source_id"]) == set(many["recipe_id"][:40])
    assert "product/random_forest/CdSe/size_mae_nm" in metrics
    # The leaky diagnostic runs for forests when intermediates are made, never for the transformer.
    assert metrics["leaky/random_forest/original/size_mae_nm"] >= 0
    assert metrics["leaky/random_forest/all/size_count"] == 40 + len(augmented)
    assert not any(key.startswith("leaky/transformer") for key in metrics)
    assert (tmp_path / "fig" / "parity_random_forest_random.png").is_file()
    assert (tmp_path / "fig" / "shape_confusion_random_forest_doi.png").is_file()


def test_importance_writes_rankings_and_figures(tmp_path, workbook):
    path, shapes = workbook
    table = tmp_path / "recipes.parquet"
    args = ["recipes", "clean", str(path), "--shapes", str(shapes), "--out", str(table)]
    assert (
        main([*args, "--rejects", str(tmp_path / "r.csv"), "--repairs", str(tmp_path / "p.csv")])
        == 0
    )
    recipes = pd.read_parquet(table)
    many = pd.concat([recipes] * 8, ignore_index=True)
    many["recipe_id"] = range(len(many))
    many["reaction_temperature_c"] = 100 + 5 * many.index
    many["size_nm"] = 2 + 0.2 * many.index  # size follows the temperature only
    many.to_parquet(tmp_path / "many.parquet", index=False)
    out, summary, figure = tmp_path / "imp.csv", tmp_path / "imp.json", tmp_path / "imp.png"
    args = ["recipes", "importance", str(tmp_path / "many.parquet"), "--out", str(out)]
    args += ["--summary", str(summary), "--figure", str(figure), "--folds", "2", "--trees", "20"]
    assert main([*args, "--repeats", "1"]) == 0
    rankings = json.loads(summary.read_text())
    assert rankings["size_ranking"][0] == "process"
    assert set(pd.read_csv(out)["kind"]) == {"role", "chemical"}
    assert figure.is_file() and (tmp_path / "imp_shape.png").is_file()
