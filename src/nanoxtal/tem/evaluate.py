"""Instance-segmentation metrics for particle label images, and evaluation of a whole set.

Definitions (per image; ``truth`` and ``predicted`` are label images, 0 = background):

IoU matrix
    For truth instance i and predicted instance j, IoU = |Tᵢ ∩ Pⱼ| / |Tᵢ ∪ Pⱼ|, computed for all
    overlapping pairs at once from the contingency table of (truth id, predicted id) pixel
    pairs; pairs that do not overlap have IoU 0 and are not stored.
Matching
    Greedy one-to-one: pairs in order of decreasing IoU, each accepted when neither side is
    matched yet. At a threshold t, the matches are the greedy pairs with IoU ≥ t (greedy
    order makes this the same as greedy matching restricted to pairs ≥ t). For t ≥ 0.5 every
    pair above t is the unique best of both sides, so greedy is also the optimal matching.
TP, FP, FN at t
    TP = matched pairs with IoU ≥ t, FP = predicted instances unmatched, FN = truth instances
    unmatched. The boundary counts: IoU exactly equal to t is a match.
AP_t ("average precision" of the cellpose/StarDist papers and the 2018 Data Science Bowl)
    AP_t = TP / (TP + FP + FN), also called accuracy or the critical success index. It is
    *not* the area under a precision–recall curve (COCO AP), which needs confidence scores
    that a watershed does not give. AP50, AP75 and AP90 are t = 0.5, 0.75, 0.9. When the
    image has neither truth nor predicted instances, AP = 1.
precision_t, recall_t
    TP / (TP + FP) and TP / (TP + FN); NaN when the denominator is 0.
foreground IoU
    IoU of the binary masks (truth > 0 vs predicted > 0), instance ids ignored; 1 when both
    are empty.
semantic mIoU
    Mean of the foreground IoU and the background IoU: the two-class mean IoU of semantic
    segmentation papers (as Sophon reports "mIoU").
matched IoU
    Mean IoU of the pairs matched at IoU ≥ 0.5 (the segmentation quality of panoptic
    quality): how well the outlines of found particles fit; NaN with no such pair.
count error
    |n_pred − n_true| / n_true (relative); ``count_bias`` keeps the sign.
diameter error
    |mean d_pred − mean d_true| / mean d_true of the mean equivalent-circle diameter
    d = 2·√(area/π) (px; relative, so the pixel size cancels), over all instances.
sample diameter error (set level)
    The same for the mean diameter a measurement reports for the set as one sample
    (``nanoxtal tem measure``): particles touching the image edge left out, as there, and
    the diameters pooled over all images of the set. With ~15 particles per image, half of
    them cut by the edge (msa_em), one missed fragment moves an image's mean by 10 %; the
    sample mean is what a recipe's size label is.

Set-level summaries average the per-image values over the images evaluated (mean of per-image
AP, as cellpose and StarDist report) and also give AP pooled over the set: ΣTP / Σ(TP+FP+FN).

model − baseline (``compare_methods``)
    The difference of the set means of a per-image metric between two methods scored on the
    same images, with a 95 % paired bootstrap interval: images are drawn with replacement
    (both methods keep their pairing) and the 2.5 and 97.5 percentiles of the resampled
    differences are reported (the percentile bootstrap, Efron & Tibshirani, "An Introduction
    to the Bootstrap", 1993, ch. 13). With 5–17 test images per set the intervals are wide:
    an interval that contains 0 means the set cannot tell the two methods apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from nanoxtal.metrics import accuracy, confusion
from nanoxtal.plots import confusion_panels
from nanoxtal.tem.instances import border_flags
from nanoxtal.tem.io import LabelledImage, Split, read_labelled_set
from nanoxtal.tem.measure import classify_shapes
from nanoxtal.tem.simulate import (
    SHAPE_CLASSES,
    Micrograph,
    MicrographSettings,
    image_rng,
    simulate_micrograph,
)

THRESHOLDS = (0.5, 0.75, 0.9)


def _percent(threshold: float) -> str:
    """Column suffix of a threshold: 0.5 → '50', 0.75 → '75'."""
    return f"{round(100 * threshold):d}"


def _check_labels(labels: np.ndarray, role: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{role} must be a 2-D integer label image, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{role} has negative labels")
    return labels


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices 0..n with 0 = background, the n original ids, their areas in px²).

    Ids need not be contiguous (annotation tools leave gaps); a lookup table from bincount
    renumbers them in O(pixels), without sorting.
    """
    areas = np.bincount(labels.ravel())
    ids = np.flatnonzero(areas)
    ids = ids[ids > 0]
    lookup = np.zeros(areas.size, dtype=np.int64)
    lookup[ids] = np.arange(1, ids.size + 1)
    return lookup[labels], ids, areas[ids]


