from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from nanoxtal.xrd.diffraction import SiteArrays, stick_pattern
from nanoxtal.xrd.structures import (
    CRYSTAL_SYSTEMS,
    TABLE_COLUMNS,
    RandomCrystalSettings,
    StructureError,
    build_table,
    crystal_system,
    fill_space_groups,
    parse_cif,
    random_crystal,
    read_sources,
    split_by_formula,
    symmetrize,
)


def primitive_rock_salt() -> Structure:
    conventional = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    return conventional.get_primitive_structure()


@pytest.mark.parametrize(
    ("number", "system"),
    [
        (1, 0),
        (2, 0),
        (3, 1),
        (15, 1),
        (16, 2),
        (74, 2),
        (75, 3),
        (142, 3),
        (143, 4),
        (167, 4),
        (168, 5),
        (194, 5),
        (195, 6),
        (225, 6),
        (230, 6),
    ],
)
def test_crystal_system_boundaries(number, system):
    assert crystal_system(number) == system
    assert len(CRYSTAL_SYSTEMS) == 7


def test_crystal_system_rejects_impossible_numbers():
    with pytest.raises(ValueError, match="1-230"):
        crystal_system(231)


def test_symmetrize_finds_fm3m_and_returns_the_conventional_cell():
    primitive = primitive_rock_salt()
    assert len(primitive) == 2
    labelled = symmetrize("nacl", primitive)
    assert (labelled.space_group, labelled.crystal_system, labelled.formula) == (225, 6, "NaCl")
    assert len(labelled.structure) == 8
    assert labelled.structure.lattice.a == pytest.approx(5.64, abs=1e-6)


def test_pattern_does_not_depend_on_the_cell_chosen():
    primitive = primitive_rock_salt()
    conventional = symmetrize("nacl", primitive).structure
    a, b = stick_pattern(primitive), stick_pattern(conventional)
    assert a.two_theta == pytest.approx(b.two_theta, abs=1e-9)
    assert a.intensity == pytest.approx(b.intensity, abs=1e-6)


def test_disordered_and_unscatterable_structures_are_rejected_with_a_reason():
    alloy = Structure(Lattice.cubic(3.7), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    with pytest.raises(StructureError, match="disordered"):
        symmetrize("alloy", alloy)
    with pytest.raises(StructureError, match="scattering factors for Og"):
        symmetrize("og", Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]]))


def test_split_keeps_each_formula_in_one_split_and_is_seeded():
    formulas = [f"A{i % 50}B" for i in range(500)]
    splits = split_by_formula(formulas, (0.8, 0.1, 0.1), seed=3)
    by_formula: dict[str, set] = {}
    for formula, split in zip(formulas, splits, strict=True):
        by_formula.setdefault(formula, set()).add(split)
    assert all(len(s) == 1 for s in by_formula.values())
    counts = pd.Series([next(iter(s)) for s in by_formula.values()]).value_counts()
    assert counts.to_dict() == {"train": 40, "val": 5, "test": 5}
    assert split_by_formula(formulas, seed=3) == splits
    assert split_by_formula(formulas, seed=4) != splits
    with pytest.raises(ValueError, match="sum"):
        split_by_formula(formulas, (0.5, 0.1, 0.1))


