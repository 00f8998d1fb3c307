"""Ensembles of recipe transformers: cross-validated predictions with a size uncertainty.

Every training set (an outer fold's training part, or the whole table for the final model) is
split again into ``members`` inner folds; member m trains on all inner folds but m and keeps its
best epoch by the loss on inner fold m. The members' spread gives an uncertainty: predicted size
= mean of the members' sizes, uncertainty = their standard deviation; the shape is the argmax of
the members' mean probabilities. Each member fits its own tokenizer (standardisation) on its own
training recipes only.

Augmented recipes (chemically equivalent rewrites, column ``source_id`` = the recipe they were
derived from) only ever join a member's *training* recipes, and only when their source is one of
them: never validation, never an outer test fold, so no rewrite of an evaluated recipe is
trained on.

Layout under ``work_dir`` (one ``nanoxtal.train`` stage folder per member)::

    <protocol>/<fold>/member<m>/{logs,checkpoints,models}   cross_validate_transformer
    member<m>/{logs,checkpoints,models}                     fit_final

Each member's ``models/best.ckpt`` holds its weights, its ``arch``, the log-size statistics and
the fitted tokenizer's statistics (hparams), so ``load_recipe_model`` and ``predict_ensemble``
need nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupKFold

from nanoxtal.recipes.chemicals import Registry
from nanoxtal.recipes.evaluate import folds
from nanoxtal.recipes.module import RecipeModel, load_recipe_model, log_size_statistics
from nanoxtal.recipes.nets import build_net
from nanoxtal.recipes.sequence import (
    CONTEXT_FEATURES,
    TOKEN_FEATURES,
    RecipeDataModule,
    RecipeSplit,
    RecipeTokenizer,
)
from nanoxtal.train import TrainerSettings, fit, run_key, seed_run

ARCH_DEFAULTS = {"width": 64, "heads": 4, "layers": 2, "dropout": 0.1}
# Share of the groups held out for validation when an "ensemble" has one member.
SINGLE_MEMBER_VALIDATION = 0.2
PREDICTION_COLUMNS = (
    "recipe_id",
    "predicted_size_nm",
    "predicted_size_std_nm",
    "predicted_shape_class",
    "shape_confidence",
)


@dataclass(frozen=True)
class EnsemblePlan:
    """How each member is trained (shared by cross-validation and the final model).

    Attributes:
        shape_classes: Number of shape classes (the length of the shape-class file, so a class
            absent from the data still has an output).
        members: Members (= inner folds); 1 trains one model with a 20 % validation hold-out.
        epochs: Training epochs per member (the best by validation loss is kept).
        batch_size: Recipes per batch.
        arch: Network keyword arguments overriding ``ARCH_DEFAULTS`` (width, heads, ...).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        shape_weight: Weight of the shape loss against the size loss.
        trainer: Run settings (accelerator, precision, ...); ``max_epochs``, ``seed``,
            ``monitor``/``mode`` and the device count are set per member.
    """

    shape_classes: int
    members: int = 3
    epochs: int = 40
    batch_size: int = 64
    arch: Mapping[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    shape_weight: float = 1.0
    trainer: TrainerSettings = field(default_factory=TrainerSettings)

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        unknown = set(self.arch) - set(ARCH_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown network settings {sorted(unknown)}; known: {ARCH_DEFAULTS}")

    def net_arch(self) -> dict[str, Any]:
        """The ``build_net`` description of every member's network."""
        return {
            "name": "recipe_transformer",
            "token_features": len(TOKEN_FEATURES),
            "context_features": len(CONTEXT_FEATURES),
            "shape_classes": self.shape_classes,
            **ARCH_DEFAULTS,
            **dict(self.arch),
        }

    def settings(self, member: int, seed: int, train_size: int) -> TrainerSettings:
        """Trainer settings of one member."""
        batches = max(1, -(-train_size // self.batch_size))
        return replace(
            self.trainer,
            max_epochs=self.epochs,
            seed=seed + member,  # distinct initialisations: part of the members' diversity
            monitor="val_loss",
            mode="min",
            # Tiny models: one device each (DDP would relaunch this process per device).
            devices=1,
            num_nodes=1,
            strategy="auto",
            log_every_n_steps=max(1, min(self.trainer.log_every_n_steps, batches)),
        )


def inner_parts(
    train: pd.DataFrame,
    members: int,
    seed: int,
    augmented: pd.DataFrame | None = None,
    groups: np.ndarray | None = None,
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """The (training, validation) recipes of each member.

    Args:
        train: Training recipes (no augmented rows).
        members: Inner folds; 1 holds out 20 % of the groups once.
        seed: Seed of the group assignment.
        augmented: Augmented recipes (``source_id`` column), or ``None``.
        groups: Group label per row of ``train`` kept on one side (e.g. DOIs); ``None``: each
            recipe its own group.

    Returns:
        Per member: training recipes (with the augmented rewrites of those recipes appended)
        and validation recipes (original recipes only).

    Raises:
        ValueError: Fewer groups than the split needs.
    """
    labels = np.asarray(train["recipe_id"] if groups is None else groups)
    unique = np.random.default_rng(seed).permutation(np.unique(labels))
    needed = max(2, members)
    if len(unique) < needed:
        raise ValueError(
            f"{len(unique)} recipe groups cannot be split into {members} member(s)' "
            "training and validation parts"
        )
    codes = {label: i for i, label in enumerate(unique)}
    coded = np.array([codes[label] for label in labels])
    rows = np.arange(len(train))
    if members == 1:
        held = max(1, round(SINGLE_MEMBER_VALIDATION * len(unique)))
        validation = np.isin(coded, np.arange(held))
        splits = [(rows[~validation], rows[validation])]
    else:
        # Group labels are shuffled by the seed (as in ``evaluate.folds``), so the assignment
        # does not depend on their spelling.
        splits = list(GroupKFold(n_splits=members).split(rows, groups=coded))
    parts = []
    for fit_rows, val_rows in splits:
        fitted = train.iloc[fit_rows]
        if augmented is not None and len(augmented):
            sources = set(fitted["recipe_id"])
            rewrites = augmented[augmented["source_id"].isin(sources)]
            fitted = pd.concat([fitted, rewrites.drop(columns="source_id")], ignore_index=True)
        parts.append((fitted.reset_index(drop=True), train.iloc[val_rows].reset_index(drop=True)))
    return parts


def _digest(*splits: RecipeSplit) -> str:
    digest = hashlib.sha256()
    for split in splits:
        digest.update(split.arrays.digest())
        for target in (split.size_nm, split.shape_class):
            digest.update(np.ascontiguousarray(target).tobytes())
    return digest.hexdigest()


def train_member(
    train: pd.DataFrame,
    val: pd.DataFrame,
    stage_dir: Path | str,
    plan: EnsemblePlan,
    registry: Registry,
    member: int,
    seed: int,
    label: Sequence[str] = (),
) -> Path:
    """Train one member: tokenizer and log-size statistics from ``train`` only.

    Args:
        train: Training recipes (augmented rewrites included).
        val: Validation recipes (choose the best epoch).
        stage_dir: The member's stage folder.
        plan: How to train.
        registry: Chemical registry.
        member: Member index (offsets the seed).
        seed: Base seed.
        label: Names making the run key distinct (protocol, fold, ...).

    Returns:
        The published best checkpoint, ``<stage_dir>/models/best.ckpt``.
    """
    tokenizer = RecipeTokenizer(registry).fit(train)
    train_split = RecipeSplit.from_table(tokenizer, train)
    val_split = RecipeSplit.from_table(tokenizer, val)
    log_mean, log_std = log_size_statistics(train_split.size_nm)
    arch = plan.net_arch()
    settings = plan.settings(member, seed, len(train))
    hyper = {
        "lr": plan.lr,
        "weight_decay": plan.weight_decay,
        "shape_weight": plan.shape_weight,
        "batch_size": plan.batch_size,
    }
    key = run_key(
        list(label), member, arch, hyper, asdict(settings), _digest(train_split, val_split)
    )
    # Weights are drawn when the network is built: seed first, so the member reproduces.
    seed_run(settings)
    module = RecipeModel(
        build_net(arch),
        arch,
        lr=plan.lr,
        weight_decay=plan.weight_decay,
        shape_weight=plan.shape_weight,
        log_size_mean=log_mean,
        log_size_std=log_std,
        tokenizer=tokenizer.state(),
    )
    datamodule = RecipeDataModule(
        train_split, val_split, batch_size=plan.batch_size, seed=settings.seed
    )
    return fit(module, datamodule, stage_dir, settings, key)


def fit_ensemble(
    train: pd.DataFrame,
    work_dir: Path | str,
    plan: EnsemblePlan,
    registry: Registry,
    seed: int,
    augmented: pd.DataFrame | None = None,
    groups: np.ndarray | None = None,
    label: Sequence[str] = (),
) -> list[Path]:
    """Train the members of one ensemble on ``train`` (see ``inner_parts``).

    Returns:
        The members' best checkpoints (``<work_dir>/member<m>/models/best.ckpt``).
    """
    parts = inner_parts(train, plan.members, seed, augmented, groups)
    return [
        train_member(
            fitted,
            validation,
            Path(work_dir) / f"member{m}",
            plan,
            registry,
            m,
            seed,
            [*label, f"member{m}"],
        )
        for m, (fitted, validation) in enumerate(parts)
    ]


@torch.no_grad()
def member_predictions(
    model: RecipeModel, table: pd.DataFrame, registry: Registry, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Sizes (nm, N) and shape probabilities (N, classes) of one model, tokenised its way."""
    state = model.hparams.get("tokenizer")
    if state is None:
        raise ValueError("the model holds no tokenizer statistics (hparams.tokenizer)")
    tokenizer = RecipeTokenizer.from_state(state, registry)
    arrays = tokenizer.transform(table)
    model.eval()
    device = model.device
    sizes, probabilities = [], []
    for start in range(0, len(arrays), batch_size):
        part = arrays.subset(np.arange(start, min(start + batch_size, len(arrays))))
        batch = {
            "tokens": torch.as_tensor(part.tokens, device=device),
            "roles": torch.as_tensor(part.roles, device=device),
            "padding": torch.as_tensor(part.padding, device=device),
            "context": torch.as_tensor(part.context, device=device),
        }
        out = model.predict_step(batch)
        sizes.append(out["size_nm"].double().cpu().numpy())
        probabilities.append(out["shape_probabilities"].double().cpu().numpy())
    return np.concatenate(sizes), np.concatenate(probabilities)


def predict_ensemble(
    models: Sequence[RecipeModel | Path | str],
    table: pd.DataFrame,
    registry: Registry | None = None,
) -> pd.DataFrame:
    """Ensemble predictions for tidy recipes (targets not needed).

    Args:
        models: Members, loaded or as checkpoint paths.
        table: Recipes (``recipe_id`` and the input columns).
        registry: Chemical registry; default the package's.

    Returns:
        ``PREDICTION_COLUMNS``: mean size over members (nm), the members' standard deviation
        (nm, population std; 0 for one member), the argmax of the mean shape probabilities and
        that mean probability.
    """
    if len(table) == 0:
        return pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    registry = registry or Registry()
    sizes, probabilities = [], []
    for model in models:
        loaded = model if isinstance(model, RecipeModel) else load_recipe_model(model)
        size, probability = member_predictions(loaded, table, registry)
        sizes.append(size)
        probabilities.append(probability)
    size = np.stack(sizes)  # (members, N)
    mean_probability = np.mean(probabilities, axis=0)  # (N, classes)
    return pd.DataFrame(
        {
            "recipe_id": table["recipe_id"].to_numpy(),
            "predicted_size_nm": size.mean(axis=0),
            "predicted_size_std_nm": size.std(axis=0),
            "predicted_shape_class": mean_probability.argmax(axis=1),
            "shape_confidence": mean_probability.max(axis=1),
        }
    )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads within a block.

    The members are small, and threads beyond the cores granted to the job spin against each
    other (tens of times slower when the machine is busy).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_augmented(augmented: pd.DataFrame | None) -> None:
    if augmented is not None and "source_id" not in augmented.columns:
        raise ValueError("the augmented table needs a source_id column")


def cross_validate_transformer(
    table: pd.DataFrame,
    protocol: str,
    work_dir: Path | str,
    plan: EnsemblePlan,
    k: int = 5,
    seed: int = 42,
    products: Sequence[str] = (),
    registry: Registry | None = None,
    augmented: pd.DataFrame | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Out-of-fold predictions of transformer ensembles under one protocol.

    The outer folds are ``evaluate.folds`` (the tree baselines' folds). Inner folds are grouped
    by DOI under the ``doi`` protocol, so the epoch is chosen on unseen papers as the outer
    test is; otherwise by recipe.

    Args:
        table: Tidy recipes.
        protocol: ``random``, ``doi`` or ``product``.
        work_dir: Folder of the members' runs.
        plan: How each member is trained.
        k: Outer folds (``random``, ``doi``).
        seed: Seed of the folds, inner folds, initialisation and shuffling.
        products: Held-out products (``product`` protocol).
        registry: Chemical registry; default the package's.
        augmented: Augmented training recipes with ``source_id``, or ``None``.
        threads: torch intra-op threads while training on CPU (``None``: torch's default).

    Returns:
        One row per test prediction: the columns of ``evaluate.cross_validate`` (``recipe_id``,
        ``fold``, ``size_nm``, ``predicted_size_nm``, ``shape_class``,
        ``predicted_shape_class``) and ``predicted_size_std_nm``, ``shape_confidence``.
    """
    _check_augmented(augmented)
    registry = registry or Registry()
    table = table.reset_index(drop=True)
    parts = []
    with _torch_threads(threads):
        for fold in folds(table, protocol, k, seed, products):
            train = table.iloc[fold.train].reset_index(drop=True)
            test = table.iloc[fold.test].reset_index(drop=True)
            groups = train["doi"].to_numpy() if protocol == "doi" else None
            checkpoints = fit_ensemble(
                train,
                Path(work_dir) / protocol / fold.name,
                plan,
                registry,
                seed,
                augmented,
                groups,
                label=[protocol, fold.name],
            )
            predicted = predict_ensemble(checkpoints, test, registry)
            parts.append(
                pd.DataFrame(
                    {
                        "recipe_id": test["recipe_id"].to_numpy(),
                        "fold": fold.name,
                        "size_nm": test["size_nm"].to_numpy(dtype=float),
                        "predicted_size_nm": predicted["predicted_size_nm"].to_numpy(),
                        "shape_class": test["shape_class"].to_numpy(),
                        "predicted_shape_class": predicted["predicted_shape_class"].to_numpy(),
                        "predicted_size_std_nm": predicted["predicted_size_std_nm"].to_numpy(),
                        "shape_confidence": predicted["shape_confidence"].to_numpy(),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def fit_final(
    table: pd.DataFrame,
    work_dir: Path | str,
    plan: EnsemblePlan,
    seed: int = 42,
    registry: Registry | None = None,
    augmented: pd.DataFrame | None = None,
    group_by_doi: bool = False,
    threads: int | None = None,
) -> list[Path]:
    """Train the ensemble used for new recipes on a whole table.

    Same members as in ``cross_validate_transformer`` (each validates on its inner fold), so
    predictions come with the same uncertainty (``predict_ensemble``).

    Args:
        table: Tidy recipes (all of them train some member).
        work_dir: Folder of the members' runs.
        seed: Seed of the inner folds, initialisation and shuffling.
        registry: Chemical registry; default the package's.
        augmented: Augmented training recipes with ``source_id``, or ``None``.
        plan: How each member is trained.
        group_by_doi: Inner folds grouped by DOI (epochs chosen on unseen papers).
        threads: torch intra-op threads while training on CPU (``None``: torch's default).

    Returns:
        The members' checkpoints, ``<work_dir>/member<m>/models/best.ckpt``: each
        ``load_recipe_model`` reads it with its tokenizer statistics (``hparams.tokenizer``).
    """
    _check_augmented(augmented)
    registry = registry or Registry()
    table = table.reset_index(drop=True)
    groups = table["doi"].to_numpy() if group_by_doi else None
    with _torch_threads(threads):
        return fit_ensemble(table, work_dir, plan, registry, seed, augmented, groups, ["final"])
