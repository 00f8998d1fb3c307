from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import io as skio
from skimage.draw import disk

from nanoxtal.cli import main
from nanoxtal.tem.bank import (
    ImageBank,
    PseudoSettings,
    film_labels,
    labelled_bank,
    load_bank,
    merge_banks,
    occupied_by_boxes,
    pseudo_label,
    save_bank,
)
from nanoxtal.tem.datamodule import BankCrops, TemDataModule
from nanoxtal.tem.io import Split
from nanoxtal.tem.module import load_segmenter, segmentation_losses
from nanoxtal.tem.nets import OUTPUTS
from nanoxtal.tem.segmentation import SegmentSettings
from nanoxtal.tem.training import TrainSettings, train_segmenter
from nanoxtal.train import TrainerSettings

TINY = {
    "arch_kwargs": {"width": 4, "depth": 1, "stem": 1},
    "crop_px": 32,
    "train_images": 4,
    "val_images": 1,
    "batch_size": 2,
    "micrograph": {"diameter_nm": 6.0},
}
CPU = TrainerSettings(max_epochs=1, accelerator="cpu", seed=3, log_every_n_steps=1)


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for index, centre in enumerate(centres, start=1):
        labels[disk(centre, radius + 0.5, shape=shape)] = index
    return labels


def toy_bank(name: str = "toy", size: int = 64) -> ImageBank:
    labels = discs((size, size), [(16, 16), (40, 44)], 6)
    image = np.where(labels > 0, 0.2, 0.8).astype(np.float32)
    return ImageBank(
        names=(name,),
        sources=("labels",),
        images=(image,),
        instances=(labels,),
        valid=(np.ones(labels.shape, dtype=bool),),
    )


def test_bank_round_trip_and_merge(tmp_path):
    bank = merge_banks([toy_bank("a"), toy_bank("b", size=40)])
    assert bank.names == ("a", "b") and len(bank) == 2 and bank.pixels == 64 * 64 + 40 * 40
    back = load_bank(save_bank(bank, tmp_path / "bank.npz"))
    assert back.names == bank.names and back.sources == bank.sources
    for before, after in zip(bank.instances, back.instances, strict=True):
        np.testing.assert_array_equal(before, after)
    np.save(tmp_path / "other.npy", np.zeros(3))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz: not an image bank"):
        load_bank(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="one shape"):
        ImageBank(("x",), ("labels",), (np.zeros((4, 4)),), (np.zeros((4, 5)),), (np.ones((4, 4)),))


def test_labelled_bank_holds_the_training_part_only(msa_like):
    bank, splits = labelled_bank({"msa_em": msa_like}, Split(42, 0.5))
    split = splits["msa_em"]
    assert len(split["train"]) == 3 and len(split["test"]) == 3
    assert bank.names == tuple(f"msa_em/{name}" for name in split["train"])
    assert all(mask.all() for mask in bank.valid)
    assert all(labels.max() == 2 for labels in bank.instances)
    with pytest.raises(ValueError, match="no bank can be made of 'nanocrystals'"):
        labelled_bank({"nanocrystals": msa_like}, Split(42, 0.5))


def test_cross_validation_banks_leave_out_their_fold_and_the_test_part(msa_like):
    test = Split(42, 0.5).parts(path.stem for path in (msa_like / "images").iterdir())["test"]
    held = []
    for fold in range(2):
        bank, splits = labelled_bank({"msa_em": msa_like}, Split(42, 0.5, 2, fold))
        part = splits["msa_em"]
        assert bank.names == tuple(f"msa_em/{name}" for name in part["train"])
        assert not set(part["train"]) & set(test) and not set(part["test"]) & set(test)
        held += part["test"]
    assert len(held) == len(set(held)) == 3


