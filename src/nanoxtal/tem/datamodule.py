"""Synthetic training data for the TEM segmenter: micrographs simulated as they are drawn.

Nothing is stored: every item is simulated (``nanoxtal.tem.simulate``) from its own seed, with
its exact instance truth turned into targets (``nanoxtal.tem.targets``). Training items get
fresh seeds every epoch (drawn from the global torch generator, so a seeded run reproduces and
a resumed one continues where it stopped, see ``nanoxtal.train.RngStateCheckpoint``), random
settings within the given ranges (domain randomisation) and random flips and rotations.
Validation items are fixed by their index, so they are the same every epoch and run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nanoxtal.tem.simulate import MicrographSettings, simulate_micrograph
from nanoxtal.tem.targets import normalise_image, training_targets

# Seed streams of the two kinds of items (see ``sample_rng``).
TRAIN_STREAM, VAL_STREAM = 0, 1


def sample_rng(seed: int, stream: int, key: int) -> np.random.Generator:
    """The random generator of one item: depends on (seed, stream, key) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, key]))


def check_ranges(ranges: Mapping[str, tuple[float, float]]) -> None:
    """Raise ``ValueError`` unless every range names a numeric micrograph setting, low ≤ high."""
    # The annotations are strings (postponed evaluation): "float" or "float | None".
    numeric = {f.name for f in fields(MicrographSettings) if str(f.type).startswith("float")}
    for name, bounds in ranges.items():
        if name not in numeric:
            raise ValueError(
                f"cannot randomise micrograph setting {name!r}; numeric settings: {sorted(numeric)}"
            )
        if len(bounds) != 2 or not bounds[0] <= bounds[1]:
            raise ValueError(f"range of {name!r} must be [low, high] with low <= high: {bounds}")


class SyntheticTemDataset(Dataset):
    """Simulated micrographs and their targets, one per key.

    Args:
        micrograph: ``MicrographSettings`` fields overriding the defaults.
        ranges: Settings drawn uniformly within [low, high] for each item, e.g.
            ``{"nm_per_px": [0.3, 1.0]}``; they override ``micrograph``.
        crop_px: Side of the returned square (px).
        image_px: Side of the simulated micrograph (px), of which a random ``crop_px`` square
            is returned; ``None``: simulate ``crop_px`` directly. Larger micrographs show the
            scale bar and film at the scale of real ones, at a higher cost per item.
        length: Items per epoch.
        seed: Seed of all items.
        training: Items keyed by fresh seeds from the sampler, with flips and rotations
            (training), or by their index (validation).
    """

    def __init__(
        self,
        micrograph: Mapping[str, object],
        ranges: Mapping[str, tuple[float, float]],
        crop_px: int,
        image_px: int | None,
        length: int,
        seed: int,
        training: bool,
    ) -> None:
        check_ranges(ranges)
        if image_px is not None and image_px < crop_px:
            raise ValueError(f"image_px ({image_px}) must be at least crop_px ({crop_px})")
        self.micrograph, self.ranges = dict(micrograph), dict(ranges)
        self.crop_px, self.image_px = crop_px, image_px or crop_px
        self.length, self.seed, self.training = length, seed, training
        # Fail on bad settings now, not in a dataloader worker.
        self.settings(np.random.default_rng(0))

    def __len__(self) -> int:
        return self.length

    def settings(self, rng: np.random.Generator) -> MicrographSettings:
        """The settings of one item: fixed overrides, ranges drawn from ``rng``."""
        drawn = {name: float(rng.uniform(low, high)) for name, (low, high) in self.ranges.items()}
        size = {"width_px": self.image_px, "height_px": self.image_px}
        return MicrographSettings.from_mapping({**self.micrograph, **drawn, **size})

    def sample(self, key: int) -> dict[str, np.ndarray]:
        """Image (crop_px × crop_px, float32 in [0, 1]) and targets of item ``key``."""
        rng = sample_rng(self.seed, TRAIN_STREAM if self.training else VAL_STREAM, key)
        micrograph = simulate_micrograph(self.settings(rng), rng)
        # Normalised as a whole, as at inference, before a part is cut out.
        image = normalise_image(micrograph.image)
        row, col = rng.integers(0, self.image_px - self.crop_px + 1, size=2)
        window = np.s_[row : row + self.crop_px, col : col + self.crop_px]
        arrays = {"image": image[window], **training_targets(micrograph.instances[window])}
        if self.training:
            # The micrographs have no preferred direction: the 8 symmetries of the square.
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            arrays = {
                name: np.rot90(a[:, ::-1] if flip else a, turns) for name, a in arrays.items()
            }
        return arrays

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        """Tensors of item ``key``: ``image`` (1, H, W) and the targets (H, W)."""
        arrays = self.sample(int(key))
        tensors = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
        tensors["image"] = tensors["image"][None]
        return tensors


class FreshSeeds(Sampler[int]):
    """Yields ``count`` new random keys every epoch.

    The keys of an epoch come from one number drawn from the global torch generator, so they
    are the same whatever the number of dataloader workers, reproduce under
    ``nanoxtal.train.seed_run``, and continue correctly on resume (the trainer restores the
    generator's state).
    """

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        epoch_seed = int(torch.randint(0, 2**62, ()).item())
        keys = np.random.default_rng(epoch_seed).integers(0, 2**62, self.count)
        return iter(keys.tolist())


class SyntheticTemDataModule(pl.LightningDataModule):
    """Synthetic micrographs for segmentation training, simulated on the fly.

    Args:
        micrograph: ``MicrographSettings`` fields overriding the defaults (width and height
            are set from ``image_px``).
        ranges: Numeric settings drawn uniformly within [low, high] per training and
            validation image (domain randomisation), e.g. ``{"nm_per_px": [0.3, 1.0]}``.
        crop_px: Side of the training and validation squares (px); a multiple of the
            network's ``multiple``.
        image_px: Side of the simulated micrographs (px) the squares are cut from; ``None``
            for ``crop_px``.
        train_images: Training images per epoch (new ones every epoch).
        val_images: Validation images (the same every epoch).
        batch_size: Images per batch.
        seed: Seed of the validation images (training images follow the global seed).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        micrograph: dict[str, object] | None = None,
        ranges: dict[str, list[float]] | None = None,
        crop_px: int = 256,
        image_px: int | None = None,
        train_images: int = 512,
        val_images: int = 64,
        batch_size: int = 8,
        seed: int = 42,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        common = {
            "micrograph": micrograph or {},
            "ranges": {name: tuple(bounds) for name, bounds in (ranges or {}).items()},
            "crop_px": crop_px,
            "image_px": image_px,
            "seed": seed,
        }
        self.train_set = SyntheticTemDataset(**common, length=train_images, training=True)
        self.val_set = SyntheticTemDataset(**common, length=val_images, training=False)

    def _loader(self, dataset: SyntheticTemDataset, sampler: Sampler | None) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Freshly simulated, augmented training images."""
        return self._loader(self.train_set, FreshSeeds(self.hparams.train_images))

    def val_dataloader(self) -> DataLoader:
        """Validation images, the same every epoch."""
        return self._loader(self.val_set, None)
