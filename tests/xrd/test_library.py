from __future__ import annotations

import numpy as np
import pytest

from nanoxtal.xrd.library import (
    LibraryError,
    build_library,
    combine,
    fit_logistic,
    library_probabilities,
    load_library,
    nearest_neighbour,
    sigmoid,
    smooth,
)


def test_nearest_neighbour_uses_cosine_similarity():
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = np.array([[10.0, 0.1], [0.2, 3.0], [2.0, 2.1]])
    index, similarity = nearest_neighbour(reference, queries)
    assert index.tolist() == [0, 1, 2]
    assert similarity[2] == pytest.approx(np.dot([1, 1], [2, 2.1]) / np.sqrt(2) / np.hypot(2, 2.1))


def test_leave_one_out_never_matches_itself():
    reference = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    index, _ = nearest_neighbour(reference, reference, exclude_self=True)
    assert index.tolist() == [1, 0, 1]


def test_logistic_fit_recovers_the_generating_curve():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 20000)
    y = rng.uniform(size=x.size) < sigmoid(-4.0, 8.0, x)
    a, b = fit_logistic(x, y)
    assert a == pytest.approx(-4.0, abs=0.25)
    assert b == pytest.approx(8.0, abs=0.5)


def test_logistic_fit_stays_finite_on_separable_data():
    a, b = fit_logistic(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert np.isfinite([a, b]).all()
    assert sigmoid(a, b, np.array([0.9]))[0] > 0.9 > 0.1 > sigmoid(a, b, np.array([0.1]))[0]


def test_combine_lets_trusted_matches_decide_and_keeps_probabilities():
    p = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    mixed = combine(p, label=np.array([3, 3]), trust=np.array([0.9, 0.05]), offset=1)
    assert mixed.sum(1) == pytest.approx([1.0, 1.0])
    assert mixed.argmax(1).tolist() == [2, 0]  # trusted match wins; an untrusted one does not
    assert mixed[1, 2] == pytest.approx(0.05 + 0.95 * 0.1)


def _clustered_library(rng: np.random.Generator):
    """Two tight copies of each of 30 'minerals' (labels = mineral % 5) and 30 loners."""
    prototypes = rng.uniform(size=(60, 200)) ** 8
    twins = np.concatenate([prototypes[:30], prototypes[:30] + rng.normal(0, 0.01, (30, 200))])
    patterns = np.concatenate([twins, prototypes[30:]]).clip(0)
    space_group = np.concatenate([np.arange(30) % 5, np.arange(30) % 5, rng.integers(0, 5, 30)])
    return patterns, space_group % 7, space_group + 1


def test_library_trusts_close_matches_only():
    patterns, cs, sg = _clustered_library(np.random.default_rng(1))
    library = build_library(patterns, cs, sg, smoothing_points=0)  # spikes, not peaks
    close, far = sigmoid(*library.trust_space_group, np.array([0.99, 0.2]))
    assert close > 0.9
    assert far < 0.5


def test_library_probabilities_fix_what_the_network_misses(tmp_path):
    rng = np.random.default_rng(2)
    patterns, cs, sg = _clustered_library(rng)
    library = build_library(patterns, cs, sg, smoothing_points=0)
    queries = patterns[:30] + rng.normal(0, 0.01, (30, 200))
    truth = sg[:30]
    # A network that is always wrong, but not certain.
    p_sg = np.full((30, 230), 0.5 / 229)
    p_sg[np.arange(30), truth % 230] = 0.5  # class truth+1: never the truth
    p_cs = np.full((30, 7), 1 / 7)
    mixed_cs, mixed_sg = library_probabilities(library.match(queries), p_cs, p_sg)
    assert (mixed_sg.argmax(1) + 1 == truth).mean() > 0.9
    assert mixed_sg.sum(1) == pytest.approx(np.ones(30))
    assert (mixed_cs.argmax(1) == cs[:30]).mean() > 0.9
    # Saved and read back, it answers the same.
    again = load_library(library.save(tmp_path / "library.npz"))
    assert again.smoothing_points == 0
    assert np.allclose(library_probabilities(again.match(queries), p_cs, p_sg)[1], mixed_sg)


def test_load_library_names_a_bad_file(tmp_path):
    bad = tmp_path / "notes.npz"
    bad.write_text("not an archive")
    with pytest.raises(LibraryError, match=r"notes\.npz"):
        load_library(bad)
    with pytest.raises(LibraryError, match=r"missing\.npz"):
        load_library(tmp_path / "missing.npz")


def test_build_library_refuses_too_few_patterns():
    with pytest.raises(ValueError, match="at least 2"):
        build_library(np.ones((1, 5)), np.zeros(1), np.ones(1))


def test_smoothing_keeps_area_and_tolerates_a_small_shift():
    x = np.arange(400)
    peak = np.exp(-0.5 * ((x - 200) / 2.0) ** 2)[None]
    shifted = np.exp(-0.5 * ((x - 208) / 2.0) ** 2)[None]
    smoothed = smooth(peak, 10.0)
    assert smoothed.sum() == pytest.approx(peak.sum(), rel=1e-4)
    assert smoothed.argmax() == 200
    # An 8-point (0.08°) shift leaves raw peaks nearly orthogonal, smoothed ones alike.
    assert nearest_neighbour(peak, shifted)[1][0] < 0.05
    assert nearest_neighbour(smooth(peak, 10.0), smooth(shifted, 10.0))[1][0] > 0.8
    assert np.array_equal(smooth(peak, 0), peak.astype(np.float32))
