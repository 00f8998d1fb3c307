from __future__ import annotations

import pytest

from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.clean import (
    RecipeSheetError,
    assign_roles,
    clean_recipes,
    normalise_name,
    read_shape_classes,
    read_sheet,
)


def test_each_cleaning_rule_rejects_or_repairs_with_the_sheet_row(workbook):
    path, shapes = workbook
    table, rejects, repairs = clean_recipes(
        read_sheet(path), read_shape_classes(shapes), Registry().role_hint
    )
    reasons = dict(zip(rejects["row"], rejects["reason"], strict=True))
    # Sheet rows: header is row 1, so the n-th data row is row n + 1.
    assert set(reasons) == {3, 4, 7, 8}
    assert "size '?'" in reasons[3]
    assert "bowtie" in reasons[4]
    assert "amount -1" in reasons[7]
    assert "900" in reasons[8]
    assert list(table["recipe_id"]) == [2, 5, 6, 9, 10]
    repaired = {(r.row, r.column) for r in repairs.itertuples()}
    assert {(5, "heating rate/℃ min-1"), (5, "Number of statistics")} <= repaired
    assert (6, "additive amount/mmol.7") in repaired
    row5 = table.set_index("recipe_id").loc[5]
    assert row5["heating_rate_c_per_min"] != row5["heating_rate_c_per_min"]  # NaN
    assert row5["particle_count"] is None or str(row5["particle_count"]) == "<NA>"
    assert "NA" in table.set_index("recipe_id").loc[9, "reagents"]
    cdse = table.set_index("recipe_id").loc[10]
    assert (cdse["product"], cdse["phase"], cdse["shape_class"]) == ("CdSe", 1, 1)


def test_roles_follow_chemistry_before_the_precursor_columns():
    roles = assign_roles(
        ["PbO", "OA", "Se", "TOP", "ODE", "mystery"],
        "PbO,OA,ODE",
        "Se,TOP",
        Registry().role_hint,
    )
    # OA dissolves PbO but is a ligand; ODE a solvent even in the cation solution.
    assert roles == ["cation_precursor", "ligand", "anion_precursor", "ligand", "solvent", "other"]


def test_names_are_normalised():
    assert normalise_name("  1，2-Dichlorobenzene ") == "1,2-Dichlorobenzene"
    assert normalise_name("Cu(acac)2\t") == "Cu(acac)2"


def test_a_workbook_without_the_columns_is_named(tmp_path):
    import pandas as pd

    path = tmp_path / "other.xlsx"
    pd.DataFrame({"a": [1]}).to_excel(path, index=False)
    with pytest.raises(RecipeSheetError, match=r"other\.xlsx: missing columns"):
        read_sheet(path)
    (tmp_path / "text.xlsx").write_text("not a workbook")
    with pytest.raises(RecipeSheetError, match="not a readable Excel workbook"):
        read_sheet(tmp_path / "text.xlsx")