def test_read_sources_handles_files_folders_tables_and_bad_inputs(tmp_path):
    cif = primitive_rock_salt().to(fmt="cif")
    (tmp_path / "cifs").mkdir()
    (tmp_path / "cifs" / "nacl.cif").write_text(cif)
    (tmp_path / "cifs" / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    pd.DataFrame({"material_id": ["mp-1", "mp-2"], "cif": [cif, ""]}).to_csv(
        tmp_path / "t.csv.gz", index=False
    )
    pd.DataFrame({"structure": [cif]}).to_csv(tmp_path / "nocif.csv", index=False)
    (tmp_path / "notes.txt").write_text("hello")
    sources = list(
        read_sources(
            [
                tmp_path / "cifs",
                tmp_path / "t.csv.gz",
                tmp_path / "nocif.csv",
                tmp_path / "notes.txt",
                tmp_path / "missing.cif",
            ]
        )
    )
    errors = {s.id: s.error for s in sources if s.error}
    assert [s.id for s in sources if not s.error] == ["broken", "nacl", "mp-1"]
    assert errors["mp-2"] == "empty CIF"
    assert "no 'cif' column" in errors[str(tmp_path / "nocif.csv")]
    assert "not a CIF file" in errors[str(tmp_path / "notes.txt")]
    assert "no such file" in errors[str(tmp_path / "missing.cif")]
    with pytest.raises(StructureError, match="invalid CIF"):
        parse_cif("data_x\n_cell_length_a 3\n")


def test_build_table_labels_rejects_and_round_trips_to_the_simulator(tmp_path):
    good = primitive_rock_salt().to(fmt="cif")
    alloy = Structure(Lattice.cubic(3.7), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]).to(fmt="cif")
    pd.DataFrame({"material_id": ["a", "b", "c"], "cif": [good, alloy, "garbage"]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    table, rejects = build_table(read_sources([tmp_path / "t.csv"]), progress=False)
    assert list(table["id"]) == ["a"]
    assert table.loc[0, "space_group"] == 225 and table.loc[0, "n_sites"] == 8
    reasons = dict(zip(rejects["id"], rejects["reason"], strict=True))
    assert reasons["b"].startswith("disordered") and reasons["c"].startswith("invalid CIF")
    row = table.iloc[0]
    from_table = stick_pattern(SiteArrays.from_ordered(row.lattice, row.species, row.frac_coords))
    direct = stick_pattern(primitive_rock_salt())
    assert from_table.intensity == pytest.approx(direct.intensity, abs=1e-6)


def test_real_materials_project_sample_in_two_processes(shared_data):
    sources = list(read_sources([shared_data / "xrd" / "mp_structures.csv.gz"]))[:40]
    table, rejects = build_table(sources, workers=2, progress=False)
    assert len(table) + len(rejects) == 40
    assert table["space_group"].between(1, 230).all()
    assert set(table["split"]) <= {"train", "val", "test"}


def test_random_crystal_has_the_drawn_space_group():
    rng = np.random.default_rng(0)
    settings = RandomCrystalSettings()
    for number in (2, 14, 62, 139, 166, 194, 221):
        crystal = random_crystal("r", number, ["Mg", "O", "Si"], [1.0, 2.0, 1.0], rng, settings)
        assert crystal.space_group == number
        # The label is spglib's verdict on the structure returned, not the group asked for.
        assert symmetrize("r", crystal.structure).space_group == number
        assert set(crystal.structure.composition.chemical_system.split("-")) <= {"Mg", "O", "Si"}
        assert len(crystal.structure) <= settings.max_atoms


def test_random_crystal_reports_an_impossible_cell():
    # Fm-3m's smallest orbit has 4 atoms in the conventional cell: 3 atoms cannot be placed.
    with pytest.raises(StructureError, match="space group 225"):
        random_crystal(
            "r", 225, ["Na"], [1.0], np.random.default_rng(0), RandomCrystalSettings(max_atoms=3)
        )


def test_fill_space_groups_fills_missing_groups_in_train_only(table_missing):
    missing = {2, 14, 62, 194, 227}
    table = table_missing(missing)
    settings = RandomCrystalSettings(per_group=3)
    crystals, unfilled = fill_space_groups(table, settings, seed=3, workers=2, progress=False)
    assert unfilled.empty, unfilled
    # Groups with two training structures get one crystal each; the missing ones three.
    counts = crystals["space_group"].value_counts()
    assert counts[sorted(missing)].eq(3).all()
    assert counts.drop(sorted(missing)).eq(1).all() and len(counts) == 230
    assert set(crystals["split"]) == {"train"}
    assert "KCl" not in set(crystals["formula"])  # a val formula never enters train
    # Elements come from the training split, weighted by frequency.
    assert set(np.concatenate(crystals["species"].to_numpy())) <= {"Mg", "O", "Si", "C"}
    assert list(crystals.columns) == list(TABLE_COLUMNS)
    # Each space group has its own seeded stream: the worker count does not change the result.
    fewer = RandomCrystalSettings(per_group=2)  # only the missing groups: quick
    one, _ = fill_space_groups(table, fewer, seed=3, workers=1, progress=False)
    two, _ = fill_space_groups(table, fewer, seed=3, workers=2, progress=False)
    assert len(one) == 2 * len(missing)
    pd.testing.assert_frame_equal(one, two)
