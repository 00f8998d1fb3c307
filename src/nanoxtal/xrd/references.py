"""Reference phases named beside every prediction: search-match against clean renders.

Before they trust a classifier, laboratories search-match a measured pattern against reference
phases (Hanawalt search, ICDD PDF; here open structure databases). ``References`` holds the
clean renders (no experimental effects) of the structure table's phases with their ids,
mineral names, formulas and space groups, and returns the ``k`` phases whose patterns are most
similar to a query: the cosine of the patterns after Gaussian smoothing, which tolerates the
small peak shifts of zero error and of solid-solution lattice parameters, on a grid pooled to
0.05° steps (five times fewer points to search, the same matches on the RRUFF fine-tune part).

A close match is also evidence about the space group. Fitted on labelled measured patterns
(the RRUFF fine-tune part), a logistic curve gives how often match 1's space group is right at
its similarity (``fit_trust``); ``mix`` then moves the classifier's space-group probabilities
towards match 1 by that trust, as the pattern library does (``nanoxtal.xrd.library.combine``).
On out-of-fold predictions of the fine-tune part (curves fitted on the other folds) this took
space-group accuracy from 43.2 % to 50.2 %. The crystal-system head is left alone: mixed the
same way it fell from 63.4 % to 61.7 % there.

A pattern unlike every reference phase is also unlike the training data (the references are
renders of the training structures and more): ``fit_trust`` also sets ``unlike_below``, the
match-1 similarity below which only ``UNLIKE_QUANTILE`` (1 %) of those labelled measured
patterns fall, and ``unlike`` flags the patterns below it, which ``predict`` then holds back
(abstains on). The similarity is over the whole grid, so a scan of part of the 2θ range, or a
strongly textured film, scores lower than a full powder pattern of the same phase.

The renders are those the classifier is trained on (``nanoxtal.xrd.profiles.Renderer``, peaks
above ``min_intensity``), so a reference and the class the model predicts come from one
simulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nanoxtal.files import atomic_write
from nanoxtal.xrd.datamodule import StickSet, join_sticks, render_sticks
from nanoxtal.xrd.library import (
    SMOOTHING_POINTS,
    combine,
    fit_logistic,
    sigmoid,
    smooth,
    unit_rows,
)
from nanoxtal.xrd.profiles import Augmentation, Renderer

REFERENCES_FORMAT = 1
# Grid points averaged into one after smoothing (0.05° steps). On the RRUFF fine-tune part
# (227 patterns, seed 42) against the 40,629 structures of the default table, match 1 has the
# pattern's space group as often as on the full grid (41.4 % full, pooled by 5 and by 10; any of
# three: 50.7, 50.7, 50.2 %) for a fifth of the work. Smoothing σ (``SMOOTHING_POINTS``, 10)
# was compared there too: 41.9 % at 5 points, 41.4 % at 10, 40.1 % at 20.
POOLED_POINTS = 5
# Matches named per pattern (``match_1`` ... ``match_3``).
MATCHES = 3
# Columns of each match in ``References.columns``, after ``match_<k>_``.
MATCH_FIELDS = ("id", "name", "formula", "space_group", "similarity")
# Share of the labelled measured patterns (RRUFF fine-tune part) whose match-1 similarity is
# allowed below ``References.unlike_below``: a pattern less like any reference phase than 99 %
# of measured minerals is one the model has no grounds to classify.
UNLIKE_QUANTILE = 0.01


class ReferencesError(ValueError):
    """A references file that cannot be used, named with the reason."""


def pool(patterns: np.ndarray, points: int) -> np.ndarray:
    """Mean of each run of ``points`` grid points (a trailing partial run is dropped)."""
    patterns = np.asarray(patterns, dtype=np.float32)
    if points <= 1:
        return patterns
    usable = patterns.shape[1] // points * points
    return patterns[:, :usable].reshape(len(patterns), -1, points).mean(2)


def search_form(
    patterns: np.ndarray,
    smoothing_points: float = SMOOTHING_POINTS,
    pooled_points: int = POOLED_POINTS,
) -> np.ndarray:
    """Patterns (N, grid points) as they are compared: smoothed, pooled, unit rows (float32)."""
    return unit_rows(pool(smooth(patterns, smoothing_points), pooled_points))


@dataclass(frozen=True)
class Matches:
    """The ``k`` most similar references of each query.

    Attributes:
        rows: (M, k) rows into the references, best first.
        similarity: (M, k) their cosine similarities (1 = the same pattern).
    """

    rows: np.ndarray
    similarity: np.ndarray


@dataclass(frozen=True)
class References:
    """Clean renders of reference phases, searched by cosine similarity.

    Attributes:
        patterns: (N, points) renders in ``search_form``, float32 (float16 on disk).
        ids: Structure ids (``mp-…``, ``amcsd-0000789``).
        names: Mineral names ("" where none).
        formulas: Reduced formulas.
        space_group: ITA numbers 1-230.
        crystal_system: Labels 0-6.
        smoothing_points: Gaussian σ (model grid points, 0.01° each) before pooling.
        pooled_points: Model grid points per reference point.
        grid_points: Points of the model grid the queries come on.
        trust_space_group: (a, b) of P(match 1's space group is right | similarity)
            (``fit_trust``); None: the matches are named, never mixed in.
        unlike_below: Match-1 similarity below which a pattern is unlike every reference
            phase (``fit_trust``); None: no pattern is.
    """

    patterns: np.ndarray
    ids: np.ndarray
    names: np.ndarray
    formulas: np.ndarray
    space_group: np.ndarray
    crystal_system: np.ndarray
    smoothing_points: float
    pooled_points: int
    grid_points: int
    trust_space_group: tuple[float, float] | None = None
    unlike_below: float | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def match(self, queries: np.ndarray, k: int = MATCHES, chunk: int = 256) -> Matches:
        """The ``k`` references most similar to each query.

        Args:
            queries: (M, grid_points) patterns on the model grid (``nanoxtal.xrd.io.to_grid``).
            k: Matches per query (at most the number of references).
            chunk: Queries compared at once (memory: chunk × references floats).

        Raises:
            ValueError: Queries on another grid.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.grid_points:
            raise ValueError(
                f"queries of shape {queries.shape}, expected (M, {self.grid_points}) on the"
                " model grid"
            )
        k = min(k, len(self))
        reference = self.patterns
        rows = np.zeros((len(queries), k), dtype=np.int64)
        similarity = np.zeros((len(queries), k), dtype=np.float32)
        for start in range(0, len(queries), chunk):
            part = slice(start, start + chunk)
            scores = search_form(queries[part], self.smoothing_points, self.pooled_points)
            scores = scores @ reference.T
            best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, best, 1), axis=1, kind="stable")
            rows[part] = np.take_along_axis(best, order, 1)
            similarity[part] = np.take_along_axis(scores, rows[part], 1)
        return Matches(rows, similarity)

    def columns(self, matches: Matches) -> pd.DataFrame:
        """The matches as ``match_<k>_id, _name, _formula, _space_group, _similarity``."""
        table = {}
        for j in range(matches.rows.shape[1]):
            rows = matches.rows[:, j]
            values = (
                self.ids[rows],
                self.names[rows],
                self.formulas[rows],
                self.space_group[rows].astype(int),
                matches.similarity[:, j].astype(float),
            )
            for field, value in zip(MATCH_FIELDS, values, strict=True):
                table[f"match_{j + 1}_{field}"] = value
        return pd.DataFrame(table)

    def mix(self, matches: Matches, p_space_group: np.ndarray) -> np.ndarray:
        """Space-group probabilities moved towards match 1 by its trust (as given without one).

        Args:
            matches: ``match`` of the same patterns.
            p_space_group: (N, 230) classifier probabilities.
        """
        if self.trust_space_group is None:
            return p_space_group
        trust = sigmoid(*self.trust_space_group, matches.similarity[:, 0])
        return combine(p_space_group, self.space_group[matches.rows[:, 0]], trust, offset=1)

    def unlike(self, matches: Matches) -> np.ndarray:
        """Which patterns are unlike every reference phase (match 1 below ``unlike_below``)."""
        if self.unlike_below is None:
            return np.zeros(len(matches.similarity), dtype=bool)
        return matches.similarity[:, 0] < self.unlike_below

    def fit_trust(self, patterns: np.ndarray, space_group: np.ndarray) -> References:
        """These references with the trust curve and the unlike gate fitted on measured patterns.

        Args:
            patterns: (N, grid_points) measured patterns (e.g. the RRUFF fine-tune part; never
                the part that evaluates).
            space_group: Their labels 1-230.
        """
        matches = self.match(patterns)
        right = self.space_group[matches.rows[:, 0]] == np.asarray(space_group)
        similarity = matches.similarity[:, 0]
        return replace(
            self,
            trust_space_group=fit_logistic(similarity, right),
            unlike_below=float(np.quantile(similarity, UNLIKE_QUANTILE)),
        )

    def save(self, path: Path | str) -> Path:
        """Write the references as an ``.npz`` archive (atomically; renders as float16)."""
        # A file handle: given a path without ".npz", numpy would append the suffix.
        with atomic_write(path) as partial, open(partial, "wb") as handle:
            np.savez_compressed(
                handle,
                format=REFERENCES_FORMAT,
                patterns=self.patterns.astype(np.float16),
                ids=self.ids.astype(str),
                names=self.names.astype(str),
                formulas=self.formulas.astype(str),
                space_group=self.space_group.astype(np.int16),
                crystal_system=self.crystal_system.astype(np.int8),
                smoothing_points=self.smoothing_points,
                pooled_points=self.pooled_points,
                grid_points=self.grid_points,
                **(
                    {}
                    if self.trust_space_group is None
                    else {"trust_space_group": np.asarray(self.trust_space_group)}
                ),
                **({} if self.unlike_below is None else {"unlike_below": self.unlike_below}),
            )
        return Path(path)


