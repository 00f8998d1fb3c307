from __future__ import annotations

import pytest
import torch

from nanoxtal.recipes.nets import RecipeTransformer, build_net

ARCH = {
    "name": "recipe_transformer",
    "token_features": 7,
    "context_features": 5,
    "shape_classes": 3,
    "width": 16,
    "heads": 2,
    "layers": 2,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only contend (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(size: int = 3, slots: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(size, slots, 7, generator=generator)
    roles = torch.randint(0, 6, (size, slots), generator=generator)
    padding = torch.zeros(size, slots, dtype=torch.bool)
    padding[0, 3:] = True  # recipe 0 has three reagents
    padding[1, 2:] = True  # recipe 1 has two
    context = torch.randn(size, 5, generator=generator)
    return tokens, roles, padding, context


def net() -> RecipeTransformer:
    torch.manual_seed(0)
    return build_net(ARCH).eval()


def test_output_shapes():
    size, logits = net()(*batch())
    assert size.shape == (3,) and logits.shape == (3, 3)
    assert torch.isfinite(size).all() and torch.isfinite(logits).all()


def test_outputs_do_not_depend_on_the_reagent_order():
    model = net()
    tokens, roles, padding, context = batch()
    order = torch.tensor([3, 0, 2, 1])  # moves recipe 0's padding slot to the front, too
    permuted = (tokens.clone(), roles.clone(), padding.clone())
    for array, original in zip(permuted, (tokens, roles, padding), strict=True):
        array[0] = original[0, order]
        array[2] = original[2, order.flip(0)]
    with torch.no_grad():
        expected = model(tokens, roles, padding, context)
        got = model(*permuted, context)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_padding_slots_change_nothing_whatever_they_hold():
    model = net()
    tokens, roles, padding, context = batch()
    extra = 3
    wider = (
        torch.cat([tokens, 100 * torch.randn(3, extra, 7)], dim=1),
        torch.cat([roles, torch.full((3, extra), 5)], dim=1),
        torch.cat([padding, torch.ones(3, extra, dtype=torch.bool)], dim=1),
    )
    with torch.no_grad():
        expected = model(tokens, roles, padding, context)
        got = model(*wider, context)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_build_net_round_trip():
    model = net()
    rebuilt = build_net(dict(ARCH)).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        for a, b in zip(model(*batch()), rebuilt(*batch()), strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="unknown architecture 'mlp'"):
        build_net({"name": "mlp"})
