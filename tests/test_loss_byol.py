"""BYOL's loss against 2 - 2 cos written out, and its stop-gradient."""

from __future__ import annotations

import pytest
import torch
from loss_helpers import randn

from workflow.pretrain.losses import BYOLLoss


def test_byol_loss_values() -> None:
    p = randn(8, 4)
    loss = BYOLLoss()
    assert loss(p, 3 * p, p, p).loss.item() == pytest.approx(0.0, abs=1e-12)  # same direction
    e0, e1 = torch.eye(2, dtype=torch.float64)
    a, b = e0.expand(5, 2), e1.expand(5, 2)
    out = loss(a, b, b, a)
    assert out.loss.item() == pytest.approx(2.0) and out.terms["cosine"].item() == pytest.approx(0.0)
    assert loss(a, -a, a, a).loss.item() == pytest.approx(2.0)  # (4 + 0) / 2
    # Against 2 - 2 cos written out, and stop-gradient on the targets.
    p0, z1, p1, z0 = (randn(6, 3, seed=s).requires_grad_(True) for s in range(4))
    out = loss(p0, z1, p1, z0)
    cos = lambda u, v: (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))  # noqa: E731
    expected = ((2 - 2 * cos(p0, z1)) + (2 - 2 * cos(p1, z0))).mean() / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    out.loss.backward()
    assert z0.grad is None and z1.grad is None and p0.grad is not None and p1.grad is not None


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        BYOLLoss()(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(3, 2), torch.zeros(3, 2))
