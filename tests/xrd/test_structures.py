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
    Source,
    StructureError,
    build_table,
    crystal_system,
    drop_duplicate_phases,
    fill_space_groups,
    parse_cif,
    random_crystal,
    read_sources,
    split_by_formula,
    split_by_formula_per_source,
    symmetrize,
    table_row,
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


def test_disordered_sites_are_kept_and_unscatterable_elements_rejected():
    alloy = Structure(Lattice.cubic(3.7), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    labelled = symmetrize("alloy", alloy)
    assert labelled.space_group == 221  # one mixed site: simple cubic, not P1
    assert dict(labelled.structure[0].species.as_dict()) == {"Cu": 0.5, "Au": 0.5}
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
    alloy = Structure(Lattice.cubic(3.7), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    table = pd.DataFrame(
        {"material_id": ["a", "b", "c"], "cif": [good, alloy.to(fmt="cif"), "garbage"]}
    )
    table.to_csv(tmp_path / "t.csv", index=False)
    table, rejects = build_table(read_sources([tmp_path / "t.csv"], "mine"), progress=False)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert list(table["id"]) == ["a", "b"] and set(table["source"]) == {"mine"}
    assert table.loc[0, "space_group"] == 225 and table.loc[0, "n_sites"] == 8
    assert list(table.loc[0, "occupancy"]) == [1.0] * 8
    # The mixed site is one position holding two entries, each with its occupancy.
    assert list(table.loc[1, "species"]) == ["Cu", "Au"] and table.loc[1, "n_sites"] == 1
    assert list(table.loc[1, "occupancy"]) == [0.5, 0.5]
    assert rejects.loc[0, "id"] == "c" and rejects.loc[0, "reason"].startswith("invalid CIF")
    assert rejects.loc[0, "source"] == "mine"
    for row, structure in zip(table.itertuples(), [primitive_rock_salt(), alloy], strict=True):
        sites = SiteArrays.from_entries(row.lattice, row.species, row.frac_coords, row.occupancy)
        assert stick_pattern(sites).intensity == pytest.approx(
            stick_pattern(structure).intensity, abs=1e-6
        )


def test_tables_name_their_sources_and_keep_amcsd_ids_and_minerals(tmp_path):
    cif = primitive_rock_salt().to(fmt="cif")
    pd.DataFrame(
        {"amcsd_id": ["0000003", "0012345"], "mineral": ["Halite", None], "cif": [cif, cif]}
    ).to_csv(tmp_path / "amcsd.csv", index=False)
    sources = list(read_sources([tmp_path / "amcsd.csv"], "amcsd"))
    assert [s.id for s in sources] == ["amcsd-0000003", "amcsd-0012345"]
    assert [s.mineral for s in sources] == ["Halite", None]
    assert {s.database for s in sources} == {"amcsd"}


def test_split_per_source_leaves_the_first_source_as_it_was_alone():
    first = [f"A{i}B" for i in range(60)]
    second = [f"C{i}D" for i in range(40)] + first[:10]
    alone = split_by_formula(first, (0.8, 0.1, 0.1), seed=5)
    both = split_by_formula_per_source(
        first + second, ["mp"] * 60 + ["amcsd"] * 50, (0.8, 0.1, 0.1), seed=5
    )
    assert both[:60] == alone
    split_of = dict(zip(first + second, both, strict=True))
    # A formula the first source holds keeps its split in the second: none in two splits.
    assert [split_of[f] for f in first[:10]] == both[100:]
    assert pd.Series(both[60:100]).value_counts().to_dict() == {"train": 32, "val": 4, "test": 4}


def _row(row_id, source, structure, mineral=None):
    return table_row(symmetrize(row_id, structure), source, mineral)


def rock_salt(a: float) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def test_a_phase_two_sources_hold_is_kept_once_from_the_first():
    rows = [
        _row("mp-1", "materials_project", rock_salt(5.64)),
        # The same phase, given in its primitive cell and 1 % larger: one copy.
        _row("amcsd-1", "amcsd", rock_salt(5.70).get_primitive_structure(), "Halite"),
        # 10 % larger: another phase (e.g. measured at high temperature), kept.
        _row("amcsd-2", "amcsd", rock_salt(6.20), "Halite"),
        # Two copies within one source are never merged.
        _row("mp-2", "materials_project", rock_salt(5.641)),
    ]
    table, dropped = drop_duplicate_phases(pd.DataFrame(rows))
    assert list(table["id"]) == ["mp-1", "amcsd-2", "mp-2"]
    assert table.loc[0, "mineral"] == "Halite"  # the kept copy takes the mineral's name
    assert list(dropped["id"]) == ["amcsd-1"] and "mp-1" in dropped.loc[0, "reason"]
    assert dropped.loc[0, "reason"].startswith("duplicate") and dropped.loc[0, "source"] == "amcsd"
    # A preferred source's copy is kept instead (the measured structure), the other reported.
    table, dropped = drop_duplicate_phases(pd.DataFrame(rows), prefer=["amcsd"])
    # Both Materials Project copies are that phase: neither is kept beside it.
    assert list(table["id"]) == ["amcsd-1", "amcsd-2"]
    assert list(dropped["id"]) == ["mp-1", "mp-2"]
    assert dropped["reason"].str.contains("amcsd-1").all()
    assert set(dropped["source"]) == {"materials_project"}


def test_an_occupancy_rounded_over_one_still_makes_a_structure():
    # A published occupancy of 1.03 (19 AMCSD structures; the reader accepts up to 1.05):
    # pymatgen refuses a site over 1, so the structure scales it; de-duplication builds these.
    sites = SiteArrays.from_entries(
        np.eye(3).ravel() * 4.2, ["Fe", "O"], [0, 0, 0, 0.5, 0.5, 0.5], [1.03, 0.6]
    )
    structure = sites.structure()
    assert structure[0].species["Fe"] == pytest.approx(1.0)
    assert structure[1].species["O"] == pytest.approx(0.6)  # others unchanged


def test_preferring_a_source_keeps_the_first_sources_split(tmp_path):
    halite = rock_salt(5.64)
    rows = [
        ("materials_project", "mp-1", halite, None),
        ("materials_project", "mp-2", rock_salt(6.4).replace_species({"Na": "K"}), None),
        ("amcsd", "amcsd-1", rock_salt(5.66), "Halite"),
    ]
    sources = [
        Source(row_id, row_structure.to(fmt="cif"), None, database, mineral)
        for database, row_id, row_structure, mineral in rows
    ]
    first, _ = build_table(sources, fractions=(0.5, 0.5, 0.0), seed=3, progress=False)
    kept, rejects = build_table(
        sources, fractions=(0.5, 0.5, 0.0), seed=3, progress=False, prefer=["amcsd"]
    )
    assert list(first["id"]) == ["mp-1", "mp-2"] and list(kept["id"]) == ["mp-2", "amcsd-1"]
    assert list(rejects["id"]) == ["mp-1"]
    split = dict(zip(first["id"], first["split"], strict=True))
    # The kept mineral lies in the split of its formula; the other phase's split is unchanged.
    assert kept.set_index("id")["split"].to_dict() == {
        "mp-2": split["mp-2"],
        "amcsd-1": split["mp-1"],
    }


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