def build_references(
    sticks: StickSet,
    names: Sequence[str],
    formulas: Sequence[str],
    renderer: Renderer | None = None,
    smoothing_points: float = SMOOTHING_POINTS,
    pooled_points: int = POOLED_POINTS,
    chunk: int = 1024,
    progress: bool = True,
) -> References:
    """Render every structure cleanly and keep it in the form it is searched in.

    Args:
        sticks: The structures' stick patterns and labels (``join_sticks``).
        names: Mineral name of each ("" where none).
        formulas: Reduced formula of each.
        renderer: The model's renderer (default ``Renderer()``: 5-90° 2θ, 0.01° steps).
        smoothing_points: ``SMOOTHING_POINTS``.
        pooled_points: ``POOLED_POINTS``.
        chunk: Structures rendered at once (memory: chunk × 8,500 floats).
        progress: Show a progress bar.

    Raises:
        ValueError: Names or formulas not one per structure, or no structure.
    """
    if not len(sticks) == len(names) == len(formulas):
        raise ValueError(
            f"{len(names)} names and {len(formulas)} formulas for {len(sticks)} structures"
        )
    if not len(sticks):
        raise ValueError("no reference structures")
    renderer = renderer or Renderer()
    parts = []
    for start in tqdm(
        range(0, len(sticks), chunk), desc="references", unit="chunk", disable=not progress
    ):
        rows = np.arange(start, min(start + chunk, len(sticks)))
        rendered = render_sticks(sticks.subset(rows), renderer, Augmentation.clean(), seed=0)
        parts.append(search_form(rendered, smoothing_points, pooled_points).astype(np.float16))
    return References(
        # Searched as float32 (``match``), so converted once here rather than on every search.
        patterns=np.concatenate(parts).astype(np.float32),
        ids=np.asarray(sticks.ids).astype(str),
        names=np.asarray(names, dtype=str),
        formulas=np.asarray(formulas, dtype=str),
        space_group=np.asarray(sticks.space_group, dtype=np.int16),
        crystal_system=np.asarray(sticks.crystal_system, dtype=np.int8),
        smoothing_points=float(smoothing_points),
        pooled_points=int(pooled_points),
        grid_points=renderer.grid.points,
    )


