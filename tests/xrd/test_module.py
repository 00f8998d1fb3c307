from __future__ import annotations

import pytest
import torch

from nanoxtal.xrd.module import XrdClassifier, fit_temperature
from nanoxtal.xrd.nets import build_net


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
