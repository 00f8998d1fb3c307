from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from nanoxtal.xrd.datamodule import MeasuredDataModule
from nanoxtal.xrd.evaluate import predict_patterns, probabilities, scores
from nanoxtal.xrd.io import Measured
from nanoxtal.xrd.module import XrdClassifier, fit_temperature
from nanoxtal.xrd.nets import build_net
from nanoxtal.xrd.profiles import Grid
from nanoxtal.xrd.structures import CRYSTAL_SYSTEMS, crystal_system


def sample_labels(logits: torch.Tensor, temperature: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.softmax(logits / temperature, 1), 1, generator=generator)[:, 0]


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_that_generated_the_labels(true_temperature):
    logits = 3.0 * torch.randn(20000, 10, generator=torch.Generator().manual_seed(1))
    labels = sample_labels(logits, true_temperature, seed=2)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_temperatures_change_probabilities_but_not_predictions():
    torch.manual_seed(0)
    model = XrdClassifier(build_net("xrdnet", width=8), {"name": "xrdnet", "width": 8}).eval()
    patterns = torch.rand(64, 8500)
    before_cs, before_sg = model.predict_proba(patterns)
    with torch.no_grad():
        cs_logits, sg_logits = model(patterns)
    temperatures = (
        fit_temperature(cs_logits, torch.randint(0, 7, (64,))),
        fit_temperature(sg_logits, torch.randint(0, 230, (64,))),
    )
    model.temperature.copy_(torch.tensor(temperatures))
    after_cs, after_sg = model.predict_proba(patterns)
    assert not torch.allclose(after_sg, before_sg)
    assert torch.equal(after_sg.argmax(1), before_sg.argmax(1))
    assert torch.equal(after_cs.argmax(1), before_cs.argmax(1))
    assert torch.allclose(after_sg.sum(1), torch.ones(64))


# A tiny separable task for the learning test. Space groups at both ends of the numbering and
# their neighbours (1/2, 229/230), from three crystal systems: a label passed to the loss without
# the -1 shift would index past the 230 logits (crash), one shifted twice would be -1 for P1
# (crash), and a prediction path missing the +1 would report 0/1/193/228/229, which the exact
# comparisons below reject (and 1 vs 2, 229 vs 230 are both in the set, so "in the set" is not
# enough to pass).
PEAKS_2THETA = {  # space group number: class-specific peak positions, degrees 2θ
    1: (12.0, 31.0, 47.0),  # P1, triclinic
    2: (15.0, 31.0, 52.0),  # P-1, triclinic; shares the 31° peak with P1
    194: (20.0, 38.0, 61.0),  # P6_3/mmc, hexagonal
    229: (25.0, 44.0, 64.0),  # Im-3m, cubic
    230: (28.0, 44.0, 70.0),  # Ia-3d, cubic; shares the 44° peak with Im-3m
}
CRYSTAL_SYSTEM_OF = {1: 0, 2: 0, 194: 5, 229: 6, 230: 6}  # 0 triclinic ... 5 hexagonal, 6 cubic


def synthetic_patterns(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Noisy one-phase patterns on the model grid: Gaussian peaks at the class's positions.

    Each pattern draws a common zero shift (±0.3°), per-peak jitter (±0.1°), widths, heights, a
    flat background and Gaussian noise, so no two patterns are alike and the held-out ones are
    new draws of the same distribution.
    """
    x = Grid().values().double().numpy()
    patterns, space_groups = [], []
    for number, positions in PEAKS_2THETA.items():
        for _ in range(per_class):
            shift = rng.uniform(-0.3, 0.3)
            y = np.full_like(x, rng.uniform(0.0, 0.1))
            for position in positions:
                centre = position + shift + rng.uniform(-0.1, 0.1)
                fwhm = rng.uniform(0.1, 0.4)
                y += rng.uniform(0.3, 1.0) * np.exp(-4 * np.log(2) * ((x - centre) / fwhm) ** 2)
            y += rng.normal(0.0, 0.02, x.shape)
            y = np.clip(y, 0.0, None)
            patterns.append(y / y.max())
            space_groups.append(number)
    space_group = np.array(space_groups)
    crystal_system = np.array([CRYSTAL_SYSTEM_OF[n] for n in space_group])
    return np.stack(patterns).astype(np.float32), crystal_system, space_group


class EpochLoss(pl.Callback):
    """Records the epoch-mean training loss the module logs."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.losses.append(float(trainer.callback_metrics["train_loss_epoch"]))


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: a network this small gains nothing from more, and on
    a busy machine (CI on the same cores) two threads contending ran the test 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_classifier_learns_a_separable_task_and_reports_true_space_group_numbers(one_thread):
    # The labels the tests hard-code are what the project's own mapping says.
    assert all(crystal_system(n) == cs for n, cs in CRYSTAL_SYSTEM_OF.items())
    pl.seed_everything(0, verbose=False)
    rng = np.random.default_rng(0)
    train = synthetic_patterns(40, rng)
    held = synthetic_patterns(20, rng)
    patterns, cs, sg = (np.concatenate(parts) for parts in zip(train, held, strict=True))
    train_rows = np.arange(len(train[0]))
    data = MeasuredDataModule(patterns, cs, sg, train_rows, batch_size=32, seed=0)

    arch = {"name": "xrdnet", "width": 4, "hidden": 32}
    model = XrdClassifier(build_net(**arch), arch, lr=3e-3)
    losses = EpochLoss()
    trainer = pl.Trainer(
        max_epochs=12,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[losses],
    )
    trainer.fit(model, datamodule=data)

    # Learning, not noise: the loss of the last epochs is far below that of the first.
    assert len(losses.losses) == 12
    assert np.mean(losses.losses[-3:]) < 0.5 * losses.losses[0], losses.losses

    held_patterns, held_cs, held_sg = held
    # 1. The module's own metric path (``_step``: argmax + 1 against the 1-230 labels), on the
    # held-out rows (``MeasuredDataModule`` validates on the rows it does not train on).
    evaluator = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (metrics,) = evaluator.validate(model, datamodule=data, verbose=False)
    assert metrics["val_acc_space_group"] >= 0.9
    assert metrics["val_acc_crystal_system"] >= 0.9

    # 2. Probabilities as evaluation uses them: column k is space group k + 1.
    p_cs, p_sg = probabilities(model, held_patterns)
    predicted = p_sg.argmax(1) + 1
    assert set(predicted) <= set(PEAKS_2THETA), sorted(set(predicted))  # no 0, 3, 193, 228...
    assert np.mean(predicted == held_sg) >= 0.9  # chance: 0.2
    assert np.mean(p_cs.argmax(1) == held_cs) >= 0.9
    for number in PEAKS_2THETA:  # each class's patterns put most mass on column number - 1
        assert p_sg[held_sg == number].mean(0).argmax() == number - 1
    assert scores(held_cs, held_sg, p_cs, p_sg)["space_group_accuracy"] >= 0.9

    # 3. What ``nanoxtal xrd predict`` writes: the ITA number and the crystal system's name.
    two_theta = Grid().values().double().numpy()
    table = predict_patterns(
        model,
        [Measured("synthetic", i, two_theta, p.astype(float)) for i, p in enumerate(held_patterns)],
    )
    assert np.mean(table["space_group"].to_numpy() == held_sg) >= 0.9
    assert np.array_equal(table["space_group"].to_numpy(), predicted)
    assert np.mean(table["crystal_system"].to_numpy() == np.array(CRYSTAL_SYSTEMS)[held_cs]) >= 0.9
