"""Stored real micrographs with instance labels, for fine-tuning and self-training.

A bank holds real images with their instance labels and a mask of the pixels the labels can be
trusted on. Two kinds are built:

* **labelled** banks, from the training part of the labelled sets (``fixed_split``; the test
  part is never read into a bank), where every pixel is trusted;
* **film** banks, from the same training parts, where only the film farther than a margin from
  every labelled particle is trusted, as film. Box labels say where particles are, not their
  outlines: a film bank teaches what is *not* a particle (e.g. the textured supports of STEM
  catalyst images) without teaching box-shaped outlines;
* **pseudo-labelled** banks, from unlabelled micrographs segmented by a teacher network
  (self-training): only confident pixels are trusted (Xie et al., "Self-training with Noisy
  Student improves ImageNet classification", CVPR 2020; for segmentation, Zou et al., "Pseudo
  Seg", ICLR 2021). A pixel is trusted when the teacher's foreground probability is far from
  0.5; a predicted particle is kept only when its mean foreground probability is high, and the
  pixels of a dropped particle are not trusted at all (they are neither particle nor film).

Banks are ``.npz`` files with arrays ``image_<k>`` (float32, normalised with
``normalise_image``), ``instances_<k>`` (int32), ``valid_<k>`` (bool) and ``names`` and
``sources`` (str).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from skimage import draw

from nanoxtal.files import atomic_write
from nanoxtal.tem.io import Split, read_labelled_set
from nanoxtal.tem.segmentation import (
    Polarity,
    SegmentSettings,
    augmented_maps,
    instances_from_maps,
    particles_are_bright,
)
from nanoxtal.tem.targets import normalise_image

if TYPE_CHECKING:
    from nanoxtal.tem.module import Segmenter

# Labelled sets a bank can hold: instance masks, or boxes turned into inscribed ellipses.
BANK_SETS = ("sophon_example", "msa_em", "au_monolayer", "stem_boxes")
# Particle polarity of each set ("auto": guessed per image); the bank stores every image with
# dark particles, as the network sees them (``nanoxtal.tem.segmentation``).
BANK_POLARITY: dict[str, Polarity] = {"stem_boxes": "auto"}


def boxes_to_instances(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels from particle boxes: the ellipse inscribed in each box.

    A weak label (a box does not say the outline), adequate for roughly round particles:
    counts and sizes are right, outlines approximate. Where boxes overlap, the later wins.

    Args:
        boxes: (n × 4) boxes (row0, col0, row1, col1), px.
        shape: (height, width) of the image.

    Returns:
        int32 labels 1..n (boxes too small to hold a pixel get none), 0 = background.
    """
    labels = np.zeros(shape, dtype=np.int32)
    for index, (row0, col0, row1, col1) in enumerate(np.asarray(boxes, dtype=float), start=1):
        rows, cols = draw.ellipse(
            (row0 + row1) / 2 - 0.5,
            (col0 + col1) / 2 - 0.5,
            max((row1 - row0) / 2, 0.5),
            max((col1 - col0) / 2, 0.5),
            shape=shape,
        )
        labels[rows, cols] = index
    return labels


