from __future__ import annotations

import pytest
import torch

from nanoxtal.xrd.nets import NPCNN, XrdNet, build_net, multiply_adds


def test_npcnn_costs_what_the_paper_reports():
    # Salgado et al. 2023: about 175 M multiply-adds per 8,500-point pattern.
    assert 170e6 < multiply_adds(NPCNN()) < 180e6


def test_xrdnet_is_several_times_cheaper_and_has_both_heads():
    net = XrdNet()
    assert multiply_adds(net) < multiply_adds(NPCNN()) / 5
    cs, sg = net.eval()(torch.rand(3, 8500))
    assert cs.shape == (3, 7) and sg.shape == (3, 230)


def test_build_net_by_name():
    assert isinstance(build_net("xrdnet", width=8), XrdNet)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_net("resnet")


@pytest.mark.parametrize("net", [NPCNN(), XrdNet()], ids=["npcnn", "xrdnet"])
def test_new_networks_are_in_training_mode(net):
    # Lightning keeps submodules in the mode it finds them; an eval() left over from building
    # the net froze BatchNorm statistics and training learned nothing but class priors.
    assert all(module.training for module in net.modules())
