"""Shared figures: confusion matrices, attributions, reliability, parity and importance charts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nanoxtal.files import atomic_write


def confusion_figure(
    matrix: np.ndarray, labels: Sequence[str], title: str, path: Path | str
) -> Path:
    """Save a row-normalised confusion matrix (truth rows, predictions columns) with counts.

    Args:
        matrix: Counts, (classes, classes).
        labels: Class names.
        title: Figure title.
        path: Output image (.png, .pdf, .svg).
    """
    size = 1.2 + 0.55 * len(labels)
    # Figure without pyplot: no GUI backend, safe on clusters and CI without a display.
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.subplots()
    image = _confusion_axes(axes, matrix, labels, title)
    figure.colorbar(image, ax=axes, label="share of the true class")
    figure.tight_layout()
    return _save(figure, path)


def confusion_panels(
    matrices: Mapping[str, np.ndarray], labels: Sequence[str], title: str, path: Path | str
) -> Path:
    """Save several confusion matrices of the same classes side by side (``confusion_figure``).

    Args:
        matrices: Counts (classes, classes) by panel title, e.g. one per method.
        labels: Class names.
        title: Figure title.
        path: Output image.
    """
    size = 1.2 + 0.5 * len(labels)
    figure = Figure(figsize=(size * len(matrices), size + 0.4))
    axes = figure.subplots(1, len(matrices), squeeze=False)[0]
    for axis, (name, matrix) in zip(axes, matrices.items(), strict=True):
        counts = np.asarray(matrix)
        share = np.trace(counts) / max(int(counts.sum()), 1)
        _confusion_axes(axis, counts, labels, f"{name}: {share:.0%} of {counts.sum()}")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def _confusion_axes(axes: Axes, matrix: np.ndarray, labels: Sequence[str], title: str):
    """Draw a row-normalised confusion matrix with its counts; returns the image."""
    counts = np.asarray(matrix)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (i, j), count in np.ndenumerate(counts):
        if count:
            colour = "white" if share[i, j] > 0.5 else "black"
            axes.text(j, i, str(count), ha="center", va="center", fontsize=8, color=colour)
    return image


def attribution_figure(
    x: np.ndarray,
    patterns: np.ndarray,
    attributions: np.ndarray,
    titles: Sequence[str],
    path: Path | str,
    x_label: str = "2θ (degrees)",
) -> Path:
    """Save one panel per pattern: the pattern, and beneath it what drove the prediction.

    Args:
        x: Abscissa of the patterns (n_points,).
        patterns: Patterns (n, n_points).
        attributions: Attribution of each point (n, n_points), e.g. gradient × input; positive
            values pushed the prediction up.
        titles: A title per panel.
        path: Output image.
        x_label: Abscissa label.
    """
    n = len(patterns)
    figure = Figure(figsize=(10, 2.6 * n))
    axes = figure.subplots(2 * n, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1] * n})
    for i in range(n):
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top.plot(x, patterns[i], color="black", linewidth=0.6)
        top.set_title(titles[i], fontsize=9)
        top.set_ylabel("intensity")
        scale = np.abs(attributions[i]).max() or 1.0
        bottom.fill_between(x, attributions[i] / scale, color="tab:red", linewidth=0)
        bottom.set_ylim(-1.05, 1.05)
        bottom.set_ylabel("attribution")
    axes[-1].set_xlabel(x_label)
    figure.tight_layout()
    path = Path(path)
    with atomic_write(path) as partial:
        figure.savefig(partial, dpi=110, format=path.suffix.lstrip(".") or "png")
    return path


def reliability_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path | str, bins: int = 10
) -> Path:
    """Save a reliability diagram: accuracy against confidence in equal-width bins.

    A calibrated model lies on the diagonal; points below it are over-confident.

    Args:
        curves: Label → (confidence of each prediction, whether it was correct).
        title: Figure title.
        path: Output image.
        bins: Confidence bins in [0, 1].
    """
    figure = Figure(figsize=(4.8, 4.5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for label, (confidence, correct) in curves.items():
        which = np.clip((np.asarray(confidence) * bins).astype(int), 0, bins - 1)
        filled = np.unique(which)
        mean_confidence = [np.mean(confidence[which == b]) for b in filled]
        accuracy = [np.mean(correct[which == b]) for b in filled]
        axes.plot(mean_confidence, accuracy, marker="o", label=label)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def parity_figure(
    truth: np.ndarray, predicted: np.ndarray, title: str, path: Path | str, unit: str = "nm"
) -> Path:
    """Save a parity plot (predicted against true) with the identity line and the MAE.

    Args:
        truth: True values.
        predicted: Predicted values.
        title: Figure title.
        path: Output image.
        unit: Unit of both axes.
    """
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    figure = Figure(figsize=(4.8, 4.5))
    axes = figure.subplots()
    axes.scatter(truth, predicted, s=6, alpha=0.4, linewidths=0)
    high = float(max(truth.max(), predicted.max())) * 1.05
    axes.plot([0, high], [0, high], color="grey", linestyle=":")
    axes.set_xlim(0, high)
    axes.set_ylim(0, high)
    axes.set_xlabel(f"true ({unit})")
    axes.set_ylabel(f"predicted ({unit})")
    mae = float(np.mean(np.abs(predicted - truth)))
    axes.set_title(f"{title}\nMAE {mae:.2f} {unit}, n = {len(truth)}")
    figure.tight_layout()
    return _save(figure, path)


def importance_figure(
    panels: Sequence[tuple[str, Sequence[str], np.ndarray, np.ndarray]],
    x_label: str,
    path: Path | str,
) -> Path:
    """Save horizontal bar charts of importances, one panel per grouping, largest on top.

    Args:
        panels: (title, names, values, standard deviations) per panel.
        x_label: Label of the value axis (e.g. "size MAE increase (nm)").
        path: Output image.
    """
    rows = max(len(names) for _, names, _, _ in panels)
    figure = Figure(figsize=(5.0 * len(panels), 1.0 + 0.3 * rows))
    for axes, (title, names, values, errors) in zip(
        np.atleast_1d(figure.subplots(1, len(panels))), panels, strict=True
    ):
        values, errors = np.asarray(values, dtype=float), np.asarray(errors, dtype=float)
        order = np.argsort(values)
        axes.barh(
            np.arange(len(order)),
            values[order],
            xerr=errors[order],
            color="tab:blue",
            ecolor="grey",
        )
        axes.set_yticks(np.arange(len(order)), [names[i] for i in order])
        axes.axvline(0, color="black", linewidth=0.8)
        axes.set_xlabel(x_label)
        axes.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: Figure, path: Path | str) -> Path:
    """Write a figure atomically in the format its suffix names (PNG by default)."""
    path = Path(path)
    with atomic_write(path) as partial:
        figure.savefig(partial, dpi=120, format=path.suffix.lstrip(".") or "png")
    return path
