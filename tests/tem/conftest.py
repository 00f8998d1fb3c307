"""Fixtures of the TEM tests: a small labelled set written to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    """Instance labels 1..n of discs of ``radius`` px at ``centres`` (row, col)."""
    rows, cols = np.indices(shape)
    labels = np.zeros(shape, dtype=np.int32)
    for index, (r, c) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    return labels


@pytest.fixture
def msa_like(tmp_path: Path) -> Path:
    """Six msa_em-like images (dark discs on a bright film, binary masks) under ``msa_em/``."""
    root = tmp_path / "tem" / "msa_em"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for index in range(6):
        labels = discs((48, 48), [(12 + index, 12), (34, 30)], 5)
        image = np.where(labels > 0, 60, 200).astype(np.uint8)
        skio.imsave(root / "images" / f"im{index}.png", image, check_contrast=False)
        mask = ((labels > 0) * 255).astype(np.uint8)
        skio.imsave(root / "masks" / f"im{index}.png", mask, check_contrast=False)
    return root


@pytest.fixture
def draw_discs():
    """``discs``, for tests that draw their own labels."""
    return discs
