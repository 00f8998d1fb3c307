from __future__ import annotations

import numpy as np
import pytest

from nanoxtal.metrics import (
    accuracy,
    accuracy_at_coverage,
    confusion,
    expected_calibration_error,
    macro_f1,
    regression_metrics,
    threshold_for_precision,
    top_k_accuracy,
)


def test_accuracy_top_k_and_macro_f1_on_hand_computed_cases():
    truth = np.array([0, 0, 1, 2])
    predicted = np.array([0, 1, 1, 2])
    assert accuracy(truth, predicted) == 0.75
    # F1: class 0 = 2/3, class 1 = 2/3, class 2 = 1.
    assert macro_f1(truth, predicted) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    assert top_k_accuracy(truth, p, 1) == 0.25  # top-1: [0, 1, 2, 0]
    assert top_k_accuracy(truth, p, 2) == 0.5  # rows 0 and 2 hold the truth in their top 2
    assert top_k_accuracy(truth + 1, p, 1, offset=1) == 0.25
    assert confusion(truth, predicted, 3).tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_macro_f1_counts_classes_that_are_only_predicted():
    truth = np.array([0, 0, 1, 1])
    predicted = np.array([0, 2, 1, 1])
    # Classes 0 (F1 2/3), 1 (F1 1) and the never-true class 2 (F1 0), as scikit-learn.
    assert macro_f1(truth, predicted) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_accuracy_at_coverage_keeps_the_most_confident_cases():
    correct = np.array([True, False, True, False, True])
    confidence = np.array([0.9, 0.2, 0.8, 0.6, 0.1])
    curve = accuracy_at_coverage(correct, confidence, (1.0, 0.4, 0.6))
    assert curve["accuracy_at_coverage_1.0"] == pytest.approx(0.6)
    assert curve["accuracy_at_coverage_0.4"] == 1.0  # 0.9 and 0.8 are both right
    assert curve["accuracy_at_coverage_0.6"] == pytest.approx(2 / 3)


def test_threshold_for_precision_answers_as_much_as_the_precision_allows():
    confidence = np.array([0.5, 0.9, 0.7, 0.8, 0.6])
    correct = np.array([False, True, False, True, True])
    # Ranked 0.9 0.8 0.7 0.6 0.5: right 1 1 0 1 0, accuracy 1, 1, 2/3, 3/4, 3/5.
    assert threshold_for_precision(correct, confidence, 0.75, min_answered=1) == 0.6
    assert threshold_for_precision(correct, confidence, 0.95, min_answered=1) == 0.8
    assert threshold_for_precision(correct, confidence, 0.6, min_answered=1) == 0.5
    # Too few answers at the precision asked: abstain on everything.
    above = threshold_for_precision(correct, confidence, 0.95, min_answered=3)
    assert not (confidence >= above).any() and not (np.float32(1.0) >= above)
    # A threshold keeps all tied cases: 0.8 would answer a wrong one too.
    tied = threshold_for_precision(
        np.array([True, True, False, False]), np.array([0.9, 0.8, 0.8, 0.5]), 0.9, 1
    )
    assert tied == 0.9


def test_expected_calibration_error_separates_calibrated_from_overconfident():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20000)
    correct_class = rng.uniform(size=20000) < confidence  # right as often as it claims
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    truth = np.where(correct_class, 0, 1)
    assert expected_calibration_error(truth, probabilities) < 0.02
    # Claims 95 % everywhere while right 75 % of the time: ECE is the 0.2 gap.
    over = np.tile([0.95, 0.05], (20000, 1))
    assert expected_calibration_error(truth, over) == pytest.approx(
        0.95 - np.mean(truth == 0), abs=1e-9
    )


def test_regression_metrics_on_hand_computed_cases():
    metrics = regression_metrics(np.array([2.0, 4.0]), np.array([3.0, 4.0]))
    assert metrics["mae_nm"] == 0.5 and metrics["rmse_nm"] == pytest.approx(np.sqrt(0.5))
    assert metrics["r2"] == pytest.approx(0.5) and metrics["mape_pct"] == pytest.approx(25.0)