REFERENCE_COLUMNS = ["id", "formula", "space_group", "crystal_system", "lattice", "source"]


def references_from_tables(
    structures: Path | str,
    peaks: Path | str,
    sources: Sequence[str] | None = None,
    min_intensity: float = 0.05,
    progress: bool = True,
) -> References:
    """References of the structures of a structure table (all splits), without trust curves.

    Args:
        structures: Structure table (``nanoxtal xrd structures``).
        peaks: Its peak table (``nanoxtal xrd simulate``).
        sources: The sources to keep (e.g. ``["amcsd"]``); None for all.
        min_intensity: Peaks weaker than this (of 100) are not rendered, as in training.
        progress: Show a progress bar.

    Raises:
        ValueError: A source named that the table lacks, or no structure left.
    """
    table = pd.read_parquet(structures, columns=[*REFERENCE_COLUMNS, "mineral"])
    if sources is not None:
        missing = set(sources) - set(table["source"])
        if missing:
            raise ValueError(
                f"{structures}: no structures of source(s) {sorted(missing)}"
                f" (has {sorted(set(table['source']))})"
            )
        table = table[table["source"].isin(sources)].reset_index(drop=True)
    peak_table = pd.read_parquet(peaks, columns=["id", "h", "k", "l", "d", "intensity"])
    sticks = join_sticks(table, peak_table, min_intensity)
    names = table["mineral"].fillna("").astype(str).tolist()
    return build_references(sticks, names, table["formula"].tolist(), progress=progress)


