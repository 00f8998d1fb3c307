"""Tidy the raw recipe sheet: one row per recipe, reagents as lists, every change recorded.

Input: ``raw_recipe_dataset.xlsx`` (Gu et al., arXiv 2412.10838), sheet 0: precursor columns,
product, temperatures (°C), time (min), up to ten (amount in mmol, reagent) pairs, mean size
(nm), size distribution (%), shape, particle count, DOI, heating rate (°C/min). Rows that cannot
be used go to the rejects with the reason; values that were repaired (unknown markers turned
into missing values, orphan amounts dropped) go to the repairs. Row numbers are the sheet's
(header = row 1), so a chemist can find them in Excel.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SHEET_COLUMNS = {
    "cationic precursor": "cation_solution",
    "anionic precursor": "anion_solution",
    "Nanocrystal Composition": "product",
    "injection temperature/℃": "injection_temperature_c",
    "reaction temperature/℃": "reaction_temperature_c",
    "reaction time/min": "time_min",
    "D/nm": "size_nm",
    "Size distribution/%": "size_distribution_pct",
    "shape": "shape",
    "Number of statistics": "particle_count",
    "DOI": "doi",
    "Using Segmentation Models/Y or N": "segmentation",
    "heating rate/℃ min-1": "heating_rate_c_per_min",
}
MAX_REAGENTS = 10
# Plausible ranges of colloidal syntheses; outside them a value is a typo or a unit slip.
TEMPERATURE_RANGE_C = (-80.0, 450.0)
TIME_RANGE_MIN = (0.0, 60.0 * 24 * 30)
ROLES = ("cation_precursor", "anion_precursor", "ligand", "solvent", "reducing_agent", "other")
TIDY_COLUMNS = (
    "recipe_id",
    "product",
    "phase",
    "injection_temperature_c",
    "reaction_temperature_c",
    "heating_rate_c_per_min",
    "time_min",
    "reagents",
    "amounts_mmol",
    "roles",
    "size_nm",
    "size_distribution_pct",
    "shape",
    "shape_class",
    "particle_count",
    "doi",
    "segmentation",
)


class RecipeSheetError(ValueError):
    """The sheet itself cannot be read (missing columns, not a workbook)."""


def normalise_name(name: object) -> str:
    """A reagent or product name with whitespace collapsed and full-width punctuation made ASCII."""
    text = str(name).translate(str.maketrans({"，": ",", "（": "(", "）": ")", "－": "-"}))
    return " ".join(text.split())


def read_shape_classes(path: Path | str) -> list[str]:
    """The shape classes, one per line, in file order (index = class label)."""
    classes = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(set(classes)) != len(classes):
        raise RecipeSheetError(f"{path}: repeated shape class")
    return classes


def read_sheet(path: Path | str) -> pd.DataFrame:
    """The first sheet of the raw recipe workbook, checked for the expected columns.

    Raises:
        RecipeSheetError: The file is not a readable workbook or lacks columns.
    """
    try:
        # "NA" is a reagent here (nonanoic acid), not a missing value: only blanks are missing.
        sheet = pd.read_excel(path, sheet_name=0, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, KeyError) as error:
        raise RecipeSheetError(f"{path}: not a readable Excel workbook ({error})") from error
    expected = [*SHEET_COLUMNS, *pair_columns()[0], *pair_columns()[1]]
    missing = [c for c in expected if c not in sheet.columns]
    if missing:
        raise RecipeSheetError(f"{path}: missing columns {missing}")
    return sheet


def pair_columns() -> tuple[list[str], list[str]]:
    """The sheet's amount and reagent columns, pair by pair."""
    suffix = ["" if i == 0 else f".{i}" for i in range(MAX_REAGENTS)]
    return [f"additive amount/mmol{s}" for s in suffix], [f"reactants{s}" for s in suffix]


@dataclass
class Log:
    """Rejected rows and repaired values, each with its sheet row and a reason."""

    rejects: list[dict] = field(default_factory=list)
    repairs: list[dict] = field(default_factory=list)

    def reject(self, row: int, reason: str) -> None:
        """Record that sheet row ``row`` is not used, and why."""
        self.rejects.append({"row": row, "reason": reason})

    def repair(self, row: int, column: str, value: object, action: str) -> None:
        """Record that ``value`` in ``column`` of sheet row ``row`` was changed by ``action``."""
        self.repairs.append({"row": row, "column": column, "value": str(value), "action": action})


def _number(value: object) -> float | None:
    """A finite number, or ``None`` for blanks and markers such as '?', '？', 'bs', '*'."""
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return float(number) if np.isfinite(number) else None


def _optional_number(row: int, column: str, value: object, log: Log) -> float | None:
    """A number that may be unknown; an unknown marker is logged as a repair to missing."""
    number = _number(value)
    if number is None and not (isinstance(value, float) and np.isnan(value)):
        log.repair(row, column, value, "unknown marker: set missing")
    return number


def _within(value: float | None, bounds: tuple[float, float]) -> bool:
    return value is not None and bounds[0] <= value <= bounds[1]


def _split_phase(product: str) -> tuple[str, int]:
    """'CdSe-1' → ('CdSe', 1): the data marks polymorph variants with a numeric suffix."""
    match = re.fullmatch(r"(.+?)-(\d+)", product)
    return (match[1], int(match[2])) if match else (product, 0)


