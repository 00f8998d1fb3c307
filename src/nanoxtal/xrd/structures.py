"""Crystal structures for XRD: read, symmetrize, label, split by formula.

Structures come from several sources (databases), each named: Materials Project CIFs in P1
and AMCSD mineral CIFs in their published settings by default. Symmetry is either *detected*
(spglib through pymatgen's ``SpacegroupAnalyzer`` at a given tolerance; the structure is kept as
its conventional standard cell) or *published* (a source whose CIFs carry their space group and
symmetry operations, read by ``nanoxtal.xrd.cif``; the structure stays in its published
setting). Every structure is labelled with its space group (ITA number 1-230) and crystal system
(0 triclinic ... 6 cubic). Partially occupied sites are kept (minerals are solid solutions): a
site holding several elements is stored as one entry per element at the same position, each
with its occupancy, which is what the structure factor sums. Structures that cannot be used are
returned as rejects with the reason, never dropped silently; so is a phase that a preferred
source also holds (``drop_duplicate_phases``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pymatgen.analysis.diffraction.xrd import ATOMIC_SCATTERING_PARAMS
from pymatgen.core import Structure
from pymatgen.io.cif import CifParser
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from pyxtal import pyxtal as PyXtal
from pyxtal.msg import Comp_CompatibilityError
from pyxtal.symmetry import Group
from tqdm.auto import tqdm

from nanoxtal.xrd.cif import CifError, read_cif, read_cif_sites
from nanoxtal.xrd.diffraction import SimulationError, SiteArrays, site_arrays

CRYSTAL_SYSTEMS = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "trigonal",
    "hexagonal",
    "cubic",
)
# First space group number of each crystal system (International Tables Vol. A).
_FIRST_SPACE_GROUP = np.array([1, 3, 16, 75, 143, 168, 195])
SPLITS = ("train", "val", "test")
TABLE_COLUMNS = (
    "id",
    "formula",
    "space_group",
    "crystal_system",
    "split",
    "n_sites",
    "lattice",
    "species",
    "frac_coords",
    "occupancy",
    "source",
    "mineral",
)
# How a source's symmetry is known: detected by spglib, or as its CIFs publish it.
SYMMETRY_MODES = ("detected", "published")
# Two entries of different sources are one phase when their reduced formula and space group are
# equal and their reduced cells agree this closely (relative: edges and volume per atom).
DUPLICATE_LATTICE_TOLERANCE = 0.03
# The ``source`` of the random crystals that fill rare space groups.
RANDOM_SOURCE = "random"


class StructureError(ValueError):
    """A structure cannot be used; the message says why."""


def crystal_system(space_group: int) -> int:
    """Crystal system index (0 triclinic ... 6 cubic) of a space group number (1-230)."""
    if not 1 <= space_group <= 230:
        raise ValueError(f"space group number must be 1-230, got {space_group}")
    return int(np.searchsorted(_FIRST_SPACE_GROUP, space_group, side="right") - 1)


@dataclass(frozen=True)
class Source:
    """One structure as read, before symmetry analysis.

    Attributes:
        id: Identifier (``mp-…``, ``amcsd-0000789``, or file name and row).
        cif: CIF text, or ``None`` when ``error`` says why it could not be read.
        error: Why the entry could not be read, else ``None``.
        database: Name of the source it came from (``materials_project``, ``amcsd``…).
        mineral: Mineral name, where the source gives one.
    """

    id: str
    cif: str | None
    error: str | None = None
    database: str = "file"
    mineral: str | None = None


def _sources_from_csv(path: Path, database: str) -> Iterator[Source]:
    try:
        # Ids such as AMCSD's 7 digits keep their leading zeros.
        table = pd.read_csv(path, dtype={"amcsd_id": str, "material_id": str, "id": str})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        yield Source(str(path), None, f"unreadable table: {error}", database)
        return
    if "cif" not in table.columns:
        message = f"no 'cif' column (columns: {list(table.columns)})"
        yield Source(str(path), None, message, database)
        return
    default_ids = [f"{path.name}:{i}" for i in range(len(table))]
    yield from sources_from_table(table, default_ids, database)


def _table_ids(table: pd.DataFrame, default_ids: Sequence[str]) -> list[str]:
    """Row ids that say where each structure came from (``mp-…``, ``amcsd-0000789``)."""
    if "amcsd_id" in table.columns:
        return [f"amcsd-{str(i).zfill(7)}" for i in table["amcsd_id"]]
    ids = next((table[c] for c in ("material_id", "id") if c in table.columns), None)
    return list(ids.astype(str)) if ids is not None else list(default_ids)


def sources_from_table(
    table: pd.DataFrame, default_ids: Sequence[str], database: str = "file"
) -> Iterator[Source]:
    """Structures of a table with a ``cif`` column.

    Rows are named by ``amcsd_id`` (as ``amcsd-0000789``), ``material_id`` or ``id``, and
    carry the ``mineral`` column where there is one.

    Args:
        table: One structure per row; a ``cif`` column of CIF texts.
        default_ids: The names of the rows when the table has no id column.
        database: Name of the source the table comes from.
    """
    ids = _table_ids(table, default_ids)
    minerals = table["mineral"] if "mineral" in table.columns else [None] * len(table)
    for entry_id, cif, mineral in zip(ids, table["cif"], minerals, strict=True):
        name = mineral if isinstance(mineral, str) and mineral.strip() else None
        if isinstance(cif, str) and cif.strip():
            yield Source(entry_id, cif, None, database, name)
        else:
            yield Source(entry_id, None, "empty CIF", database, name)


def _sources_from_cif(path: Path, database: str) -> Iterator[Source]:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        yield Source(str(path), None, f"unreadable file: {error}", database)
        return
    yield Source(path.stem, text, None, database)


def read_sources(paths: Iterable[Path | str], database: str = "file") -> Iterator[Source]:
    """Structures from CIF files, folders of CIF files, and CSV(.gz) tables with a ``cif`` column.

    Unreadable inputs are yielded as sources with an ``error``; the rest go on.

    Args:
        paths: The files and folders.
        database: Name of the source they form (the table's ``source`` column).
    """
    for path in map(Path, paths):
        if not path.exists():
            yield Source(str(path), None, "no such file or folder", database)
        elif path.is_dir():
            for cif in sorted(path.rglob("*.cif")):
                yield from _sources_from_cif(cif, database)
        elif path.name.endswith((".csv", ".csv.gz")):
            yield from _sources_from_csv(path, database)
        elif path.suffix.lower() == ".cif":
            yield from _sources_from_cif(path, database)
        else:
            message = "not a CIF file, folder of CIFs or CSV with a cif column"
            yield Source(str(path), None, message, database)


def parse_cif(text: str) -> Structure:
    """The first structure of a CIF text, as written (no reduction).

    Raises:
        StructureError: If pymatgen cannot build a structure from it.
    """
    with warnings.catch_warnings():
        # pymatgen warns about rounding coordinates to ideal values: harmless, and noisy.
        warnings.simplefilter("ignore")
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False)
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise StructureError(f"invalid CIF: {error}") from error
    if not structures:
        raise StructureError("invalid CIF: no structure in it")
    return structures[0]


# What ``simulation_inputs`` reads: structures, paths, or a table of either kind.
StructureInput = Structure | Path | str | pd.DataFrame
StructureInputs = StructureInput | Sequence[StructureInput] | Mapping[str, Structure]
# A structure ready for ``stick_pattern``, or the reason there is none.
Simulable = Structure | SiteArrays | str
SITE_COLUMNS = ("id", "lattice", "species", "frac_coords")  # and "occupancy" where disordered


def simulation_inputs(structures: StructureInputs) -> Iterator[tuple[str, Simulable]]:
    """Every structure of the inputs, ready to simulate, or the reason it cannot be.

    ``simulation_items(simulation_sources(structures))``: the two halves let processes share
    the reading of CIFs (``nanoxtal.xrd.api.read_and_simulate``).

    Args:
        structures: A pymatgen ``Structure``; a path (CIF file, folder of CIFs, CSV(.gz) with
            a ``cif`` column, or a structure table ``.parquet``); a DataFrame with a ``cif``
            column or with the structure table's ``id, lattice, species, frac_coords``; a
            dict of id -> ``Structure``; or a list of structures and paths.

    Yields:
        (id, item): ``item`` is a ``SiteArrays`` (structure tables, and CIFs read by the fast
        reader: no pymatgen object is built), a ``Structure`` (given as such, or a CIF only
        pymatgen could read) or, for an input that cannot be used, the reason as a string.
        A ``Structure`` given as such is named by its reduced formula, repeats by a ``_2``,
        ``_3``... suffix in order; CSV rows without an id column by ``<file>:<row>``,
        DataFrame rows by their index.

    Raises:
        OSError: A structure table ``.parquet`` that cannot be read.
    """
    return simulation_items(simulation_sources(structures))


def simulation_sources(structures: StructureInputs) -> Iterator[tuple[str, Source | Simulable]]:
    """The inputs of ``simulation_inputs``, with CIF texts not yet read (as ``Source``)."""
    if isinstance(structures, Mapping):
        yield from ((str(key), value) for key, value in structures.items())
        return
    items = (
        [structures]
        if isinstance(structures, Structure | Path | str | pd.DataFrame)
        else list(structures)
    )
    seen: dict[str, int] = {}
    for item in items:
        if isinstance(item, Structure):
            formula = item.composition.reduced_formula
            seen[formula] = seen.get(formula, 0) + 1
            yield (formula if seen[formula] == 1 else f"{formula}_{seen[formula]}"), item
        elif isinstance(item, pd.DataFrame):
            yield from _table_inputs(item)
        elif Path(item).suffix == ".parquet":
            yield from _table_inputs(_read_site_columns(item))
        else:
            yield from ((source.id, source) for source in read_sources([item]))


def simulation_items(
    entries: Iterable[tuple[str, Source | Simulable]],
) -> Iterator[tuple[str, Simulable]]:
    """``simulation_sources``' entries with every CIF read (``read_structure``)."""
    for entry_id, entry in entries:
        yield entry_id, read_structure(entry) if isinstance(entry, Source) else entry


def _read_site_columns(path: Path | str) -> pd.DataFrame:
    """The site columns of a structure table (tables written before occupancies lack them)."""
    present = set(pq.read_schema(path).names)
    wanted = [c for c in (*SITE_COLUMNS, "occupancy") if c in present]
    return pd.read_parquet(path, columns=wanted)


def _table_inputs(table: pd.DataFrame) -> Iterator[tuple[str, Source | Simulable]]:
    """A structure table's rows as ``SiteArrays``, or a table of CIFs' rows parsed."""
    if "cif" in table.columns:
        sources = sources_from_table(table, [str(i) for i in table.index])
        yield from ((source.id, source) for source in sources)
        return
    missing = [c for c in SITE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"a structure table needs a 'cif' column or {list(SITE_COLUMNS)}; lacks {missing}"
        )
    occupancies = table["occupancy"] if "occupancy" in table.columns else [None] * len(table)
    for row, occupancy in zip(table.itertuples(index=False), occupancies, strict=True):
        try:
            yield (
                row.id,
                SiteArrays.from_entries(row.lattice, row.species, row.frac_coords, occupancy),
            )
        except SimulationError as error:
            yield row.id, str(error)


def read_structure(source: Source) -> Simulable:
    """A source's structure, or why it has none.

    The fast reader (``nanoxtal.xrd.cif``, gemmi) gives ``SiteArrays``; a CIF it refuses is
    read by pymatgen (the reference), which gives a ``Structure``: the item's type says which
    path it took. When both refuse it, the reason names both.
    """
    if source.error is not None:
        return source.error
    try:
        return read_cif_sites(source.cif)
    except CifError as error:
        fast_error = str(error)
    try:
        return parse_cif(source.cif)
    except StructureError as error:
        return f"{error} (fast reader: {fast_error})"


@dataclass(frozen=True)
class Labelled:
    """A structure in its conventional standard cell with its symmetry labels."""

    id: str
    formula: str
    space_group: int
    crystal_system: int
    structure: Structure


def symmetrize(
    structure_id: str, structure: Structure, symprec: float = 0.01, angle_tolerance: float = 5.0
) -> Labelled:
    """Detect the symmetry of a structure and return its conventional standard cell.

    Args:
        structure_id: Identifier carried along.
        structure: The structure (any setting, e.g. P1 as written by Materials Project).
        symprec: Distance tolerance of spglib, Å.
        angle_tolerance: Angle tolerance of spglib, degrees.

    Partially occupied sites are kept: spglib sees each distinct occupancy as its own kind of
    atom, so a solid solution keeps the symmetry of its average structure.

    Raises:
        StructureError: Elements without X-ray scattering factors, or symmetry detection
            failed.
    """
    missing = sorted({e.symbol for e in structure.composition} - set(ATOMIC_SCATTERING_PARAMS))
    if missing:
        raise StructureError(f"no X-ray scattering factors for {', '.join(missing)}")
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=angle_tolerance)
        number = analyzer.get_space_group_number()
        conventional = analyzer.get_conventional_standard_structure()
    except (ValueError, TypeError) as error:
        raise StructureError(f"symmetry detection failed: {error}") from error
    return Labelled(
        id=structure_id,
        formula=structure.composition.reduced_formula,
        space_group=number,
        crystal_system=crystal_system(number),
        structure=conventional,
    )


