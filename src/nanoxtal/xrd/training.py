"""Train the XRD classifiers on rendered synthetic patterns, then fine-tune on measured ones."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from nanoxtal.data.registry import sha256_file
from nanoxtal.files import atomic_write
from nanoxtal.metrics import threshold_for_precision
from nanoxtal.train import TrainerSettings, fit, run_key, seed_run
from nanoxtal.xrd.datamodule import MeasuredDataModule, XrdDataModule
from nanoxtal.xrd.io import read_patterns, to_grid
from nanoxtal.xrd.library import build_library, library_probabilities
from nanoxtal.xrd.module import (
    PIPELINES,
    XrdClassifier,
    class_weights,
    embed_patterns,
    fit_temperature,
    load_classifier,
    run_batched,
    store_calibration,
)
from nanoxtal.xrd.nets import N_CRYSTAL_SYSTEMS, N_SPACE_GROUPS, build_net
from nanoxtal.xrd.references import References


@dataclass(frozen=True)
class TrainSettings:
    """What a training run does (the ``xrd.train`` config block, per architecture).

    Attributes:
        arch: Network name (``nanoxtal.xrd.nets.ARCHITECTURES``).
        arch_kwargs: Keyword arguments of the network.
        batch_size: Patterns per batch.
        train_per_epoch: Training structures per epoch (``None``: the whole train split).
        val_size: Validation structures (``None``: the whole val split).
        lr: Peak learning rate (AdamW, cosine decay).
        weight_decay: AdamW weight decay.
        label_smoothing: Label smoothing.
        class_weight_power: Loss weights ∝ class frequency^-power against imbalance (0: off).
            On the val split after 3 × 2,560 rendered patterns, 0.5 gave 35.5 % / 13.1 %
            (crystal system / space group) against 35.9 % / 16.0 % without: off by default.
        min_intensity: Peaks weaker than this (of 100) are not rendered.
        num_workers: DataLoader workers.
        augmentation: Overrides of ``Augmentation`` for training renders.
        source_weights: Per-structure draw weight of the training structures of each source
            (``{"amcsd": 3.0}``: a mineral is drawn three times as often as a structure of an
            unlisted source, weight 1); empty: every structure alike.
    """

    arch: str = "xrdnet"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    train_per_epoch: int | None = 8192
    val_size: int | None = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    class_weight_power: float = 0.0
    min_intensity: float = 0.05
    num_workers: int = 0
    augmentation: dict[str, Any] = field(default_factory=dict)
    source_weights: dict[str, float] = field(default_factory=dict)


def _fingerprint(*paths: Path | str) -> list[str]:
    return [sha256_file(p) for p in paths]


def train_classifier(
    structures: Path | str | Sequence[Path | str],
    peaks: Path | str,
    stage_dir: Path | str,
    settings: TrainSettings,
    trainer: TrainerSettings,
) -> Path:
    """Train on rendered stick patterns of the train split; validate on the val split.

    Args:
        structures: Structure table(s): the database's and, optionally, random crystals.
        peaks: Peak table of all of them.
        stage_dir: Stage folder (``results/xrd/<arch>``).
        settings: What the run does.
        trainer: Trainer settings.

    Returns:
        The published best checkpoint, ``<stage_dir>/models/best.ckpt``.
    """
    paths = [str(structures)] if isinstance(structures, str | Path) else list(map(str, structures))
    seed_run(trainer)
    data = XrdDataModule(
        paths,
        str(peaks),
        settings.batch_size,
        settings.train_per_epoch,
        settings.val_size,
        settings.augmentation,
        None,
        trainer.seed,
        settings.min_intensity,
        settings.num_workers,
        source_weights=settings.source_weights,
    )
    data.setup()
    train = data.subset("train")
    net = build_net(settings.arch, **settings.arch_kwargs)
    module = XrdClassifier(
        net,
        {"name": settings.arch, **settings.arch_kwargs},
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        label_smoothing=settings.label_smoothing,
        crystal_system_weights=class_weights(
            torch.as_tensor(train.crystal_system), N_CRYSTAL_SYSTEMS, settings.class_weight_power
        ),
        space_group_weights=class_weights(
            torch.as_tensor(train.space_group - 1), N_SPACE_GROUPS, settings.class_weight_power
        ),
    )
    key = run_key(asdict(settings), asdict(trainer), _fingerprint(*paths, peaks))
    return fit(module, data, stage_dir, trainer, key)


def rruff_split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the measured set used for fine-tuning, and the rows held out for evaluation.

    Args:
        count: Number of measured patterns.
        fraction: Share used for fine-tuning (the reference "soups" 50 %).
        seed: Seed of the permutation.
    """
    order = np.random.default_rng(seed).permutation(count)
    cut = round(fraction * count)
    return np.sort(order[:cut]), np.sort(order[cut:])


