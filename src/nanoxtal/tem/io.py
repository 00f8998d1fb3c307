"""Reading micrographs and the labelled TEM sets; their fixed train/test split and its folds.

Micrographs are read as float32 grey images in [0, 1] that keep their bit depth's scaling
(an 8-bit value v becomes v/255, a 16-bit value v/65535), so intensities stay comparable between
images of one detector and nothing is stretched behind the caller's back.

The labelled sets under the TEM data root (``data/tem``) have these layouts:

``sophon_example``
    ``<name>.png`` with ``<name>_instances.png``: 16-bit instance ids, 0 = background.
``msa_em`` and ``au_monolayer``
    ``images/<name>.png`` with ``masks/<name>.png``: binary masks (255 = particle) whose
    4-connected components are the instances (``au_monolayer/unlabeled`` is left out).
``stem_boxes``
    ``images/<name>.jpg`` with ``labels/<name>.txt``: YOLO boxes, one particle a line
    (``class cx cy w h``, normalised to the image size).

Images without a label file (and label files without an image) are not part of a labelled set.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from skimage import io, measure

# Suffixes read_image understands; TIFFs go through tifffile, the rest through scikit-image.
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"}) | TIFF_SUFFIXES
# ITU-R BT.709 luma weights, as skimage.color.rgb2gray uses.
LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
LABELLED_SETS = ("sophon_example", "msa_em", "au_monolayer", "stem_boxes")


class TemImageError(ValueError):
    """An image that cannot be used: unreadable, empty, constant or of an unsupported type.

    The message names the file and the problem.
    """


@dataclass(frozen=True, eq=False)
class LabelledImage:
    """One micrograph of a labelled set and its truth.

    Attributes:
        name: The image's file stem, unique within its set.
        image: Grey image, float32 in [0, 1] (height × width); None when it could not be read.
        instances: int32 instance labels (height × width), 0 = background; None for box sets.
        boxes: Particle boxes (n × 4) as (row0, col0, row1, col1), px, floats; None for sets
            labelled with instance masks.
        error: Why the image or its labels could not be read (file and problem); None when
            reading succeeded.
    """

    name: str
    image: np.ndarray | None
    instances: np.ndarray | None = None
    boxes: np.ndarray | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# Single files.


def _read_raw(path: Path) -> np.ndarray:
    """The stored array of an image file, unconverted.

    Raises:
        TemImageError: Missing, empty (0 bytes) or unreadable file, or an unknown suffix.
    """
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise TemImageError(
            f"{path}: unsupported file type {path.suffix!r}; "
            f"expected one of {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    if not path.is_file():
        raise TemImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise TemImageError(f"{path}: empty file (0 bytes)")
    try:
        # imageio tries its plugins in turn on a file it cannot read, and some of them warn
        # about their own deprecation; the error below is what matters.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if path.suffix.lower() in TIFF_SUFFIXES:
                return np.asarray(tifffile.imread(path))
            return np.asarray(io.imread(path))
    # Readers raise many types (OSError, ValueError, SyntaxError, struct.error ...) for a
    # corrupt or mislabelled file; all of them mean "not an image we can read".
    except Exception as error:
        raise TemImageError(
            f"{path}: not a readable {path.suffix.lstrip('.').upper()} image "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error


def _to_grey(array: np.ndarray, path: Path) -> np.ndarray:
    """A 2-D array from a grey, grey+alpha, RGB or RGBA one (alpha is dropped).

    Raises:
        TemImageError: Not a single 2-D image (e.g. a stack or a volume).
    """
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[-1] in (2, 3, 4):
        if array.shape[-1] == 2:  # grey + alpha
            return array[..., 0]
        rgb = array[..., :3]
        # Greyscale stored as RGB (common for exported micrographs) stays exact.
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return rgb[..., 0]
        return rgb.astype(np.float32) @ LUMA  # float32 in, float32 out
    raise TemImageError(f"{path}: expected a 2-D grey or RGB(A) image, got shape {array.shape}")


def stretch_to_unit(array: np.ndarray, path: Path | str) -> np.ndarray:
    """float32 in [0, 1] by the image's own minimum and maximum.

    For pixel types without a fixed full scale: counts of 32-bit detectors, floats, DM data.

    Raises:
        TemImageError: NaN or infinite values, or a constant image (the message names the file).
    """
    data = np.asarray(array, dtype=np.float64)
    if not np.isfinite(data).all():
        raise TemImageError(f"{path}: image has NaN or infinite values")
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise TemImageError(f"{path}: constant image (every pixel is {low:g})")
    return ((data - low) / (high - low)).astype(np.float32)


def _scale(array: np.ndarray, path: Path) -> np.ndarray:
    """float32 in [0, 1], by the bit depth's full scale where it has one.

    8- and 16-bit unsigned by their full scale, floats within [0, 1] as they are, other
    integers and floats by their own range (``stretch_to_unit``).

    Raises:
        TemImageError: A binary, complex or other non-numeric image; NaN or infinite values.
    """
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise TemImageError(f"{path}: image has NaN or infinite values")
        if float(array.min()) >= 0 and float(array.max()) <= 1:
            return array.astype(np.float32)
        return stretch_to_unit(array, path)
    if np.issubdtype(array.dtype, np.integer):
        return stretch_to_unit(array, path)
    what = "a 1-bit (binary) image: a mask, not a micrograph" if array.dtype == bool else ""
    raise TemImageError(
        f"{path}: unsupported pixel type {array.dtype}{f' ({what})' if what else ''};"
        " micrographs are grey integers or real floats"
    )


def image_files(
    paths: Iterable[Path | str], suffixes: Iterable[str] = IMAGE_SUFFIXES
) -> tuple[list[Path], list[str]]:
    """Micrograph files named by ``paths``, in the order given, and problems with the names.

    Files are taken as given (a missing or unreadable one fails later, when it is read, so
    the rest of a batch goes on); folders are searched (not recursively) for ``suffixes``, in
    sorted order, leaving out the simulator's label images (``*_instances.png``).

    Returns:
        The files, and one message per folder without images.
    """
    suffixes = frozenset(suffixes)
    files: list[Path] = []
    problems: list[str] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(
            child
            for child in path.iterdir()
            if child.is_file()
            and child.suffix.lower() in suffixes
            and not child.stem.endswith("_instances")
        )
        if not found:
            problems.append(f"{path}: no images ({', '.join(sorted(suffixes))}) in folder")
        files += found
    return files, problems


def read_image(path: Path | str) -> np.ndarray:
    """Read a micrograph (PNG, TIFF or JPEG) as a float32 grey image in [0, 1].

    RGB and RGBA images are converted to grey (luma weights; alpha dropped; RGB with equal
    channels is taken as it is). Values keep the bit depth's scaling: 8-bit v → v/255,
    16-bit v → v/65535, floats within [0, 1] as they are; other integer depths (e.g. 32-bit
    detector counts) and floats beyond [0, 1] are scaled by their own minimum and maximum
    (segmentation normalises by percentiles, so only the pixel values' order matters).

    Args:
        path: The image file.

    Returns:
        The image (height × width), float32.

    Raises:
        TemImageError: Missing, unreadable or empty file; an image with no pixels; a constant
            image; an unsupported pixel type or shape. The message names the file.
    """
    path = Path(path)
    return grey_image(_read_raw(path), path)


def grey_image(array: np.ndarray, source: Path | str) -> np.ndarray:
    """A micrograph held in memory as ``read_image`` reads a file: float32 grey in [0, 1].

    Args:
        array: Grey (height × width) or RGB(A) pixels of any type ``read_image`` takes.
        source: What the pixels came from (a file, or a name), for error messages.

    Raises:
        TemImageError: No pixels, a constant image, an unsupported pixel type or shape.
    """
    raw = np.asarray(array)
    if raw.size == 0:
        raise TemImageError(f"{source}: image has no pixels (shape {raw.shape})")
    # Scale first (the bit depth is the stored dtype's), then mix colour channels.
    image = _to_grey(_scale(raw, Path(source)), Path(source))
    if image.min() == image.max():
        raise TemImageError(f"{source}: constant image (every pixel is {float(image.flat[0]):g})")
    return image


def read_instances(path: Path | str) -> np.ndarray:
    """Read an instance-id label image (0 = background) as int32.

    Raises:
        TemImageError: Unreadable file, not a 2-D integer image, or negative ids.
    """
    path = Path(path)
    array = _read_raw(path)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise TemImageError(
            f"{path}: instance labels must be a 2-D integer image, got {array.dtype} {array.shape}"
        )
    if array.size and array.min() < 0:
        raise TemImageError(f"{path}: negative instance ids")
    return array.astype(np.int32)


def read_mask_instances(path: Path | str) -> np.ndarray:
    """Read a binary (or semantic) mask; its 4-connected components are the instances.

    Any non-zero pixel (in any colour channel; alpha ignored) is particle.

    Returns:
        int32 instance labels 1..n in raster order, 0 = background.

    Raises:
        TemImageError: Unreadable file or not a 2-D (grey or RGB(A)) image.
    """
    path = Path(path)
    array = _read_raw(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        foreground = (array[..., :3] > 0).any(axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 2:
        foreground = array[..., 0] > 0
    elif array.ndim == 2:
        foreground = array > 0
    else:
        raise TemImageError(f"{path}: expected a 2-D mask, got shape {array.shape}")
    return measure.label(foreground, connectivity=1).astype(np.int32)


def read_yolo_boxes(path: Path | str, shape: tuple[int, int]) -> np.ndarray:
    """Read YOLO boxes (``class cx cy w h`` per line, normalised) as pixel boxes.

    Args:
        path: The label text file.
        shape: (height, width) of its image (px).

    Returns:
        float64 array (n × 4) of (row0, col0, row1, col1), px; empty (0 × 4) for an empty file.

    Raises:
        TemImageError: A line that is not five numbers.
    """
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [float(field) for field in fields]
        except ValueError:
            values = []
        if len(values) != 5:
            raise TemImageError(f"{path}:{number}: expected 'class cx cy w h', got {line!r}")
        rows.append(values[1:])
    if not rows:
        return np.zeros((0, 4))
    cx, cy, w, h = np.array(rows).T
    height, width = shape
    return np.column_stack(
        [(cy - h / 2) * height, (cx - w / 2) * width, (cy + h / 2) * height, (cx + w / 2) * width]
    )


# ---------------------------------------------------------------------------------------------
# Labelled sets: pair each image with its label file, then read each pair on its own so one bad
# file costs only its own image.


def _pairs(
    images: Path, labels: Path, label_name: Callable[[Path], str]
) -> list[tuple[Path, Path]]:
    """(image, label) paths for every image in ``images`` whose label file exists."""
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: no such folder")
    found = []
    for image in sorted(images.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label = labels / label_name(image)
        if label.is_file():
            found.append((image, label))
    return found


def _read_pair(
    name: str, image_path: Path, read_truth: Callable[[np.ndarray], dict[str, np.ndarray]]
) -> LabelledImage:
    """A LabelledImage, or one carrying the error when the image or its truth is unusable.

    ``read_truth`` gets the image (box files need its size) and returns the ``instances`` or
    ``boxes`` field.
    """
    try:
        image = read_image(image_path)
        truth = read_truth(image)
    # ValueError also covers TemImageError and a label text file that is not text.
    except (ValueError, OSError) as error:
        return LabelledImage(name=name, image=None, error=str(error))
    instances = truth.get("instances")
    if instances is not None and instances.shape != image.shape:
        message = f"{image_path}: labels have shape {instances.shape}, image {image.shape}"
        return LabelledImage(name=name, image=None, error=message)
    return LabelledImage(name=name, image=image, **truth)


def _instance_set(
    pairs: Iterable[tuple[Path, Path]], reader: Callable[[Path], np.ndarray]
) -> list[LabelledImage]:
    """Read (image, instance label file) pairs with ``reader`` turning a file into labels."""
    return [
        _read_pair(image.stem, image, lambda _, label=label: {"instances": reader(label)})
        for image, label in pairs
    ]


def read_labelled_set(
    root: Path | str, name: str, folder: Path | str | None = None
) -> list[LabelledImage]:
    """Read one labelled TEM set, in sorted file order.

    A file that cannot be read does not stop the set: its image comes back with ``image=None``
    and the problem in ``error``.

    Args:
        root: The TEM data root (the folder holding the sets, e.g. ``data/tem``).
        name: ``sophon_example``, ``msa_em``, ``au_monolayer`` or ``stem_boxes``: decides the
            layout.
        folder: The set's folder when it is not ``root/name`` (e.g. the workflow's imported
            copy ``resources/tem_msa_em``).

    Returns:
        The set's labelled images.

    Raises:
        ValueError: An unknown set name.
        FileNotFoundError: The set's folder (or its images folder) is missing.
    """
    folder = Path(folder) if folder is not None else Path(root) / name
    if name == "sophon_example":
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        pairs = [
            (image, image.with_name(f"{image.stem}_instances.png"))
            for image in sorted(folder.glob("*.png"))
            if not image.stem.endswith("_instances")
            and image.with_name(f"{image.stem}_instances.png").is_file()
        ]
        return _instance_set(pairs, read_instances)
    if name in ("msa_em", "au_monolayer"):
        pairs = _pairs(folder / "images", folder / "masks", lambda image: image.name)
        return _instance_set(pairs, read_mask_instances)
    if name == "stem_boxes":
        pairs = _pairs(folder / "images", folder / "labels", lambda image: f"{image.stem}.txt")
        return [
            _read_pair(
                image.stem,
                image,
                lambda pixels, label=label: {"boxes": read_yolo_boxes(label, pixels.shape)},
            )
            for image, label in pairs
        ]
    raise ValueError(f"unknown labelled TEM set {name!r}; known: {', '.join(LABELLED_SETS)}")


# ---------------------------------------------------------------------------------------------
# Split.


def _rank_key(seed: int, name: str) -> str:
    # A hash rank, not a generator draw: the split stays the same across numpy versions and
    # platforms, and adding an image to a set moves no other image between the parts.
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def fixed_split(names: Iterable[str], seed: int, test_share: float) -> dict[str, list[str]]:
    """Split image names into a train and a test part, the same whatever order they come in.

    Names are sorted, ranked by SHA-256 of ``"<seed>:<name>"``, and the first
    ``ceil(test_share · n)`` go to test, at least one; at least one stays in train when there
    are two or more. A set of one image is all test (it can only be used for evaluation).

    Args:
        names: Image names (unique).
        seed: Split seed; record it with the split.
        test_share: Fraction of images for the test part, within (0, 1).

    Returns:
        ``{"train": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: Duplicate names or a share outside (0, 1).
    """
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise ValueError("image names must be unique")
    if not 0 < test_share < 1:
        raise ValueError(f"test_share must be within (0, 1), got {test_share}")
    n = len(ordered)
    n_test = min(max(1, math.ceil(test_share * n)), max(n - 1, 1)) if n else 0
    ranked = sorted(ordered, key=lambda name: _rank_key(seed, name))
    test = set(ranked[:n_test])
    return {
        "train": [name for name in ordered if name not in test],
        "test": [name for name in ordered if name in test],
    }


@dataclass(frozen=True)
class Split:
    """Which images of each labelled set train the segmenter and which images score it.

    The fixed split (``fixed_split(names, seed, test_share)``) holds a test part out of all
    training. Cross-validation then works inside the training part only, so that settings can
    be compared on images no model of the comparison trained on while the test part stays
    untouched: with ``folds`` ≥ 2 the training part, in its seeded hash order, is dealt into
    ``folds`` folds like cards (fold sizes differ by at most one image); fold ``fold`` is
    scored and the others train.

    Attributes:
        seed: Seed of the fixed split and of the fold deal.
        test_share: Share of each set held out for evaluation, within (0, 1).
        folds: Number of cross-validation folds, 0 for none (score the test part).
        fold: The scored fold, within [0, folds).
    """

    seed: int = 42
    test_share: float = 0.5
    folds: int = 0
    fold: int = 0

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ValueError(
                f"folds must be 0 (no cross-validation) or at least 2, got {self.folds}"
            )
        if self.folds and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be within [0, {self.folds}), got {self.fold}")
        if not self.folds and self.fold:
            raise ValueError(f"fold {self.fold} given without folds")

    def parts(self, names: Iterable[str]) -> dict[str, list[str]]:
        """``{"train": [...], "test": [...]}``, each sorted; ``test`` is the scored part.

        Without folds this is ``fixed_split``; with folds, ``test`` is the scored fold of the
        training part and ``train`` the other folds. The fixed test part is in neither.
        """
        split = fixed_split(names, self.seed, self.test_share)
        if not self.folds:
            return split
        ranked = sorted(split["train"], key=lambda name: _rank_key(self.seed, name))
        scored = set(ranked[self.fold :: self.folds])
        return {
            "train": [name for name in split["train"] if name not in scored],
            "test": [name for name in split["train"] if name in scored],
        }

    def record(self) -> dict[str, int | float]:
        """The split as flat metrics: ``split_seed``, ``test_share``, ``cv_folds``, ``cv_fold``."""
        return {
            "split_seed": self.seed,
            "test_share": self.test_share,
            "cv_folds": self.folds,
            "cv_fold": self.fold,
        }
