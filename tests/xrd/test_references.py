from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nanoxtal import xrd
from nanoxtal.cli import main
from nanoxtal.xrd.datamodule import load_sticks, render_sticks
from nanoxtal.xrd.io import read_patterns, to_grid
from nanoxtal.xrd.profiles import Augmentation, Renderer
from nanoxtal.xrd.references import (
    MATCH_FIELDS,
    References,
    ReferencesError,
    load_references,
    pool,
    references_from_tables,
)


@pytest.fixture(scope="module")
def references(tiny_tables, tmp_path_factory):
    structures, peaks, _ = tiny_tables
    path = tmp_path_factory.mktemp("references") / "references.npz"
    references_from_tables(structures, peaks, progress=False).save(path)
    return path


def test_pool_averages_runs_of_points():
    patterns = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_allclose(pool(patterns, 3), [[1, 4], [7, 10]])
    np.testing.assert_allclose(pool(patterns, 4), [[1.5], [7.5]])  # the partial run is dropped
    np.testing.assert_array_equal(pool(patterns, 1), patterns)


def test_a_structures_own_render_matches_it_first(tiny_tables, references):
    structures, peaks, table = tiny_tables
    loaded = load_references(references)
    assert len(loaded) == len(table) and loaded.patterns.shape[1] == 8500 // 5
    assert loaded.ids.tolist() == table["id"].tolist()
    sticks, _ = load_sticks(structures, peaks)
    clean = render_sticks(sticks, Renderer(), Augmentation.clean(), seed=5)
    matches = loaded.match(clean)
    assert (matches.rows[:, 0] == np.arange(len(table))).all()
    assert (matches.similarity[:, 0] > 0.999).all()
    # Best first, three different phases each.
    assert (np.diff(matches.similarity, axis=1) <= 0).all()
    assert all(len(set(row)) == 3 for row in matches.rows)
    columns = loaded.columns(matches)
    assert list(columns.columns[:5]) == [f"match_1_{field}" for field in MATCH_FIELDS]
    assert columns["match_1_space_group"].tolist() == table["space_group"].tolist()
    assert columns["match_1_formula"].tolist() == table["formula"].tolist()
    with pytest.raises(ValueError, match=r"expected \(M, 8500\)"):
        loaded.match(clean[:, :100])


def test_measured_like_patterns_find_their_phase(tiny_tables, tiny_measured, references):
    _, _, table = tiny_tables
    measured = read_patterns(tiny_measured)
    grids = np.stack([to_grid(p)[0] for p in measured])
    truth = np.repeat(np.arange(len(table)), 4)  # four noisy renders of each crystal
    matches = load_references(references).match(grids)
    # Texture, shifts, strain, impurities and noise, yet the phase comes first for most and
    # among the three for nearly all; a shuffled reference order would give 1 in 12.
    assert (matches.rows[:, 0] == truth).mean() >= 0.75
    assert (matches.rows == truth[:, None]).any(1).mean() >= 0.9


def test_a_trusted_close_match_moves_the_prediction(tiny_measured, references):
    measured = read_patterns(tiny_measured)
    grids = np.stack([to_grid(p)[0] for p in measured])
    space_group = np.array([p.labels["space_group"] for p in measured])
    named = load_references(references)
    assert named.trust_space_group is None
    matches = named.match(grids)
    uniform = np.full((len(grids), 230), 1 / 230)
    # Names only: the probabilities stay the model's.
    assert named.mix(matches, uniform) is uniform
    trusted = named.fit_trust(grids, space_group)
    a, b = trusted.trust_space_group
    assert b > 0  # closer matches are right more often on these patterns
    p_sg = trusted.mix(matches, uniform)
    np.testing.assert_allclose(p_sg.sum(1), 1.0)
    first = named.space_group[matches.rows[:, 0]]
    # From a uniform answer, every prediction becomes match 1's space group, so the accuracy
    # is match 1's (about 1 in 230 before).
    assert (p_sg.argmax(1) + 1 == first).all()
    assert (p_sg.argmax(1) + 1 == space_group).mean() >= 0.75
    # The curves travel with the file.
    path = trusted.save(references.parent / "trusted.npz")
    assert load_references(path).trust_space_group == pytest.approx((a, b))