class MeasuredSet(NamedTuple):
    """Labelled measured patterns on the model grid."""

    patterns: np.ndarray
    crystal_system: np.ndarray
    space_group: np.ndarray

    def subset(self, rows: np.ndarray) -> MeasuredSet:
        """The given rows."""
        return MeasuredSet(self.patterns[rows], self.crystal_system[rows], self.space_group[rows])


def measured_set(path: Path | str) -> MeasuredSet:
    """Patterns of an ``.npz`` archive on the model grid, with their two labels."""
    patterns = read_patterns(path)
    grid = np.stack([to_grid(p)[0] for p in patterns])
    crystal_system = np.array([p.labels["crystal_system"] for p in patterns])
    space_group = np.array([p.labels["space_group"] for p in patterns])
    return MeasuredSet(grid, crystal_system, space_group)


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning on measured patterns (the ``xrd.finetune`` config block).

    Attributes:
        fraction: Share of the measured set used for fine-tuning; the rest is held out.
        validation_share: Share of the fine-tune part that validates (early model choice).
        lr: Learning rate.
        batch_size: Patterns per batch.
        calibration_folds: Cross-fitted calibration: the fine-tune part is cut into this many
            folds, each predicted by a fine-tune on the others, and the temperatures are fitted
            on all those out-of-fold predictions (0 or 1: on the validation rows only, a tenth
            of the part).
        abstain_precision: The model abstains below the space-group probability at which its
            answers on those same predictions are right this often
            (``threshold_for_precision``); 0: never abstains.
        abstain_min_answered: Fewest of those predictions the threshold may leave answered.
    """

    fraction: float = 0.5
    validation_share: float = 0.1
    lr: float = 3e-4
    batch_size: int = 32
    calibration_folds: int = 3
    abstain_precision: float = 0.8
    abstain_min_answered: int = 20


def _finetune_rows(
    checkpoint: Path | str,
    measured: MeasuredSet,
    stage_dir: Path | str,
    settings: FinetuneSettings,
    trainer: TrainerSettings,
    key: str,
) -> Path:
    """Fine-tune ``checkpoint`` on measured patterns; a seeded ``validation_share`` validates.

    Returns:
        The published checkpoint, ``<stage_dir>/models/best.ckpt`` (uncalibrated).
    """
    seed_run(trainer)
    count = len(measured.patterns)
    train_rows = np.setdiff1d(np.arange(count), validation_rows(count, settings, trainer.seed))
    data = MeasuredDataModule(*measured, train_rows, settings.batch_size, trainer.seed)
    module = load_classifier(checkpoint)
    module.hparams.lr = settings.lr
    module.train()
    return fit(module, data, stage_dir, trainer, key)


def validation_rows(count: int, settings: FinetuneSettings, seed: int) -> np.ndarray:
    """Rows (of ``count`` fine-tune patterns) that ``_finetune_rows`` validates on."""
    order = np.random.default_rng(seed + 1).permutation(count)
    return np.sort(order[: max(1, round(settings.validation_share * count))])


def _logits(checkpoint: Path | str, patterns: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    model = load_classifier(checkpoint)
    cs, sg = run_batched(model, model, patterns)
    return cs, sg


def crossfit_logits(
    checkpoint: Path | str,
    measured: MeasuredSet,
    stage_dir: Path | str,
    settings: FinetuneSettings,
    trainer: TrainerSettings,
    key: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-fold logits of every pattern: each fold is predicted by a fine-tune on the others.

    Fold runs live in ``<stage_dir>/crossfit/fold<k>``; folds are seeded by ``trainer.seed``.

    Returns:
        Crystal-system (N, 7) and space-group (N, 230) logits at temperature 1.
    """
    count = len(measured.patterns)
    cs_logits = torch.zeros(count, N_CRYSTAL_SYSTEMS)
    sg_logits = torch.zeros(count, N_SPACE_GROUPS)
    for k, fold in enumerate(crossfit_folds(count, settings.calibration_folds, trainer.seed)):
        tuned = _finetune_rows(
            checkpoint,
            measured.subset(np.setdiff1d(np.arange(count), fold)),
            crossfit_dir(stage_dir, k),
            settings,
            trainer,
            f"{key}-fold{k}",
        )
        cs_logits[fold], sg_logits[fold] = _logits(tuned, measured.patterns[fold])
    return cs_logits, sg_logits


