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


def test_embeddings_pick_the_match_and_the_patterns_keep_the_trust(tmp_path):
    # Row 0 looks like the query; row 1 is what the network's representation says it is.
    patterns = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    cs, sg = np.array([0, 1, 2]), np.array([1, 2, 3])
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    query, query_embedding = np.array([[1.0, 0.1, 0.0]]), np.array([[0.05, 1.0]])
    plain = build_library(patterns, cs, sg, smoothing_points=0)
    assert plain.match(query)["row"].tolist() == [0]
    joint = build_library(patterns, cs, sg, 0, embeddings, "abc")
    found = joint.match(query, query_embedding)
    assert found["row"].tolist() == [1] and found["space_group"].tolist() == [2]
    # The reported similarity (and so the trust) is the patterns' cosine at that row.
    cosine = (0.6 + 0.1 * 0.8) / np.hypot(1.0, 0.1)
    assert found["similarity"][0] == pytest.approx(cosine, rel=1e-5)
    assert (joint.trust_space_group, joint.trust_crystal_system) == (
        plain.trust_space_group,
        plain.trust_crystal_system,
    )
    # Without query embeddings, or with weight 0, the patterns alone decide.
    assert joint.match(query)["row"].tolist() == [0]
    with pytest.raises(ValueError, match="query embeddings"):
        joint.match(query, np.ones((1, 3)))
    # Saved and read back with its embeddings and model; a file without them still loads.
    again = load_library(joint.save(tmp_path / "joint.npz"))
    assert again.model_fingerprint == "abc" and again.embedding_weight == joint.embedding_weight
    assert again.match(query, query_embedding)["row"].tolist() == [1]
    assert load_library(plain.save(tmp_path / "plain.npz")).embeddings is None
    with pytest.raises(ValueError, match="2 embeddings for 3 patterns"):
        plain.with_embeddings(embeddings[:2], "abc")


def test_search_library_uses_only_its_own_models_embeddings():
    import torch

    from nanoxtal.xrd.evaluate import search_library
    from nanoxtal.xrd.module import XrdClassifier, embed_patterns
    from nanoxtal.xrd.nets import build_net

    def model(seed: int) -> XrdClassifier:
        torch.manual_seed(seed)
        return XrdClassifier(build_net("xrdnet", width=8), {"name": "xrdnet", "width": 8}).eval()

    rng = np.random.default_rng(3)
    patterns = rng.uniform(size=(6, 8500)).astype(np.float32) ** 20
    cs, sg = np.arange(6) % 7, np.arange(6) + 1
    ours, other = model(0), model(1)
    assert ours.fingerprint() == model(0).fingerprint() != other.fingerprint()
    ours.temperature.fill_(2.0)  # calibration does not change which model it is
    assert ours.fingerprint() == model(0).fingerprint()
    embeddings = embed_patterns(ours, patterns)
    assert embeddings.shape == (6, 512)
    library = build_library(patterns, cs, sg, 10.0, embeddings, ours.fingerprint())
    queries = patterns[:3] + rng.normal(0, 0.01, (3, 8500)).astype(np.float32)
    expected = library.match(queries, embed_patterns(ours, queries))
    assert np.array_equal(search_library(library, ours, queries)["row"], expected["row"])
    with pytest.warns(UserWarning, match="another model"):
        found = search_library(library, other, queries)
    assert np.array_equal(found["row"], library.match(queries)["row"])