def _curve(archive: np.lib.npyio.NpzFile, name: str) -> tuple[float, float] | None:
    """A stored (a, b) logistic curve, or None where the file has none."""
    if name not in archive:
        return None
    a, b = (float(v) for v in archive[name])
    return a, b


def load_references(path: Path | str) -> References:
    """Read references written by ``References.save``.

    Raises:
        ReferencesError: The file is missing, unreadable, of another format, or its columns
            differ in length (the message names the file).
    """
    try:
        with np.load(path) as archive:
            if int(archive["format"]) != REFERENCES_FORMAT:
                raise ReferencesError(
                    f"{path}: references format {int(archive['format'])}, expected "
                    f"{REFERENCES_FORMAT}"
                )
            references = References(
                patterns=archive["patterns"].astype(np.float32),
                ids=archive["ids"],
                names=archive["names"],
                formulas=archive["formulas"],
                space_group=archive["space_group"].astype(int),
                crystal_system=archive["crystal_system"].astype(int),
                smoothing_points=float(archive["smoothing_points"]),
                pooled_points=int(archive["pooled_points"]),
                grid_points=int(archive["grid_points"]),
                trust_space_group=_curve(archive, "trust_space_group"),
                unlike_below=(
                    float(archive["unlike_below"]) if "unlike_below" in archive else None
                ),
            )
    except (OSError, KeyError, ValueError, EOFError) as error:
        if isinstance(error, ReferencesError):
            raise
        raise ReferencesError(f"{path}: not a references file ({error})") from error
    lengths = {
        len(references.patterns),
        len(references.ids),
        len(references.names),
        len(references.formulas),
        len(references.space_group),
        len(references.crystal_system),
    }
    if len(lengths) != 1:
        raise ReferencesError(f"{path}: its arrays differ in length ({sorted(lengths)})")
    expected = references.grid_points // max(references.pooled_points, 1)
    if references.patterns.ndim != 2 or references.patterns.shape[1] != expected:
        raise ReferencesError(
            f"{path}: patterns of shape {references.patterns.shape}, expected (N, {expected})"
        )
    return references
