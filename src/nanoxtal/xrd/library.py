"""Reference-library search beside the classifier: search-match first, the network otherwise.

A laboratory identifies a measured pattern by searching a library of labelled measured patterns
before it trusts a model. ``Library`` holds such patterns (e.g. the RRUFF fine-tune part) and
learns, from leave-one-out searches inside the library itself, how often the nearest pattern's
label is right at each cosine similarity. ``combine`` then mixes the library's answer with the
classifier's probabilities: ``p = g·onehot(label) + (1 - g)·p_net`` with ``g`` that probability.
So a close match decides, and a poor one leaves the network's answer (almost) unchanged.

Which library pattern is nearest is judged on the patterns and, when the library holds them,
on the classifier's own representations (``XrdClassifier.embed``) of the library and the
query: the similarity is ``(1 - w)·cos(patterns) + w·cos(embeddings)``. The network has learnt
which differences between patterns matter for symmetry (peak positions more than intensities
that texture changes), so its representation finds the right mineral more often. The trust
stays that of the patterns' cosine at the chosen match, learnt as above.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nanoxtal.files import atomic_write

LIBRARY_FORMAT = 1
# Gaussian σ (grid points, 0.01° each) applied before the cosine: 0.1° tolerates the small peak
# shifts of zero error and of solid-solution lattice parameters. Chosen by leave-one-out inside
# the RRUFF fine-tune part (space group / crystal system right: 0.405 / 0.507 unsmoothed,
# 0.441 / 0.590 at 10 points, 0.445 / 0.581 at 20).
SMOOTHING_POINTS = 10.0
# Weight of the embeddings' cosine in the similarity that picks the nearest pattern. Chosen by
# 3-fold cross-fitting inside the RRUFF fine-tune part (fine-tuned model + library, space group
# / crystal system right: 0.463 / 0.626 on the patterns alone, 0.489 / 0.639 at 0.5,
# 0.493 / 0.648 at 0.75, 0.485 / 0.656 at 0.9, 0.476 / 0.652 on the embeddings alone; the
# synthetic model + library: 0.454 / 0.586 alone, 0.485 / 0.617 at 0.75).
EMBEDDING_WEIGHT = 0.75


class LibraryError(ValueError):
    """A library file that cannot be used, named with the reason."""


def unit_rows(patterns: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (all-zero rows stay zero), as float32."""
    patterns = np.asarray(patterns, dtype=np.float32)
    return patterns / np.linalg.norm(patterns, axis=1, keepdims=True).clip(1e-12)


def smooth(patterns: np.ndarray, sigma_points: float) -> np.ndarray:
    """Rows convolved with a unit-area Gaussian of σ ``sigma_points`` (FFT; zero past the ends)."""
    patterns = np.asarray(patterns, dtype=np.float32)
    if sigma_points <= 0:
        return patterns
    half = int(4 * sigma_points) + 1
    offsets = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (offsets / sigma_points) ** 2)
    length = patterns.shape[1] + 2 * half
    spectrum = np.fft.rfft(patterns, length, axis=1) * np.fft.rfft(kernel / kernel.sum(), length)
    full = np.fft.irfft(spectrum, length, axis=1)
    return full[:, half : half + patterns.shape[1]].astype(np.float32)


