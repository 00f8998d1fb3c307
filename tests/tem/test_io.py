from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage import io

from nanoxtal.tem.io import (
    LUMA,
    Split,
    TemImageError,
    fixed_split,
    read_image,
    read_labelled_set,
)


def ramp(dtype=np.uint8, top: int = 200) -> np.ndarray:
    return np.linspace(10, top, 24 * 32).reshape(24, 32).astype(dtype)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        io.imsave(path, array, check_contrast=False)
    return path


def test_8bit_png_keeps_scaling(tmp_path):
    array = ramp()
    image = read_image(save(tmp_path / "a.png", array))
    assert image.dtype == np.float32 and image.shape == array.shape
    np.testing.assert_allclose(image, array / 255, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_keeps_scaling(tmp_path, suffix):
    # A 12-bit detector's values in a 16-bit file: v/65535, not stretched to the full range.
    array = ramp(np.uint16, top=4000)
    image = read_image(save(tmp_path / f"a{suffix}", array))
    np.testing.assert_allclose(image, array / 65535, rtol=1e-6)
    assert image.max() < 0.07


def test_rgb_and_rgba_to_grey(tmp_path):
    grey = ramp()
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    np.testing.assert_allclose(read_image(save(tmp_path / "g.png", rgba)), grey / 255, rtol=1e-6)
    colour = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    expected = (colour.astype(np.float32) @ LUMA) / 255
    np.testing.assert_allclose(read_image(save(tmp_path / "c.png", colour)), expected, rtol=1e-5)


def test_float_tiff_kept_within_unit_range_else_stretched(tmp_path):
    array = np.linspace(0.1, 0.9, 64, dtype=np.float32).reshape(8, 8)
    np.testing.assert_array_equal(read_image(save(tmp_path / "f.tif", array)), array)
    counts = array * 3000 - 500  # e.g. dark-subtracted detector counts, as float
    stretched = (array - 0.1) / 0.8
    np.testing.assert_allclose(read_image(save(tmp_path / "g.tif", counts)), stretched, atol=1e-6)
    counts[2, 3] = np.nan
    with pytest.raises(TemImageError, match=r"h\.tif: image has NaN"):
        read_image(save(tmp_path / "h.tif", counts))


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint32])
def test_other_integer_depths_stretched_by_their_range(tmp_path, dtype):
    array = ramp(dtype, top=60000 if dtype != np.int16 else 30000)
    expected = (array - array.min()) / float(array.max() - array.min())
    image = read_image(save(tmp_path / "counts.tif", array))
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(TemImageError, match=r"empty\.png: empty file"):
        read_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    with pytest.raises(TemImageError, match=r"notes\.png: not a readable PNG image"):
        read_image(path)


def test_constant_image(tmp_path):
    path = save(tmp_path / "flat.png", np.full((16, 16), 128, dtype=np.uint8))
    with pytest.raises(TemImageError, match=r"flat\.png: constant image"):
        read_image(path)


def test_unsupported_pixel_type_and_shape(tmp_path):
    Image.fromarray(ramp() > 100).save(tmp_path / "mask.png")  # a 1-bit PNG
    with pytest.raises(TemImageError, match=r"mask\.png: unsupported pixel type bool .*mask"):
        read_image(tmp_path / "mask.png")
    with pytest.raises(TemImageError, match=r"fft\.tif: unsupported pixel type complex64"):
        read_image(save(tmp_path / "fft.tif", ramp(np.complex64)))
    with pytest.raises(TemImageError, match=r"flat32\.tif: constant image"):
        read_image(save(tmp_path / "flat32.tif", np.full((8, 8), 7, np.int32)))
    with pytest.raises(TemImageError, match=r"stack\.tif: expected a 2-D"):
        read_image(save(tmp_path / "stack.tif", np.stack([ramp()] * 5)))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(TemImageError, match="no such file"):
        read_image(tmp_path / "gone.png")
    with pytest.raises(TemImageError, match="unsupported file type"):
        read_image(tmp_path / "image.bmp")
    assert issubclass(TemImageError, ValueError)


