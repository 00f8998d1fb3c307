"""Segmentation networks for TEM micrographs: a small U-Net predicting three per-pixel maps.

The output channels are, in order (``OUTPUTS``): the foreground logit, the distance logit
(``sigmoid`` gives the per-instance normalised distance of ``nanoxtal.tem.targets``) and the
boundary logit.

Speed: a U-Net's cost is dominated by its full-resolution level, where convolutions on few
channels use the CPU poorly. The default network therefore starts with a lossless
space-to-depth step (``stem=2``: every 2 × 2 block of pixels becomes 4 channels) and ends with
its inverse (pixel shuffle), so all convolutions run at half resolution or less while every
output pixel keeps its own prediction. ``macs_per_pixel`` counts the arithmetic: the default
(width 16, depth 4, stem 2) costs 11.3 G multiply-adds per megapixel.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Output channels of every segmentation network, in order.
OUTPUTS = ("foreground", "distance", "boundary")


def _double_conv(channels_in: int, channels_out: int) -> nn.Sequential:
    """Two 3 × 3 convolutions, each followed by BatchNorm and ReLU (bias is BatchNorm's)."""
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class _Up(nn.Module):
    """Decoder step: project, upsample ×2 bilinearly, concatenate the skip, double conv.

    Bilinear upsampling instead of a transposed convolution avoids checkerboard artefacts. The
    1 × 1 projection to the skip's width is applied *before* upsampling: both are linear and
    the bilinear weights sum to 1 (so the bias passes through), hence the result is the same as
    projecting afterwards, at a quarter of the cost.
    """

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels_in, channels_out, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv = _double_conv(2 * channels_out, channels_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` to ``skip``'s size and fuse the two."""
        return self.conv(torch.cat([self.up(self.project(x)), skip], dim=1))


class UNet(nn.Module):
    """U-Net (Ronneberger et al., MICCAI 2015) for per-pixel maps of grey-scale images.

    The image is first folded by space-to-depth (``stem`` × ``stem`` pixel blocks become
    channels; ``stem=1`` for a plain U-Net). Level ``k`` then has ``width · growth**k``
    channels at 1/(stem · 2**k) resolution: BatchNorm+ReLU double 3 × 3 convolutions, 2 × 2 max
    pooling down, bilinear upsampling up. The head predicts ``out_channels · stem²`` maps that
    the pixel shuffle unfolds to full resolution. Height and width must be multiples of
    ``stem · 2**depth`` (``multiple``; ``nanoxtal.tem.module.Segmenter.predict_maps`` pads).

    Args:
        in_channels: Input channels (1: grey-scale).
        out_channels: Output maps (3: ``OUTPUTS``).
        width: Channels of the first level.
        depth: Number of pooling steps (the bottleneck works at 1/(stem · 2**depth) resolution).
        growth: Channel multiplier from one level to the next.
        stem: Space-to-depth factor before the first level (1: none).
        refine: Channels of a full-resolution refinement (0: none). With a stem, outlines
            are predicted from features at 1/stem resolution; on 6-px particles
            (au_monolayer) they come out blocky. The refinement, two 3 × 3 convolutions
            on the unfolded maps and the image at full resolution, adds a residual
            correction so outlines can follow the image's edges pixel by pixel.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = len(OUTPUTS),
        width: int = 16,
        depth: int = 4,
        growth: int = 2,
        stem: int = 2,
        refine: int = 0,
    ) -> None:
        super().__init__()
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        if min(width, depth, growth, stem) < 1:
            raise ValueError(
                f"width, depth, growth and stem must be >= 1, got {width}, {depth}, {growth}, "
                f"{stem}"
            )
        self.depth, self.stem = depth, stem
        widths = [width * growth**level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            _double_conv(channels_in, channels_out)
            for channels_in, channels_out in zip(
                [in_channels * stem**2, *widths], widths, strict=False
            )
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            _Up(widths[level + 1], widths[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(width, out_channels * stem**2, 1)
        self.refine = (
            nn.Sequential(
                nn.Conv2d(in_channels + out_channels, refine, 3, padding=1, bias=False),
                nn.BatchNorm2d(refine),
                nn.ReLU(inplace=True),
                nn.Conv2d(refine, out_channels, 3, padding=1),
            )
            if refine
            else None
        )
        if self.refine is not None:
            # A zero last layer starts the refinement as the identity on the unfolded maps.
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this (``stem · 2**depth``)."""
        return self.stem * 2**self.depth

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Maps (B, out_channels, H, W) of images (B, in_channels, H, W)."""
        if image.shape[-2] % self.multiple or image.shape[-1] % self.multiple:
            raise ValueError(
                f"image size {tuple(image.shape[-2:])} is not a multiple of {self.multiple}"
            )
        skips = []
        x = nn.functional.pixel_unshuffle(image, self.stem)
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(x, skip)
        maps = nn.functional.pixel_shuffle(self.head(x), self.stem)
        if self.refine is None:
            return maps
        return maps + self.refine(torch.cat([maps, image], dim=1))


ARCHITECTURES: dict[str, type[nn.Module]] = {"unet": UNet}


def build_net(name: str, **kwargs: object) -> nn.Module:
    """Instantiate a network by name (``ARCHITECTURES``) with keyword arguments."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](**kwargs)


def inference_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` for fast CPU inference.

    The copy is in eval mode, with BatchNorm folded into the convolution before it and a
    channels-last memory layout.
    Folding removes one pass over every activation map, and oneDNN's convolutions are faster on
    channels-last tensors (on the development CPU together about 1.5× for the default U-Net).
    The outputs equal ``net.eval()``'s up to float rounding. ``net`` itself is left unchanged.
    """
    fused = copy.deepcopy(net).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[index] = fuse_conv_bn_eval(conv, norm)
                module[index + 1] = nn.Identity()
    return fused.to(memory_format=torch.channels_last)


def macs_per_pixel(net: nn.Module, size: int = 256, in_channels: int = 1) -> float:
    """Multiply-adds of a forward pass per input pixel (convolutions only).

    Counted on one ``size`` × ``size`` image with forward hooks; multiply by 1e6 for a
    megapixel (default U-Net: 11,264, i.e. 11.3 G multiply-adds per megapixel). BatchNorm,
    ReLU, pooling and upsampling (a few operations per activation) are left out: they are
    memory- rather than arithmetic-bound.

    Args:
        net: A network taking (1, in_channels, size, size) images.
        size: Side of the probe image (px); a multiple of the network's ``multiple``.
        in_channels: Channels of the probe image.
    """
    total = 0

    def count(module: nn.Conv2d, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * module.in_channels // module.groups * kernel

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, in_channels, size, size))
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return total / size**2
