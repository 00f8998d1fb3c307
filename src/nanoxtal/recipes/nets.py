"""The recipe network: a transformer over the set of reagent tokens with a context token.

Reagents carry no position: there is no positional encoding, attention is permutation
equivariant and the pooling is a masked mean, so the outputs do not depend on the order in
which a recipe lists its reagents (the sheet's column order is arbitrary). Each reagent token
is its projected descriptors plus a learned embedding of its role; the process and product
context is projected into one extra token that every reagent attends to and that attends to all
reagents.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nanoxtal.recipes.clean import ROLES


class RecipeTransformer(nn.Module):
    """Size regression and shape classification from reagent tokens and a context vector.

    The size head predicts the *standardised log size*, (log(size_nm) - mean) / std, with mean
    and std of the training recipes kept by the training module (``RecipeModel``): log because
    size errors are relative (1 nm matters at 3 nm, not at 80 nm), standardised so the head
    starts near the right scale.

    Args:
        token_features: Features per reagent token.
        context_features: Features of the context vector.
        shape_classes: Number of shape classes.
        roles: Number of reagent roles (``ROLES``).
        width: Model width.
        heads: Attention heads (must divide ``width``).
        layers: Encoder layers.
        dropout: Dropout in the encoder and the heads.
    """

    def __init__(
        self,
        token_features: int,
        context_features: int,
        shape_classes: int,
        roles: int = len(ROLES),
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.token_in = nn.Linear(token_features, width)
        self.role = nn.Embedding(roles, width)
        self.context_in = nn.Linear(context_features, width)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=2 * width,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,  # pre-norm trains stably without learning-rate warm-up
        )
        # No nested tensors: the same (padded) code path in training and evaluation.
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False
        )
        self.size_head = _head(2 * width, 1, dropout)
        self.shape_head = _head(2 * width, shape_classes, dropout)

    def forward(
        self,
        tokens: torch.Tensor,
        roles: torch.Tensor,
        padding: torch.Tensor,
        context: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict from a batch.

        Args:
            tokens: Reagent features (B, T, token_features).
            roles: Role indices (B, T).
            padding: True at padding slots (B, T).
            context: Context features (B, context_features).

        Returns:
            Standardised log size (B,) and shape logits (B, shape_classes).
        """
        reagents = self.token_in(tokens) + self.role(roles)
        sequence = torch.cat([self.context_in(context).unsqueeze(1), reagents], dim=1)
        # The context token is never padding, so no row is fully masked (which would give NaN).
        mask = torch.cat([padding.new_zeros(len(padding), 1), padding], dim=1)
        encoded = self.encoder(sequence, src_key_padding_mask=mask)
        keep = (~padding).unsqueeze(-1).to(encoded.dtype)
        mean = (encoded[:, 1:] * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        pooled = torch.cat([encoded[:, 0], mean], dim=1)
        return self.size_head(pooled).squeeze(-1), self.shape_head(pooled)


def _head(inputs: int, outputs: int, dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.Linear(inputs, inputs // 2),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(inputs // 2, outputs),
    )


ARCHITECTURES: dict[str, type[nn.Module]] = {"recipe_transformer": RecipeTransformer}


def build_net(arch: dict[str, Any]) -> nn.Module:
    """Instantiate a network from ``{"name": ..., **kwargs}`` (``ARCHITECTURES``).

    Raises:
        ValueError: Unknown name.
    """
    kwargs = dict(arch)
    name = kwargs.pop("name", None)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](**kwargs)
