from __future__ import annotations

import numpy as np

from nanoxtal.xrd.evaluate import nearest_neighbour


def test_nearest_neighbour_uses_cosine_similarity():
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = np.array([[10.0, 0.1], [0.2, 3.0], [2.0, 2.1]])
    assert nearest_neighbour(reference, queries).tolist() == [0, 1, 2]
