"""Shared figures: confusion matrices (more to come: parity plots, overlays, histograms)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
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
    counts = np.asarray(matrix)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    size = 1.2 + 0.55 * len(labels)
    # Figure without pyplot: no GUI backend, safe on clusters and CI without a display.
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.subplots()
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
    figure.colorbar(image, ax=axes, label="share of the true class")
    figure.tight_layout()
    path = Path(path)
    with atomic_write(path) as partial:
        figure.savefig(partial, dpi=120, format=path.suffix.lstrip(".") or "png")
    return path