def film_labels(occupied: np.ndarray, margin_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Film-only labels: no particle anywhere, trusted only away from the labelled particles.

    Args:
        occupied: bool mask of the labelled particles (filled boxes or instance masks).
        margin_px: A trusted pixel is farther than this (px) from every labelled particle,
            so loose boxes and particle rims are never taught as film.

    Returns:
        int32 labels (all 0) and the bool mask of the trusted film.
    """
    if margin_px < 0:
        raise ValueError(f"margin_px must be >= 0, got {margin_px}")
    if not occupied.any():
        return np.zeros(occupied.shape, dtype=np.int32), np.ones(occupied.shape, dtype=bool)
    distance = ndimage.distance_transform_edt(~occupied)
    return np.zeros(occupied.shape, dtype=np.int32), distance > margin_px


def occupied_by_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mask of the pixels inside any box (row0, col0, row1, col1; px)."""
    mask = np.zeros(shape, dtype=bool)
    for row0, col0, row1, col1 in np.asarray(boxes, dtype=float).reshape(-1, 4):
        rows = slice(max(0, math.floor(row0)), max(0, math.ceil(row1)))
        cols = slice(max(0, math.floor(col0)), max(0, math.ceil(col1)))
        mask[rows, cols] = True
    return mask


@dataclass(frozen=True, eq=False)
class ImageBank:
    """Real micrographs with instance labels and trusted-pixel masks.

    Attributes:
        names: One name per image (``<set>/<stem>`` or the file stem).
        sources: Where each image's labels came from: ``"labels"``, ``"film"`` (film only,
            ``film_labels``) or ``"pseudo"``.
        images: float32 images in [0, 1] (``normalise_image``).
        instances: int32 instance labels, 0 = film.
        valid: bool masks of the pixels whose labels are trusted.
    """

    names: tuple[str, ...]
    sources: tuple[str, ...]
    images: tuple[np.ndarray, ...]
    instances: tuple[np.ndarray, ...]
    valid: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        counts = {len(part) for part in (self.sources, self.images, self.instances, self.valid)}
        if counts != {len(self.names)}:
            raise ValueError("a bank needs one source, image, label and mask per name")
        for name, image, labels, valid in zip(
            self.names, self.images, self.instances, self.valid, strict=True
        ):
            if not image.shape == labels.shape == valid.shape or image.ndim != 2:
                raise ValueError(
                    f"{name}: image {image.shape}, labels {labels.shape} and mask "
                    f"{valid.shape} must be 2-D and of one shape"
                )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def pixels(self) -> int:
        """Total number of pixels."""
        return int(sum(image.size for image in self.images))

    @property
    def trusted(self) -> float:
        """Share of the pixels whose labels are trusted."""
        return sum(int(mask.sum()) for mask in self.valid) / max(self.pixels, 1)

    @property
    def particles(self) -> int:
        """Labelled particles in all images."""
        return sum(int(np.count_nonzero(np.unique(labels))) for labels in self.instances)


def merge_banks(banks: Iterable[ImageBank]) -> ImageBank:
    """One bank holding the images of all ``banks``, in order."""
    banks = list(banks)
    return ImageBank(
        names=tuple(name for bank in banks for name in bank.names),
        sources=tuple(source for bank in banks for source in bank.sources),
        images=tuple(image for bank in banks for image in bank.images),
        instances=tuple(labels for bank in banks for labels in bank.instances),
        valid=tuple(mask for bank in banks for mask in bank.valid),
    )


def save_bank(bank: ImageBank, path: Path | str) -> Path:
    """Write a bank to ``path`` (``.npz``, compressed), atomically."""
    arrays: dict[str, np.ndarray] = {
        "names": np.array(bank.names, dtype=str),
        "sources": np.array(bank.sources, dtype=str),
    }
    for index in range(len(bank)):
        arrays[f"image_{index}"] = bank.images[index].astype(np.float32)
        arrays[f"instances_{index}"] = bank.instances[index].astype(np.int32)
        arrays[f"valid_{index}"] = bank.valid[index].astype(bool)
    path = Path(path)
    with atomic_write(path) as partial, partial.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_bank(path: Path | str) -> ImageBank:
    """Read a bank written by ``save_bank``.

    Raises:
        ValueError: The file is not a bank (names the file and what is missing).
    """
    with np.load(path, allow_pickle=False) as data:
        if "names" not in data or "sources" not in data:
            raise ValueError(f"{path}: not an image bank (no 'names' or 'sources' array)")
        names = tuple(str(name) for name in data["names"])
        try:
            parts = {
                kind: tuple(data[f"{kind}_{index}"] for index in range(len(names)))
                for kind in ("image", "instances", "valid")
            }
        except KeyError as error:
            raise ValueError(f"{path}: incomplete image bank, missing {error}") from error
        return ImageBank(
            names=names,
            sources=tuple(str(source) for source in data["sources"]),
            images=parts["image"],
            instances=parts["instances"],
            valid=parts["valid"],
        )


def labelled_bank(
    folders: Mapping[str, Path | str], split: Split, film_margin_px: float | None = None
) -> tuple[ImageBank, dict[str, dict[str, list[str]]]]:
    """The training part of labelled sets as a bank; the scored part is left out.

    Args:
        folders: Folder of each labelled set (``BANK_SETS``), by set name, e.g.
            ``{"msa_em": "data/tem/msa_em"}``. Box labels (``stem_boxes``) become inscribed
            ellipses (``boxes_to_instances``); images with bright particles are inverted
            (``BANK_POLARITY``).
        split: The split (``Split.parts``): the bank holds its ``train`` part, i.e. without
            the test part and, with cross-validation folds, without the scored fold.
        film_margin_px: None: every pixel is trusted. A number: a film bank, where only the
            film farther than this (px) from every labelled particle or box is trusted
            (``film_labels``).

    Returns:
        The bank and, per set, the split it was cut from (record it with the model).

    Raises:
        ValueError: An unknown set, or an unreadable training image (the bank must not
            silently miss images the split promised).
    """
    names, images, instances, masks, splits = [], [], [], [], {}
    for name, folder in folders.items():
        if name not in BANK_SETS:
            raise ValueError(f"no bank can be made of {name!r}; sets: {BANK_SETS}")
        items = read_labelled_set(Path(folder).parent, name, folder)
        parts = split.parts(item.name for item in items)
        splits[name] = parts
        train = set(parts["train"])
        for item in items:
            if item.name not in train:
                continue
            if item.error is not None or item.image is None:
                raise ValueError(f"{name}/{item.name}: {item.error or 'no image'}")
            if film_margin_px is not None:
                occupied = (
                    item.instances > 0
                    if item.instances is not None
                    else occupied_by_boxes(item.boxes, item.image.shape)
                )
                labels, valid = film_labels(occupied, film_margin_px)
            else:
                labels = item.instances
                if labels is None:
                    labels = boxes_to_instances(item.boxes, item.image.shape)
                valid = np.ones(item.image.shape, dtype=bool)
            image = item.image
            if particles_are_bright(image, BANK_POLARITY.get(name, "dark")):
                image = -image  # normalise_image rescales: a full contrast inversion
            names.append(f"{name}/{item.name}")
            images.append(normalise_image(image))
            instances.append(labels.astype(np.int32))
            masks.append(valid)
    bank = ImageBank(
        names=tuple(names),
        sources=("labels" if film_margin_px is None else "film",) * len(names),
        images=tuple(images),
        instances=tuple(instances),
        valid=tuple(masks),
    )
    return bank, splits


@dataclass(frozen=True)
class PseudoSettings:
    """What a teacher's prediction must reach to become a training label.

    Attributes:
        confident_margin: A pixel is trusted when its foreground probability is below
            ``margin`` or above ``1 − margin``.
        min_particle_confidence: Least mean foreground probability of a kept particle.
        augment: Average the teacher's maps over the 8 flips and rotations of the image
            (test-time augmentation): steadier labels at 8× the cost.
    """

    confident_margin: float = 0.2
    min_particle_confidence: float = 0.8
    augment: bool = True


def pseudo_label(
    model: Segmenter,
    image: np.ndarray,
    settings: PseudoSettings,
    segment: SegmentSettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels and trusted-pixel mask of one unlabelled micrograph.

    Args:
        model: The teacher.
        image: Grey micrograph, dark particles on a bright film.
        settings: Confidence filters.
        segment: How the teacher's maps become instances (default ``SegmentSettings()``):
            the same settings as the segmentation the student will serve, so labels and
            later predictions share one outline convention.

    Returns:
        int32 instances (0 = film) and the bool mask of trusted pixels.
    """
    maps = augmented_maps(model, image, settings.augment)
    foreground = maps["foreground"]
    instances = instances_from_maps(maps, segment or SegmentSettings())
    margin = settings.confident_margin
    valid = (foreground < margin) | (foreground > 1.0 - margin)
    ids = np.arange(1, instances.max() + 1)
    if len(ids):
        confidence = ndimage.mean(foreground, labels=instances, index=ids)
        dropped = ids[np.asarray(confidence) < settings.min_particle_confidence]
        doubtful = np.isin(instances, dropped)
        instances = np.where(doubtful, 0, instances)
        valid &= ~doubtful
        # Kept particles are trusted whole: their rims are where the probability crosses the
        # foreground threshold.
        valid |= instances > 0
    return instances.astype(np.int32), valid


def pseudo_bank(
    model: Segmenter,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    settings: PseudoSettings,
    segment: SegmentSettings | None = None,
) -> ImageBank:
    """A pseudo-labelled bank of unlabelled micrographs (self-training; ``pseudo_label``)."""
    labels, masks = [], []
    for image in images:
        instances, valid = pseudo_label(model, image, settings, segment)
        labels.append(instances)
        masks.append(valid)
    return ImageBank(
        names=tuple(names),
        sources=("pseudo",) * len(names),
        images=tuple(normalise_image(image) for image in images),
        instances=tuple(labels),
        valid=tuple(masks),
    )


def read_micrographs(paths: Sequence[Path | str]) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The micrographs of files and folders (``nanoxtal.tem.io.image_files``), for a bank.

    Returns:
        The grey images, their names (file stems) and one message per input that failed
        (a folder without images, an unreadable file); the rest are read.
    """
    from nanoxtal.tem.io import TemImageError, image_files, read_image

    files, failed = image_files(paths)
    images, names = [], []
    for path in files:
        try:
            images.append(read_image(path))
            names.append(path.stem)
        except TemImageError as error:
            failed.append(str(error))
    return images, names, failed
