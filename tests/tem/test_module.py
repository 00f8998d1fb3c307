from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from nanoxtal.cli import main
from nanoxtal.tem.datamodule import FreshSeeds, TemDataModule
from nanoxtal.tem.module import (
    Segmenter,
    blend_window,
    load_segmenter,
    segmentation_losses,
    tile_starts,
)
from nanoxtal.tem.nets import OUTPUTS, UNet, inference_copy
from nanoxtal.tem.targets import normalise_image
from nanoxtal.tem.training import TrainSettings, train_segmenter
from nanoxtal.train import TrainerSettings

TINY_ARCH = {"width": 4, "depth": 1, "stem": 1}
TINY = {
    "arch_kwargs": TINY_ARCH,
    "crop_px": 32,
    "train_images": 2,
    "val_images": 1,
    "batch_size": 2,
    "micrograph": {"diameter_nm": 6.0},
}
CPU = TrainerSettings(max_epochs=1, accelerator="cpu", seed=3, log_every_n_steps=1)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_segmenter(**kwargs) -> Segmenter:
    torch.manual_seed(0)
    arch = {"width": 8, "depth": 3, "stem": 1}
    return Segmenter(UNet(**arch), {"name": "unet", **arch}, **kwargs)


def test_datamodule_draws_fresh_training_and_fixed_validation_images():
    data = TemDataModule(
        {"diameter_nm": 8.0},
        {"nm_per_px": [0.4, 0.6]},
        crop_px=64,
        image_px=96,
        train_images=2,
        val_images=2,
        batch_size=2,
        seed=1,
    )
    first = next(iter(data.val_dataloader()))
    assert torch.equal(first["image"], next(iter(data.val_dataloader()))["image"])
    assert first["image"].shape == (2, 1, 64, 64) and first["foreground"].shape == (2, 64, 64)
    assert set(first) == {"image", "valid", *OUTPUTS}
    assert bool((first["valid"] == 1).all())  # every synthetic pixel is trusted
    assert float(first["image"].min()) >= 0.0 and float(first["image"].max()) <= 1.0
    loader = data.train_dataloader()
    a, b = (next(iter(loader))["image"] for _ in range(2))
    assert not torch.equal(a, b)  # a new epoch, new images
    torch.manual_seed(5)
    keys = list(FreshSeeds(3))
    torch.manual_seed(5)
    assert list(FreshSeeds(3)) == keys and len(set(keys)) == 3


def test_datamodule_rejects_bad_settings():
    with pytest.raises(ValueError, match="cannot randomise"):
        TemDataModule(ranges={"bits": [8, 16]})
    with pytest.raises(ValueError, match="cannot randomise"):
        TemDataModule(ranges={"shape_weights": [0, 1]})
    with pytest.raises(ValueError, match="low <= high"):
        TemDataModule(ranges={"nm_per_px": [1.0, 0.5]})
    with pytest.raises(ValueError, match="unknown micrograph setting"):
        TemDataModule({"colour": 1})


def test_losses_are_small_for_perfect_maps():
    target = {
        "foreground": torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]),
        "distance": torch.tensor([[[0.0, 0.5], [1.0, 0.5]]]),
        "boundary": torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]),
    }
    logit = torch.logit(torch.stack([target[name] for name in OUTPUTS], 1).clamp(1e-6, 1 - 1e-6))
    losses = segmentation_losses(logit, target, boundary_pos_weight=5.0)
    assert all(float(value) < 1e-4 for value in losses.values())
    # Distance errors on the film do not count.
    logit[0, 1, 0, 0] = 10.0
    assert float(segmentation_losses(logit, target, 5.0)["distance"]) < 1e-4


def test_a_few_steps_lower_the_loss():
    data = TemDataModule(
        {"diameter_nm": 10.0, "coverage": 0.3}, crop_px=64, val_images=4, batch_size=4, seed=0
    )
    batch = next(iter(data.val_dataloader()))
    model = small_segmenter(lr=1e-2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        parts = segmentation_losses(model(batch["image"]), batch, 5.0)
        return sum(parts.values())

    with torch.no_grad():
        first = float(loss())
    for _ in range(30):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
    with torch.no_grad():
        assert float(loss()) < 0.6 * first


def test_predict_maps_handles_any_size_and_tiles_consistently():
    model = small_segmenter()
    image = np.random.default_rng(0).integers(0, 256, (300, 200)).astype(np.uint8)
    whole = model.predict_maps(image, tile=1024)
    assert set(whole) == set(OUTPUTS)
    for values in whole.values():
        assert values.shape == (300, 200) and values.dtype == np.float32
        assert values.min() >= 0.0 and values.max() <= 1.0
    assert model.training  # predict_maps works on a copy
    # One tile covering the image: the same as the network on the reflect-padded image.
    multiple = model.net.multiple
    assert 300 % multiple and not 200 % multiple  # rows padded, columns not
    padded = np.pad(normalise_image(image), [(0, -300 % multiple), (0, 0)], mode="reflect")
    net = inference_copy(model.net)
    with torch.no_grad():
        direct = torch.sigmoid(net(torch.from_numpy(padded)[None, None]))[0, :, :300].numpy()
    for index, name in enumerate(OUTPUTS):
        np.testing.assert_allclose(whole[name], direct[index], atol=1e-4)
    np.testing.assert_allclose(model.predict_maps(image, tile=304)["distance"], whole["distance"])
    # Several overlapping tiles: same shape, smooth blend (no seams far above the noise).
    tiled = model.predict_maps(image, tile=96, overlap=32)
    assert tiled["foreground"].shape == (300, 200)
    assert np.abs(tiled["foreground"] - whole["foreground"]).mean() < 0.05
    small = model.predict_maps(np.ones((5, 3)))
    assert small["boundary"].shape == (5, 3)
    with pytest.raises(ValueError, match="overlap"):
        model.predict_maps(image, tile=64, overlap=64)


def test_predict_maps_reuses_its_inference_copy_until_the_weights_change():
    model = small_segmenter()
    image = np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.uint8)
    first = model.predict_maps(image)["foreground"]
    copy = model._inference_net()
    np.testing.assert_array_equal(model.predict_maps(image)["foreground"], first)
    assert model._inference_net() is copy
    with torch.no_grad():
        next(model.net.parameters()).add_(0.5)  # in place, as an optimiser step is
    changed = model.predict_maps(image)["foreground"]
    assert model._inference_net() is not copy
    assert np.abs(changed - first).max() > 1e-3
    copy = model._inference_net()
    next(model.net.parameters()).data.mul_(-1.0)  # through .data: no version bump
    assert np.abs(model.predict_maps(image)["foreground"] - changed).max() > 1e-3
    assert model._inference_net() is not copy
    copy = model._inference_net()
    model.load_state_dict(small_segmenter().state_dict())  # back to the first weights
    np.testing.assert_allclose(model.predict_maps(image)["foreground"], first, atol=1e-6)
    assert model._inference_net() is not copy
    assert "_inference" not in dict(model.named_modules())  # not a registered submodule
    assert not any(".net." in name.removeprefix("net.") for name in model.state_dict())