def test_patterns_unlike_every_phase_are_flagged_and_held_back(
    tiny_tables, tiny_measured, references, tmp_path, monkeypatch, save_tiny_classifier
):
    measured = read_patterns(tiny_measured)
    grids = np.stack([to_grid(p)[0] for p in measured])
    space_group = np.array([p.labels["space_group"] for p in measured])
    named = load_references(references)
    assert named.unlike_below is None and not named.unlike(named.match(grids)).any()
    trusted = named.fit_trust(grids, space_group)
    similarity = named.match(grids).similarity[:, 0]
    # The gate is the 1 % quantile of match 1's similarity on the labelled patterns.
    assert trusted.unlike_below == pytest.approx(np.quantile(similarity, 0.01))
    assert trusted.unlike(named.match(grids)).sum() <= np.ceil(0.01 * len(grids))  # 1 of 48
    # One sharp peak below any of the tiny crystals' first reflections is like none of them.
    two_theta = 5 + 0.01 * np.arange(8500)
    humps = np.stack([np.exp(-(((two_theta - c) / 0.05) ** 2)) for c in (5.5, 6.5)])
    assert trusted.unlike(trusted.match(humps)).all()
    path = trusted.save(tmp_path / "gated.npz")
    assert load_references(path).unlike_below == pytest.approx(trusted.unlike_below)

    # predict holds them back whatever the model's probability; patterns like a phase are not.
    structures, peaks, table = tiny_tables
    sticks, _ = load_sticks(structures, peaks)
    clean = render_sticks(sticks, Renderer(), Augmentation.clean(), seed=5)[:3]
    columns = np.round(5 + 0.01 * np.arange(8500), 2)
    frame = pd.DataFrame(np.concatenate([clean, humps]), columns=columns)
    model = save_tiny_classifier(tmp_path / "m.ckpt")
    monkeypatch.chdir(tmp_path)
    table = xrd.predict(frame, model=model, library=False, references=path, min_confidence=0.0)
    assert table["unlike_references"].tolist() == [False] * 3 + [True] * 2
    assert table["abstained"].tolist() == [False] * 3 + [True] * 2


def test_only_the_sources_asked_for(tiny_tables, tmp_path):
    _, peaks, table = tiny_tables
    renamed = table.assign(source=["minerals"] * 3 + ["other"] * (len(table) - 3))
    renamed.to_parquet(tmp_path / "s.parquet", index=False)
    kept = references_from_tables(tmp_path / "s.parquet", peaks, ["minerals"], progress=False)
    assert kept.ids.tolist() == table["id"].tolist()[:3]
    with pytest.raises(ValueError, match=r"s\.parquet: no structures of source\(s\) \['amcsd'\]"):
        references_from_tables(tmp_path / "s.parquet", peaks, ["amcsd"], progress=False)


def test_a_bad_references_file_is_a_clear_error(references, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(ReferencesError, match=r"junk\.npz: not a references file"):
        load_references(junk)
    with pytest.raises(ReferencesError, match=r"missing\.npz: not a references file"):
        load_references(tmp_path / "missing.npz")
    with np.load(references) as archive:
        arrays = dict(archive)
    np.savez(tmp_path / "short.npz", **{**arrays, "names": arrays["names"][:-1]})
    with pytest.raises(ReferencesError, match=r"short\.npz: its arrays differ in length"):
        load_references(tmp_path / "short.npz")
    np.savez(tmp_path / "future.npz", **{**arrays, "format": 99})
    with pytest.raises(ReferencesError, match=r"future\.npz: references format 99, expected 1"):
        load_references(tmp_path / "future.npz")


def test_predict_names_three_reference_phases(
    tiny_tables, references, tmp_path, monkeypatch, save_tiny_classifier, capsys
):
    structures, peaks, table = tiny_tables
    model = save_tiny_classifier(tmp_path / "m.ckpt")
    sticks, _ = load_sticks(structures, peaks)
    clean = render_sticks(sticks, Renderer(), Augmentation.clean(), seed=5)
    frame = pd.DataFrame(clean, index=table["id"], columns=np.round(5 + 0.01 * np.arange(8500), 2))
    monkeypatch.chdir(tmp_path)
    alone = xrd.predict(frame, model=model, library=False)
    assert not any(c.startswith("match_") for c in alone.columns)
    named = xrd.predict(frame, model=model, library=False, references=references)
    assert named["match_1_id"].tolist() == table["id"].tolist()
    assert {f"match_{k}_{f}" for k in (1, 2, 3) for f in MATCH_FIELDS} <= set(named.columns)
    # The references name phases; they do not change the prediction.
    pd.testing.assert_frame_equal(named[alone.columns], alone)
    assert isinstance(load_references(references), References)

    # The CLI: published references by default, --references PATH, --no-references.
    xy = tmp_path / "x0.xy"
    xy.write_text("\n".join(f"{t:.2f} {100 * y:.4f}" for t, y in frame.iloc[0].items()) + "\n")
    published = tmp_path / "results" / "xrd" / "references.npz"
    published.parent.mkdir(parents=True)
    published.write_bytes(references.read_bytes())
    args = ["xrd", "predict", "x0.xy", "--model", str(model), "--no-library"]
    assert main([*args, "--out", "p.csv"]) == 0
    assert "references: results/xrd/references.npz (published by the workflow)" in (
        capsys.readouterr().out
    )
    assert pd.read_csv(tmp_path / "p.csv")["match_1_id"].tolist() == [table["id"][0]]
    assert main([*args, "--no-references", "--out", "q.csv"]) == 0
    assert "references: none\n" in capsys.readouterr().out
    assert "match_1_id" not in pd.read_csv(tmp_path / "q.csv").columns
    # A bad references file: a clear error naming it, and nothing written.
    (tmp_path / "bad.npz").write_text("junk")
    assert main([*args, "--references", "bad.npz", "--out", "r.csv"]) == 1
    assert "bad.npz: not a references file" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()
