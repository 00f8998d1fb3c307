"""A small raw recipe workbook written in the layout of raw_recipe_dataset.xlsx."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nanoxtal.recipes.clean import SHEET_COLUMNS, pair_columns

SHAPES = ["Irregular shape", "cube", "sphere"]


def sheet_row(**changes) -> dict:
    """One good PbSe recipe row (hot injection), with ``changes`` applied (sheet column names)."""
    amounts, names = pair_columns()
    row = dict.fromkeys([*SHEET_COLUMNS, *amounts, *names], np.nan)
    row |= {
        "cationic precursor": "PbO,OA,ODE",
        "anionic precursor": "Se,TOP",
        "Nanocrystal Composition": "PbSe",
        "injection temperature/℃": 150.0,
        "reaction temperature/℃": 140.0,
        "reaction time/min": 5.0,
        "D/nm": 6.0,
        "Size distribution/%": 7.5,
        "shape": "sphere",
        "Number of statistics": 500,
        "DOI": "10.1000/a",
        "Using Segmentation Models/Y or N": "Y",
        "heating rate/℃ min-1": 0,
    }
    for i, (name, amount) in enumerate(
        [("PbO", 2.0), ("Se", 2.0), ("OA", 6.0), ("ODE", 30.0), ("TOP", 4.0)]
    ):
        row[names[i]], row[amounts[i]] = name, amount
    row.update(changes)
    return row


@pytest.fixture
def workbook(tmp_path):
    """Path to a workbook with good rows and one row per cleaning rule, and the shape file."""
    amounts, names = pair_columns()
    rows = [
        sheet_row(),
        sheet_row(**{"D/nm": "?"}),  # reject: no size
        sheet_row(shape="bowtie"),  # reject: unknown shape
        sheet_row(**{"heating rate/℃ min-1": "？", "Number of statistics": "*"}),  # repairs
        sheet_row(**{amounts[7]: 1.5}),  # repair: amount without reagent
        sheet_row(**{amounts[0]: -1.0}),  # reject: negative amount
        sheet_row(**{"reaction temperature/℃": 900.0}),  # reject: implausible temperature
        sheet_row(**{names[5]: "NA", amounts[5]: 1.0}),  # nonanoic acid, not a missing value
        sheet_row(**{"Nanocrystal Composition": "CdSe-1", "D/nm": 3.0, "shape": "cube"}),
    ]
    path = tmp_path / "raw.xlsx"
    pd.DataFrame(rows).to_excel(path, index=False)
    shapes = tmp_path / "shapes.txt"
    shapes.write_text("\n".join(SHAPES) + "\n")
    return path, shapes