def stem_like(tmp_path):
    """Two 40 × 60 HAADF images (bright particles) with YOLO boxes around their particles."""
    root = tmp_path / "stem_boxes"
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for index in range(2):
        image = np.full((40, 60), 30, dtype=np.uint8)  # HAADF: bright particles, dark support
        image[disk((20, 15), 6)] = 220
        image[disk((20, 40), 4)] = 220
        skio.imsave(root / "images" / f"s{index}.png", image, check_contrast=False)
        # YOLO: class cx cy w h, normalised to the 60 × 40 image.
        lines = ["0 0.25 0.5 0.2 0.3", "0 0.6667 0.5 0.1333 0.2"]
        (root / "labels" / f"s{index}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_box_labels_become_ellipses_and_bright_particles_are_inverted(tmp_path):
    bank, split = labelled_bank({"stem_boxes": stem_like(tmp_path)}, Split(1, 0.5))
    [name] = bank.names
    assert name == f"stem_boxes/{split['stem_boxes']['train'][0]}"
    labels, image = bank.instances[0], bank.images[0]
    assert labels.max() == 2
    # The ellipse inscribed in a 12 × 12 px box: area π·6² within a few pixels.
    assert abs((labels == 1).sum() - np.pi * 36) < 8
    assert image[20, 15] < 0.2 and image[5, 5] > 0.8  # stored with dark particles


def test_film_labels_trust_only_the_film_beyond_the_margin():
    occupied = np.zeros((20, 30), dtype=bool)
    occupied[5:10, 5:10] = True
    labels, valid = film_labels(occupied, 2.0)
    assert labels.dtype == np.int32 and not labels.any()
    assert not valid[5:10, 5:10].any()
    assert not valid[7, 11] and valid[7, 12]  # 2 px right of the box: untrusted; 3 px: film
    assert valid[0, 0] and valid[19, 29]
    assert film_labels(np.zeros((4, 4), dtype=bool), 2.0)[1].all()  # no particle: all film
    with pytest.raises(ValueError, match="margin_px must be >= 0"):
        film_labels(occupied, -1.0)


def test_boxes_cover_their_pixels_partly_outside_the_image():
    mask = occupied_by_boxes(np.array([[2.5, 3.2, 5.0, 6.7], [-3.0, 8.0, 2.0, 20.0]]), (10, 12))
    assert mask[2:5, 3:7].all() and mask.sum() == 3 * 4 + 2 * 4
    assert mask[0:2, 8:12].all()


def test_film_bank_of_boxes_distrusts_the_boxes_and_teaches_no_particle(tmp_path):
    root = stem_like(tmp_path)
    film, _ = labelled_bank({"stem_boxes": root}, Split(1, 0.5), film_margin_px=1.0)
    full, _ = labelled_bank({"stem_boxes": root}, Split(1, 0.5))
    assert film.names == full.names and film.sources == ("film",)
    assert not film.instances[0].any()
    valid = film.valid[0]
    # The 12 × 12 box around the particle at (20, 15) and the pixels next to it, untrusted.
    assert not valid[14:26, 8:22].any() and not valid[13:27, 9:21].any()
    assert valid[2, 2] and valid[20, 55] and 0.5 < valid.mean() < 0.95
    np.testing.assert_array_equal(film.images[0], full.images[0])  # inverted alike


def test_film_bank_of_instance_masks_distrusts_the_particles(msa_like):
    bank, _ = labelled_bank({"msa_em": msa_like}, Split(42, 0.5), film_margin_px=0.0)
    full, _ = labelled_bank({"msa_em": msa_like}, Split(42, 0.5))
    for labels, valid, truth in zip(bank.instances, bank.valid, full.instances, strict=True):
        assert not labels.any()
        np.testing.assert_array_equal(valid, truth == 0)


def test_bank_crops_draw_every_set_equally_often():
    big = toy_bank("big/a", size=256)
    small = toy_bank("small/a", size=32)
    weights = BankCrops(merge_banks([big, small]), 32, (1.0, 1.0), 0).weights
    np.testing.assert_allclose(weights, [0.5, 0.5])


def test_bank_crops_rescale_particles_and_distrust_padding():
    bank = toy_bank()
    crops = BankCrops(bank, crop_px=32, scale_range=(2.0, 2.0), seed=0)
    item = crops.sample(3)
    assert item["image"].shape == (32, 32) and set(item) == {"image", "valid", *OUTPUTS}
    # Particles of radius 6 px (113 px²), enlarged twice: 12 px radius (452 px²). A 32-px
    # crop at scale 1 holds at most both particles; at scale 2, most of one enlarged one.
    enlarged = max(crops.sample(key)["foreground"].sum() for key in range(30))
    unscaled = BankCrops(bank, crop_px=32, scale_range=(1.0, 1.0), seed=0)
    plain = max(unscaled.sample(key)["foreground"].sum() for key in range(30))
    assert plain <= 2 * np.pi * 6.5**2 < enlarged <= 2 * np.pi * 12.5**2
    # A crop larger than the image (scale < 0.5 of a 64-px image into 256 px) is padded, and
    # the padding is not trusted.
    padded = BankCrops(bank, crop_px=256, scale_range=(1.0, 1.0), seed=0).sample(0)
    assert 0 < padded["valid"].mean() < 1
    assert padded["foreground"][padded["valid"] == 0].sum() == 0
    with pytest.raises(ValueError, match="scale_range"):
        BankCrops(bank, 32, (0.0, 1.0), 0)


def test_datamodule_mixes_bank_crops_in_the_given_share():
    data = TemDataModule(
        {"diameter_nm": 8.0}, crop_px=32, train_images=40, bank=toy_bank(), bank_share=1.0
    )
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (8, 1, 32, 32) and batch["valid"].shape == (8, 32, 32)
    assert data.hparams.bank_images == ["toy"]
    synthetic = TemDataModule({"diameter_nm": 8.0}, crop_px=32, bank=toy_bank(), bank_share=0.0)
    shares = [synthetic.train_set.bank is not None, synthetic.train_set.bank_share]
    assert shares == [True, 0.0]
    # Same key, bank share 1: a bank crop (its image has exactly two grey levels before the
    # photometric jitter adds noise; the synthetic film is textured), share 0: synthetic.
    crop = data.train_set[7]["image"]
    assert torch.equal(crop, data.train_set.bank[7]["image"])
    assert torch.equal(synthetic.train_set[7]["image"], synthetic.train_set.synthetic[7]["image"])


def test_untrusted_pixels_do_not_count_in_the_losses():
    target = {
        "foreground": torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]),
        "distance": torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]),
        "boundary": torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]),
        "valid": torch.tensor([[[1.0, 1.0], [1.0, 0.0]]]),
    }
    good = torch.logit(torch.stack([target[name] for name in OUTPUTS], 1).clamp(1e-6, 1 - 1e-6))
    wrong_where_untrusted = good.clone()
    wrong_where_untrusted[0, :, 1, 1] = 10.0  # confidently wrong on the untrusted pixel
    losses = segmentation_losses(wrong_where_untrusted, target, 5.0)
    assert all(float(value) < 1e-4 for value in losses.values())
    del target["valid"]
    assert float(segmentation_losses(wrong_where_untrusted, target, 5.0)["foreground"]) > 1.0


