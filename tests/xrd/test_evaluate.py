from __future__ import annotations

import numpy as np

from nanoxtal.xrd.datamodule import XrdDataModule
from nanoxtal.xrd.evaluate import nearest_rendered, render_split
from nanoxtal.xrd.profiles import Augmentation


def test_nearest_rendered_finds_each_structure_across_chunks(tiny_tables):
    structures, peaks, _ = tiny_tables
    data = XrdDataModule(str(structures), str(peaks), seed=0)
    data.setup()
    train = data.subset("train")
    # Measured-like queries: the training structures with experimental effects, reversed so
    # that the right answer is not the query's own position.
    patterns, _, _ = render_split(data, "train", Augmentation(), seed=5)
    queries = patterns[::-1]
    expected = np.arange(len(patterns))[::-1]
    for chunk in (1, 3, 512):
        rows, similarity = nearest_rendered(train, data.renderer, queries, seed=0, chunk=chunk)
        np.testing.assert_array_equal(rows, expected)
        assert (similarity > 0).all() and (similarity <= 1.0 + 1e-6).all()
    # Clean renders of the split are found exactly; structures outside it are not.
    clean, _, _ = render_split(data, "train", Augmentation.clean(), seed=5)
    np.testing.assert_allclose(
        nearest_rendered(train, data.renderer, clean, seed=0)[1], 1.0, atol=1e-5
    )
    other, _, _ = render_split(data, "test", Augmentation.clean(), seed=5)
    assert nearest_rendered(train, data.renderer, other, seed=0)[1].max() < 0.99