def test_mask_set_with_an_unreadable_image(tmp_path):
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[2:6, 2:6] = 255
    mask[6:10, 6:10] = 255  # touches the first only at a corner: its own instance
    mask[12:20, 20:30] = 255
    save(tmp_path / "msa_em" / "images" / "b.png", ramp())
    save(tmp_path / "msa_em" / "masks" / "b.png", np.stack([mask] * 3, axis=-1))
    save(tmp_path / "msa_em" / "images" / "c.png", ramp())  # no mask: not in the set
    (tmp_path / "msa_em" / "images" / "a.png").write_text("broken")
    save(tmp_path / "msa_em" / "masks" / "a.png", mask)
    items = read_labelled_set(tmp_path, "msa_em")
    assert [item.name for item in items] == ["a", "b"]
    assert items[0].image is None and "a.png" in items[0].error
    good = items[1]
    assert good.error is None and good.boxes is None
    assert good.instances.dtype == np.int32 and good.instances.max() == 3


def test_instance_set(tmp_path):
    labels = np.zeros((24, 32), dtype=np.uint16)
    labels[1:5, 1:5] = 7
    labels[10:20, 10:20] = 300
    save(tmp_path / "sophon_example" / "x.png", ramp())
    save(tmp_path / "sophon_example" / "x_instances.png", labels)
    [item] = read_labelled_set(tmp_path, "sophon_example")
    assert item.name == "x"
    np.testing.assert_array_equal(item.instances, labels.astype(np.int32))


def test_box_set(tmp_path):
    save(tmp_path / "stem_boxes" / "images" / "p.png", ramp())
    labels = tmp_path / "stem_boxes" / "labels"
    labels.mkdir(parents=True)
    (labels / "p.txt").write_text("0 0.5 0.25 0.25 0.5\n0 0.1 0.1 0.1 0.1\n")
    [item] = read_labelled_set(tmp_path, "stem_boxes")
    assert item.instances is None
    # 24 × 32 image: centre (row 6, col 16), 12 rows × 8 columns.
    np.testing.assert_allclose(item.boxes[0], [0, 12, 12, 20])
    assert item.boxes.shape == (2, 4)


def test_unknown_set(tmp_path):
    with pytest.raises(ValueError, match="unknown labelled TEM set"):
        read_labelled_set(tmp_path, "nanocrystals_unlabeled")


NAMES = [f"img_{index:02d}" for index in range(20)]


def test_fixed_split_is_deterministic_and_order_independent():
    split = fixed_split(NAMES, seed=42, test_share=0.5)
    assert split == fixed_split(list(reversed(NAMES)), seed=42, test_share=0.5)
    assert len(split["test"]) == len(split["train"]) == 10
    assert sorted(split["train"] + split["test"]) == NAMES
    assert split["test"] == sorted(split["test"])
    assert fixed_split(NAMES, seed=7, test_share=0.5) != split
    # A 21st image raises the test size to 11: the 10 test images stay test images.
    grown = fixed_split([*NAMES, "img_99"], seed=42, test_share=0.5)
    assert set(split["test"]) <= set(grown["test"])


def test_fixed_split_sizes_and_errors():
    assert fixed_split(["only"], 0, 0.5) == {"train": [], "test": ["only"]}
    assert [len(part) for part in fixed_split(["a", "b"], 0, 0.9).values()] == [1, 1]
    assert len(fixed_split(NAMES[:7], 0, 0.5)["test"]) == 4
    with pytest.raises(ValueError, match="unique"):
        fixed_split(["a", "a"], 0, 0.5)
    with pytest.raises(ValueError, match="test_share"):
        fixed_split(NAMES, 0, 1.0)


def test_split_without_folds_is_the_fixed_split():
    assert Split(7, 0.3).parts(NAMES) == fixed_split(NAMES, 7, 0.3)
    assert Split(7, 0.3).record() == {
        "split_seed": 7,
        "test_share": 0.3,
        "cv_folds": 0,
        "cv_fold": 0,
    }


def test_cross_validation_folds_cover_the_training_part_once():
    train = fixed_split(NAMES, 42, 0.5)["train"]
    folds = [Split(42, 0.5, 3, fold).parts(reversed(NAMES)) for fold in range(3)]
    scored = [part["test"] for part in folds]
    # Each training image is scored by exactly one fold; no test image is ever used.
    assert sorted(name for names in scored for name in names) == train
    assert sorted(len(names) for names in scored) == [3, 3, 4]
    for part in folds:
        assert sorted(part["train"] + part["test"]) == train
        assert not set(part["train"]) & set(part["test"])
    assert Split(43, 0.5, 3, 0).parts(NAMES) != folds[0]


def test_split_refuses_impossible_folds():
    with pytest.raises(ValueError, match="at least 2"):
        Split(folds=1)
    with pytest.raises(ValueError, match=r"within \[0, 2\)"):
        Split(folds=2, fold=2)
    with pytest.raises(ValueError, match="without folds"):
        Split(fold=1)