class FakeTeacher:
    """A teacher whose foreground probability is the image itself."""

    def predict_maps(self, image: np.ndarray, tile: int = 1024) -> dict[str, np.ndarray]:
        return {
            "foreground": image.copy(),
            "distance": np.where(image > 0.55, 0.9, 0.0).astype(np.float32),
            "boundary": np.zeros(image.shape, np.float32),
        }


def teacher_view(shape: tuple[int, int]) -> np.ndarray:
    """A confident particle, an unconfident one, confident film and an ambiguous strip."""
    foreground = np.full(shape, 0.05, dtype=np.float32)
    foreground[discs(shape, [(10, 10)], 5) > 0] = 0.97
    foreground[discs(shape, [(30, 30)], 5) > 0] = 0.6
    foreground[0, :] = 0.5
    return foreground


def test_pseudo_labels_keep_confident_particles_and_distrust_the_rest():
    view = teacher_view((48, 48))
    settings = PseudoSettings(confident_margin=0.2, min_particle_confidence=0.8, augment=False)
    instances, valid = pseudo_label(FakeTeacher(), view, settings)
    assert instances.max() == 1 and instances[10, 10] == 1 and instances[30, 30] == 0
    assert valid[10, 10] and not valid[30, 30]  # the dropped particle is not called film
    assert valid[40, 5] and not valid[0, 20]  # confident film trusted, ambiguous not
    # Test-time augmentation maps every view back: the same labels for an exact teacher.
    augmented, _ = pseudo_label(FakeTeacher(), view, PseudoSettings())
    np.testing.assert_array_equal(augmented > 0, instances > 0)
    # The labels follow the segmentation settings the student will serve with.
    strict = SegmentSettings(foreground_threshold=0.98)
    assert pseudo_label(FakeTeacher(), view, settings, strict)[0].max() == 0


