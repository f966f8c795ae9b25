"""VICReg against hand-made cases and a numpy reference, and its distributed gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from loss_helpers import randn, run_on_ranks

from workflow.pretrain.losses import VICRegLoss


def reference_vicreg(za: np.ndarray, zb: np.ndarray, lam: float = 25, mu: float = 25, nu: float = 1,
                     eps: float = 1e-4) -> tuple[float, float, float, float]:
    """Bardes et al. 2022 eq. (1)-(6) / facebookresearch/vicreg, in numpy (float64)."""
    za, zb = za.astype(np.float64), zb.astype(np.float64)
    d = za.shape[1]
    inv = float(np.mean((za - zb) ** 2))
    var = 0.5 * sum(float(np.mean(np.maximum(0, 1 - np.sqrt(z.var(axis=0, ddof=1) + eps)))) for z in (za, zb))
    cov = 0.0
    for z in (za, zb):
        c = np.cov(z, rowvar=False)  # 1/(N-1), centred
        cov += float((c**2).sum() - (np.diag(c) ** 2).sum()) / d
    return lam * inv + mu * var + nu * cov, inv, var, cov


def test_constant_batch() -> None:
    z = torch.full((4, 3), 2.0, dtype=torch.float64)
    out = VICRegLoss(gather_distributed=False)(z, z)
    assert out.terms["invariance"].item() == 0.0
    assert out.terms["variance"].item() == pytest.approx(1 - math.sqrt(1e-4))  # std = sqrt(0 + eps) = 0.01
    assert out.terms["covariance"].item() == 0.0
    assert out.loss.item() == pytest.approx(25 * 0.99)


def test_hand_made_terms() -> None:
    # Centred, orthogonal columns: no covariance; unbiased variance 4/3 > 1, so no variance penalty.
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    out = VICRegLoss(gather_distributed=False)(z, -z)
    assert out.terms["covariance"].item() == pytest.approx(0.0, abs=1e-15)
    assert out.terms["variance"].item() == 0.0
    assert out.terms["invariance"].item() == pytest.approx(4.0)  # mean (z - (-z))^2 = 4 z^2 = 4
    assert out.loss.item() == pytest.approx(100.0)
    assert VICRegLoss(gather_distributed=False)(z, z).terms["invariance"].item() == 0.0
    # Perfectly correlated columns [1, -1] twice: Cov = [[2, 2], [2, 2]], off-diagonal squares 8, / D = 4 per view.
    c = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert VICRegLoss(gather_distributed=False)(c, c).terms["covariance"].item() == pytest.approx(8.0)
    # Column std 0.5 (unbiased): variance term 1/2 [relu(1 - sqrt(0.25 + eps)) * 2] per view, as both views match.
    s = torch.tensor([[0.25 * math.sqrt(2)], [-0.25 * math.sqrt(2)]], dtype=torch.float64)
    assert VICRegLoss(gather_distributed=False)(s, s).terms["variance"].item() == pytest.approx(
        1 - math.sqrt(0.25 + 1e-4))


def test_matches_numpy_reference() -> None:
    za, zb = randn(12, 5, seed=10), 0.3 * randn(12, 5, seed=11)
    for params in ((25.0, 25.0, 1.0), (1.0, 2.0, 3.0)):
        out = VICRegLoss(*params, gather_distributed=False)(za, zb)
        loss, inv, var, cov = reference_vicreg(za.numpy(), zb.numpy(), *params)
        assert out.loss.item() == pytest.approx(loss, rel=1e-10)
        assert out.terms["invariance"].item() == pytest.approx(inv, rel=1e-10)
        assert out.terms["variance"].item() == pytest.approx(var, rel=1e-10)
        assert out.terms["covariance"].item() == pytest.approx(cov, rel=1e-10)
    assert var > 0  # the 0.3-scaled view is penalised, so the variance term was exercised


def test_invalid_arguments() -> None:
    for bad in (lambda: VICRegLoss(eps=0.0), lambda: VICRegLoss(mu_param=-1.0)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        VICRegLoss()(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        VICRegLoss()(torch.zeros(1, 2), torch.zeros(1, 2))


def _rank_loss(rank: int, world: int, z0: torch.Tensor, z1: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
    n = z0.shape[0] // world
    a = z0[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    b = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = VICRegLoss(1.0, 2.0, 3.0)(a, b).loss
    loss.backward()
    # DDP averages parameter gradients over ranks; do the same for the inputs' gradients.
    return loss.item(), (a.grad / world).numpy(), (b.grad / world).numpy()


def test_two_workers_match_one_process() -> None:
    """A 2-process gloo run on a split batch gives the loss and input gradients of one process."""
    z0, z1 = randn(8, 5, seed=20, dtype=torch.float32), randn(8, 5, seed=21, dtype=torch.float32)
    out = run_on_ranks(_rank_loss, 2, z0, z1)
    a, b = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
    full = VICRegLoss(1.0, 2.0, 3.0, gather_distributed=False)(a, b).loss
    full.backward()
    for r in range(2):  # every rank computes the global loss
        assert out[r][0] == pytest.approx(full.item(), rel=1e-5)
    np.testing.assert_allclose(np.concatenate([out[r][1] for r in range(2)]), a.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([out[r][2] for r in range(2)]), b.grad.numpy(), rtol=1e-4, atol=1e-6)
