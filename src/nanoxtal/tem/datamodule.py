"""Training data for the TEM segmenter: simulated micrographs, optionally mixed with real ones.

Synthetic items are simulated (``nanoxtal.tem.simulate``) from their own seed as they are
drawn, with their exact instance truth turned into targets (``nanoxtal.tem.targets``). Training
items get fresh seeds every epoch (drawn from the global torch generator, so a seeded run
reproduces and a resumed one continues where it stopped, see
``nanoxtal.train.RngStateCheckpoint``), random settings within the given ranges (domain
randomisation) and random flips and rotations. Validation items are fixed by their index, so
they are the same every epoch and run.

Real items come from an ``ImageBank`` (``nanoxtal.tem.bank``: labelled training images and
pseudo-labelled unlabelled ones): a random square of a random image at a random scale, with
random flips, rotations, contrast, gamma, blur and noise, so a handful of real micrographs give
many different crops. Every item carries a ``valid`` mask: the pixels whose labels the losses
may use (all of a synthetic or hand-labelled image, the confident ones of a pseudo-labelled
one).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import fields

import numpy as np
import pytorch_lightning as pl
import torch
from scipy import ndimage
from skimage.transform import resize
from torch.utils.data import DataLoader, Dataset, Sampler

from nanoxtal.tem.bank import ImageBank
from nanoxtal.tem.simulate import MicrographSettings, simulate_micrograph
from nanoxtal.tem.targets import normalise_image, training_targets

# Seed streams of the kinds of items (see ``sample_rng``).
TRAIN_STREAM, VAL_STREAM, BANK_STREAM = 0, 1, 2


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
        arrays = {
            "image": image[window],
            **training_targets(micrograph.instances[window]),
            "valid": np.ones((self.crop_px, self.crop_px), dtype=np.float32),
        }
        return random_symmetry(arrays, rng) if self.training else arrays

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        """Tensors of item ``key``: ``image`` (1, H, W), the targets and ``valid`` (H, W)."""
        return as_tensors(self.sample(int(key)))


def random_symmetry(
    arrays: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The same random one of the square's 8 symmetries, applied to every array.

    Micrographs have no preferred direction.
    """
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    return {name: np.rot90(a[:, ::-1] if flip else a, turns) for name, a in arrays.items()}


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Contiguous tensors; the image gets its channel axis (1, H, W)."""
    tensors = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
    tensors["image"] = tensors["image"][None]
    return tensors


def _nearest(array: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resampling of a square to ``size`` × ``size`` (labels, masks)."""
    index = np.minimum((np.arange(size) + 0.5) * array.shape[0] / size, array.shape[0] - 1)
    index = index.astype(np.intp)
    return array[np.ix_(index, index)]


def _padded(array: np.ndarray, side: int, mode: str) -> np.ndarray:
    """``array`` padded at the bottom and right to at least ``side`` × ``side``."""
    pad = [(0, max(0, side - n)) for n in array.shape]
    if not any(after for _, after in pad):
        return array
    if mode == "reflect":
        return np.pad(array, pad, mode="reflect")
    return np.pad(array, pad, mode="constant", constant_values=0)


def bank_group(name: str, source: str) -> str:
    """The group of a bank image: its labelled set (``<set>/<stem>``), else its source."""
    return name.split("/", 1)[0] if "/" in name else source


def balanced_weights(bank: ImageBank) -> np.ndarray:
    """Chance of drawing each bank image: groups equally likely, then every pixel.

    A group is a labelled set, or the pseudo-labels (``bank_group``). Without the balance,
    a set of a few 2048² images would crowd out one of many small ones.
    """
    groups = [bank_group(n, s) for n, s in zip(bank.names, bank.sources, strict=True)]
    areas = np.array([image.size for image in bank.images], dtype=np.float64)
    weights = np.zeros(len(groups))
    for group in set(groups):
        members = np.array([g == group for g in groups])
        weights[members] = areas[members] / areas[members].sum()
    return weights / weights.sum()


