"""fastadv.random_init_: x_nat + U(-eps, eps), clamped; one Philox stream for all backends."""

import pytest
import torch

import fastadv
from fastadv import reference
from helpers import DTYPES, assert_ulp_close, step_ulps, to_layout


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def expected_start(x_adv, x_nat, seed_gen, eps, lower=0.0, upper=1.0):
    """The reference with the seed random_init_ draws from an identically seeded generator."""
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, generator=seed_gen)
    return reference.random_init(x_adv, x_nat, seed, eps, lower, upper).to(x_adv.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "transposed"])
def test_matches_reference_bit_for_bit(device_backend, dtype, layout):
    device, backend = device_backend
    x_nat = torch.rand(3, 3, 9, 7, generator=seeded(0)).to(device, dtype)
    x_adv = to_layout(torch.zeros_like(x_nat), layout)
    expected = expected_start(x_adv, x_nat, seeded(5), 8 / 255)
    fastadv.random_init_(x_adv, x_nat, eps=8 / 255, generator=seeded(5))
    # Every backend rounds eps*noise, then x_nat + it (no fma contraction): the same bits.
    assert_ulp_close(x_adv, expected, ulps=step_ulps(device, backend, dtype))


def test_inside_ball_and_range_and_uniform(device_backend):
    device, _ = device_backend
    x_nat = (0.2 + 0.7 * torch.rand(64, 3, 16, 16, generator=seeded(1))).to(device)  # in range
    eps = torch.linspace(0, 0.3, 64, device=device)
    lower = torch.tensor([0.0, 0.1, 0.2], device=device).view(3, 1, 1)
    x_adv = torch.empty_like(x_nat)
    fastadv.random_init_(x_adv, x_nat, eps=eps, lower=lower, upper=0.9, generator=seeded(2))
    e = eps.view(-1, 1, 1, 1)
    assert (x_adv >= torch.maximum(lower, x_nat - e)).all()
    assert (x_adv <= torch.clamp_max(x_nat + e, 0.9)).all()
    # Away from the box edges the noise is U(-eps, eps): mean ~0, variance eps^2 / 3.
    x_mid = torch.full((4096, 8), 0.5, device=device)
    start = fastadv.random_init_(torch.empty_like(x_mid), x_mid, eps=0.2, generator=seeded(3))
    noise = (start - 0.5).double()
    assert abs(noise.mean().item()) < 3 * 0.2 / (3 * noise.numel()) ** 0.5
    assert abs(noise.var().item() - 0.04 / 3) < 0.02 * 0.04 / 3
    assert noise.min().item() >= -0.2 and noise.max().item() < 0.2


def test_seeds(device_backend):
    device, _ = device_backend
    x_nat = torch.rand(4, 10, device=device)
    first = fastadv.random_init_(torch.empty_like(x_nat), x_nat, eps=0.1, generator=seeded(7))
    again = fastadv.random_init_(torch.empty_like(x_nat), x_nat, eps=0.1, generator=seeded(7))
    other = fastadv.random_init_(torch.empty_like(x_nat), x_nat, eps=0.1, generator=seeded(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    torch.manual_seed(0)
    default_a = fastadv.random_init_(torch.empty_like(x_nat), x_nat, eps=0.1)
    default_b = fastadv.random_init_(torch.empty_like(x_nat), x_nat, eps=0.1)
    assert not torch.equal(default_a, default_b)


def test_same_start_on_every_backend(monkeypatch):
    from fastadv import backends

    x_nat = torch.rand(2, 3, 5, 5, generator=seeded(0))
    starts = {}
    for name in backends.available("cpu"):
        monkeypatch.setenv("FASTADV_BACKEND", name)
        starts[name] = fastadv.random_init_(torch.empty_like(x_nat), x_nat, eps=0.1,
                                            generator=seeded(11))
    values = list(starts.values())
    assert all(torch.equal(values[0], v) for v in values[1:]), list(starts)