def test_tiles_cover_and_blend_weights_are_positive():
    assert tile_starts(100, 128, 32) == [0]
    starts = tile_starts(1000, 256, 32)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 32 for a, b in itertools.pairwise(starts))
    window = blend_window((8, 6), 2)
    assert window.min() > 0 and window.max() == 1.0 and window[0, 0] < window[3, 3]


def test_train_segmenter_publishes_a_reloadable_model(tmp_path):
    published = train_segmenter(tmp_path / "tem", TrainSettings(**TINY), CPU)
    assert published == tmp_path / "tem" / "models" / "best.ckpt" and published.is_file()
    model = load_segmenter(published)
    assert not model.training and model.hparams.arch == {"name": "unet", **TINY_ARCH}
    maps = model.predict_maps(np.zeros((40, 50), dtype=np.uint8))
    assert maps["foreground"].shape == (40, 50)
    metrics = next((tmp_path / "tem" / "logs").glob("*/metrics.csv")).read_text()
    assert "val_foreground_iou" in metrics and "train_loss" in metrics


def test_weight_average_is_what_gets_published(tmp_path):
    settings = TrainSettings(**{**TINY, "train_images": 6}, ema_decay=0.5)
    trainer = TrainerSettings(max_epochs=2, accelerator="cpu", seed=3, log_every_n_steps=1)
    published = train_segmenter(tmp_path / "ema", settings, trainer)
    checkpoint = torch.load(published, map_location="cpu", weights_only=False)
    average, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert average.keys() == raw.keys()
    # After 6 steps the average lags the raw weights; the model loads the average.
    assert any(not torch.equal(average[key], raw[key]) for key in average)
    net = load_segmenter(published).net.state_dict()
    assert all(torch.equal(net[key.removeprefix("net.")], average[key]) for key in average)
    plain = train_segmenter(tmp_path / "plain", TrainSettings(**TINY), CPU)
    assert "current_model_state" not in torch.load(plain, map_location="cpu", weights_only=False)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainSettings(ema_decay=1.0)


def test_weight_soup_averages_segmenters_and_loads(tmp_path, capsys):
    first = train_segmenter(tmp_path / "a", TrainSettings(**TINY), CPU)
    reseeded = TrainerSettings(max_epochs=1, accelerator="cpu", seed=4, log_every_n_steps=1)
    second = train_segmenter(tmp_path / "b", TrainSettings(**TINY), reseeded)
    out = tmp_path / "soup.ckpt"
    assert main(["tem", "soup", str(first), str(second), "--out", str(out)]) == 0
    nets = [load_segmenter(path).net.state_dict() for path in (first, second, out)]
    floats = [name for name, value in nets[2].items() if value.is_floating_point()]
    assert any(not torch.equal(nets[0][name], nets[1][name]) for name in floats)
    for name in floats:
        torch.testing.assert_close(nets[2][name], (nets[0][name] + nets[1][name]) / 2)
    maps = load_segmenter(out).predict_maps(np.zeros((40, 50), dtype=np.uint8))
    assert maps["foreground"].shape == (40, 50)
    wider = train_segmenter(
        tmp_path / "c", TrainSettings(**{**TINY, "arch_kwargs": {**TINY_ARCH, "width": 8}}), CPU
    )
    with pytest.raises(SystemExit, match="another network"):
        main(["tem", "soup", str(first), str(wider), "--out", str(out)])
    # One checkpoint: its own weights, without the training state.
    assert main(["tem", "soup", str(first), "--out", str(out)]) == 0
    alone = load_segmenter(out).net.state_dict()
    assert all(torch.equal(alone[name], nets[0][name]) for name in alone)
    assert "optimizer_states" not in torch.load(out, map_location="cpu", weights_only=True)


def test_cli_train_and_bad_settings(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["tem", "train", "--out-dir", str(out), "--seed", "4"]
    trainer = json.dumps({"max_epochs": 1, "accelerator": "cpu", "log_every_n_steps": 1})
    assert main([*args, "--settings", json.dumps(TINY), "--trainer", trainer]) == 0
    assert (out / "models" / "best.ckpt").is_file()
    assert main([*args, "--settings", '{"colour": 1}']) == 1
    assert "unknown TEM training setting" in capsys.readouterr().err