class BankCrops(Dataset):
    """Random augmented squares of an ``ImageBank``'s real micrographs, one per key.

    Args:
        bank: The real images.
        crop_px: Side of the returned square (px).
        scale_range: Resampling factor drawn log-uniformly within [low, high] (>1 enlarges
            the particles), so the network sees real particles at many sizes in px.
        seed: Seed of all items.
    """

    def __init__(
        self, bank: ImageBank, crop_px: int, scale_range: tuple[float, float], seed: int
    ) -> None:
        if not len(bank):
            raise ValueError("the image bank is empty")
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high: {scale_range}")
        self.bank, self.crop_px, self.scale_range, self.seed = bank, crop_px, scale_range, seed
        self.weights = balanced_weights(bank)

    def __len__(self) -> int:
        return len(self.bank)

    def sample(self, key: int) -> dict[str, np.ndarray]:
        """Augmented image, targets and trusted-pixel mask of item ``key``."""
        rng = sample_rng(self.seed, BANK_STREAM, key)
        index = int(rng.choice(len(self.bank), p=self.weights))
        low, high = self.scale_range
        scale = math.exp(rng.uniform(math.log(low), math.log(high)))
        side = max(8, round(self.crop_px / scale))
        image = _padded(self.bank.images[index], side, "reflect")
        labels = _padded(self.bank.instances[index], side, "constant")
        valid = _padded(self.bank.valid[index], side, "constant")
        row = int(rng.integers(0, image.shape[0] - side + 1))
        col = int(rng.integers(0, image.shape[1] - side + 1))
        window = np.s_[row : row + side, col : col + side]
        crop = resize(
            image[window], (self.crop_px, self.crop_px), order=1, anti_aliasing=side > self.crop_px
        ).astype(np.float32)
        arrays = {
            "image": photometric_jitter(crop, rng),
            **training_targets(_nearest(labels[window], self.crop_px)),
            "valid": _nearest(valid[window], self.crop_px).astype(np.float32),
        }
        return random_symmetry(arrays, rng)

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        return as_tensors(self.sample(int(key)))


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, contrast, blur and Gaussian noise of a [0, 1] image, kept in [0, 1].

    Real micrographs differ in exposure, focus and dose; a few real images must stand for
    all of them.
    """
    jittered = np.clip(image, 0.0, 1.0) ** np.float32(math.exp(rng.uniform(-0.4, 0.4)))
    contrast, offset = rng.uniform(0.7, 1.3), rng.uniform(-0.1, 0.1)
    jittered = (jittered - 0.5) * np.float32(contrast) + np.float32(0.5 + offset)
    blur = rng.uniform(0.0, 1.2)
    if blur > 0.3:
        jittered = ndimage.gaussian_filter(jittered, blur)
    noise = rng.uniform(0.0, 0.06)
    jittered = jittered + rng.normal(0.0, noise, jittered.shape).astype(np.float32)
    return np.clip(jittered, 0.0, 1.0).astype(np.float32)


class MixedDataset(Dataset):
    """Synthetic items and, with probability ``bank_share`` per key, real bank crops instead."""

    def __init__(
        self, synthetic: SyntheticTemDataset, bank: BankCrops | None, bank_share: float
    ) -> None:
        if not 0.0 <= bank_share <= 1.0:
            raise ValueError(f"bank_share must be within [0, 1], got {bank_share}")
        self.synthetic, self.bank, self.bank_share = synthetic, bank, bank_share

    def __len__(self) -> int:
        return len(self.synthetic)

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        key = int(key)
        draw = sample_rng(self.synthetic.seed, BANK_STREAM + 1, key).random()
        if self.bank is not None and draw < self.bank_share:
            return self.bank[key]
        return self.synthetic[key]


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


class TemDataModule(pl.LightningDataModule):
    """Segmentation training data: simulated micrographs, optionally mixed with real ones.

    Args:
        micrograph: ``MicrographSettings`` fields overriding the defaults (width and height
            are set from ``image_px``).
        ranges: Numeric settings drawn uniformly within [low, high] per training and
            validation image (domain randomisation), e.g. ``{"nm_per_px": [0.3, 1.0]}``.
        crop_px: Side of the training and validation squares (px); a multiple of the
            network's ``multiple``.
        image_px: Side of the simulated micrographs (px) the squares are cut from; ``None``
            for ``crop_px``.
        train_images: Training items per epoch (new ones every epoch).
        val_images: Validation images (synthetic, the same every epoch).
        batch_size: Images per batch.
        seed: Seed of the validation images and the bank crops (training keys follow the
            global seed).
        num_workers: DataLoader worker processes.
        bank: Real images to mix in (``nanoxtal.tem.bank``); None: synthetic only.
        bank_share: Expected share of training items cut from the bank.
        scale_range: Resampling factors of bank crops, [low, high].
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
        bank: ImageBank | None = None,
        bank_share: float = 0.5,
        scale_range: tuple[float, float] = (0.7, 1.4),
    ) -> None:
        super().__init__()
        # The bank is data, not a hyper-parameter: its names are recorded instead.
        self.save_hyperparameters(ignore=["bank"])
        self.hparams["bank_images"] = list(bank.names) if bank is not None else []
        common = {
            "micrograph": micrograph or {},
            "ranges": {name: tuple(bounds) for name, bounds in (ranges or {}).items()},
            "crop_px": crop_px,
            "image_px": image_px,
            "seed": seed,
        }
        crops = BankCrops(bank, crop_px, tuple(scale_range), seed) if bank is not None else None
        self.train_set = MixedDataset(
            SyntheticTemDataset(**common, length=train_images, training=True), crops, bank_share
        )
        self.val_set = SyntheticTemDataset(**common, length=val_images, training=False)

    def _loader(self, dataset: Dataset, sampler: Sampler | None) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Fresh training items: simulated or real crops, augmented."""
        return self._loader(self.train_set, FreshSeeds(self.hparams.train_images))

    def val_dataloader(self) -> DataLoader:
        """Validation images, the same every epoch."""
        return self._loader(self.val_set, None)
