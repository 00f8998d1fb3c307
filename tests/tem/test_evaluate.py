from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nanoxtal.tem.evaluate import (
    average_precision,
    box_count_error,
    compare_methods,
    count_error,
    diameter_error,
    equivalent_diameters,
    evaluate_set,
    evaluate_synthetic_shapes,
    match_instances,
    mean_iou,
    shape_micrograph,
    summarise,
)
from nanoxtal.tem.io import LabelledImage
from nanoxtal.tem.simulate import SHAPE_CLASSES, image_rng


def squares(shape: tuple[int, int], boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """Label image with rectangles (row0, col0, row1, col1) painted in the given ids."""
    labels = np.zeros(shape, dtype=np.int32)
    for label, (r0, c0, r1, c1) in boxes.items():
        labels[r0:r1, c0:c1] = label
    return labels


FOUR = squares(
    (40, 40), {1: (2, 2, 10, 10), 2: (2, 20, 10, 28), 3: (20, 2, 28, 10), 4: (20, 20, 28, 28)}
)


def test_perfect_prediction_with_other_ids():
    # Ids are arbitrary and may have gaps (as in real annotation files).
    lookup = np.array([0, 70, 3, 12, 9])
    predicted = lookup[FOUR]
    ap = average_precision(FOUR, predicted)
    assert ap["ap50"] == ap["ap75"] == ap["ap90"] == 1.0
    assert ap["precision90"] == ap["recall90"] == 1.0
    ious = mean_iou(FOUR, predicted)
    assert ious == {"foreground_iou": 1.0, "semantic_miou": 1.0, "matched_iou": 1.0}
    assert count_error(4, 4) == 0.0
    assert diameter_error(FOUR, predicted) == 0.0


def test_one_missing_particle():
    predicted = np.where(FOUR == 4, 0, FOUR)
    ap = average_precision(FOUR, predicted)
    assert (ap["tp50"], ap["fp50"], ap["fn50"]) == (3, 0, 1)
    assert ap["ap50"] == pytest.approx(3 / 4)
    assert ap["precision50"] == 1.0
    assert ap["recall50"] == pytest.approx(3 / 4)
    assert count_error(4, 3) == pytest.approx(0.25)
    assert mean_iou(FOUR, predicted)["foreground_iou"] == pytest.approx(3 / 4)


def test_merged_pair():
    truth = squares((20, 30), {1: (0, 0, 10, 10), 2: (0, 10, 10, 20)})
    predicted = squares((20, 30), {5: (0, 0, 10, 20)})
    matching = match_instances(truth, predicted)
    assert (matching.n_true, matching.n_pred) == (2, 1)
    np.testing.assert_allclose(matching.iou.toarray(), [[0.5], [0.5]])
    ap = average_precision(truth, predicted)
    # IoU 0.5 is a match at 0.5 (ties go to the lower truth id), none at 0.75.
    assert (ap["tp50"], ap["fp50"], ap["fn50"]) == (1, 0, 1)
    assert ap["ap50"] == 0.5
    assert (ap["tp75"], ap["fp75"], ap["fn75"]) == (0, 1, 2)
    assert ap["ap75"] == 0.0
    assert count_error(2, 1) == 0.5
    # One 10×20 region against two 10×10: the mean area doubles, the diameter grows by √2.
    assert diameter_error(truth, predicted) == pytest.approx(math.sqrt(2) - 1)


@pytest.mark.parametrize(
    ("covered_px", "matched_at"),
    [(8, {0.5}), (12, {0.5, 0.75}), (15, {0.5, 0.75, 0.9}), (7, set())],
)
def test_iou_threshold_boundaries(covered_px, matched_at):
    # A 4×4 truth square; the prediction covers the first ``covered_px`` of its pixels only,
    # so IoU = covered/16: 8 → 0.5 and 12 → 0.75 exactly, which count as matches.
    truth = squares((6, 6), {1: (1, 1, 5, 5)})
    predicted = np.zeros_like(truth)
    rows, cols = np.nonzero(truth)
    predicted[rows[:covered_px], cols[:covered_px]] = 1
    ap = average_precision(truth, predicted, thresholds=(0.5, 0.75, 0.9))
    for threshold, suffix in ((0.5, "50"), (0.75, "75"), (0.9, "90")):
        assert ap[f"tp{suffix}"] == (threshold in matched_at)


def test_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, size=(30, 30))
    predicted = rng.integers(0, 5, size=(30, 30)) * 3  # ids 0, 3, 6, 9, 12
    matching = match_instances(truth, predicted)
    expected = np.zeros((matching.n_true, matching.n_pred))
    for i, t in enumerate(matching.truth_ids):
        for j, p in enumerate(matching.pred_ids):
            a, b = truth == t, predicted == p
            expected[i, j] = (a & b).sum() / (a | b).sum()
    np.testing.assert_allclose(matching.iou.toarray(), expected)
    # Greedy one-to-one: each side at most once, in decreasing IoU.
    assert len(set(matching.matched_truth)) == len(matching.matched_truth)
    assert len(set(matching.matched_pred)) == len(matching.matched_pred)
    assert np.all(np.diff(matching.matched_iou) <= 0)