def split_by_formula(
    formulas: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 42
) -> list[str]:
    """Assign each entry to train/val/test so that no reduced formula is in two splits.

    Args:
        formulas: Reduced formula of each entry.
        fractions: Shares of the distinct formulas for train, val and test (sum 1).
        seed: Seed of the shuffle of the formulas.

    Returns:
        The split of each entry, in input order.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three shares summing to 1, got {fractions}")
    distinct = np.array(sorted(set(formulas)))
    shuffled = distinct[np.random.default_rng(seed).permutation(len(distinct))]
    cuts = np.round(np.cumsum(fractions)[:2] * len(distinct)).astype(int)
    split_of = {
        f: SPLITS[int(np.searchsorted(cuts, i, side="right"))] for i, f in enumerate(shuffled)
    }
    return [split_of[f] for f in formulas]


def split_by_formula_per_source(
    formulas: Sequence[str],
    sources: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 42,
) -> list[str]:
    """``split_by_formula`` source after source: a formula keeps the split it first got.

    The first source's formulas are split exactly as ``split_by_formula`` splits them alone, so
    adding a source leaves the splits of the existing ones (and their test scores) comparable;
    each later source's new formulas are split with the seed plus its position.

    Args:
        formulas: Reduced formula of each entry.
        sources: Source of each entry; sources are taken in order of first appearance.
        fractions: Shares of the distinct formulas for train, val and test (sum 1).
        seed: Seed of the first source's shuffle.

    Returns:
        The split of each entry, in input order.
    """
    assigned: dict[str, str] = {}
    for position, source in enumerate(dict.fromkeys(sources)):
        new = sorted(
            {f for f, s in zip(formulas, sources, strict=True) if s == source} - set(assigned)
        )
        assigned.update(zip(new, split_by_formula(new, fractions, seed + position), strict=True))
    return [assigned[f] for f in formulas]


def _reject(source: Source, reason: str) -> dict:
    return {"id": source.id, "reason": reason, "source": source.database}


def _label_one(source: Source, symprec: float, angle_tolerance: float, published: bool) -> dict:
    """A table row (``TABLE_COLUMNS`` less split) or a reject ``{"id", "reason", "source"}``."""
    if source.error is not None:
        return _reject(source, source.error)
    if published:
        return _label_published(source, symprec, angle_tolerance)
    try:
        labelled = symmetrize(source.id, parse_cif(source.cif), symprec, angle_tolerance)
    except StructureError as error:
        return _reject(source, str(error))
    return table_row(labelled, source.database, source.mineral)


def _label_published(source: Source, symprec: float, angle_tolerance: float) -> dict:
    """The row of a CIF read in its published setting, labelled by its published space group.

    A CIF that names no space group gets it detected, as a ``detected`` source would.
    """
    try:
        read = read_cif(source.cif)
    except CifError as error:
        return _reject(source, f"invalid CIF: {error}")
    if read.space_group is None:
        try:
            labelled = symmetrize(source.id, read.sites.structure(), symprec, angle_tolerance)
        except StructureError as error:
            return _reject(source, str(error))
        return table_row(labelled, source.database, source.mineral)
    species, frac_coords, occupancy = read.sites.entries()
    return {
        "id": source.id,
        "formula": read.formula,
        "space_group": read.space_group,
        "crystal_system": crystal_system(read.space_group),
        "n_sites": len(read.sites.frac_coords),
        "lattice": read.sites.lattice.reshape(-1).tolist(),
        "species": species,
        "frac_coords": frac_coords,
        "occupancy": occupancy,
        "source": source.database,
        "mineral": source.mineral or read.mineral,
    }


def table_row(labelled: Labelled, database: str, mineral: str | None = None) -> dict:
    """The table row (``TABLE_COLUMNS`` less split) of a labelled structure."""
    species, frac_coords, occupancy = site_arrays(labelled.structure).entries()
    return {
        "id": labelled.id,
        "formula": labelled.formula,
        "space_group": labelled.space_group,
        "crystal_system": labelled.crystal_system,
        "n_sites": len(labelled.structure),
        "lattice": labelled.structure.lattice.matrix.reshape(-1).tolist(),
        "species": species,
        "frac_coords": frac_coords,
        "occupancy": occupancy,
        "source": database,
        "mineral": mineral,
    }


def _label_chunk(
    chunk: list[Source], symprec: float, angle_tolerance: float, published: frozenset[str]
) -> list[dict]:
    return [_label_one(s, symprec, angle_tolerance, s.database in published) for s in chunk]


def _reduced_cell(row: pd.Series) -> np.ndarray:
    """Sorted edges (Å) of the Niggli-reduced primitive cell, and volume per atom (Å³).

    The primitive cell makes the comparison independent of the setting (a conventional
    face-centred cubic cell and its rhombohedral primitive cell give the same numbers).
    """
    sites = SiteArrays.from_entries(
        row["lattice"], row["species"], row["frac_coords"], row["occupancy"]
    )
    structure = sites.structure()
    reduced = structure.get_primitive_structure(tolerance=0.1).lattice.get_niggli_reduced_lattice()
    atoms = float(np.sum(row["occupancy"]))
    return np.append(np.sort(reduced.abc), structure.volume / max(atoms, 1e-9))


def drop_duplicate_phases(
    table: pd.DataFrame,
    tolerance: float = DUPLICATE_LATTICE_TOLERANCE,
    prefer: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one copy of a phase that several sources hold.

    Two rows of different sources are one phase when their reduced formula and space group
    are equal and the edges of their Niggli-reduced primitive cells agree within ``tolerance``
    (their volumes per atom within three times that). The copy of the best-ranked source is
    kept (it takes the mineral name of the copy dropped when it has none): the sources named in
    ``prefer`` first, in that order, then the others in order of appearance. Rows of one source
    are never merged (a mineral measured at several temperatures or compositions stays as many
    structures).

    Prefer measured structures: a DFT-relaxed cell (Materials Project, PBE) is typically 1-3 %
    larger than the measured one, which moves a peak at 60° 2θ by up to 1°; on the RRUFF
    fine-tune part, the nearest clean render of the AMCSD copies has the right space group
    for 45 % of the patterns, and for 34 % once the copies of Materials Project phases are
    dropped.

    Args:
        table: Structure table rows (``TABLE_COLUMNS``, split optional), sources in order.
        tolerance: Largest relative difference of the reduced cell's edges and volume per atom.
        prefer: Sources whose copy is kept, best first (e.g. ``["amcsd"]``).

    Returns:
        The table without the duplicates, and the dropped rows as rejects
        (``id, reason, source``).
    """
    ranked = [*prefer, *(s for s in dict.fromkeys(table["source"]) if s not in prefer)]
    order = {name: k for k, name in enumerate(ranked)}
    table = table.reset_index(drop=True)
    mineral = table["mineral"].copy()
    dropped: dict[int, str] = {}
    for _, group in table.groupby(["formula", "space_group"], sort=False):
        if group["source"].nunique() < 2:
            continue
        rows = sorted(group.index, key=lambda i: order[table.at[i, "source"]])
        cells = {i: _reduced_cell(table.loc[i]) for i in rows}
        for later in rows:
            for earlier in rows:
                if order[table.at[earlier, "source"]] >= order[table.at[later, "source"]]:
                    break
                if earlier in dropped:
                    continue
                difference = np.abs(cells[later] / cells[earlier] - 1.0)
                # A volume differs about three times as much as the edges do.
                if np.all(difference <= [tolerance, tolerance, tolerance, 3 * tolerance]):
                    dropped[later] = (
                        f"duplicate: the phase of {table.at[earlier, 'id']} "
                        f"({table.at[earlier, 'source']}): same formula and space group, "
                        f"reduced cell within {tolerance:.0%}"
                    )
                    if not isinstance(mineral[earlier], str):
                        mineral[earlier] = table.at[later, "mineral"]
                    break
    table["mineral"] = mineral
    rejects = pd.DataFrame(
        {
            "id": table.loc[list(dropped), "id"].to_numpy(),
            "reason": list(dropped.values()),
            "source": table.loc[list(dropped), "source"].to_numpy(),
        },
        columns=REJECT_COLUMNS,
    )
    return table.drop(index=list(dropped)).reset_index(drop=True), rejects


