from __future__ import annotations

import pytest
import torch

from nanoxtal.tem.nets import (
    ARCHITECTURES,
    OUTPUTS,
    UNet,
    build_net,
    inference_copy,
    macs_per_pixel,
)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        ({"width": 4, "depth": 2, "stem": 1}, (16, 24)),
        ({"width": 4, "depth": 2, "stem": 2}, (32, 48)),
        ({"width": 4, "depth": 3, "stem": 2}, (48, 16)),
        ({"width": 4, "depth": 1, "growth": 3, "stem": 1}, (2, 6)),
    ],
)
def test_unet_maps_keep_the_image_size(kwargs, size):
    net = UNet(**kwargs)
    assert all(side % net.multiple == 0 for side in size)
    maps = net(torch.rand(2, 1, *size))
    assert maps.shape == (2, len(OUTPUTS), *size)


def test_unet_rejects_sizes_that_do_not_divide():
    net = UNet(width=4, depth=2, stem=2)
    assert net.multiple == 8
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.rand(1, 1, 20, 16))
    with pytest.raises(ValueError, match=">= 1"):
        UNet(depth=0)


def test_build_net_round_trip():
    assert set(ARCHITECTURES) == {"unet"}
    net = build_net("unet", width=4, depth=2)
    state = net.state_dict()
    again = build_net("unet", width=4, depth=2)
    again.load_state_dict(state)
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(net.eval()(x), again.eval()(x))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_net("resnet")


def test_macs_per_pixel_counts_convolutions():
    # A plain one-level net: 3x3 convs 1->2, 2->2 (encoder, full res), 2->4, 4->4 (half res);
    # decoder: 1x1 4->2 at half res, 3x3 4->2, 2->2 at full res; head 1x1 2->3.
    net = UNet(width=2, depth=1, stem=1)
    full = 9 * (1 * 2 + 2 * 2) + 9 * (4 * 2 + 2 * 2) + 2 * 3
    half = 9 * (2 * 4 + 4 * 4) + 4 * 2
    assert macs_per_pixel(net, size=16) == pytest.approx(full + half / 4)
    assert net.training  # the probe leaves the mode alone
    default = macs_per_pixel(UNet())
    assert 5e3 < default < 2e4  # documented: 11.3 G multiply-adds per megapixel


def test_refinement_starts_as_identity_and_then_works_per_pixel():
    torch.manual_seed(0)
    net = UNet(width=4, depth=2, stem=2, refine=3)
    coarse = UNet(width=4, depth=2, stem=2)
    coarse.load_state_dict({k: v for k, v in net.state_dict().items() if "refine" not in k})
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), coarse.eval()(x))
        torch.nn.init.normal_(net.refine[-1].weight)
        assert not torch.allclose(net(x), coarse(x))
    with pytest.raises(ValueError, match="refine"):
        UNet(refine=-1)


@pytest.mark.parametrize("refine", [0, 4])
def test_inference_copy_matches_eval_and_leaves_the_net_alone(refine):
    net = UNet(width=4, depth=2, refine=refine)
    if refine:
        torch.nn.init.normal_(net.refine[-1].weight)
    # Non-trivial BatchNorm statistics, so that folding them in is actually tested.
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 1, 32, 32) * 3 + 1)
    fast = inference_copy(net)
    assert net.training and not fast.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net.eval()(x), atol=1e-5, rtol=1e-4)