def _abstention(
    p_space_group: np.ndarray,
    space_group: np.ndarray,
    settings: FinetuneSettings,
    unlike: np.ndarray | None = None,
) -> dict[str, Any]:
    """The threshold on the top space-group probability, and how the answers then fare.

    Patterns unlike every reference phase (``unlike``) are never answered (``predict`` holds
    them back), so they are left out of the choice.
    """
    right = p_space_group.argmax(1) + 1 == space_group
    confidence = p_space_group.max(1)
    candidates = np.ones(len(right), dtype=bool) if unlike is None else ~unlike
    threshold = _abstention_threshold(right[candidates], confidence[candidates], settings)
    answered = candidates & (confidence >= threshold)
    return {
        "abstain_below": threshold,
        "answered_share": float(answered.mean()),
        "answered_space_group_accuracy": float(right[answered].mean()) if answered.any() else None,
        "space_group_accuracy": float(right.mean()),
    }


def _abstention_threshold(
    correct: np.ndarray, confidence: np.ndarray, settings: FinetuneSettings
) -> float:
    """``threshold_for_precision`` at ``settings.abstain_precision``; 0 when that is 0."""
    if settings.abstain_precision <= 0:
        return 0.0
    return threshold_for_precision(
        correct, confidence, settings.abstain_precision, settings.abstain_min_answered
    )


def crossfit_folds(count: int, folds: int, seed: int) -> list[np.ndarray]:
    """The cross-fitting folds of ``count`` fine-tune rows (``crossfit_logits``), seeded."""
    return np.array_split(np.random.default_rng(seed + 2).permutation(count), folds)


def crossfit_dir(stage_dir: Path | str, fold: int) -> Path:
    """Stage folder of fold ``fold``'s fine-tune; its model is ``models/best.ckpt`` there."""
    return Path(stage_dir) / "crossfit" / f"fold{fold}"