def test_fine_tuning_starts_from_the_given_weights_and_mixes_banks(tmp_path):
    torch.set_num_threads(1)
    pretrained = train_segmenter(tmp_path / "pre", TrainSettings(**TINY), CPU)
    bank = save_bank(toy_bank(), tmp_path / "bank.npz")
    settings = TrainSettings(**TINY, lr=1e-12, weight_decay=0.0, bank_share=0.5)
    tuned = train_segmenter(tmp_path / "tuned", settings, CPU, banks=[bank], init_from=pretrained)
    before, after = (load_segmenter(path).state_dict() for path in (pretrained, tuned))
    # A vanishing learning rate: the fine-tuned weights are the pre-trained ones.
    changed = [
        name
        for name, value in before.items()
        if value.is_floating_point() and "running" not in name and "num_batches" not in name
        if not torch.allclose(value, after[name], atol=1e-6)
    ]
    assert changed == []
    with pytest.raises(ValueError, match="do not fit the network"):
        wider = TrainSettings(**{**TINY, "arch_kwargs": {"width": 8, "depth": 1, "stem": 1}})
        train_segmenter(tmp_path / "wider", wider, CPU, init_from=pretrained)


def test_cli_bank_and_pseudo(tmp_path, msa_like, capsys):
    out = tmp_path / "labelled.npz"
    summary = tmp_path / "labelled.json"
    args = ["tem", "bank", "--set", f"msa_em={msa_like}"]
    assert main([*args, "--out", str(out), "--summary", str(summary)]) == 0
    assert len(load_bank(out)) == 3 and '"test"' in summary.read_text()
    fold = tmp_path / "fold1.npz"
    assert main([*args, "--cv-folds", "2", "--cv-fold", "1", "--out", str(fold)]) == 0
    assert len(load_bank(fold)) == 2  # the 3 training images dealt 2 + 1; fold 1 (1) is scored
    with pytest.raises(SystemExit, match=r"fold must be within \[0, 2\)"):
        main([*args, "--cv-folds", "2", "--cv-fold", "2", "--out", str(fold)])
    film = tmp_path / "film.npz"
    assert main([*args, "--film-margin", "3", "--out", str(film), "--summary", str(summary)]) == 0
    assert load_bank(film).sources == ("film",) * 3
    assert '"film_margin_px": 3.0' in summary.read_text()
    assert "3 film-only training images" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--film-margin must be >= 0 px"):
        main([*args, "--film-margin", "-1", "--out", str(film)])
    model = train_segmenter(tmp_path / "pre", TrainSettings(**TINY), CPU)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    images = [str(msa_like / "images"), str(tmp_path / "bad.png")]
    pseudo = tmp_path / "pseudo.npz"
    settings = '{"augment": false}'
    command = ["tem", "pseudo", *images, "--model", str(model), "--out", str(pseudo)]
    assert main([*command, "--settings", settings, "--no-progress"]) == 1
    assert len(load_bank(pseudo)) == 6 and set(load_bank(pseudo).sources) == {"pseudo"}
    assert "bad.png" in capsys.readouterr().err
