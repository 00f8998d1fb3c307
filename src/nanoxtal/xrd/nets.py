"""Networks that map a powder pattern (8,500 points) to crystal-system and space-group logits.

Both are plain ``nn.Module``s returning ``(crystal_system_logits, space_group_logits)``; the
LightningModule in ``module.py`` is the training system around them.

- ``NPCNN``: the no-pooling CNN of Salgado et al., npj Comput. Mater. 9, 214 (2023): three
  strided convolutions (80 channels, kernels 100/50/25, strides 5/5/2, ReLU, dropout 0.3), then
  dense layers 2300 → 1150 → classes; about 173 M multiply-adds per pattern. Here one trunk
  feeds two output layers (crystal system, space group) instead of training two networks.
- ``XrdNet``: ours. Peak *positions* carry the symmetry, so like NPCNN it never pools positions
  away, but it reaches a wide receptive field cheaply: a strided stem, then residual blocks of
  depthwise (per-channel, wide kernel) and pointwise convolutions that halve the length while
  widening the channels, and a flattened, channel-reduced map into the heads. About 10x fewer
  multiply-adds than NPCNN at the default width.
"""

from __future__ import annotations

import torch
from torch import nn

PATTERN_POINTS = 8500
N_CRYSTAL_SYSTEMS = 7
N_SPACE_GROUPS = 230


class NPCNN(nn.Module):
    """No-pooling CNN (Salgado et al. 2023), with a crystal-system and a space-group output."""

    def __init__(self, points: int = PATTERN_POINTS, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 80, kernel_size=100, stride=5),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv1d(80, 80, kernel_size=50, stride=5),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv1d(80, 80, kernel_size=25, stride=2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, points)).shape[1]
        self.dense = nn.Sequential(
            nn.Linear(flat, 2300),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(2300, 1150),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.crystal_system = nn.Linear(1150, N_CRYSTAL_SYSTEMS)
        self.space_group = nn.Linear(1150, N_SPACE_GROUPS)

    def embed(self, pattern: torch.Tensor) -> torch.Tensor:
        """The representation both heads read (B, hidden), for a batch of patterns (B, points)."""
        return self.dense(self.features(pattern[:, None, :]))

    def forward(self, pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for a batch of patterns (B, points)."""
        hidden = self.embed(pattern)
        return self.crystal_system(hidden), self.space_group(hidden)


class _SeparableBlock(nn.Module):
    """Residual block: depthwise conv (wide kernel) + pointwise conv, optional downsampling."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels_in, channels_in, kernel, stride, kernel // 2, groups=channels_in),
            nn.BatchNorm1d(channels_in),
            nn.GELU(),
            nn.Conv1d(channels_in, channels_out, 1),
            nn.BatchNorm1d(channels_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and channels_in == channels_out
            else nn.Sequential(
                nn.Conv1d(channels_in, channels_out, 1, stride), nn.BatchNorm1d(channels_out)
            )
        )
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update."""
        return self.activation(self.body(x) + self.skip(x))


class XrdNet(nn.Module):
    """Our classifier: strided stem, separable residual stages, no pooling, two heads.

    Args:
        points: Pattern length.
        width: Channels after the stem; stages use 1x, 2x, 3x, 4x, 4x this.
        kernel: Depthwise kernel size (grid points at the stage's resolution).
        reduced: Channels of the map flattened into the heads.
        hidden: Width of the hidden dense layer.
        dropout: Dropout before the dense layers.
    """

    def __init__(
        self,
        points: int = PATTERN_POINTS,
        width: int = 32,
        kernel: int = 9,
        reduced: int = 16,
        hidden: int = 512,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        widths = [width, 2 * width, 3 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = [
            nn.Conv1d(1, width, kernel_size=16, stride=4, padding=6),
            nn.BatchNorm1d(width),
            nn.GELU(),
        ]
        channels = width
        for stage_width in widths:
            layers.append(_SeparableBlock(channels, stage_width, kernel, stride=2))
            layers.append(_SeparableBlock(stage_width, stage_width, kernel, stride=1))
            channels = stage_width
        layers += [nn.Conv1d(channels, reduced, 1), nn.GELU(), nn.Flatten(), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        # Eval mode for the one-sample shape probe (BatchNorm), then back to training mode:
        # Lightning keeps submodules in the mode it finds them, so a stray eval() here would
        # freeze BatchNorm statistics for the whole training run.
        with torch.no_grad():
            flat = self.features.eval()(torch.zeros(1, 1, points)).shape[1]
        self.features.train()
        self.dense = nn.Sequential(nn.Linear(flat, hidden), nn.GELU(), nn.Dropout(dropout))
        self.crystal_system = nn.Linear(hidden, N_CRYSTAL_SYSTEMS)
        self.space_group = nn.Linear(hidden, N_SPACE_GROUPS)

    def embed(self, pattern: torch.Tensor) -> torch.Tensor:
        """The representation both heads read (B, hidden), for a batch of patterns (B, points)."""
        return self.dense(self.features(pattern[:, None, :]))

    def forward(self, pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for a batch of patterns (B, points)."""
        hidden = self.embed(pattern)
        return self.crystal_system(hidden), self.space_group(hidden)


ARCHITECTURES: dict[str, type[nn.Module]] = {"npcnn": NPCNN, "xrdnet": XrdNet}


def build_net(name: str, **kwargs: object) -> nn.Module:
    """Instantiate a network by name (``ARCHITECTURES``) with keyword arguments."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](**kwargs)


def multiply_adds(net: nn.Module, points: int = PATTERN_POINTS) -> int:
    """Multiply-adds of one forward pass on one pattern (convolutions and linear layers)."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv1d):
            per_output = module.in_channels // module.groups * module.kernel_size[0]
            total += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [
        m.register_forward_hook(count)
        for m in net.modules()
        if isinstance(m, nn.Conv1d | nn.Linear)
    ]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, points))
    net.train(was_training)
    for hook in hooks:
        hook.remove()
    return total