def pipeline_probabilities(
    measured: MeasuredSet,
    stage_dir: Path | str,
    folds: int,
    seed: int,
    temperatures: tuple[float, float],
    references: References,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Out-of-fold space-group probabilities of every ``PIPELINES``, after ``crossfit_logits``.

    Each fold is predicted as ``nanoxtal xrd predict`` predicts: by the fine-tune on the other
    folds (at the fitted temperatures); with the other folds as its pattern library (searched
    with that model's representations); with the reference phases, their trust curve and
    unlike gate fitted on the other folds; or with both, the library first.

    Returns:
        Per pipeline name, the final space-group probabilities (N, 230); and which patterns
        are unlike every reference phase (N,).
    """
    count = len(measured.patterns)
    final = {name: np.zeros((count, N_SPACE_GROUPS)) for name in PIPELINES}
    unlike = np.zeros(count, dtype=bool)
    for k, fold in enumerate(crossfit_folds(count, folds, seed)):
        model = load_classifier(crossfit_dir(stage_dir, k) / "models" / "best.ckpt")
        model.temperature.copy_(torch.tensor(temperatures))
        other = measured.subset(np.setdiff1d(np.arange(count), fold))
        library = build_library(
            *other,
            embeddings=embed_patterns(model, other.patterns),
            model_fingerprint=model.fingerprint(),
        )
        patterns = measured.patterns[fold]
        p_cs, p_sg = (t.numpy() for t in run_batched(model, model.predict_proba, patterns))
        match = library.match(patterns, embed_patterns(model, patterns))
        _, with_library = library_probabilities(match, p_cs, p_sg)
        trusted = references.fit_trust(other.patterns, other.space_group)
        matches = trusted.match(patterns)
        final["library"][fold] = with_library
        final["references"][fold] = trusted.mix(matches, p_sg)
        final["library+references"][fold] = trusted.mix(matches, with_library)
        unlike[fold] = trusted.unlike(matches)
    return final, unlike


def finetune_classifier(
    checkpoint: Path | str,
    measured: Path | str,
    stage_dir: Path | str,
    settings: FinetuneSettings,
    trainer: TrainerSettings,
    references: References | None = None,
) -> Path:
    """Fine-tune a trained classifier on the fine-tune part of a labelled measured set.

    The held-out part (``rruff_split``) is never seen: validation comes from a further split of
    the fine-tune part. The probabilities are calibrated by temperature scaling on
    out-of-fold predictions of the whole fine-tune part (``crossfit_logits``; or on the
    validation rows alone), stored in the published checkpoint and
    ``<stage_dir>/calibration.json``, with the space-group probability below which the model
    abstains, chosen on the same predictions (``abstain_precision``). The split is written to
    ``<stage_dir>/split.json``, and the whole fine-tune part as a pattern library searched
    beside the model, with the fine-tuned model's representations of its patterns
    (``nanoxtal.xrd.library``), to ``<stage_dir>/library.npz``. With ``fraction`` 1 nothing is
    held out: the refit published for users once the held-out half has measured the method.

    With ``references`` (and cross-fitting), each way ``predict`` can move the model's answers
    (``PIPELINES``: a library, reference phases, both) gets its own threshold, chosen the same
    way on that pipeline's out-of-fold answers (``pipeline_probabilities``) and applied to its
    final space-group probability: the library and the references change answers and their
    confidence, so the model's own threshold does not carry over.

    Returns:
        The published fine-tuned checkpoint, ``<stage_dir>/models/best.ckpt``.
    """
    labelled = measured_set(measured)
    tune_rows, held_out = rruff_split(len(labelled.patterns), settings.fraction, trainer.seed)
    split = {
        "measured": str(measured),
        "seed": trainer.seed,
        "fraction": settings.fraction,
        "finetune_rows": tune_rows.tolist(),
        "held_out_rows": held_out.tolist(),
    }
    with atomic_write(Path(stage_dir) / "split.json") as partial:
        partial.write_text(json.dumps(split) + "\n")
    tune = labelled.subset(tune_rows)
    key = run_key(asdict(settings), asdict(trainer), _fingerprint(checkpoint, measured))
    published = _finetune_rows(checkpoint, tune, stage_dir, settings, trainer, key)
    model = load_classifier(published)
    build_library(
        *tune,
        embeddings=embed_patterns(model, tune.patterns),
        model_fingerprint=model.fingerprint(),
    ).save(Path(stage_dir) / "library.npz")
    if settings.calibration_folds > 1:
        rows = np.arange(len(tune_rows))
        logits = crossfit_logits(checkpoint, tune, stage_dir, settings, trainer, key)
        method = f"out-of-fold predictions of {settings.calibration_folds} cross-fitted fine-tunes"
    else:
        # Measured, never trained on, not held out.
        rows = validation_rows(len(tune_rows), settings, trainer.seed)
        logits = _logits(published, tune.patterns[rows])
        method = "the fine-tune validation rows"
    temperatures = (
        fit_temperature(logits[0], torch.as_tensor(tune.crystal_system[rows])),
        fit_temperature(logits[1], torch.as_tensor(tune.space_group[rows] - 1)),
    )
    p_space_group = torch.softmax(logits[1] / temperatures[1], 1).numpy()
    own = _abstention(p_space_group, tune.space_group[rows], settings)
    pipelines: dict[str, dict[str, Any]] = {}
    if references is not None and settings.calibration_folds > 1:
        final, unlike = pipeline_probabilities(
            tune, stage_dir, settings.calibration_folds, trainer.seed, temperatures, references
        )
        for name, p_final in final.items():
            gate = unlike if "references" in name else None
            pipelines[name] = _abstention(p_final, tune.space_group, settings, gate)
    thresholds = {name: chosen["abstain_below"] for name, chosen in pipelines.items()}
    store_calibration(published, temperatures, own["abstain_below"], thresholds)
    calibration = {
        "method": f"temperature scaling (Guo et al., ICML 2017) on {method}",
        "rows": tune_rows[rows].tolist(),
        "temperature_crystal_system": temperatures[0],
        "temperature_space_group": temperatures[1],
        "abstain_precision": settings.abstain_precision,
        **own,
    }
    if pipelines:
        calibration["pipelines"] = pipelines
    with atomic_write(Path(stage_dir) / "calibration.json") as partial:
        partial.write_text(json.dumps(calibration, indent=2) + "\n")
    return published