REJECT_COLUMNS = ["id", "reason", "source"]


def build_table(
    sources: Iterable[Source],
    symprec: float = 0.01,
    angle_tolerance: float = 5.0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 42,
    workers: int = 1,
    progress: bool = True,
    published: Iterable[str] = (),
    prefer: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Symmetrize and label structures, split them by formula, keep one copy of each phase.

    The split comes first, so a source's split does not depend on which of its phases another
    source holds too (and a copy kept from another source lies in the split of its formula).

    Args:
        sources: Structures as read (``read_sources``); the first source's formulas are split
            as if it were alone (``split_by_formula_per_source``).
        symprec: spglib distance tolerance, Å.
        angle_tolerance: spglib angle tolerance, degrees.
        fractions: Train/val/test shares of the distinct reduced formulas.
        seed: Seed of the split (``split_by_formula_per_source``).
        workers: Processes for the symmetry analysis (1: in this process).
        progress: Show a progress bar.
        published: Sources whose CIFs' own space groups and settings are used
            (``SYMMETRY_MODES``); the others' symmetry is detected.
        prefer: Sources whose copy of a phase two sources hold is kept, best first
            (``drop_duplicate_phases``; by default the first source's).

    Returns:
        The structure table (``TABLE_COLUMNS``) and the rejects (``id``, ``reason``,
        ``source``).
    """
    sources = list(sources)
    published = frozenset(published)
    chunks = [sources[i : i + 64] for i in range(0, len(sources), 64)]
    rows: list[dict] = []
    with tqdm(total=len(sources), desc="symmetry", unit="structure", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                n = len(chunks)
                results = pool.map(
                    _label_chunk, chunks, [symprec] * n, [angle_tolerance] * n, [published] * n
                )
                for result in results:
                    rows.extend(result)
                    bar.update(len(result))
        else:
            for chunk in chunks:
                rows.extend(_label_chunk(chunk, symprec, angle_tolerance, published))
                bar.update(len(chunk))
    good = [r for r in rows if "reason" not in r]
    rejects = pd.DataFrame([r for r in rows if "reason" in r], columns=REJECT_COLUMNS)
    table = pd.DataFrame(good, columns=[c for c in TABLE_COLUMNS if c != "split"])
    splits = split_by_formula_per_source(
        list(table["formula"]), list(table["source"]), fractions, seed
    )
    table.insert(4, "split", splits)
    table, duplicates = drop_duplicate_phases(table, prefer=prefer)
    return table, pd.concat([rejects, duplicates], ignore_index=True)


T = TypeVar("T")


def random_subset(items: Sequence[T], size: int | None, seed: int) -> list[T]:
    """A seeded random subset of ``size`` items, in their order.

    All items when ``size`` is None or not smaller than their number.
    """
    items = list(items)
    if size is None or len(items) <= size:
        return items
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size, replace=False))
    return [items[i] for i in chosen]


def table_summary(
    structures_read: int,
    table: pd.DataFrame,
    rejects: pd.DataFrame,
    fractions: Sequence[float],
    seed: int,
    symprec: float,
    angle_tolerance: float,
) -> dict[str, Any]:
    """What ``build_table`` kept and why it rejected the rest, with its settings.

    Args:
        structures_read: Structures given to ``build_table``.
        table: Its structure table.
        rejects: Its rejects.
        fractions: Its train/val/test shares.
        seed: Its seed.
        symprec: Its spglib distance tolerance, Å.
        angle_tolerance: Its spglib angle tolerance, degrees.

    Returns:
        Counts (kept, rejected, reasons by their first word, per split, per crystal system,
        distinct space groups) and the settings, as JSON-ready values.
    """
    return {
        "structures_read": structures_read,
        "kept": len(table),
        "rejected": len(rejects),
        "reject_reasons": rejects["reason"].str.split(":").str[0].value_counts().to_dict(),
        "seed": seed,
        "split_fractions": list(fractions),
        "split_by": "reduced formula",
        "symprec": symprec,
        "angle_tolerance": angle_tolerance,
        "per_split": table["split"].value_counts().to_dict(),
        "space_groups_present": int(table["space_group"].nunique()),
        "per_crystal_system": {
            CRYSTAL_SYSTEMS[k]: int(v)
            for k, v in table["crystal_system"].value_counts().sort_index().items()
        },
        "per_source": source_summary(table, rejects),
    }


def source_summary(table: pd.DataFrame, rejects: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per source: structures read, kept, rejected (reasons by first word), share read.

    ``read_share`` counts a duplicate of another source's phase as read: it was read, and
    that phase is in the table.
    """
    summary = {}
    for name in dict.fromkeys([*table["source"], *rejects["source"]]):
        kept = table[table["source"] == name]
        dropped = rejects[rejects["source"] == name]
        reasons = dropped["reason"].str.split(":").str[0].value_counts()
        read = len(kept) + len(dropped)
        summary[str(name)] = {
            "structures": read,
            "kept": len(kept),
            "rejected": len(dropped),
            "reject_reasons": {str(k): int(v) for k, v in reasons.items()},
            "read_share": (len(kept) + int(reasons.get("duplicate", 0))) / max(read, 1),
            "per_split": kept["split"].value_counts().to_dict(),
            "space_groups_present": int(kept["space_group"].nunique()),
            "with_mineral_name": int(kept["mineral"].notna().sum()),
        }
    return summary


@dataclass(frozen=True)
class RandomCrystalSettings:
    """How random symmetric crystals are drawn (``xrd.random`` config block).

    Attributes:
        per_group: Each space group is filled up to this many training structures.
        max_species: Most distinct elements per crystal.
        max_atoms: Most atoms in the conventional cell.
        attempts: Draws per crystal before the space group is reported as not filled.
    """

    per_group: int = 20
    max_species: int = 3
    max_atoms: int = 120
    attempts: int = 30


def random_crystal(
    structure_id: str,
    space_group: int,
    elements: Sequence[str],
    weights: Sequence[float],
    rng: np.random.Generator,
    settings: RandomCrystalSettings,
) -> Labelled:
    """One random crystal of a space group, drawn with PyXtal.

    PyXtal: Fredericks et al., Comput. Phys. Commun. 261, 107810 (2021). Each element occupies
    the sites of one Wyckoff position of the group (the first element the general position when
    the cell stays small enough, the others a position drawn uniformly), so the composition is
    always compatible with the symmetry; PyXtal places the atoms with sensible interatomic
    distances and a volume from atomic radii. A draw is kept only when spglib finds exactly the
    intended group: atoms can land on special positions of a higher symmetry.

    Args:
        structure_id: Identifier of the crystal.
        space_group: ITA number, 1-230.
        elements: Element symbols to draw from.
        weights: Relative frequency of each element (e.g. its frequency in the database).
        rng: Random generator (the only source of randomness).
        settings: Composition and size limits.

    Returns:
        The crystal in its conventional standard cell, labelled.

    Raises:
        StructureError: No valid crystal in ``settings.attempts`` draws.
    """
    multiplicities = [w.multiplicity for w in Group(space_group).Wyckoff_positions]
    probabilities = np.asarray(weights, dtype=float) / np.sum(weights)
    last_error = "no attempt"
    for _ in range(settings.attempts):
        count = int(rng.integers(1, min(settings.max_species, len(elements)) + 1))
        # PyXtal looks radii up by exact type: numpy strings must become str.
        species = [str(e) for e in rng.choice(elements, count, replace=False, p=probabilities)]
        # The first element takes the general position when it fits: atoms only on special
        # positions often have a higher symmetry than the group drawn.
        atoms = [int(rng.choice(multiplicities)) for _ in species]
        if multiplicities[0] <= settings.max_atoms - sum(atoms[1:]):
            atoms[0] = multiplicities[0]
        if sum(atoms) > settings.max_atoms:
            last_error = f"more than {settings.max_atoms} atoms"
            continue
        crystal = PyXtal()
        try:
            crystal.from_random(
                3, space_group, species, atoms, random_state=int(rng.integers(2**31))
            )
        except (Comp_CompatibilityError, RuntimeError, ValueError) as error:
            last_error = f"PyXtal: {error}"
            continue
        if not crystal.valid:
            last_error = "PyXtal found no valid placement"
            continue
        labelled = symmetrize(structure_id, crystal.to_pymatgen())
        if labelled.space_group == space_group:
            return labelled
        last_error = f"drawn crystals had a higher symmetry (e.g. {labelled.space_group})"
    raise StructureError(f"space group {space_group}: {last_error}")


def _fill_group(
    space_group: int,
    count: int,
    elements: Sequence[str],
    weights: Sequence[float],
    excluded_formulas: frozenset[str],
    seed: int,
    settings: RandomCrystalSettings,
) -> list[dict]:
    """``count`` rows of random crystals of ``space_group`` (``random_crystal``).

    A crystal whose formula is in ``excluded_formulas`` is drawn again. Unfilled places become
    rejects with the reason.
    """
    rng = np.random.default_rng([seed, space_group])
    rows: list[dict] = []
    for index in range(count):
        structure_id = f"pyxtal-{space_group}-{index}"
        reason = "no attempt"
        for _ in range(settings.attempts):
            try:
                labelled = random_crystal(
                    structure_id, space_group, elements, weights, rng, settings
                )
            except StructureError as error:
                reason = str(error)
                continue
            if labelled.formula not in excluded_formulas:
                rows.append(table_row(labelled, RANDOM_SOURCE))
                break
            reason = f"formula {labelled.formula} is in the validation or test split"
        else:
            rows.append({"id": structure_id, "reason": reason})
    return rows


def fill_space_groups(
    table: pd.DataFrame,
    settings: RandomCrystalSettings,
    seed: int = 42,
    workers: int = 1,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random crystals that fill every space group up to ``settings.per_group`` training structures.

    Elements are drawn with their frequency in the training split, so the chemistry resembles
    the database. The crystals join the training split; their formulas avoid the validation and
    test splits, so no formula is in two splits. Each space group has its own seeded stream:
    the result does not depend on ``workers``.

    Args:
        table: Structure table (``build_table``).
        settings: How many crystals and of what size.
        seed: Seed of the draws.
        workers: Processes.
        progress: Show a progress bar.

    Returns:
        The random crystals (``TABLE_COLUMNS``, split ``train``) and the places that could not
        be filled (``id``, ``reason``).
    """
    train = table[table["split"] == "train"]
    counts = train["space_group"].value_counts()
    wanted = {
        sg: settings.per_group - int(counts.get(sg, 0))
        for sg in range(1, 231)
        if counts.get(sg, 0) < settings.per_group
    }
    symbols = pd.Series(np.concatenate(train["species"].to_numpy())) if len(train) else None
    if symbols is None or symbols.empty:
        frequency = pd.Series(1.0, index=sorted(ATOMIC_SCATTERING_PARAMS))
    else:
        frequency = symbols.value_counts()
    frequency = frequency[frequency.index.isin(list(ATOMIC_SCATTERING_PARAMS))]
    elements, weights = list(frequency.index), frequency.to_numpy(dtype=float)
    excluded = frozenset(table.loc[table["split"] != "train", "formula"])
    jobs = [(sg, n, elements, weights, excluded, seed, settings) for sg, n in wanted.items()]
    rows: list[dict] = []
    total = sum(wanted.values())
    with tqdm(total=total, desc="random crystals", unit="crystal", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_fill_group, *zip(*jobs, strict=True)):
                    rows.extend(result)
                    bar.update(len(result))
        else:
            for job in jobs:
                result = _fill_group(*job)
                rows.extend(result)
                bar.update(len(result))
    good = [r for r in rows if "reason" not in r]
    rejects = pd.DataFrame([r for r in rows if "reason" in r], columns=["id", "reason"])
    crystals = pd.DataFrame(good, columns=[c for c in TABLE_COLUMNS if c != "split"])
    crystals.insert(4, "split", "train")
    return crystals, rejects


def random_summary(
    table: pd.DataFrame,
    crystals: pd.DataFrame,
    unfilled: pd.DataFrame,
    settings: RandomCrystalSettings,
    seed: int,
) -> dict[str, Any]:
    """What ``fill_space_groups`` added to a structure table, with its settings.

    Args:
        table: The structure table it filled.
        crystals: Its random crystals.
        unfilled: Its places not filled.
        settings: Its settings.
        seed: Its seed.

    Returns:
        Counts of crystals, unfilled places and space groups filled, and how many space
        groups the training split covers before and after (of 230), as JSON-ready values.
    """
    train_groups = set(table.loc[table["split"] == "train", "space_group"])
    return {
        "seed": seed,
        "per_group": settings.per_group,
        "max_species": settings.max_species,
        "max_atoms": settings.max_atoms,
        "crystals": len(crystals),
        "unfilled": len(unfilled),
        "space_groups_filled": int(crystals["space_group"].nunique()),
        "space_groups_in_train_before": len(train_groups),
        "space_groups_in_train_after": len(train_groups | set(crystals["space_group"])),
    }