def _reagents(record: pd.Series, row: int, log: Log) -> tuple[list[str], list[float]] | None:
    """Reagent names and amounts (mmol) of one row; ``None`` (logged) when unusable."""
    names, amounts = [], []
    for amount_column, name_column in zip(*pair_columns(), strict=True):
        name, amount = record[name_column], record[amount_column]
        if pd.isna(name) or not str(name).strip():
            if not pd.isna(amount):
                log.repair(row, amount_column, amount, "amount without a reagent: dropped")
            continue
        value = _number(amount)
        if value is None or value < 0:
            log.reject(row, f"{name_column} {normalise_name(name)!r}: amount {amount!r} unusable")
            return None
        names.append(normalise_name(name))
        amounts.append(value)
    if not names:
        log.reject(row, "no reagents")
        return None
    return names, amounts


def assign_roles(
    names: list[str],
    cation_solution: object,
    anion_solution: object,
    role_hint: Callable[[str], str | None],
) -> list[str]:
    """Role of each reagent in a recipe.

    Ligands, solvents and reducing agents keep their chemical role (the registry's hint) even
    when listed in a precursor solution (e.g. "PbO,OA,OLA": OA and OLA dissolve PbO but are
    ligands). Otherwise the precursor columns decide; a reagent in neither is ``other``.

    Args:
        names: Normalised reagent names of the recipe.
        cation_solution: The sheet's cationic-precursor cell (comma-separated names).
        anion_solution: The sheet's anionic-precursor cell.
        role_hint: Chemical role of a name from the chemical registry, ``None`` if unknown.
    """
    cations = {normalise_name(n) for n in str(cation_solution).split(",")}
    anions = {normalise_name(n) for n in str(anion_solution).split(",")}
    roles = []
    for name in names:
        hint = role_hint(name)
        if hint in ("ligand", "solvent", "reducing_agent"):
            roles.append(hint)
        elif name in cations:
            roles.append("cation_precursor")
        elif name in anions:
            roles.append("anion_precursor")
        else:
            roles.append(hint if hint in ROLES else "other")
    return roles


def _clean_row(
    record: pd.Series,
    row: int,
    shape_classes: list[str],
    role_hint: Callable[[str], str | None],
    log: Log,
) -> dict | None:
    size = _number(record["D/nm"])
    if size is None or size <= 0:
        log.reject(row, f"size {record['D/nm']!r} is not a positive number")
        return None
    shape = " ".join(str(record["shape"]).split())
    if shape not in shape_classes:
        log.reject(row, f"shape {record['shape']!r} is not one of the {len(shape_classes)} classes")
        return None
    temperatures = {}
    for column in ("injection temperature/℃", "reaction temperature/℃"):
        value = _number(record[column])
        if not _within(value, TEMPERATURE_RANGE_C):
            log.reject(row, f"{column} {record[column]!r} outside {TEMPERATURE_RANGE_C} °C")
            return None
        temperatures[SHEET_COLUMNS[column]] = value
    time = _number(record["reaction time/min"])
    if not _within(time, TIME_RANGE_MIN) or time == 0:
        log.reject(row, f"reaction time {record['reaction time/min']!r} min is not plausible")
        return None
    product = normalise_name(record["Nanocrystal Composition"])
    if not product or product == "nan":
        log.reject(row, "no product composition")
        return None
    reagents = _reagents(record, row, log)
    if reagents is None:
        return None
    names, amounts = reagents
    count = _optional_number(row, "Number of statistics", record["Number of statistics"], log)
    formula, phase = _split_phase(product)
    return {
        "recipe_id": row,
        "product": formula,
        "phase": phase,
        **temperatures,
        "heating_rate_c_per_min": _optional_number(
            row, "heating rate/℃ min-1", record["heating rate/℃ min-1"], log
        ),
        "time_min": time,
        "reagents": names,
        "amounts_mmol": amounts,
        "roles": assign_roles(
            names, record["cationic precursor"], record["anionic precursor"], role_hint
        ),
        "size_nm": size,
        "size_distribution_pct": _optional_number(
            row, "Size distribution/%", record["Size distribution/%"], log
        ),
        "shape": shape,
        "shape_class": shape_classes.index(shape),
        "particle_count": count,
        "doi": normalise_name(record["DOI"]),
        "segmentation": str(record["Using Segmentation Models/Y or N"]).strip().upper() == "Y",
    }


def clean_recipes(
    sheet: pd.DataFrame,
    shape_classes: list[str],
    role_hint: Callable[[str], str | None],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tidy recipes from the raw sheet.

    Args:
        sheet: The raw sheet (``read_sheet``).
        shape_classes: The shape classes (``read_shape_classes``).
        role_hint: Chemical role of a reagent name (e.g. ``Registry.role_hint``).

    Returns:
        The tidy table (``TIDY_COLUMNS``), the rejects (``row``, ``reason``) and the repairs
        (``row``, ``column``, ``value``, ``action``).
    """
    log = Log()
    rows = []
    for index, record in sheet.iterrows():
        cleaned = _clean_row(record, int(index) + 2, shape_classes, role_hint, log)
        if cleaned is not None:
            rows.append(cleaned)
    table = pd.DataFrame(rows, columns=list(TIDY_COLUMNS))
    table["particle_count"] = table["particle_count"].astype("Int64")
    return (
        table,
        pd.DataFrame(log.rejects, columns=["row", "reason"]),
        pd.DataFrame(log.repairs, columns=["row", "column", "value", "action"]),
    )
