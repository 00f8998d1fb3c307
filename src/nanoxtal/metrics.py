"""Scores shared by the stages: classification, calibration and regression (numpy only).

One definition of each score for the XRD classifiers, the recipe models and anything else
that predicts classes or sizes, so that numbers reported by different stages mean the same.
"""

from __future__ import annotations

import numpy as np


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Share of exact predictions."""
    return float(np.mean(truth == predicted)) if len(truth) else float("nan")


def top_k_accuracy(truth: np.ndarray, probabilities: np.ndarray, k: int, offset: int = 0) -> float:
    """Share of cases whose true class is among the k most probable (labels = index + offset)."""
    top = np.argsort(-probabilities, axis=1)[:, :k] + offset
    return float(np.mean([t in row for t, row in zip(truth, top, strict=True)]))


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in ``truth`` or ``predicted``.

    The union of both, as scikit-learn's ``f1_score(average="macro")``: a class that is only
    ever predicted, wrongly, scores F1 = 0 and lowers the mean.
    """
    scores = []
    for label in np.union1d(truth, predicted):
        tp = np.sum((predicted == label) & (truth == label))
        fp = np.sum((predicted == label) & (truth != label))
        fn = np.sum((predicted != label) & (truth == label))
        scores.append(2 * tp / max(2 * tp + fp + fn, 1))
    return float(np.mean(scores)) if scores else float("nan")


def accuracy_at_coverage(
    correct: np.ndarray, confidence: np.ndarray, coverages: tuple[float, ...] = (1.0, 0.8, 0.5, 0.2)
) -> dict[str, float]:
    """Accuracy on the most confident share of the cases, for each share in ``coverages``.

    What abstaining below a confidence threshold (``predict --min-confidence``) buys: keep the
    predictions the model is surest of, and how accurate those are.
    """
    order = np.argsort(-confidence, kind="stable")
    result = {}
    for coverage in coverages:
        kept = order[: max(1, round(coverage * len(order)))]
        result[f"accuracy_at_coverage_{coverage:.1f}"] = float(np.mean(correct[kept]))
    return result


# A confidence threshold above every probability, in float32 too (1 + 2⁻²⁰ is exact there).
ABSTAIN_ALL = 1.0 + 2.0**-20


def threshold_for_precision(
    correct: np.ndarray, confidence: np.ndarray, precision: float, min_answered: int = 20
) -> float:
    """The lowest confidence threshold whose answers are right at least ``precision`` of the time.

    Answering only when ``confidence >= threshold``: the threshold is the lowest confidence
    value at which the answered cases (at least ``min_answered`` of them, so that the
    accuracy is measured on more than a handful) reach ``precision``. Where no threshold does,
    it is ``ABSTAIN_ALL``, above any probability: abstain on everything.

    Args:
        correct: Whether each answer is right (N,).
        confidence: Its confidence, e.g. the top class's calibrated probability (N,).
        precision: Required accuracy of the answered cases, 0-1.
        min_answered: Fewest answered cases a threshold may leave.
    """
    order = np.argsort(-confidence, kind="stable")
    ranked = np.asarray(correct, dtype=float)[order]
    accuracy = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
    sorted_confidence = np.asarray(confidence, dtype=float)[order]
    # A threshold keeps every case at least as confident: only the last of tied values counts.
    last_of_tie = np.append(sorted_confidence[1:] < sorted_confidence[:-1], True)
    enough = np.arange(1, len(ranked) + 1) >= min(min_answered, len(ranked))
    good = np.flatnonzero((accuracy >= precision) & last_of_tie & enough)
    if not len(good):
        return ABSTAIN_ALL
    return float(sorted_confidence[good[-1]])


def expected_calibration_error(
    truth: np.ndarray, probabilities: np.ndarray, bins: int = 15, offset: int = 0
) -> float:
    """Expected calibration error: mean |accuracy - confidence| over confidence bins.

    Bins are weighted by their share of the predictions (Naeini et al., AAAI 2015; 15
    equal-width bins as in Guo et al., ICML 2017).

    Args:
        truth: True labels (N,).
        probabilities: Predicted probabilities (N, classes).
        bins: Equal-width confidence bins in [0, 1].
        offset: Label of column 0 (1 for space groups).
    """
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) + offset == truth
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    error = 0.0
    for b in np.unique(which):
        members = which == b
        error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts (truth row, prediction column) for labels 0..classes-1."""
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE (nm), R² and MAPE (%) of sizes."""
    error = predicted - truth
    total = np.sum((truth - truth.mean()) ** 2)
    return {
        "mae_nm": float(np.mean(np.abs(error))),
        "rmse_nm": float(np.sqrt(np.mean(error**2))),
        "r2": float(1.0 - np.sum(error**2) / total) if total > 0 else float("nan"),
        "mape_pct": float(100.0 * np.mean(np.abs(error) / truth)),
        "count": len(truth),
    }