def nearest_neighbour(
    reference: np.ndarray, queries: np.ndarray, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Row of ``reference`` most cosine-similar to each query, and that similarity.

    Args:
        reference: (N, points) patterns.
        queries: (M, points) patterns on the same grid.
        exclude_self: Leave-one-out: queries are ``reference`` itself and row i may not
            match itself.
    """
    similarity = unit_rows(queries) @ unit_rows(reference).T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    index = similarity.argmax(1)
    return index, similarity[np.arange(len(index)), index]


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> tuple[float, float]:
    """Intercept and slope of P(y = 1 | x) = sigmoid(a + b·x), by Newton's method.

    A small ridge keeps the fit finite when the classes separate (e.g. every close match right).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    design = np.stack([np.ones_like(x), x], axis=1)
    w = np.zeros(2)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (p - y) + ridge * w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def sigmoid(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """The logistic curve 1 / (1 + exp(-(a + b·x)))."""
    return 1.0 / (1.0 + np.exp(-(a + b * np.asarray(x, dtype=float))))


@dataclass(frozen=True)
class Library:
    """Labelled measured patterns on the model grid, with how far their matches can be trusted.

    Attributes:
        patterns: (N, points) patterns, already smoothed (``smooth``, ``smoothing_points``).
        crystal_system: Labels 0-6.
        space_group: Labels 1-230.
        trust_crystal_system: (a, b) of P(nearest pattern's crystal system is right | cosine).
        trust_space_group: The same for the space group.
        smoothing_points: Gaussian σ (grid points) of the patterns and of every query.
        embeddings: (N, hidden) the classifier's representations of the patterns, unit rows;
            None for a library searched on the patterns alone.
        model_fingerprint: ``XrdClassifier.fingerprint`` of the model the embeddings are of.
        embedding_weight: ``EMBEDDING_WEIGHT``.
    """

    patterns: np.ndarray
    crystal_system: np.ndarray
    space_group: np.ndarray
    trust_crystal_system: tuple[float, float]
    trust_space_group: tuple[float, float]
    smoothing_points: float = SMOOTHING_POINTS
    embeddings: np.ndarray | None = None
    model_fingerprint: str = ""
    embedding_weight: float = EMBEDDING_WEIGHT

    def match(
        self, queries: np.ndarray, query_embeddings: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Nearest library pattern of each query: its row, similarity, labels and their trust.

        Args:
            queries: (M, points) patterns on the model grid.
            query_embeddings: (M, hidden) their representations by the library's model (the
                one ``model_fingerprint`` names); None searches on the patterns alone.

        Returns:
            ``row``, ``similarity`` (cosine of the smoothed patterns at that row), the row's
            ``crystal_system`` and ``space_group``, and their trust at that similarity.
        """
        queries = smooth(queries, self.smoothing_points)
        if self.embeddings is None or query_embeddings is None:
            index, similarity = nearest_neighbour(self.patterns, queries)
        else:
            if np.shape(query_embeddings) != (len(queries), self.embeddings.shape[1]):
                raise ValueError(
                    f"query embeddings of shape {np.shape(query_embeddings)}, expected "
                    f"({len(queries)}, {self.embeddings.shape[1]})"
                )
            cosine = unit_rows(queries) @ unit_rows(self.patterns).T
            joint = (1 - self.embedding_weight) * cosine + self.embedding_weight * (
                unit_rows(query_embeddings) @ self.embeddings.T
            )
            index = joint.argmax(1)
            similarity = cosine[np.arange(len(index)), index]
        return {
            "row": index,
            "similarity": similarity,
            "crystal_system": self.crystal_system[index],
            "space_group": self.space_group[index],
            "trust_crystal_system": sigmoid(*self.trust_crystal_system, similarity),
            "trust_space_group": sigmoid(*self.trust_space_group, similarity),
        }

    def with_embeddings(self, embeddings: np.ndarray, model_fingerprint: str) -> Library:
        """The same library searched with a classifier's representations of its patterns too.

        Raises:
            ValueError: Not one embedding per pattern.
        """
        if len(embeddings) != len(self.patterns):
            raise ValueError(f"{len(embeddings)} embeddings for {len(self.patterns)} patterns")
        return replace(self, embeddings=unit_rows(embeddings), model_fingerprint=model_fingerprint)

    def save(self, path: Path | str) -> Path:
        """Write the library as an ``.npz`` archive (atomically)."""
        # A file handle: given a path without ".npz", numpy would append the suffix.
        with atomic_write(path) as partial, open(partial, "wb") as handle:
            np.savez_compressed(
                handle,
                format=LIBRARY_FORMAT,
                patterns=self.patterns.astype(np.float32),
                crystal_system=self.crystal_system,
                space_group=self.space_group,
                trust_crystal_system=np.asarray(self.trust_crystal_system),
                trust_space_group=np.asarray(self.trust_space_group),
                smoothing_points=self.smoothing_points,
                **(
                    {}
                    if self.embeddings is None
                    else {
                        "embeddings": self.embeddings.astype(np.float32),
                        "model_fingerprint": self.model_fingerprint,
                        "embedding_weight": self.embedding_weight,
                    }
                ),
            )
        return Path(path)


def build_library(
    patterns: np.ndarray,
    crystal_system: np.ndarray,
    space_group: np.ndarray,
    smoothing_points: float = SMOOTHING_POINTS,
    embeddings: np.ndarray | None = None,
    model_fingerprint: str = "",
) -> Library:
    """A library of labelled patterns whose trust curves come from leave-one-out searches.

    Each pattern is matched against the others; whether its nearest pattern carries its own
    label, against the similarity of that match, fits one logistic curve per task. With
    several patterns of the same mineral (as in RRUFF), close matches are then trusted.

    Args:
        patterns: (N, points) labelled patterns on the model grid.
        crystal_system: Their labels 0-6.
        space_group: Their labels 1-230.
        smoothing_points: ``SMOOTHING_POINTS``.
        embeddings: (N, hidden) the patterns' representations by a classifier
            (``XrdClassifier.embed``), to search with it too; None: the patterns alone.
        model_fingerprint: That classifier's ``fingerprint``.

    Raises:
        ValueError: Fewer than two patterns, or labels or embeddings of another length.
    """
    patterns = smooth(patterns, smoothing_points)
    if len(patterns) < 2:
        raise ValueError(f"a library needs at least 2 patterns, got {len(patterns)}")
    if not len(patterns) == len(crystal_system) == len(space_group):
        raise ValueError("patterns and labels differ in length")
    # The trust curves are of the patterns' cosine: the network's representation of its own
    # training patterns would make every leave-one-out match look safer than a query's.
    index, similarity = nearest_neighbour(patterns, patterns, exclude_self=True)
    library = Library(
        patterns,
        np.asarray(crystal_system),
        np.asarray(space_group),
        fit_logistic(similarity, crystal_system[index] == crystal_system),
        fit_logistic(similarity, space_group[index] == space_group),
        smoothing_points,
    )
    if embeddings is None:
        return library
    return library.with_embeddings(embeddings, model_fingerprint)


def load_library(path: Path | str) -> Library:
    """Read a library written by ``Library.save``.

    Raises:
        LibraryError: The file is missing, unreadable or of another format.
    """
    try:
        with np.load(path) as archive:
            if int(archive["format"]) != LIBRARY_FORMAT:
                raise LibraryError(
                    f"{path}: library format {int(archive['format'])}, expected {LIBRARY_FORMAT}"
                )
            return Library(
                archive["patterns"],
                archive["crystal_system"],
                archive["space_group"],
                tuple(float(v) for v in archive["trust_crystal_system"]),
                tuple(float(v) for v in archive["trust_space_group"]),
                float(archive["smoothing_points"]),
                archive.get("embeddings"),
                str(archive["model_fingerprint"]) if "model_fingerprint" in archive else "",
                float(archive["embedding_weight"])
                if "embedding_weight" in archive
                else EMBEDDING_WEIGHT,
            )
    except (OSError, KeyError, ValueError) as error:
        if isinstance(error, LibraryError):
            raise
        raise LibraryError(f"{path}: not a pattern library ({error})") from error


def combine(
    probabilities: np.ndarray, label: np.ndarray, trust: np.ndarray, offset: int = 0
) -> np.ndarray:
    """Mix the classifier's probabilities with the library's answer.

    Args:
        probabilities: (N, classes) classifier probabilities.
        label: (N,) the nearest library pattern's class (``offset``-based, e.g. 1 for space
            groups).
        trust: (N,) probability that the library's class is right.
        offset: The class number of column 0.

    Returns:
        (N, classes) ``trust·onehot(label) + (1 - trust)·probabilities``, rows summing to 1.
    """
    mixed = probabilities * (1.0 - trust)[:, None]
    mixed[np.arange(len(label)), np.asarray(label) - offset] += trust
    return mixed


def library_probabilities(
    match: dict[str, np.ndarray], p_crystal_system: np.ndarray, p_space_group: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both tasks' classifier probabilities mixed with the library's matches (``combine``).

    Args:
        match: ``Library.match`` of the same patterns.
        p_crystal_system: (N, 7) classifier probabilities.
        p_space_group: (N, 230) classifier probabilities.
    """
    return (
        combine(p_crystal_system, match["crystal_system"], match["trust_crystal_system"]),
        combine(p_space_group, match["space_group"], match["trust_space_group"], offset=1),
    )
