"""Data for the XRD classifiers: stick patterns rendered on the fly, and measured patterns.

Synthetic data lives as stick patterns (``results/xrd/peaks.parquet``: ~100 peaks a structure,
not 8,500 floats); every batch is rendered when it is drawn, with fresh random instrument and
sample effects for training, so no two epochs see the same patterns. Validation and test
batches are rendered with seeds fixed per batch, so they are the same every epoch and run.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from nanoxtal.xrd.profiles import Augmentation, Renderer, make_batch


@dataclass(frozen=True)
class StickSet:
    """Stick patterns of many structures with their labels.

    Attributes:
        ids: Structure ids.
        sticks: Per structure: d (Å), intensity, hkl (P, 3).
        lattices: Per structure: lattice vectors as rows (3, 3), Å.
        crystal_system: Labels 0-6.
        space_group: Labels 1-230.
        sources: The source of each structure (``materials_project``, ``amcsd``, ``random``…).
    """

    ids: np.ndarray
    sticks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    lattices: np.ndarray
    crystal_system: np.ndarray
    space_group: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> StickSet:
        """The structures at positions ``rows``."""
        return StickSet(
            ids=self.ids[rows],
            sticks=[self.sticks[i] for i in rows],
            lattices=self.lattices[rows],
            crystal_system=self.crystal_system[rows],
            space_group=self.space_group[rows],
            sources=self.sources[rows],
        )


# The peak-table columns rendering needs (of ``nanoxtal.xrd.diffraction.PEAK_COLUMNS``).
STICK_COLUMNS = ["id", "h", "k", "l", "d", "intensity"]


def load_sticks(
    structures: Path | str | Sequence[Path | str], peaks: Path | str, min_intensity: float = 0.05
) -> tuple[StickSet, np.ndarray]:
    """Join the structure table(s) and the peak table.

    Args:
        structures: Structure table (``nanoxtal xrd structures``), or several (e.g. with the
            random crystals of ``nanoxtal xrd random``), concatenated in order.
        peaks: Peak table (``nanoxtal xrd simulate``).
        min_intensity: Peaks weaker than this (of 100) are dropped: invisible once rendered.

    Returns:
        The stick set and the split (train/val/test) of each structure.
    """
    paths = [structures] if isinstance(structures, str | Path) else list(structures)
    table = pd.concat([_read_labels(path) for path in paths], ignore_index=True)
    if table["id"].duplicated().any():
        duplicated = table.loc[table["id"].duplicated(), "id"].iloc[0]
        raise ValueError(f"structure id {duplicated!r} appears twice in {[str(p) for p in paths]}")
    peak_table = pd.read_parquet(peaks, columns=STICK_COLUMNS)
    return join_sticks(table, peak_table, min_intensity), table["split"].to_numpy()


# Source of the rows of a table written before tables named their sources.
UNNAMED_SOURCE = "file"


def _read_labels(path: Path | str) -> pd.DataFrame:
    """The columns ``load_sticks`` needs of one structure table."""
    columns = ["id", "split", "space_group", "crystal_system", "lattice"]
    present = set(pq.read_schema(path).names)
    table = pd.read_parquet(path, columns=columns + ["source"] * ("source" in present))
    if "source" not in present:
        table["source"] = UNNAMED_SOURCE
    return table


def source_sampling_weights(sources: np.ndarray, weights: Mapping[str, float]) -> np.ndarray:
    """Per-structure draw weights: a structure of source ``s`` weighs ``weights[s]`` (else 1).

    Minerals are a fifth of the structures but what gets measured: ``{"amcsd": 3}`` draws each
    mineral three times as often as a structure of another source.

    Raises:
        ValueError: A weight that is negative, or names a source absent from ``sources``.
    """
    present = set(sources.tolist())
    for name, weight in weights.items():
        if name not in present:
            raise ValueError(f"source weight for {name!r}: no such source (have {sorted(present)})")
        if weight < 0:
            raise ValueError(f"source weight for {name!r} must be ≥ 0, got {weight}")
    return np.array([float(weights.get(s, 1.0)) for s in sources.tolist()])


def join_sticks(table: pd.DataFrame, peaks: pd.DataFrame, min_intensity: float = 0.05) -> StickSet:
    """The stick patterns of the structures of ``table``, in its order.

    Args:
        table: One row per structure: ``id``, ``space_group``, ``crystal_system``,
            ``lattice`` (9 components of the lattice vectors as rows, Å) and, optionally,
            ``source``.
        peaks: Peak table (``nanoxtal.xrd.diffraction.peak_table``): ``id, h, k, l, d``
            (Å) and ``intensity`` (of 100); peaks of other structures are ignored.
        min_intensity: Peaks weaker than this (of 100) are dropped: invisible once rendered.

    Returns:
        The stick set; a structure without peaks has empty sticks.
    """
    peaks = peaks[peaks["intensity"] >= min_intensity]
    peaks = peaks[peaks["id"].isin(set(table["id"]))]
    codes = pd.Categorical(peaks["id"], categories=table["id"])
    order = np.argsort(codes.codes, kind="stable")
    sorted_codes = codes.codes[order]
    bounds = np.searchsorted(sorted_codes, np.arange(len(table) + 1))
    d = peaks["d"].to_numpy()[order]
    intensity = peaks["intensity"].to_numpy()[order]
    hkl = peaks[["h", "k", "l"]].to_numpy()[order]
    sticks = [(d[a:b], intensity[a:b], hkl[a:b]) for a, b in itertools.pairwise(bounds)]
    return StickSet(
        ids=table["id"].to_numpy(),
        sticks=sticks,
        lattices=np.stack(table["lattice"].to_numpy()).reshape(-1, 3, 3),
        crystal_system=table["crystal_system"].to_numpy(),
        space_group=table["space_group"].to_numpy(),
        sources=(
            table["source"].astype(str).to_numpy()
            if "source" in table.columns
            else np.full(len(table), UNNAMED_SOURCE)
        ),
    )


class _Indices(Dataset):
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


class RenderCollate:
    """Turns a list of structure indices into a rendered, labelled batch.

    Args:
        data: The structures.
        renderer: Renders sticks onto the grid.
        augmentation: Effects drawn for every pattern.
        seed: Seed of the random effects.
        fixed: Seed each batch from its indices (validation/test: the same batch renders the
            same every time) instead of one running stream (training).
    """

    def __init__(
        self,
        data: StickSet,
        renderer: Renderer,
        augmentation: Augmentation,
        seed: int,
        fixed: bool,
    ) -> None:
        self.data, self.renderer, self.augmentation = data, renderer, augmentation
        self.seed, self.fixed = seed, fixed
        self.stream = torch.Generator().manual_seed(seed)
        self.worker: int | None = None

    def _generator(self, indices: list[int]) -> torch.Generator:
        if not self.fixed:
            # Each DataLoader worker holds a copy of this object: give each its own stream,
            # or all workers would draw the same effects.
            info = torch.utils.data.get_worker_info()
            if info is not None and self.worker != info.id:
                self.worker = info.id
                self.stream = torch.Generator().manual_seed(self.seed + 1_000_003 * (info.id + 1))
            return self.stream
        digest = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).digest()
        return torch.Generator().manual_seed(self.seed ^ int.from_bytes(digest[:6], "little"))

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Render the structures at ``indices``."""
        batch = make_batch(
            [self.data.sticks[i] for i in indices],
            [self.data.lattices[i] for i in indices],
            [int(self.data.crystal_system[i]) for i in indices],
        )
        return {
            "pattern": self.renderer(batch, self.augmentation, self._generator(indices)),
            "crystal_system": torch.as_tensor(self.data.crystal_system[indices], dtype=torch.long),
            "space_group": torch.as_tensor(self.data.space_group[indices], dtype=torch.long),
        }


