"""The EMA target network of BYOL and DINO: momentum schedule and update."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from workflow.pretrain.ema import byol_tau, ema_update


def test_byol_tau_schedule() -> None:
    assert byol_tau(0, 101) == pytest.approx(0.996)
    assert byol_tau(100, 101) == 1.0
    assert byol_tau(50, 101) == pytest.approx(0.998)
    assert byol_tau(500, 101) == 1.0
    assert byol_tau(0, 11, base=0.99, final=0.999) == pytest.approx(0.99)
    taus = [byol_tau(s, 20) for s in range(20)]
    assert all(a <= b for a, b in itertools.pairwise(taus))
    with pytest.raises(ValueError):
        byol_tau(0, 0)
    with pytest.raises(ValueError):
        byol_tau(-1, 10)


def test_ema_update() -> None:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online(torch.randn(8, 3))  # moves the running statistics
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    before = [p.clone() for p in target.parameters()]
    ema_update(online, target, 1.0)
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), before, strict=True))
    # The target keeps its own running statistics (those of its forward passes), not the online network's.
    assert torch.equal(target[1].running_mean, torch.zeros(4)) and torch.equal(target[1].running_var, torch.ones(4))
    ema_update(online, target, 0.25)
    for p, o, b in zip(target.parameters(), online.parameters(), before, strict=True):
        torch.testing.assert_close(p, 0.25 * b + 0.75 * o)
    ema_update(online, target, 0.0)
    assert all(torch.equal(p, o) for p, o in zip(target.parameters(), online.parameters(), strict=True))
    assert all(p.requires_grad and p.grad is None for p in target.parameters())  # untouched by autograd
    with pytest.raises(ValueError):
        ema_update(online, target, 1.5)
    with pytest.raises(ValueError):
        ema_update(online, nn.Linear(3, 4), 0.5)