def test_empty_images():
    empty = np.zeros((8, 8), dtype=np.int32)
    assert average_precision(empty, empty)["ap50"] == 1.0
    assert mean_iou(empty, empty)["foreground_iou"] == 1.0
    ap = average_precision(FOUR, np.zeros_like(FOUR))
    assert ap["ap50"] == 0.0 and ap["recall50"] == 0.0 and math.isnan(ap["precision50"])
    assert math.isnan(mean_iou(FOUR, np.zeros_like(FOUR))["matched_iou"])
    assert math.isnan(diameter_error(FOUR, np.zeros_like(FOUR)))
    assert count_error(0, 0) == 0.0 and count_error(0, 3) == math.inf


def test_semantic_miou_averages_foreground_and_background():
    truth = squares((10, 10), {1: (0, 0, 5, 10)})  # top half
    predicted = squares((10, 10), {1: (0, 0, 10, 5)})  # left half
    ious = mean_iou(truth, predicted)
    assert ious["foreground_iou"] == pytest.approx(25 / 75)
    assert ious["semantic_miou"] == pytest.approx((25 / 75 + 25 / 75) / 2)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="shapes differ"):
        match_instances(FOUR, FOUR[:-1])
    with pytest.raises(ValueError, match="integer"):
        match_instances(FOUR.astype(float), FOUR)


def test_diameters_and_box_counts():
    assert equivalent_diameters(squares((20, 20), {2: (0, 0, 10, 10)})) == pytest.approx(
        [2 * math.sqrt(100 / math.pi)]
    )
    boxes = np.zeros((5, 4))
    assert box_count_error(boxes, FOUR) == pytest.approx(0.2)


def test_sample_diameter_error_pools_interior_particles():
    # Truth: an interior 8x8 square and a 4x4 fragment cut by the edge; the prediction misses
    # the fragment and draws the interior particle 10x10. Per image, the mean over all
    # instances moves with the missed fragment; the sample mean of interior particles does not.
    truth = squares((40, 40), {1: (10, 10, 18, 18), 2: (0, 30, 4, 34)})
    predicted = squares((40, 40), {7: (9, 9, 19, 19)})
    assert equivalent_diameters(truth, interior=True) == pytest.approx(
        [2 * math.sqrt(64 / math.pi)]
    )
    assert equivalent_diameters(predicted, interior=True) == pytest.approx(
        [2 * math.sqrt(100 / math.pi)]
    )
    assert len(equivalent_diameters(truth)) == 2
    image = np.zeros(truth.shape, np.float32)
    items = [
        LabelledImage("a", image, instances=truth),
        LabelledImage("b", image, instances=FOUR),
    ]
    answers = iter([predicted, FOUR])
    _, summary = evaluate_set(items, lambda pixels: next(answers))
    d8, d10 = (2 * math.sqrt(area / math.pi) for area in (64, 100))
    # Pooled interior means: truth (d8 + 4 · d8) / 5, prediction (d10 + 4 · d8) / 5.
    assert summary["sample_diameter_error"] == pytest.approx((d10 - d8) / (5 * d8))
    per_image_a = abs(d10 - (d8 + 2 * math.sqrt(16 / math.pi)) / 2) / (
        (d8 + 2 * math.sqrt(16 / math.pi)) / 2
    )
    assert summary["diameter_error"] == pytest.approx(per_image_a / 2)


