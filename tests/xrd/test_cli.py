from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from nanoxtal import xrd
from nanoxtal.cli import main
from nanoxtal.xrd.datamodule import load_sticks
from nanoxtal.xrd.diffraction import PEAK_COLUMNS, stick_pattern
from nanoxtal.xrd.library import build_library

REPO = Path(__file__).resolve().parents[2]


def structure_outputs(folder: Path) -> list[str]:
    """The output options of ``nanoxtal xrd structures``, into ``folder``."""
    outputs = ["--out", "s.parquet", "--rejects", "r.csv", "--summary", "s.json"]
    return [str(folder / o) if "." in o else o for o in outputs] + ["--no-progress"]


def rock_salt() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def test_simulate_processes_the_good_inputs_and_reports_the_bad(tmp_path, capsys):
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "nacl.cif").write_text(rock_salt().to(fmt="cif"))
    (folder / "junk.cif").write_text("not a cif at all")
    out = tmp_path / "peaks.parquet"
    assert (
        main(
            [
                "xrd",
                "simulate",
                str(folder),
                str(tmp_path / "nope.cif"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "junk: invalid CIF" in err and "no such file" in err
    peaks = pd.read_parquet(out)
    assert tuple(peaks.columns) == PEAK_COLUMNS
    assert set(peaks["id"]) == {"nacl"}
    assert peaks["intensity"].max() == 100
    expected = stick_pattern(rock_salt())
    assert len(peaks) == len(expected)


def test_simulate_reads_cifs_fast_and_falls_back_to_pymatgen(tmp_path, capsys, monkeypatch):
    """CIFs are read by the fast reader; one it refuses goes through pymatgen, and the output
    says which path each structure took. Both give the same peaks."""
    from nanoxtal.xrd import structures
    from nanoxtal.xrd.cif import CifError

    (tmp_path / "a.cif").write_text(rock_salt().to(fmt="cif"))
    (tmp_path / "b.cif").write_text(rock_salt().to(fmt="cif"))
    fast = structures.read_cif_sites

    def refuse_b(text):
        if "refuse me" in text:
            raise CifError("refused for the test")
        return fast(text)

    (tmp_path / "b.cif").write_text("# refuse me\n" + rock_salt().to(fmt="cif"))
    monkeypatch.setattr(structures, "read_cif_sites", refuse_b)
    out = tmp_path / "peaks.parquet"
    assert main(["xrd", "simulate", str(tmp_path), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "b: read by pymatgen" in printed and "a: read by" not in printed
    assert "1 by the fast reader or from tables, 1 by pymatgen, 0 by neither" in printed
    peaks = pd.read_parquet(out)
    a, b = (peaks[peaks["id"] == name].reset_index(drop=True) for name in "ab")
    assert np.allclose(a["two_theta"], b["two_theta"], atol=1e-5)
    assert np.allclose(a["intensity"], b["intensity"], atol=1e-6)


def test_simulate_with_workers_gives_the_same_table(tmp_path, capsys, monkeypatch, shared_data):
    """Processes read and simulate chunks; the peak table is the same, in the same order, and
    so are the errors (the sample holds one CIF neither reader accepts)."""
    from nanoxtal.xrd import api

    sample = pd.read_csv(shared_data / "xrd" / "amcsd_structures.csv.gz", nrows=300)
    sample.iloc[::10].to_csv(tmp_path / "amcsd.csv", index=False)
    monkeypatch.setattr(api, "SIMULATION_CHUNK", 7)  # several chunks of 30 structures
    tables = []
    for workers in ("1", "2"):
        out = tmp_path / f"peaks{workers}.parquet"
        command = ["xrd", "simulate", str(tmp_path / "amcsd.csv"), "--out", str(out)]
        assert main([*command, "--workers", workers, "--no-progress"]) == 1
        tables.append(pd.read_parquet(out))
        printed = capsys.readouterr()
        assert "29 patterns" in printed.out and "1 by neither" in printed.out
        assert (
            "amcsd-0000132: invalid CIF" in printed.err
            and "fast reader: occupancies" in printed.err
        )
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert tables[0]["id"].iloc[0] == "amcsd-0000003"
    # The library function takes the same workers, warning about the unreadable CIF.
    with pytest.warns(UserWarning, match="amcsd-0000132"):
        library = api.simulate(tmp_path / "amcsd.csv", errors="warn", workers=2)
    pd.testing.assert_frame_equal(library, tables[0])


def test_simulate_takes_another_wavelength_in_angstrom(tmp_path):
    (tmp_path / "nacl.cif").write_text(rock_salt().to(fmt="cif"))
    out = tmp_path / "p.parquet"
    assert (
        main(
            [
                "xrd",
                "simulate",
                str(tmp_path / "nacl.cif"),
                "--out",
                str(out),
                "--wavelength",
                "0.7093",
                "--two-theta",
                "5",
                "60",
                "--no-progress",
            ]
        )
        == 0
    )
    peaks = pd.read_parquet(out)
    assert peaks["two_theta"].max() <= 60 and len(peaks) == len(
        stick_pattern(rock_salt(), 0.7093, (5, 60))
    )


def test_structures_then_simulate_from_the_table(tmp_path):
    table = pd.DataFrame(
        {
            "material_id": ["nacl", "alloy"],
            "cif": [
                rock_salt().to(fmt="cif"),
                Structure(Lattice.cubic(3.7), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]).to(fmt="cif"),
            ],
        }
    )
    table.to_csv(tmp_path / "in.csv", index=False)
    assert main(["xrd", "structures", str(tmp_path / "in.csv"), *structure_outputs(tmp_path)]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["kept"] == 2 and summary["rejected"] == 0 and summary["seed"] == 42
    assert summary["per_source"]["file"]["read_share"] == 1.0
    assert (
        main(
            [
                "xrd",
                "simulate",
                str(tmp_path / "s.parquet"),
                "--out",
                str(tmp_path / "p.parquet"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert set(pd.read_parquet(tmp_path / "p.parquet")["id"]) == {"nacl", "alloy"}


def test_structures_from_two_named_sources_keep_each_phase_once(tmp_path, capsys):
    """Materials Project style (P1, symmetry detected) then AMCSD style (published setting and
    space group, mineral name): halite in both is kept once, from the first source."""
    p1 = rock_salt().get_primitive_structure().to(fmt="cif")
    pd.DataFrame({"material_id": ["mp-22862"], "cif": [p1]}).to_csv(
        tmp_path / "mp.csv", index=False
    )
    olivine = Structure.from_spacegroup(
        "Pnma",
        Lattice.orthorhombic(10.2, 6.0, 4.75),
        [{"Mg": 0.9, "Fe": 0.1}, "Si", "O"],
        [[0, 0, 0], [0.094, 0.25, 0.427], [0.092, 0.25, 0.766]],
    )
    published = [str(CifWriter(s, symprec=0.01)) for s in (rock_salt(), olivine)]
    pd.DataFrame(
        {"amcsd_id": ["0000041", "0009999"], "mineral": ["Halite", "Forsterite"], "cif": published}
    ).to_csv(tmp_path / "amcsd.csv", index=False)
    out = structure_outputs(tmp_path)
    sources = [f"materials_project={tmp_path / 'mp.csv'}", f"amcsd={tmp_path / 'amcsd.csv'}"]
    assert main(["xrd", "structures", *sources, "--published", "amcsd", *out]) == 0
    table = pd.read_parquet(tmp_path / "s.parquet").set_index("id")
    assert list(table.index) == ["mp-22862", "amcsd-0009999"]
    assert table.loc["mp-22862", "mineral"] == "Halite"  # named by the copy dropped
    forsterite = table.loc["amcsd-0009999"]
    assert (forsterite["space_group"], forsterite["source"]) == (62, "amcsd")
    assert sorted(set(forsterite["occupancy"])) == [0.1, 0.9, 1.0]
    rejects = pd.read_csv(tmp_path / "r.csv")
    assert rejects["reason"].str.startswith("duplicate").tolist() == [True]
    summary = json.loads((tmp_path / "s.json").read_text())["per_source"]
    assert summary["amcsd"]["read_share"] == 1.0 and summary["amcsd"]["kept"] == 1
    assert main(["xrd", "structures", *sources, "--published", "icsd", *out]) == 1
    assert "--published names no source: icsd" in capsys.readouterr().err


def test_bad_wavelength_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "nacl.cif").write_text(rock_salt().to(fmt="cif"))
    assert (
        main(
            [
                "xrd",
                "simulate",
                str(tmp_path / "nacl.cif"),
                "--out",
                str(tmp_path / "p.parquet"),
                "--wavelength",
                "CuKz",
                "--no-progress",
            ]
        )
        == 1
    )
    assert "unknown radiation 'CuKz'" in capsys.readouterr().err
    assert not (tmp_path / "p.parquet").exists()


def test_random_crystals_join_the_training_set(tmp_path, table_missing):
    table_missing({62}).to_parquet(tmp_path / "s.parquet", index=False)
    outputs = {
        "--out": tmp_path / "random.parquet",
        "--rejects": tmp_path / "unfilled.csv",
        "--summary": tmp_path / "random.json",
    }
    args = ["xrd", "random", str(tmp_path / "s.parquet"), "--per-group", "2", "--no-progress"]
    assert main(args + [str(x) for pair in outputs.items() for x in pair]) == 0
    summary = json.loads(outputs["--summary"].read_text())
    assert summary["crystals"] == 2 and summary["unfilled"] == 0
    assert summary["space_groups_in_train_before"] == 229
    assert summary["space_groups_in_train_after"] == 230
    tables = [str(tmp_path / "s.parquet"), str(outputs["--out"])]
    peaks = tmp_path / "p.parquet"
    assert main(["xrd", "simulate", *tables, "--out", str(peaks), "--no-progress"]) == 0
    sticks, split = load_sticks(tables, peaks)
    random_rows = [i for i, name in enumerate(sticks.ids) if name.startswith("pyxtal-62-")]
    assert len(random_rows) == 2 and set(split[random_rows]) == {"train"}
    assert set(sticks.space_group[random_rows]) == {62}
    assert all(len(sticks.sticks[i][0]) > 0 for i in random_rows)
    with pytest.raises(ValueError, match="appears twice"):
        load_sticks([tables[0], tables[0]], peaks)


def test_train_names_an_unknown_setting(tmp_path, capsys):
    args = ["xrd", "train", "--structures", str(tmp_path / "s.parquet")]
    args += ["--peaks", str(tmp_path / "p.parquet"), "--out-dir", str(tmp_path / "out")]
    assert main([*args, "--settings", '{"epochz": 3}']) != 0
    assert "unknown XRD training setting 'epochz'" in capsys.readouterr().err


def write_rock_salt_xy(path):
    pattern = xrd.render(xrd.simulate(rock_salt())).iloc[0]
    path.write_text("\n".join(f"{t:.2f} {100 * y:.4f}" for t, y in pattern.items()) + "\n")


def test_predict_uses_the_published_model_and_library_by_default(
    tmp_path, monkeypatch, capsys, save_tiny_classifier
):
    models = tmp_path / "results" / "xrd" / "models"
    models.mkdir(parents=True)
    save_tiny_classifier(models / "best.ckpt")
    write_rock_salt_xy(tmp_path / "nacl.xy")
    monkeypatch.chdir(tmp_path)
    alone = xrd.predict(["nacl.xy"], model=models / "best.ckpt", library=False)

    assert main(["xrd", "predict", "nacl.xy", "--out", "alone.csv"]) == 0
    out = capsys.readouterr().out
    assert "model: results/xrd/models/best.ckpt (published by the workflow)\n" in out
    assert "library: none (none published at results/xrd/models/library.npz)\n" in out
    assert (tmp_path / "alone.csv").read_text() == alone.to_csv(index=False)

    rng = np.random.default_rng(0)
    library = build_library(rng.random((6, 8500)), rng.integers(0, 7, 6), rng.integers(1, 231, 6))
    library.save(models / "library.npz")
    assert main(["xrd", "predict", "nacl.xy", "--out", "library.csv"]) == 0
    out = capsys.readouterr().out
    assert "library: results/xrd/models/library.npz (published by the workflow)\n" in out
    written = (tmp_path / "library.csv").read_text()
    assert "library_similarity" in written.splitlines()[0]
    expected = xrd.predict(["nacl.xy"], model=models / "best.ckpt", library=models / "library.npz")
    assert written == expected.to_csv(index=False)

    # --no-library: the model alone, as the workflow's xrd_predict_measured wants it.
    args = ["xrd", "predict", "nacl.xy", "--model", str(models / "best.ckpt"), "--no-library"]
    assert main([*args, "--out", "none.csv"]) == 0
    out = capsys.readouterr().out
    assert f"model: {models / 'best.ckpt'}\n" in out and "library: none\n" in out
    assert (tmp_path / "none.csv").read_text() == alone.to_csv(index=False)
    with pytest.raises(SystemExit) as exited:
        main([*args, "--library", "results/xrd/models/library.npz", "--out", "x.csv"])
    assert exited.value.code == 2
    rule = (REPO / "workflow" / "rules" / "xrd.smk").read_text()
    predict_rule = rule[rule.index("rule xrd_predict_measured:") :]
    assert "--model {input.model:q} --no-library --references" in predict_rule


def test_predict_without_a_published_model_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    write_rock_salt_xy(tmp_path / "nacl.xy")
    monkeypatch.chdir(tmp_path)
    assert main(["xrd", "predict", "nacl.xy", "--out", "p.csv"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nanoxtal: error: no XRD model given and none published at ")
    assert "`snakemake --cores 2 results/xrd/models/best.ckpt`" in err and "--model" in err
    assert main(["xrd", "predict", "nacl.xy", "--model", "nope.ckpt", "--out", "p.csv"]) == 1
    assert "nope.ckpt: no such model file" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