@dataclass(frozen=True, eq=False)
class Matching:
    """Overlaps between truth and predicted instances and their greedy one-to-one matching.

    Instances are indexed 0..n−1 in order of their ids.

    Attributes:
        truth_ids: Label ids of the truth instances (n_true).
        pred_ids: Label ids of the predicted instances (n_pred).
        truth_areas: Their areas (px²).
        pred_areas: Their areas (px²).
        iou: Sparse IoU matrix (n_true × n_pred), only overlapping pairs stored.
        matched_truth: Truth index of each greedy match, in order of decreasing IoU.
        matched_pred: Predicted index of each greedy match.
        matched_iou: IoU of each greedy match (decreasing; all > 0).
    """

    truth_ids: np.ndarray
    pred_ids: np.ndarray
    truth_areas: np.ndarray
    pred_areas: np.ndarray
    iou: sparse.csr_array
    matched_truth: np.ndarray
    matched_pred: np.ndarray
    matched_iou: np.ndarray

    @property
    def n_true(self) -> int:
        """Number of truth instances."""
        return int(self.truth_ids.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted instances."""
        return int(self.pred_ids.size)

    def counts(self, threshold: float) -> tuple[int, int, int]:
        """(TP, FP, FN) at an IoU threshold (IoU ≥ threshold matches)."""
        tp = int(np.count_nonzero(self.matched_iou >= threshold))
        return tp, self.n_pred - tp, self.n_true - tp


def _greedy(
    rows: np.ndarray, cols: np.ndarray, iou: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of sparse pairs by decreasing IoU (ties: lower indices)."""
    order = np.lexsort((cols, rows, -iou))
    taken_rows, taken_cols, chosen = set(), set(), []
    # One pass over the overlapping pairs (a few per instance), not over pixels.
    for index in order:
        row, col = int(rows[index]), int(cols[index])
        if row not in taken_rows and col not in taken_cols:
            taken_rows.add(row)
            taken_cols.add(col)
            chosen.append(index)
    chosen = np.asarray(chosen, dtype=np.int64)
    return rows[chosen], cols[chosen], iou[chosen]


def match_instances(truth: np.ndarray, predicted: np.ndarray) -> Matching:
    """IoU of every overlapping (truth, predicted) pair and their greedy one-to-one matching.

    Args:
        truth: Truth labels (height × width), non-negative integers, 0 = background.
        predicted: Predicted labels, same shape.

    Returns:
        The matching; see the module docstring for the definitions.

    Raises:
        ValueError: Shapes differ, or labels that are not non-negative 2-D integer images.
    """
    truth = _check_labels(truth, "truth")
    predicted = _check_labels(predicted, "predicted")
    if truth.shape != predicted.shape:
        raise ValueError(f"truth {truth.shape} and predicted {predicted.shape} shapes differ")
    t, truth_ids, truth_areas = _compact(truth)
    p, pred_ids, pred_areas = _compact(predicted)
    n_true, n_pred = truth_ids.size, pred_ids.size
    # Contingency table of pixel pairs where both are foreground: one code per (truth, pred).
    both = (t > 0) & (p > 0)
    codes, intersections = np.unique(
        (t[both] - 1) * max(n_pred, 1) + (p[both] - 1), return_counts=True
    )
    rows, cols = np.divmod(codes, max(n_pred, 1))
    unions = truth_areas[rows] + pred_areas[cols] - intersections
    iou = intersections / unions
    matrix = sparse.csr_array((iou, (rows, cols)), shape=(n_true, n_pred))
    matched = _greedy(rows, cols, iou)
    return Matching(truth_ids, pred_ids, truth_areas, pred_areas, matrix, *matched)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def average_precision(
    truth: np.ndarray,
    predicted: np.ndarray,
    thresholds: Sequence[float] = THRESHOLDS,
    matching: Matching | None = None,
) -> dict[str, float]:
    """AP = TP / (TP + FP + FN) per IoU threshold, with precision, recall and the counts.

    This is the "average precision" of the cellpose and StarDist papers (see the module
    docstring), not the COCO area under the precision–recall curve.

    Args:
        truth: Truth labels, 0 = background.
        predicted: Predicted labels, same shape.
        thresholds: IoU thresholds; IoU equal to a threshold counts as a match.
        matching: A matching of these two images already computed, to reuse.

    Returns:
        For each threshold t (suffix ``round(100·t)``, e.g. ``50``): ``ap50``,
        ``precision50``, ``recall50``, ``tp50``, ``fp50``, ``fn50``.
    """
    matching = matching or match_instances(truth, predicted)
    result: dict[str, float] = {}
    for threshold in thresholds:
        tp, fp, fn = matching.counts(threshold)
        suffix = _percent(threshold)
        result[f"ap{suffix}"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
        result[f"precision{suffix}"] = _ratio(tp, tp + fp)
        result[f"recall{suffix}"] = _ratio(tp, tp + fn)
        result[f"tp{suffix}"] = tp
        result[f"fp{suffix}"] = fp
        result[f"fn{suffix}"] = fn
    return result


def mean_iou(
    truth: np.ndarray, predicted: np.ndarray, matching: Matching | None = None
) -> dict[str, float]:
    """Foreground IoU, two-class semantic mIoU, and mean IoU of pairs matched at IoU ≥ 0.5.

    Args:
        truth: Truth labels, 0 = background.
        predicted: Predicted labels, same shape.
        matching: A matching of these two images already computed, to reuse.

    Returns:
        ``foreground_iou``, ``semantic_miou`` and ``matched_iou`` (see the module docstring).
    """
    matching = matching or match_instances(truth, predicted)
    truth_mask, pred_mask = np.asarray(truth) > 0, np.asarray(predicted) > 0
    intersection = np.count_nonzero(truth_mask & pred_mask)
    union = np.count_nonzero(truth_mask | pred_mask)
    foreground = intersection / union if union else 1.0
    background_union = truth_mask.size - intersection
    background = (truth_mask.size - union) / background_union if background_union else 1.0
    good = matching.matched_iou[matching.matched_iou >= 0.5]
    return {
        "foreground_iou": float(foreground),
        "semantic_miou": float((foreground + background) / 2),
        "matched_iou": float(good.mean()) if good.size else math.nan,
    }


def instance_count(labels: np.ndarray) -> int:
    """Number of distinct non-zero ids in a label image."""
    areas = np.bincount(np.asarray(labels).ravel())
    return int(np.count_nonzero(areas[1:]))


def count_error(n_true: int, n_pred: int) -> float:
    """Relative count error |n_pred − n_true| / n_true.

    Returns:
        The error; 0 when both are 0, infinity when only n_true is 0.
    """
    if n_true == 0:
        return 0.0 if n_pred == 0 else math.inf
    return abs(n_pred - n_true) / n_true


def equivalent_diameters(labels: np.ndarray, interior: bool = False) -> np.ndarray:
    """Equivalent-circle diameter 2·√(area/π) of each instance (px), in id order.

    Args:
        labels: Instance labels, 0 = background.
        interior: Only instances that do not touch the image edge.
    """
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())
    keep = areas > 0
    if interior:
        keep &= ~border_flags(labels, areas.size)
    keep[0] = False
    return 2 * np.sqrt(areas[keep] / math.pi)


def diameter_error(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Relative error of the mean equivalent-circle diameter, |d̄_pred − d̄_true| / d̄_true.

    Returns:
        The error; NaN when either image has no instance.
    """
    true_d, pred_d = equivalent_diameters(truth), equivalent_diameters(predicted)
    if not true_d.size or not pred_d.size:
        return math.nan
    return float(abs(pred_d.mean() - true_d.mean()) / true_d.mean())


def box_count_error(boxes: np.ndarray, predicted: np.ndarray) -> float:
    """Relative count error against box labels: |n_pred − n_boxes| / n_boxes."""
    return count_error(len(boxes), instance_count(predicted))


# ---------------------------------------------------------------------------------------------
# One image and a whole set.


def evaluate_instances(
    truth: np.ndarray, predicted: np.ndarray, thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, float]:
    """Every instance metric of one image against instance truth, as one flat dict."""
    matching = match_instances(truth, predicted)
    true_d = equivalent_diameters(truth)
    pred_d = equivalent_diameters(predicted)
    inner_true = equivalent_diameters(truth, interior=True)
    inner_pred = equivalent_diameters(predicted, interior=True)
    n_true, n_pred = matching.n_true, matching.n_pred
    return {
        "interior_true": inner_true.size,
        "interior_pred": inner_pred.size,
        "interior_diameter_sum_true_px": float(inner_true.sum()),
        "interior_diameter_sum_pred_px": float(inner_pred.sum()),
        "n_true": n_true,
        "n_pred": n_pred,
        **average_precision(truth, predicted, thresholds, matching),
        **mean_iou(truth, predicted, matching),
        "count_error": count_error(n_true, n_pred),
        "count_bias": (n_pred - n_true) / n_true if n_true else math.nan,
        "diameter_true_px": float(true_d.mean()) if true_d.size else math.nan,
        "diameter_pred_px": float(pred_d.mean()) if pred_d.size else math.nan,
        "diameter_error": diameter_error(truth, predicted),
    }


def evaluate_boxes(boxes: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Count metrics of one image against box truth (boxes carry no outlines to match)."""
    n_true, n_pred = len(boxes), instance_count(predicted)
    return {
        "n_true": n_true,
        "n_pred": n_pred,
        "count_error": count_error(n_true, n_pred),
        "count_bias": (n_pred - n_true) / n_true if n_true else math.nan,
    }


def _evaluate_one(
    item: LabelledImage,
    predictor: Callable[[np.ndarray], np.ndarray],
    thresholds: Sequence[float],
) -> dict[str, object]:
    """One per-image row; raises whatever reading, predicting or scoring raises."""
    if item.error is not None or item.image is None:
        raise ValueError(item.error or "no image")
    start = time.perf_counter()
    predicted = np.asarray(predictor(item.image))
    seconds = time.perf_counter() - start
    if predicted.shape != item.image.shape:
        raise ValueError(f"prediction has shape {predicted.shape}, image {item.image.shape}")
    if item.instances is not None:
        metrics = evaluate_instances(item.instances, predicted, thresholds)
    elif item.boxes is not None:
        metrics = evaluate_boxes(item.boxes, predicted)
    else:
        raise ValueError("image has neither instance nor box labels")
    return {"seconds": seconds, **metrics}


def summarise(table: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, object]:
    """Set-level numbers from per-image rows of ``evaluate_set`` (or a subset of them).

    Failed images are left out of the means and listed with their errors.

    Returns:
        ``images``, ``evaluated``, ``failed`` (name and error of each), ``n_true`` and ``n_pred``
        summed, ``images_per_s`` of prediction, the mean of each per-image metric where it is
        defined (``ap50``, ``precision50``, ``recall50``, ..., ``foreground_iou``,
        ``semantic_miou``, ``matched_iou``, ``count_error``, ``count_bias``,
        ``diameter_error``), ``count_error_median``, pooled AP ``ap50_pooled`` =
        ΣTP / Σ(TP + FP + FN), and ``sample_diameter_error`` (None without interior particles).
    """
    ok = table[table["error"].isna()]
    summary: dict[str, object] = {
        "images": len(table),
        "evaluated": len(ok),
        "failed": table.loc[table["error"].notna(), ["name", "error"]].to_dict("records"),
        "n_true": int(ok["n_true"].sum()) if len(ok) else 0,
        "n_pred": int(ok["n_pred"].sum()) if len(ok) else 0,
        "images_per_s": len(ok) / ok["seconds"].sum() if len(ok) and ok["seconds"].sum() else None,
    }
    metrics = ["count_error", "count_bias", "diameter_error"]
    metrics += ["foreground_iou", "semantic_miou", "matched_iou"]
    for threshold in thresholds:
        suffix = _percent(threshold)
        metrics += [f"ap{suffix}", f"precision{suffix}", f"recall{suffix}"]
        if f"tp{suffix}" in ok:
            tp, fp, fn = (ok[f"{key}{suffix}"].sum() for key in ("tp", "fp", "fn"))
            summary[f"ap{suffix}_pooled"] = float(tp / (tp + fp + fn)) if tp + fp + fn else None
    for metric in metrics:
        if metric in ok and ok[metric].notna().any():
            # Mean over images where the metric is defined (per-image AP, as cellpose reports).
            summary[metric] = float(ok[metric].replace([np.inf], np.nan).mean())
    if {"interior_true", "interior_pred"} <= set(ok.columns):
        summary["sample_diameter_error"] = _sample_diameter_error(ok)
    if "count_error" in summary:
        # One image with thousands of false specks dominates the mean; the median does not.
        summary["count_error_median"] = float(ok["count_error"].median())
    return summary


def _sample_diameter_error(rows: pd.DataFrame) -> float | None:
    """Relative error of the set's pooled mean diameter of interior particles (see top)."""
    n_true, n_pred = rows["interior_true"].sum(), rows["interior_pred"].sum()
    if not n_true or not n_pred:
        return None
    true_mean = rows["interior_diameter_sum_true_px"].sum() / n_true
    pred_mean = rows["interior_diameter_sum_pred_px"].sum() / n_pred
    return float(abs(pred_mean - true_mean) / true_mean)


def evaluate_set(
    images: Iterable[LabelledImage],
    predictor: Callable[[np.ndarray], np.ndarray],
    thresholds: Sequence[float] = THRESHOLDS,
    progress: str | None = None,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Predict and score every image of a labelled set; one failure does not stop the rest.

    Images with instance truth get every metric; images with box truth get the count metrics.
    An image that could not be read (``error`` set), or whose prediction or scoring raises, is
    recorded with its error message and left out of the summary's means.

    Args:
        images: The labelled images (e.g. from ``read_labelled_set``).
        predictor: Maps a grey image to an integer label image of the same shape.
        thresholds: IoU thresholds for AP, precision and recall.
        progress: Label of a progress bar over the images; None: no bar.

    Returns:
        The per-image table (``name``, ``error`` (None when fine), ``seconds`` of prediction,
        and the metrics) and the set summary (means over evaluated images, pooled AP, counts,
        images per second of prediction, and the failed images with their errors).
    """
    from tqdm.auto import tqdm

    rows = []
    for item in tqdm(images, desc=progress, unit="image", disable=progress is None):
        try:
            row = _evaluate_one(item, predictor, thresholds)
            rows.append({"name": item.name, "error": None, **row})
        # Any failure of one image (bad file, predictor crash) is that image's result.
        except Exception as error:
            rows.append({"name": item.name, "error": f"{type(error).__name__}: {error}"})
    table = pd.DataFrame(rows, columns=_columns(rows))
    # Keep None (not NaN) for images without error: pandas would infer a string column.
    table["error"] = pd.Series([row["error"] for row in rows], dtype=object, index=table.index)
    return table, summarise(table, thresholds)


def _columns(rows: list[dict[str, object]]) -> list[str]:
    """Column order: name, error, then every metric in first-seen order."""
    columns = {"name": None, "error": None, "seconds": None, "n_true": None, "n_pred": None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


# Per-image metrics whose model − baseline difference is reported, and the better direction.
COMPARED = {"ap50": 1, "ap75": 1, "semantic_miou": 1, "count_error": -1}
COMPARISON = "model_minus_baseline"


def compare_methods(
    per_image: pd.DataFrame,
    first: str = "model",
    second: str = "baseline",
    metrics: Sequence[str] = tuple(COMPARED),
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float | int | None]]:
    """Paired difference of two methods' set means, with a 95 % bootstrap interval over images.

    Args:
        per_image: Rows of one set (``evaluate_set`` columns plus ``method``).
        first: The method whose mean comes first in ``first − second``.
        second: The method subtracted.
        metrics: Per-image metric columns to compare.
        resamples: Bootstrap resamples of the images.
        seed: Seed of the resampling, so the interval is reproducible.

    Returns:
        Per metric: ``difference`` (mean over images of first − second), ``ci95_low``,
        ``ci95_high`` (None with fewer than 2 images) and ``images`` (the pairs used: images
        that both methods scored without error and where the metric is defined).
    """
    ok = per_image[per_image["error"].isna()]
    rng = np.random.default_rng(seed)
    found: dict[str, dict[str, float | int | None]] = {}
    for metric in metrics:
        if metric not in ok:
            continue
        table = ok.pivot_table(index="name", columns="method", values=metric, aggfunc="first")
        if first not in table or second not in table:
            continue
        differences = (table[first] - table[second]).dropna().to_numpy(dtype=float)
        if not differences.size:
            continue
        low = high = None
        if differences.size > 1:
            draws = rng.integers(0, differences.size, size=(resamples, differences.size))
            low, high = (float(v) for v in np.percentile(differences[draws].mean(1), [2.5, 97.5]))
        found[metric] = {
            "difference": float(differences.mean()),
            "ci95_low": low,
            "ci95_high": high,
            "images": int(differences.size),
        }
    return found


# Set-level numbers that go into the flat metrics (``evaluate_test_parts``).
HEADLINE = (
    "evaluated",
    "n_true",
    "n_pred",
    "ap50",
    "ap75",
    "ap90",
    "ap50_pooled",
    "semantic_miou",
    "foreground_iou",
    "matched_iou",
    "count_error",
    "count_error_median",
    "diameter_error",
    "sample_diameter_error",
    "images_per_s",
)


def set_metrics(name: str, per_image: pd.DataFrame, seed: int) -> dict[str, object]:
    """Flat metrics of one set from its per-image rows of every method.

    Args:
        name: The set's name, the first part of every key.
        per_image: ``evaluate_set`` rows of the set with a ``method`` column.
        seed: Seed of the paired bootstrap (``compare_methods``).

    Returns:
        ``"<name>/<method>/<metric>"`` for the ``HEADLINE`` numbers (``summarise``),
        ``"<name>/<method>/failed"`` when images failed, and, when both a ``model`` and a
        ``baseline`` were scored, ``"<name>/model_minus_baseline/<metric>/<key>"``.
    """
    metrics: dict[str, object] = {}
    for method, rows in per_image.groupby("method", sort=False):
        summary = summarise(rows)
        for key in HEADLINE:
            if key in summary:
                metrics[f"{name}/{method}/{key}"] = summary[key]
        if summary["failed"]:
            metrics[f"{name}/{method}/failed"] = summary["failed"]
    for metric, values in compare_methods(per_image, seed=seed).items():
        for key, value in values.items():
            metrics[f"{name}/{COMPARISON}/{metric}/{key}"] = value
    return metrics


def evaluate_test_parts(
    folders: Mapping[str, Path | str],
    predictors: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    split: Split,
    progress: bool = False,
) -> tuple[dict[str, object], pd.DataFrame]:
    """Score every method on the scored part of every labelled set.

    The scored part is ``split.parts(names)["test"]``: the images the training banks
    (``nanoxtal.tem.bank.labelled_bank``) leave out with the same split, i.e. the test part,
    or with cross-validation folds the scored fold of the training part.

    Args:
        folders: Folder of each labelled set, by set name (``LABELLED_SETS``).
        predictors: Segmentation methods by name (e.g. ``model``, ``baseline``), each a map
            from a grey image to instance labels.
        split: The split (its seed also seeds the bootstrap intervals).
        progress: A progress bar per set and method.

    Returns:
        Flat metrics: the split (``Split.record``), ``"<set>/test_images"`` (the scored
        names) and ``set_metrics`` of each set; and the per-image table (``set``, ``method``
        and ``evaluate_set``'s columns).
    """
    if not predictors:
        raise ValueError("no segmentation method to score")
    metrics: dict[str, object] = split.record()
    tables = []
    for name, folder in folders.items():
        items = read_labelled_set(Path(folder).parent, name, folder)
        scored = split.parts(item.name for item in items)["test"]
        metrics[f"{name}/test_images"] = scored
        chosen = frozenset(scored)
        held_out = [item for item in items if item.name in chosen]
        table = pd.concat(
            [
                evaluate_set(
                    held_out, predictor, progress=f"{name} ({method})" if progress else None
                )[0].assign(set=name, method=method)
                for method, predictor in predictors.items()
            ],
            ignore_index=True,
        )
        metrics |= set_metrics(name, table, split.seed)
        tables.append(table)
    per_image = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return metrics, per_image


def pool_folds(
    fold_metrics: Sequence[Mapping[str, object]], fold_tables: Sequence[pd.DataFrame]
) -> tuple[dict[str, object], pd.DataFrame]:
    """Cross-validation metrics: every fold's scored images pooled, each image scored once.

    Args:
        fold_metrics: ``evaluate_test_parts`` metrics of each fold (for the split record).
        fold_tables: The folds' per-image tables, in the same order.

    Returns:
        Flat metrics as ``evaluate_test_parts`` gives them, over the pooled images, with
        ``cv_fold`` None, ``cv_models`` and ``cv_environments`` (each fold's model and
        machine); and the pooled table, with a ``fold`` column.

    Raises:
        ValueError: The folds are not one complete cross-validation: a different split,
            a fold missing or given twice, or no folds at all.
    """
    if not fold_metrics or len(fold_metrics) != len(fold_tables):
        raise ValueError("one metrics mapping and one per-image table per fold are needed")
    split_keys = ("split_seed", "test_share", "cv_folds")
    first = {key: fold_metrics[0].get(key) for key in split_keys}
    for metrics in fold_metrics:
        found = {key: metrics.get(key) for key in split_keys}
        if found != first:
            raise ValueError(f"folds of different splits: {first} and {found}")
    folds = sorted(int(metrics["cv_fold"]) for metrics in fold_metrics)
    if not first["cv_folds"] or folds != list(range(int(first["cv_folds"]))):
        raise ValueError(f"expected folds 0..{(first['cv_folds'] or 0) - 1} once each, got {folds}")
    table = pd.concat(
        [
            rows.assign(fold=int(metrics["cv_fold"]))
            for metrics, rows in zip(fold_metrics, fold_tables, strict=True)
        ],
        ignore_index=True,
    )
    pooled: dict[str, object] = {
        **first,
        "cv_fold": None,
        "cv_models": [metrics.get("model") for metrics in fold_metrics],
        "cv_environments": [metrics.get("environment") for metrics in fold_metrics],
    }
    for name, rows in table.groupby("set", sort=False):
        pooled[f"{name}/test_images"] = sorted(rows["name"].astype(str).unique())
        pooled |= set_metrics(str(name), rows, int(first["split_seed"]))
    return pooled, table


# Particle sizes (equivalent diameter, px) and coverage of the synthetic shape micrographs.
SHAPE_SIZES_PX = (10.0, 60.0)
SHAPE_COVERAGE = (0.05, 0.3)
SHAPE_PREFIX = "shapes/synthetic"


def shape_micrograph(shape: str, width_px: int, rng: np.random.Generator) -> Micrograph:
    """A micrograph of particles of one shape class, without scale bar.

    Particle size log-uniform within ``SHAPE_SIZES_PX``, coverage uniform within
    ``SHAPE_COVERAGE``, the simulator's default contrast, touching and noise.
    """
    diameter_px = math.exp(rng.uniform(*np.log(SHAPE_SIZES_PX)))
    settings = MicrographSettings(
        width_px=width_px,
        height_px=width_px,
        nm_per_px=0.5,
        diameter_nm=0.5 * diameter_px,
        shape_weights={shape: 1.0},
        coverage=float(rng.uniform(*SHAPE_COVERAGE)),
        scale_bar=False,
    )
    return simulate_micrograph(settings, rng)


def evaluate_synthetic_shapes(
    predictors: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    per_class: int,
    seed: int,
    width_px: int = 384,
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Shape classes through the whole measurement: simulate, segment, classify.

    No real micrograph here has shape labels, so the shape classifier
    (``nanoxtal.tem.measure.classify_shapes``) is judged on simulated micrographs of one
    class each (``shape_micrograph``; image k of class c drawn from ``image_rng(seed,
    c·per_class + k)``), segmented by every method and, as the classifier's ceiling, taken
    with their exact instances (``truth``). Predicted particles matched to a truth particle at
    IoU ≥ 0.5 and not cut by the image edge are scored against its class.

    Args:
        predictors: Segmentation methods by name (grey image → instance labels).
        per_class: Micrographs per shape class.
        seed: Seed of the micrographs.
        width_px: Side of the square micrographs (px).

    Returns:
        Flat metrics ``"shapes/synthetic/<method>/<metric>"``: ``accuracy`` and
        ``balanced_accuracy`` over particles, ``dominant_accuracy`` (share of images whose
        most frequent class among their scored particles is right: the label a sample
        gets; images without scored particles left out), ``particles``,
        ``recall/<class>`` and ``common_accuracy``; with ``shapes/synthetic/seed``,
        ``.../per_class`` and ``.../common_particles``. A method that finds more of the small,
        faint particles (which no outline classifies well) scores a lower ``accuracy`` for
        it, so ``common_accuracy`` compares the methods on the same particles: those every
        method matched (``common_particles``). On the development micrographs (seed 11) the
        session-15 network matched 1,747 particles, 950 of them under 15 px across, the
        baseline 752; on the 716 both matched, the network classified 57 % right, the
        baseline 48 %. And the
        confusion matrix (truth rows, predicted columns, ``SHAPE_CLASSES`` order) of each
        method.
    """
    methods = {"truth": None, **predictors}
    truth: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    predicted: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    dominant: dict[str, list[bool]] = {name: [] for name in methods}
    common: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    for index, shape in enumerate(SHAPE_CLASSES):
        for k in range(per_class):
            micrograph = shape_micrograph(shape, width_px, image_rng(seed, index * per_class + k))
            found = {}
            for name, predictor in methods.items():
                labels = micrograph.instances if predictor is None else predictor(micrograph.image)
                found[name] = _matched_shape_classes(micrograph.instances, labels)
                classes = found[name][1]
                truth[name].append(np.full(classes.size, index))
                predicted[name].append(classes)
                if classes.size:
                    dominant[name].append(np.bincount(classes).argmax() == index)
            shared = reduce(np.intersect1d, (ids for ids, _ in found.values()))
            for name, (ids, classes) in found.items():
                common[name].append(classes[np.isin(ids, shared)] == index)
    metrics: dict[str, object] = {
        f"{SHAPE_PREFIX}/seed": seed,
        f"{SHAPE_PREFIX}/per_class": per_class,
        f"{SHAPE_PREFIX}/common_particles": int(np.concatenate(common["truth"]).size),
    }
    matrices = {}
    for name in methods:
        t, p = np.concatenate(truth[name]), np.concatenate(predicted[name])
        matrix = confusion(t, p, len(SHAPE_CLASSES))
        matrices[name] = matrix
        recall = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
        present = matrix.sum(axis=1) > 0
        prefix = f"{SHAPE_PREFIX}/{name}"
        metrics[f"{prefix}/particles"] = int(t.size)
        metrics[f"{prefix}/accuracy"] = accuracy(t, p) if t.size else math.nan
        metrics[f"{prefix}/balanced_accuracy"] = (
            float(recall[present].mean()) if present.any() else math.nan
        )
        metrics[f"{prefix}/dominant_accuracy"] = (
            float(np.mean(dominant[name])) if dominant[name] else math.nan
        )
        right = np.concatenate(common[name])
        metrics[f"{prefix}/common_accuracy"] = float(right.mean()) if right.size else math.nan
        for shape, value, seen in zip(SHAPE_CLASSES, recall, present, strict=True):
            if seen:
                metrics[f"{prefix}/recall/{shape}"] = float(value)
    return metrics, matrices


def _matched_shape_classes(
    truth: np.ndarray, predicted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted particles matched at IoU ≥ 0.5 (edge ones out): their truth ids and classes.

    Both arrays in increasing truth id order; classes are indices into ``SHAPE_CLASSES``.
    """
    match = match_instances(truth, predicted)
    good = match.matched_iou >= 0.5
    chosen, partners = match.matched_pred[good], match.matched_truth[good]
    inside = ~border_flags(predicted)[match.pred_ids[chosen]]
    chosen, partners = chosen[inside], partners[inside]
    if chosen.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pred_ids = match.pred_ids[chosen]
    keep = np.where(np.isin(predicted, pred_ids), predicted, 0)
    # classify_shapes answers in increasing predicted id order.
    by_pred_id = dict(zip(np.sort(pred_ids), classify_shapes(keep), strict=True))
    truth_ids = match.truth_ids[partners]
    order = np.argsort(truth_ids)
    classes = [SHAPE_CLASSES.index(by_pred_id[pred_id]) for pred_id in pred_ids[order]]
    return truth_ids[order], np.array(classes, dtype=np.int64)


def shape_figure(matrices: Mapping[str, np.ndarray], path: Path | str) -> Path:
    """Confusion matrices of the shape classes (``evaluate_synthetic_shapes``), one per method."""
    labels = [
        name.replace(" shape", "").replace("-pointed star", "-star") for name in SHAPE_CLASSES
    ]
    title = "Shape classes of simulated micrographs (rows: simulated class)"
    return confusion_panels(matrices, labels, title, path)


def evaluation_figure(metrics: Mapping[str, object], path: Path | str) -> Path:
    """Bar charts of AP50, AP75, semantic mIoU and count error, per set and method.

    A last panel shows the model − baseline differences of ``compare_methods`` with their
    95 % intervals, signed so that above 0 means the model is better (count error negated).

    Args:
        metrics: Flat metrics of ``evaluate_test_parts``.
        path: PNG to write.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets, methods = figure_sets_and_methods(metrics)
    panels = ("ap50", "ap75", "semantic_miou", "count_error")
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(4 * (len(panels) + 1), 3.4))
    width = 0.8 / max(1, len(methods))
    for axis, metric in zip(axes[:-1], panels, strict=True):
        for index, method in enumerate(methods):
            heights = [_number(metrics.get(f"{name}/{method}/{metric}")) for name in sets]
            positions = np.arange(len(sets)) + (index - (len(methods) - 1) / 2) * width
            axis.bar(positions, heights, width, label=method)
        axis.set_xticks(np.arange(len(sets)), sets, rotation=30, ha="right", fontsize=8)
        axis.set_title(metric.replace("_", " "))
    axes[0].legend(fontsize=8)
    _difference_panel(axes[-1], metrics, sets)
    figure.suptitle("Held-out test images of each labelled set", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)
    return path


def figure_sets_and_methods(metrics: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """The labelled sets (those with ``<set>/test_images``) and the methods scored on them.

    The simulated shape micrographs (``shapes/synthetic/...``) and the model − baseline
    comparison are not a set or a method.
    """
    sets = [key.removesuffix("/test_images") for key in metrics if key.endswith("/test_images")]
    keys = [key.split("/") for key in metrics if key.count("/") == 2]
    methods = [method for name, method, _ in keys if name in sets and method != COMPARISON]
    return sets, list(dict.fromkeys(methods))


def _difference_panel(axis, metrics: Mapping[str, object], sets: Sequence[str]) -> None:
    """Model − baseline per set and metric, with 95 % intervals; above 0: the model is better."""
    width = 0.8 / len(COMPARED)
    for index, (metric, sign) in enumerate(COMPARED.items()):
        prefix = [f"{name}/{COMPARISON}/{metric}/" for name in sets]
        middle, low, high = (
            np.array([_number(metrics.get(p + key)) for p in prefix]) * sign
            for key in ("difference", "ci95_low", "ci95_high")
        )
        # The sign flips the interval of the count error: below and above by magnitude.
        errors = np.abs(np.vstack([np.minimum(low, high), np.maximum(low, high)]) - middle)
        positions = np.arange(len(sets)) + (index - (len(COMPARED) - 1) / 2) * width
        label = ("−" if sign < 0 else "") + metric.replace("_", " ")
        axis.errorbar(positions, middle, yerr=np.nan_to_num(errors), fmt="o", ms=4, label=label)
    axis.axhline(0.0, color="grey", lw=0.8)
    axis.set_xticks(np.arange(len(sets)), sets, rotation=30, ha="right", fontsize=8)
    axis.set_title("model − baseline (95 % CI; > 0: model better)", fontsize=9)
    axis.legend(fontsize=7)


def _number(value: object) -> float:
    """A metric as float; NaN when missing or None."""
    return float(value) if isinstance(value, int | float) else np.nan


@dataclass
class Evaluation:
    """``evaluate_sets``' result: metrics, per-image scores and shape confusion matrices.

    Attributes:
        metrics: Flat metrics (``evaluate_test_parts``, ``evaluate_synthetic_shapes``).
        per_image: One row per scored image, set and method.
        shape_matrices: Per method, the shape-class confusion matrix (empty without shapes).
    """

    metrics: dict[str, object]
    per_image: pd.DataFrame
    shape_matrices: dict[str, np.ndarray]


def evaluate_sets(
    sets: Sequence[tuple[str, Path | str]],
    model: object | None,
    split: Split,
    segment: Mapping[str, object] | None = None,
    set_segment: Mapping[str, Mapping[str, object]] | None = None,
    shapes_per_class: int = 0,
    shapes_seed: int = 2025,
    progress: bool = False,
) -> Evaluation:
    """Score the model and the classical baseline on the scored part of labelled sets.

    Args:
        sets: (name, folder) of each labelled set (``nanoxtal.tem.io.LABELLED_SETS``).
        model: A trained ``Segmenter``, or None to score the baseline alone.
        split: The fixed train/test split (or one cross-validation fold).
        segment: ``SegmentSettings`` fields common to every set.
        set_segment: Per set, fields over ``segment`` (e.g. STEM scales for one set).
        shapes_per_class: Also score the shape classes on this many simulated micrographs
            per class (0: skip).
        shapes_seed: Seed of the simulated shape micrographs.
        progress: Show a progress bar per set and method.

    Raises:
        ValueError: ``set_segment`` names a set not in ``sets``; invalid settings (every set's
            settings are checked before the first image is segmented).
    """
    from nanoxtal.tem.segmentation import SegmentSettings, segment_image

    per_set = dict(set_segment or {})
    names = [name for name, _ in sets]
    unknown = sorted(set(per_set) - set(names))
    if unknown:
        raise ValueError(f"--set-segment names sets not given with --set: {', '.join(unknown)}")
    chosen_for = {
        name: SegmentSettings.from_mapping({**(segment or {}), **per_set.get(name, {})})
        for name in [*names, "shapes"]
    }

    def predictors(name: str) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        chosen = chosen_for[name]
        methods = {"baseline": lambda image: segment_image(image, None, chosen)}
        if model is not None:
            methods["model"] = lambda image: segment_image(image, model, chosen)
        return methods

    metrics: dict[str, object] = {}
    tables = []
    for name, folder in sets:
        found, table = evaluate_test_parts({name: folder}, predictors(name), split, progress)
        metrics |= found
        tables.append(table)
    matrices: dict[str, np.ndarray] = {}
    if shapes_per_class > 0:
        found, matrices = evaluate_synthetic_shapes(
            predictors("shapes"), shapes_per_class, shapes_seed
        )
        metrics |= found
    return Evaluation(metrics, pd.concat(tables, ignore_index=True), matrices)


def read_folds(folders: Sequence[Path | str]) -> tuple[list[dict], list[pd.DataFrame]]:
    """The scored folds of a cross-validation: each folder's metrics.json and per_image.csv.

    Raises:
        ValueError: A folder without both files, or with unreadable ones (named).
    """
    import json

    fold_metrics, fold_tables = [], []
    for folder in map(Path, folders):
        try:
            fold_metrics.append(json.loads((folder / "metrics.json").read_text()))
            table = pd.read_csv(folder / "per_image.csv", dtype={"name": str, "error": object})
        except (OSError, ValueError) as error:
            raise ValueError(f"{folder}: not a scored fold ({error})") from error
        fold_tables.append(table)
    return fold_metrics, fold_tables