def test_evaluate_set_records_failures_and_continues():
    image = np.linspace(0, 1, FOUR.size, dtype=np.float32).reshape(FOUR.shape)

    def predictor(pixels):
        if pixels[0, 0] < 0:
            raise RuntimeError("model crashed")
        return FOUR

    items = [
        LabelledImage("good", image, instances=FOUR),
        LabelledImage("unreadable", None, error="bad.png: empty file (0 bytes)"),
        LabelledImage("crash", image - 1, instances=FOUR),
        LabelledImage("boxes", image, boxes=np.zeros((5, 4))),
    ]
    table, summary = evaluate_set(items, predictor)
    assert list(table["name"]) == ["good", "unreadable", "crash", "boxes"]
    errors = dict(zip(table["name"], table["error"], strict=True))
    assert errors["good"] is None and errors["boxes"] is None
    assert "empty file" in errors["unreadable"]
    assert "model crashed" in errors["crash"]
    assert summary["images"] == 4 and summary["evaluated"] == 2
    assert [failure["name"] for failure in summary["failed"]] == ["unreadable", "crash"]
    assert summary["ap50"] == 1.0 and summary["ap50_pooled"] == 1.0
    # Count error: 0 on the instance image, |4 − 5|/5 on the box image.
    assert summary["count_error"] == pytest.approx(0.1)
    assert summary["n_true"] == 9 and summary["n_pred"] == 8
    assert summarise(table[table["name"] == "boxes"])["evaluated"] == 1


def scored(values: dict[str, list[float | None]], metric: str = "ap50") -> pd.DataFrame:
    """Per-image rows of several methods; None is an image the method failed on."""
    rows = []
    for method, per_image in values.items():
        for index, value in enumerate(per_image):
            error = "RuntimeError: crashed" if value is None else None
            rows.append({"name": f"img{index}", "error": error, "method": method, metric: value})
    return pd.DataFrame(rows)


def test_compare_methods_resamples_images_in_pairs():
    # Image-to-image spread is large, the paired difference constant: only a paired bootstrap
    # gives an interval of zero width.
    model = [0.2, 0.9, 0.5, 0.7, 0.3]
    table = scored({"model": model, "baseline": [value - 0.1 for value in model]})
    found = compare_methods(table, metrics=["ap50"], resamples=500, seed=1)["ap50"]
    assert found["difference"] == pytest.approx(0.1)
    assert found["ci95_low"] == pytest.approx(0.1) and found["ci95_high"] == pytest.approx(0.1)
    assert found["images"] == 5


def test_compare_methods_interval_covers_a_tie_and_skips_unpaired_images():
    # Differences +0.2, −0.2, +0.2, −0.2 (a tie) on 4 pairs; img4 failed for the baseline.
    table = scored({"model": [0.9, 0.5, 0.9, 0.5, 0.1], "baseline": [0.7, 0.7, 0.7, 0.7, None]})
    found = compare_methods(table, metrics=["ap50"], resamples=4000, seed=3)["ap50"]
    assert found["images"] == 4 and found["difference"] == pytest.approx(0.0)
    # Resampled means of 4 draws of ±0.2 reach ±0.2 with probability 1/16 each side.
    assert found["ci95_low"] == pytest.approx(-0.2) and found["ci95_high"] == pytest.approx(0.2)
    again = compare_methods(table, metrics=["ap50"], resamples=4000, seed=3)["ap50"]
    assert again == found


