"""Recipes as sets of reagent tokens for the transformer, and the Lightning data around them.

A recipe becomes a variable-length set of reagent tokens (chemical descriptors of the resolved
reagent, an "unresolved" flag, log amount and the reagent's share of the recipe's total amount)
with each token's role, plus one context vector (process conditions and product composition,
as ``featurize``). The tokenizer standardises every feature with means and standard deviations
fitted on training recipes only (``RecipeTokenizer.fit``), so nothing about evaluation recipes
leaks into the inputs; missing values become 0 after standardisation, i.e. the training mean.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from nanoxtal.recipes.chemicals import (
    CHEMICAL_FEATURES,
    COMPOSITION_FEATURES,
    Registry,
    chemical_features,
)
from nanoxtal.recipes.clean import ROLES
from nanoxtal.recipes.featurize import PROCESS_FEATURES, process_features, product_features

TOKEN_FEATURES = (*CHEMICAL_FEATURES, "unresolved", "log1p_mmol", "amount_share")
CONTEXT_FEATURES = (*PROCESS_FEATURES, *(f"product_{f}" for f in COMPOSITION_FEATURES))


@dataclass(frozen=True)
class RecipeBatchArrays:
    """Model inputs of N recipes, reagent slots padded to T.

    Attributes:
        tokens: Standardised reagent features (N, T, ``TOKEN_FEATURES``), float32; 0 in padding.
        roles: Role index into ``ROLES`` (N, T), int64; 0 in padding.
        padding: True where a slot is padding (N, T), bool.
        context: Standardised process and product features (N, ``CONTEXT_FEATURES``), float32.
    """

    tokens: np.ndarray
    roles: np.ndarray
    padding: np.ndarray
    context: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, rows: np.ndarray) -> RecipeBatchArrays:
        """The recipes at positions ``rows`` (padding width unchanged)."""
        return RecipeBatchArrays(
            self.tokens[rows], self.roles[rows], self.padding[rows], self.context[rows]
        )

    def digest(self) -> bytes:
        """Bytes identifying the contents (for run keys)."""
        digest = hashlib.sha256()
        for array in (self.tokens, self.roles, self.padding, self.context):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.digest()


class RecipeTokenizer:
    """Turns tidy recipes into standardised reagent tokens and a context vector.

    Args:
        registry: Chemical registry resolving reagent names.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[str, np.ndarray] = {}
        self.token_mean: np.ndarray | None = None
        self.token_std: np.ndarray | None = None
        self.context_mean: np.ndarray | None = None
        self.context_std: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        """Whether the standardisation statistics are set."""
        return self.token_mean is not None

    def descriptors(self, name: str) -> np.ndarray:
        """``CHEMICAL_FEATURES`` of a reagent name and its unresolved flag (NaN when unknown)."""
        if name not in self._cache:
            chemical = self.registry.resolve(name)
            if chemical is None:
                values = np.append(np.full(len(CHEMICAL_FEATURES), np.nan), 1.0)
            else:
                values = np.append(chemical_features(chemical), 0.0)
            self._cache[name] = values
        return self._cache[name]

    def raw_tokens(self, row: pd.Series) -> np.ndarray:
        """Unstandardised token features of one recipe (reagents, ``TOKEN_FEATURES``)."""
        amounts = np.asarray(row["amounts_mmol"], dtype=float).reshape(-1)
        if len(amounts) == 0:
            return np.empty((0, len(TOKEN_FEATURES)))
        total = np.nansum(amounts)
        # Shares make recipes at different scales (0.1 vs 10 mmol batches) comparable.
        share = amounts / total if total > 0 else np.full(len(amounts), np.nan)
        described = np.stack([self.descriptors(name) for name in row["reagents"]])
        return np.column_stack([described, np.log1p(amounts), share])

    @staticmethod
    def raw_context(row: pd.Series) -> np.ndarray:
        """Unstandardised context features of one recipe (``CONTEXT_FEATURES``)."""
        return np.concatenate([process_features(row), product_features(row)])

    def fit(self, table: pd.DataFrame) -> RecipeTokenizer:
        """Fit the standardisation on training recipes only.

        Token statistics are taken over all reagent tokens of ``table``, context statistics
        over its recipes, each ignoring NaN. A feature that is constant (or absent) in training
        gets standard deviation 1 (and mean 0 when absent), so it maps to finite values.

        Returns:
            ``self``.
        """
        if len(table) == 0:
            raise ValueError("cannot fit the recipe tokenizer on an empty table")
        rows = [row for _, row in table.iterrows()]
        tokens = np.concatenate([self.raw_tokens(row) for row in rows])
        context = np.stack([self.raw_context(row) for row in rows])
        self.token_mean, self.token_std = _statistics(tokens)
        self.context_mean, self.context_std = _statistics(context)
        return self

    def transform(self, table: pd.DataFrame) -> RecipeBatchArrays:
        """Standardised inputs of ``table``'s recipes, padded to its most reagents.

        Raises:
            RuntimeError: The tokenizer is not fitted.
            ValueError: A role is not one of ``ROLES``.
        """
        if not self.fitted:
            raise RuntimeError("RecipeTokenizer.transform before fit (or from_state)")
        rows = [row for _, row in table.iterrows()]
        raw = [self.raw_tokens(row) for row in rows]
        width = max([1, *(len(t) for t in raw)])  # one slot at least: shapes stay defined
        tokens = np.zeros((len(rows), width, len(TOKEN_FEATURES)), dtype=np.float32)
        roles = np.zeros((len(rows), width), dtype=np.int64)
        padding = np.ones((len(rows), width), dtype=bool)
        for i, (row, values) in enumerate(zip(rows, raw, strict=True)):
            count = len(values)
            tokens[i, :count] = _standardise(values, self.token_mean, self.token_std)
            roles[i, :count] = [_role_index(role) for role in row["roles"]]
            padding[i, :count] = False
        context = np.zeros((len(rows), len(CONTEXT_FEATURES)), dtype=np.float32)
        if rows:
            context[:] = _standardise(
                np.stack([self.raw_context(row) for row in rows]),
                self.context_mean,
                self.context_std,
            )
        return RecipeBatchArrays(tokens, roles, padding, context)

    def state(self) -> dict[str, Any]:
        """The fitted statistics as plain lists (stored in model checkpoints' hparams)."""
        if not self.fitted:
            raise RuntimeError("RecipeTokenizer.state before fit")
        return {
            "token_features": list(TOKEN_FEATURES),
            "context_features": list(CONTEXT_FEATURES),
            "token_mean": self.token_mean.tolist(),
            "token_std": self.token_std.tolist(),
            "context_mean": self.context_mean.tolist(),
            "context_std": self.context_std.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], registry: Registry) -> RecipeTokenizer:
        """A fitted tokenizer from ``state()``.

        Raises:
            ValueError: The state was written for other features (code changed since).
        """
        if list(state["token_features"]) != list(TOKEN_FEATURES) or list(
            state["context_features"]
        ) != list(CONTEXT_FEATURES):
            raise ValueError("tokenizer state was fitted on other features than this code's")
        tokenizer = cls(registry)
        tokenizer.token_mean = np.asarray(state["token_mean"], dtype=float)
        tokenizer.token_std = np.asarray(state["token_std"], dtype=float)
        tokenizer.context_mean = np.asarray(state["context_mean"], dtype=float)
        tokenizer.context_std = np.asarray(state["context_std"], dtype=float)
        return tokenizer


