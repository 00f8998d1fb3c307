"""The XRD API (``nanoxtal.xrd``): each function on its own, on tiny generated data."""

from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from nanoxtal import xrd
from nanoxtal.cli import main
from nanoxtal.models import ModelError
from nanoxtal.xrd.api import choose_classifier, choose_library
from nanoxtal.xrd.diffraction import PEAK_COLUMNS, SimulationError
from nanoxtal.xrd.evaluate import PREDICTION_COLUMNS
from nanoxtal.xrd.io import Measured, PatternReadError
from nanoxtal.xrd.library import build_library
from nanoxtal.xrd.profiles import Augmentation
from nanoxtal.xrd.radiation import WAVELENGTHS
from nanoxtal.xrd.structures import Source, build_table

A_NACL = 5.64  # Å

# Jobs default to what the workflow published under ./results: never the repository's own.
pytestmark = pytest.mark.usefixtures("outside_repository")


def rock_salt(a: float = A_NACL, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def write_xy(path, pattern: pd.Series) -> None:
    lines = [f"{t:.2f} {100 * y:.4f}" for t, y in pattern.items()]
    path.write_text("2theta intensity\n" + "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, save_tiny_classifier):
    """A tiny classifier, a library of 6 random patterns, and two measured .xy files."""
    folder = tmp_path_factory.mktemp("api")
    checkpoint = save_tiny_classifier(folder / "tiny.ckpt")
    rng = np.random.default_rng(0)
    library = build_library(rng.random((6, 8500)), rng.integers(0, 7, 6), rng.integers(1, 231, 6))
    library.save(folder / "library.npz")
    patterns = xrd.render(xrd.simulate({"nacl": rock_salt(), "kcl": rock_salt(6.29, "K")}))
    files = []
    for name, row in patterns.iterrows():
        write_xy(folder / f"{name}.xy", row)
        files.append(folder / f"{name}.xy")
    return checkpoint, folder / "library.npz", files


def test_read_pattern_reads_a_file_and_names_a_bad_one(tmp_path):
    two_theta = np.arange(10.0, 80.0, 0.05)
    text = "\n".join(f"{t:.2f} {math.exp(-((t - 30) ** 2)):.5f}" for t in two_theta)
    (tmp_path / "a.xy").write_text("# a comment\n" + text)
    (patterns,) = xrd.read_pattern(tmp_path / "a.xy")
    assert patterns.source == str(tmp_path / "a.xy") and patterns.index == 0
    np.testing.assert_allclose(patterns.two_theta, np.round(two_theta, 2))
    assert patterns.two_theta[patterns.intensity.argmax()] == pytest.approx(30.0)
    with pytest.raises(PatternReadError, match=r"missing\.xy: no such file"):
        xrd.read_pattern(tmp_path / "missing.xy")


def test_simulate_puts_nacl_peaks_at_bragg_angles_and_matches_the_cli(tmp_path):
    peaks = xrd.simulate(rock_salt())
    assert tuple(peaks.columns) == PEAK_COLUMNS and set(peaks["id"]) == {"NaCl"}
    # Face-centred cubic: h, k, l all odd or all even; 2θ < 90° for h² + k² + l² ≤ 24.
    allowed = [3, 4, 8, 11, 12, 16, 19, 20, 24]
    wavelength = WAVELENGTHS["CuKa"]
    bragg = [2 * math.degrees(math.asin(wavelength * math.sqrt(n) / (2 * A_NACL))) for n in allowed]
    np.testing.assert_allclose(peaks["two_theta"], bragg, atol=1e-6)
    np.testing.assert_allclose(peaks["d"], [A_NACL / math.sqrt(n) for n in allowed], rtol=1e-9)
    assert peaks.loc[peaks["intensity"].idxmax(), ["h", "k", "l"]].abs().sum() == 2  # (200)
    assert peaks["intensity"].max() == 100
    # The command line writes exactly the table the function returns.
    (tmp_path / "nacl.cif").write_text(rock_salt().to(fmt="cif"))
    out = tmp_path / "peaks.parquet"
    assert main(["xrd", "simulate", str(tmp_path / "nacl.cif"), "--out", str(out)]) == 0
    from_cif = xrd.simulate(tmp_path / "nacl.cif")
    pd.testing.assert_frame_equal(pd.read_parquet(out), from_cif, check_exact=True)
    assert set(from_cif["id"]) == {"nacl"}
    pd.testing.assert_frame_equal(from_cif.drop(columns="id"), peaks.drop(columns="id"))


def test_simulate_takes_every_kind_of_structure_input(tmp_path):
    nacl, kcl = rock_salt(), rock_salt(6.29, "K")
    assert xrd.simulate([nacl, kcl, nacl])["id"].unique().tolist() == ["NaCl", "KCl", "NaCl_2"]
    assert xrd.simulate({"a": kcl, "b": nacl})["id"].unique().tolist() == ["a", "b"]
    texts = [nacl.to(fmt="cif"), kcl.to(fmt="cif")]
    cifs = pd.DataFrame({"material_id": ["mp-1", "mp-2"], "cif": texts})
    from_frame = xrd.simulate(cifs)
    assert from_frame["id"].unique().tolist() == ["mp-1", "mp-2"]
    assert xrd.simulate(cifs.drop(columns="material_id"))["id"].unique().tolist() == ["0", "1"]
    cifs.to_csv(tmp_path / "s.csv", index=False)
    pd.testing.assert_frame_equal(xrd.simulate(tmp_path / "s.csv"), from_frame)
    sources = [Source(i, c) for i, c in zip(cifs["material_id"], cifs["cif"], strict=True)]
    table, _ = build_table(sources, progress=False)
    table.to_parquet(tmp_path / "s.parquet", index=False)
    from_table = xrd.simulate(table)
    pd.testing.assert_frame_equal(xrd.simulate(str(tmp_path / "s.parquet")), from_table)
    # Conventional cells of the same crystals: the same peaks (up to the hkl chosen).
    columns = ["id", "two_theta", "intensity"]
    pd.testing.assert_frame_equal(from_table[columns], from_frame[columns], atol=1e-6)
    with pytest.raises(ValueError, match="lacks"):
        xrd.simulate(table.drop(columns="species"))


def test_simulate_errors_raise_or_warn_naming_the_structure(tmp_path):
    (tmp_path / "nacl.cif").write_text(rock_salt().to(fmt="cif"))
    (tmp_path / "junk.cif").write_text("not a cif at all")
    einsteinium = Structure(Lattice.cubic(3.7), ["Es"], [[0, 0, 0]])  # no scattering factors
    with pytest.raises(SimulationError, match=r"^junk: invalid CIF"):
        xrd.simulate(tmp_path)
    with pytest.warns(UserWarning) as caught:
        peaks = xrd.simulate([tmp_path, einsteinium, tmp_path / "nope.cif"], errors="warn")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3
    assert messages[0].startswith("junk: invalid CIF")
    assert messages[1] == "Es: no X-ray scattering factors for element 'Es'"
    assert "nope.cif: no such file" in messages[2]
    pd.testing.assert_frame_equal(peaks, xrd.simulate(tmp_path / "nacl.cif"))
    with pytest.raises(ValueError, match="errors must be"):
        xrd.simulate(rock_salt(), errors="ignore")


def test_render_gives_one_row_per_id_with_peaks_at_the_sticks():
    peaks = xrd.simulate({"nacl": rock_salt(), "kcl": rock_salt(6.29, "K")})
    patterns = xrd.render(peaks)
    assert patterns.index.tolist() == ["nacl", "kcl"] and patterns.index.name == "id"
    assert patterns.shape == (2, 8500) and patterns.columns.name == "two_theta"
    assert patterns.columns[0] == 5.0 and patterns.columns[1] == 5.01
    assert patterns.columns[-1] == 89.99
    np.testing.assert_allclose(patterns.max(axis=1), 1.0, rtol=1e-6)
    for name, row in patterns.iterrows():
        sticks = peaks[peaks["id"] == name]
        strongest = sticks.loc[sticks["intensity"].idxmax(), "two_theta"]
        assert row.idxmax() == pytest.approx(strongest, abs=0.015)
        # Every visible stick is a local maximum of its pattern, within two grid points.
        for position in sticks.loc[sticks["intensity"] > 5, "two_theta"]:
            window = row[(row.index > position - 0.3) & (row.index < position + 0.3)]
            assert window.idxmax() == pytest.approx(position, abs=0.02)
    # Experimental effects are seeded; lattice strain needs the lattices.
    with pytest.raises(ValueError, match="pass structures="):
        xrd.render(peaks, Augmentation())
    sources = [Source(n, s.to(fmt="cif")) for n, s in (("nacl", rock_salt()),)]
    table, _ = build_table(sources, progress=False)
    noisy = xrd.render(xrd.simulate(table), Augmentation(), seed=1, structures=table)
    again = xrd.render(xrd.simulate(table), Augmentation(), seed=1, structures=table)
    pd.testing.assert_frame_equal(noisy, again)
    other = xrd.render(xrd.simulate(table), Augmentation(), seed=2, structures=table)
    assert not np.allclose(noisy.to_numpy(), other.to_numpy())
    with pytest.raises(ValueError, match="'kcl'"):
        xrd.render(peaks, structures=table)


def test_predict_on_files_equals_predict_on_their_patterns(tiny):
    checkpoint, _, files = tiny
    table = xrd.predict(files, model=checkpoint, library=False)
    assert list(table.columns[: len(PREDICTION_COLUMNS)]) == list(PREDICTION_COLUMNS)
    assert table["source"].tolist() == [str(f) for f in files]
    assert "library_similarity" not in table.columns
    assert table["space_group"].between(1, 230).all() and (table["coverage"] > 0.9).all()
    read = [pattern for path in files for pattern in xrd.read_pattern(path)]
    pd.testing.assert_frame_equal(xrd.predict(read, model=checkpoint, library=False), table)
    # One file, a string path, a loaded model: the same row.
    single = xrd.predict(str(files[0]), model=choose_classifier(checkpoint).model)
    pd.testing.assert_frame_equal(single, table.iloc[:1])  # batch of 1: float noise only


def test_predict_takes_rendered_patterns_and_arrays_on_the_grid(tiny):
    checkpoint, _, _ = tiny
    patterns = xrd.render(xrd.simulate({"nacl": rock_salt(), "kcl": rock_salt(6.29, "K")}))
    from_frame = xrd.predict(patterns, model=checkpoint, library=False)
    assert from_frame["source"].tolist() == ["nacl", "kcl"] and (from_frame["index"] == 0).all()
    from_array = xrd.predict(patterns.to_numpy(), model=checkpoint, library=False)
    assert from_array["source"].tolist() == ["array", "array"]
    assert from_array["index"].tolist() == [0, 1]
    probabilities = [c for c in from_frame.columns if c.startswith("p_")]
    np.testing.assert_allclose(from_frame[probabilities], from_array[probabilities], rtol=1e-4)
    # An array is on the model grid: the same as Measured patterns of the grid's 2θ.
    grid = np.round(5.0 + 0.01 * np.arange(8500), 2)
    rows = enumerate(patterns.to_numpy())
    measured = [Measured("array", i, grid, row, WAVELENGTHS["CuKa"]) for i, row in rows]
    probabilities_measured = xrd.predict(measured, model=checkpoint, library=False)[probabilities]
    np.testing.assert_allclose(from_array[probabilities], probabilities_measured, rtol=1e-4)
    with pytest.raises(ValueError, match="model grid"):
        xrd.predict(np.zeros((2, 100)), model=checkpoint)


def test_predict_warns_about_a_bad_file_and_predicts_the_rest(tiny, tmp_path):
    checkpoint, _, files = tiny
    bad = tmp_path / "bad.xy"
    bad.write_text("no numbers here\n")
    with pytest.raises(PatternReadError, match=r"bad\.xy: no lines with two numeric columns"):
        xrd.predict([files[0], bad], model=checkpoint, library=False)
    with pytest.warns(UserWarning, match=r"bad\.xy") as caught:
        table = xrd.predict(
            [files[0], bad, files[1]], model=checkpoint, library=False, errors="warn"
        )
    assert len(caught) == 1
    pd.testing.assert_frame_equal(table, xrd.predict(files, model=checkpoint, library=False))


def test_predict_without_a_published_model_names_where_it_looked(tiny, tmp_path, monkeypatch):
    _, _, files = tiny
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=r"results/xrd/models/best\.ckpt.*snakemake --cores 2"):
        xrd.predict(files)
    with pytest.raises(ModelError, match=r"nope\.ckpt"):
        xrd.predict(files, model=tmp_path / "nope.ckpt")
    assert choose_library(None) == (
        None,
        "none (none published at results/xrd/models/library.npz)",
    )


def test_predict_uses_the_published_model_and_library(tiny, tmp_path, monkeypatch):
    checkpoint, library, files = tiny
    models = tmp_path / "results" / "xrd" / "models"
    models.mkdir(parents=True)
    shutil.copy(checkpoint, models / "best.ckpt")
    monkeypatch.chdir(tmp_path)
    # A published model and no published library: the model alone.
    alone = xrd.predict(files, model=checkpoint, library=False)
    pd.testing.assert_frame_equal(xrd.predict(files), alone)
    shutil.copy(library, models / "library.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no embeddings in it: nothing to warn of
        published = xrd.predict(files)
    assert {"library_space_group", "library_similarity"} <= set(published.columns)
    given = xrd.predict(files, model=checkpoint, library=library)
    pd.testing.assert_frame_equal(published, given)
    pd.testing.assert_frame_equal(xrd.predict(files, library=False), alone)
    chosen = choose_classifier()
    assert chosen.describe == "results/xrd/models/best.ckpt (published by the workflow)"