def test_compare_methods_needs_two_images_for_an_interval_and_both_methods():
    one = compare_methods(scored({"model": [0.8], "baseline": [0.6]}), metrics=["ap50"])
    assert one["ap50"]["difference"] == pytest.approx(0.2)
    assert one["ap50"]["ci95_low"] is None and one["ap50"]["ci95_high"] is None
    assert compare_methods(scored({"model": [0.8, 0.7]}), metrics=["ap50"]) == {}
    assert compare_methods(scored({"model": [0.8], "baseline": [0.6]}), metrics=["ap75"]) == {}


def test_synthetic_shapes_scores_exact_outlines_and_failed_segmentations():
    def blob(image: np.ndarray) -> np.ndarray:
        # One instance covering the whole image: never matches a particle at IoU 0.5.
        return np.ones(image.shape, dtype=np.int32)

    metrics, matrices = evaluate_synthetic_shapes({"blob": blob}, per_class=1, seed=4, width_px=320)
    assert metrics["shapes/synthetic/seed"] == 4
    truth = matrices["truth"]
    assert truth.shape == (len(SHAPE_CLASSES), len(SHAPE_CLASSES))
    assert truth.sum() == metrics["shapes/synthetic/truth/particles"] > 50
    # Every simulated class is present, and the exact outlines are mostly classified right.
    assert np.all(truth.sum(axis=1) > 0)
    assert metrics["shapes/synthetic/truth/accuracy"] == pytest.approx(
        np.trace(truth) / truth.sum()
    )
    assert metrics["shapes/synthetic/truth/accuracy"] > 0.7
    assert metrics["shapes/synthetic/truth/dominant_accuracy"] >= 9 / 11
    recalls = [metrics[f"shapes/synthetic/truth/recall/{name}"] for name in SHAPE_CLASSES]
    assert metrics["shapes/synthetic/truth/balanced_accuracy"] == pytest.approx(np.mean(recalls))
    # A segmentation that finds no particle scores nothing, and says so.
    assert metrics["shapes/synthetic/blob/particles"] == 0
    assert math.isnan(metrics["shapes/synthetic/blob/accuracy"])
    assert math.isnan(metrics["shapes/synthetic/blob/dominant_accuracy"])
    # ...and leaves no particle that every method matched.
    assert metrics["shapes/synthetic/common_particles"] == 0
    assert math.isnan(metrics["shapes/synthetic/truth/common_accuracy"])
    # The same seed draws the same micrographs.
    again, _ = evaluate_synthetic_shapes({}, per_class=1, seed=4, width_px=320)
    assert again["shapes/synthetic/truth/accuracy"] == metrics["shapes/synthetic/truth/accuracy"]


def test_synthetic_shapes_compare_methods_on_the_particles_all_of_them_matched():
    seed, width = 4, 320
    truths = {}
    for index, shape in enumerate(SHAPE_CLASSES):
        micrograph = shape_micrograph(shape, width, image_rng(seed, index))
        truths[micrograph.image.tobytes()] = micrograph.instances

    def renumbered(image: np.ndarray) -> np.ndarray:
        # Every particle, exact, with ids in the reverse order of the truth's.
        instances = truths[image.tobytes()]
        return np.where(instances > 0, instances.max() + 1 - instances, 0)

    def even(image: np.ndarray) -> np.ndarray:
        # Exact outlines of half the particles only.
        instances = truths[image.tobytes()]
        return np.where(instances % 2 == 0, instances, 0)

    metrics, _ = evaluate_synthetic_shapes(
        {"renumbered": renumbered, "even": even}, per_class=1, seed=seed, width_px=width
    )
    shapes = "shapes/synthetic"
    assert metrics[f"{shapes}/renumbered/particles"] == metrics[f"{shapes}/truth/particles"]
    assert metrics[f"{shapes}/renumbered/accuracy"] == metrics[f"{shapes}/truth/accuracy"]
    # The shared particles are the even ones, and everyone classifies them alike.
    common = metrics[f"{shapes}/common_particles"]
    assert common == metrics[f"{shapes}/even/particles"]
    assert 0 < common < metrics[f"{shapes}/truth/particles"]
    expected = metrics[f"{shapes}/even/accuracy"]
    for method in ("truth", "renumbered", "even"):
        assert metrics[f"{shapes}/{method}/common_accuracy"] == pytest.approx(expected)