def render_sticks(
    data: StickSet,
    renderer: Renderer,
    augmentation: Augmentation,
    seed: int,
    batch_size: int = 256,
) -> np.ndarray:
    """Render every structure of ``data`` once, with effects seeded per batch.

    The batches are those of a fixed-seed ``RenderCollate``: the same structures, seed and
    batch size give the same patterns every time.

    Args:
        data: The structures.
        renderer: Renders sticks onto its grid.
        augmentation: Effects drawn for every pattern (``Augmentation.clean()``: none).
        seed: Seed of the effects.
        batch_size: Structures rendered at once (memory: 8,500 floats a pattern and more).

    Returns:
        (len(data), grid points) patterns, each max-normalised to 1.
    """
    collate = RenderCollate(data, renderer, augmentation, seed, fixed=True)
    batches = [
        collate(list(range(i, min(i + batch_size, len(data)))))["pattern"]
        for i in range(0, len(data), batch_size)
    ]
    if not batches:
        return np.zeros((0, renderer.grid.points), dtype=np.float32)
    return torch.cat(batches).numpy()


class XrdDataModule(pl.LightningDataModule):
    """Synthetic XRD data: structure splits from the table, patterns rendered per batch.

    Args:
        structures: Structure table(s) (.parquet).
        peaks: Peak table (.parquet).
        batch_size: Patterns per batch.
        train_per_epoch: Structures drawn (with replacement across epochs) per training epoch;
            ``None`` for the whole train split.
        val_size: Validation structures (a seeded subset of the val split); ``None`` for all.
        augmentation: Fields of ``Augmentation`` overriding its defaults (training).
        eval_augmentation: Fields overriding the defaults for validation/test renders (these
            keep experimental effects, so validation looks like measured data).
        seed: Seed of subsets, sampling and random effects.
        min_intensity: Peaks weaker than this (of 100) are not rendered.
        num_workers: DataLoader worker processes.
        source_weights: Per-structure draw weight of each source's training structures
            (``source_sampling_weights``); ``None`` or empty: every structure alike.
    """

    def __init__(
        self,
        structures: str | list[str],
        peaks: str,
        batch_size: int = 64,
        train_per_epoch: int | None = 8192,
        val_size: int | None = 1024,
        augmentation: dict[str, Any] | None = None,
        eval_augmentation: dict[str, Any] | None = None,
        seed: int = 42,
        min_intensity: float = 0.05,
        num_workers: int = 0,
        source_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.renderer = Renderer()
        self.data: StickSet | None = None
        self.splits: dict[str, np.ndarray] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load the tables and index the splits (val/test subsets fixed by the seed)."""
        if self.data is not None:
            return
        self.data, split = load_sticks(
            self.hparams.structures, self.hparams.peaks, self.hparams.min_intensity
        )
        rng = np.random.default_rng(self.hparams.seed)
        for name in ("train", "val", "test"):
            rows = np.flatnonzero(split == name)
            limit = self.hparams.val_size if name != "train" else None
            if limit is not None and len(rows) > limit:
                rows = np.sort(rng.choice(rows, limit, replace=False))
            self.splits[name] = rows

    def subset(self, name: str) -> StickSet:
        """The structures of split ``name`` (after ``setup``)."""
        return self.data.subset(self.splits[name])

    def augmentation(self, evaluation: bool = False) -> Augmentation:
        """The effects used for training (or for validation/test renders)."""
        changes = self.hparams.eval_augmentation if evaluation else self.hparams.augmentation
        return Augmentation(**{**asdict(Augmentation()), **(changes or {})})

    def _loader(self, name: str, training: bool) -> DataLoader:
        subset = self.subset(name)
        collate = RenderCollate(
            subset,
            self.renderer,
            self.augmentation(evaluation=not training),
            self.hparams.seed + (0 if training else 1),
            fixed=not training,
        )
        sampler = None
        if training:
            count = min(self.hparams.train_per_epoch or len(subset), len(subset))
            generator = torch.Generator().manual_seed(self.hparams.seed)
            if self.hparams.source_weights:
                weights = source_sampling_weights(subset.sources, self.hparams.source_weights)
                sampler = WeightedRandomSampler(
                    weights.tolist(), count, replacement=False, generator=generator
                )
            else:
                sampler = RandomSampler(
                    _Indices(len(subset)),
                    replacement=False,
                    num_samples=count,
                    generator=generator,
                )
        return DataLoader(
            _Indices(len(subset)),
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Training structures, freshly rendered every epoch."""
        return self._loader("train", training=True)

    def val_dataloader(self) -> DataLoader:
        """Validation structures, rendered identically every epoch."""
        return self._loader("val", training=False)

    def test_dataloader(self) -> DataLoader:
        """Test structures, rendered identically every time."""
        return self._loader("test", training=False)


class MeasuredDataModule(pl.LightningDataModule):
    """Measured patterns already on the model grid (e.g. the RRUFF fine-tune part).

    Args:
        patterns: (N, points) array, each pattern scaled to 0-1.
        crystal_system: Labels 0-6.
        space_group: Labels 1-230.
        train_rows: Rows used for training; the rest validate.
        batch_size: Patterns per batch.
        seed: Seed of the shuffle.
    """

    def __init__(
        self,
        patterns: np.ndarray,
        crystal_system: np.ndarray,
        space_group: np.ndarray,
        train_rows: np.ndarray,
        batch_size: int = 32,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["patterns", "crystal_system", "space_group", "train_rows"]
        )
        self.tensors = {
            "pattern": torch.as_tensor(patterns, dtype=torch.float32),
            "crystal_system": torch.as_tensor(crystal_system, dtype=torch.long),
            "space_group": torch.as_tensor(space_group, dtype=torch.long),
        }
        mask = np.zeros(len(patterns), dtype=bool)
        mask[train_rows] = True
        self.rows = {"train": np.flatnonzero(mask), "val": np.flatnonzero(~mask)}

    def _loader(self, name: str) -> DataLoader:
        rows = self.rows[name]
        items = [{k: v[i] for k, v in self.tensors.items()} for i in rows]
        shuffle = name == "train"
        return DataLoader(
            items,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.hparams.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Measured training patterns, shuffled."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Measured validation patterns."""
        return self._loader("val")