def _statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column NaN-ignoring mean and std; 0 mean for empty columns, std 1 if not positive."""
    present = ~np.isnan(values)
    counts = present.sum(axis=0)
    filled = np.where(present, values, 0.0)
    mean = np.divide(filled.sum(axis=0), counts, out=np.zeros(values.shape[1]), where=counts > 0)
    deviation = np.where(present, values - mean, 0.0)
    variance = np.divide(
        (deviation**2).sum(axis=0), counts, out=np.zeros(values.shape[1]), where=counts > 0
    )
    std = np.sqrt(variance)
    return mean, np.where(std > 1e-12, std, 1.0)


def _standardise(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    # A missing value becomes the training mean (0): the network sees "nothing unusual" and
    # the unresolved flag / heating_rate_unknown carry the fact that it is missing.
    scaled = (values - mean) / std
    return np.where(np.isfinite(scaled), scaled, 0.0)


def _role_index(role: str) -> int:
    try:
        return ROLES.index(role)
    except ValueError:
        raise ValueError(f"unknown reagent role {role!r}; expected one of {ROLES}") from None


@dataclass(frozen=True)
class RecipeSplit:
    """Inputs and (optionally) targets of a set of recipes.

    Attributes:
        arrays: Tokenised recipes.
        size_nm: Mean sizes (N,), or ``None`` (prediction only).
        shape_class: Shape class indices (N,), or ``None``.
    """

    arrays: RecipeBatchArrays
    size_nm: np.ndarray | None = None
    shape_class: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("size_nm", "shape_class"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.arrays):
                raise ValueError(f"{name} has {len(values)} rows, the arrays {len(self.arrays)}")
        if self.size_nm is not None and not np.all(np.asarray(self.size_nm) > 0):
            raise ValueError("sizes must be positive and present (the loss is on log size)")

    def __len__(self) -> int:
        return len(self.arrays)

    @classmethod
    def from_table(
        cls, tokenizer: RecipeTokenizer, table: pd.DataFrame, labelled: bool = True
    ) -> RecipeSplit:
        """Tokenise ``table`` with a fitted tokenizer; targets from its columns if labelled."""
        arrays = tokenizer.transform(table)
        if not labelled:
            return cls(arrays)
        return cls(
            arrays,
            table["size_nm"].to_numpy(dtype=float),
            table["shape_class"].to_numpy(dtype=np.int64),
        )


class _RecipeDataset(Dataset):
    def __init__(self, split: RecipeSplit) -> None:
        arrays = split.arrays
        columns = {
            "tokens": (arrays.tokens, np.float32),
            "roles": (arrays.roles, np.int64),
            "padding": (arrays.padding, np.bool_),
            "context": (arrays.context, np.float32),
            "size_nm": (split.size_nm, np.float32),
            "shape_class": (split.shape_class, np.int64),
        }
        # Copies: arrays from pandas may be read-only, which torch tensors cannot share.
        self.tensors = {
            key: torch.from_numpy(np.array(values, dtype=dtype))
            for key, (values, dtype) in columns.items()
            if values is not None
        }

    def __len__(self) -> int:
        return len(self.tensors["tokens"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


class RecipeDataModule(pl.LightningDataModule):
    """Tokenised recipes for ``RecipeModel``.

    Batches are dicts with ``tokens``, ``roles``, ``padding``, ``context`` and, for labelled
    splits, ``size_nm`` and ``shape_class``.

    Args:
        train: Training recipes (labelled).
        val: Validation recipes (labelled), or ``None``.
        test: Test recipes (labelled), or ``None``.
        predict: Recipes to predict, or ``None``.
        batch_size: Recipes per batch.
        seed: Seed of the training shuffle.
    """

    def __init__(
        self,
        train: RecipeSplit,
        val: RecipeSplit | None = None,
        test: RecipeSplit | None = None,
        predict: RecipeSplit | None = None,
        batch_size: int = 64,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["train", "val", "test", "predict"])
        self.splits = {"train": train, "val": val, "test": test, "predict": predict}

    def _loader(self, name: str) -> DataLoader:
        split = self.splits[name]
        if split is None:
            raise ValueError(f"RecipeDataModule has no {name} split")
        shuffle = name == "train"
        return DataLoader(
            _RecipeDataset(split),
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            # Its own seeded generator: the order depends on the seed only, not on how many
            # random numbers were drawn before (e.g. by weight initialisation).
            generator=torch.Generator().manual_seed(self.hparams.seed) if shuffle else None,
            num_workers=0,  # small in-memory tensors: worker processes cost more than they save
        )

    def train_dataloader(self) -> DataLoader:
        """Training recipes, reshuffled every epoch."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Validation recipes, in order."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test recipes, in order."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Recipes to predict, in order."""
        return self._loader("predict")
