"""Barlow Twins against an independent loop computation, and its distributed gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from loss_helpers import randn, run_on_ranks

from workflow.pretrain.losses import BarlowTwinsLoss


def reference_barlow(za: np.ndarray, zb: np.ndarray, lam: float, scale: float = 1.0) -> float:
    """Zbontar et al. 2021 eq. (1)-(2) with BatchNorm1d(affine=False) standardisation, written with loops."""
    n, d = za.shape

    def standardise(z: np.ndarray) -> np.ndarray:
        out = np.empty_like(z, dtype=np.float64)
        for j in range(d):
            col = z[:, j].astype(np.float64)
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / n  # biased, as training-mode BN
            out[:, j] = (col - mean) / math.sqrt(var + 1e-5)
        return out

    a, b = standardise(za), standardise(zb)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c**2
    return scale * total


def test_affine_invariance() -> None:
    x = randn(32, 8)
    loss = BarlowTwinsLoss(gather_distributed=False)
    assert loss(x, x).loss.item() == pytest.approx(loss(x, 2 * x + 4).loss.item(), abs=1e-5)
    # A per-dimension affine map (different scale and shift per column) of either view.
    a, b = randn(8, seed=1).abs() + 0.5, randn(8, seed=2)
    y = randn(32, 8, seed=3)
    assert loss(x, y).loss.item() == pytest.approx(loss(x * a + b, y).loss.item(), abs=1e-5)


def test_identical_views_have_zero_on_diagonal() -> None:
    x = randn(64, 6)
    out = BarlowTwinsLoss(gather_distributed=False)(x, x)
    assert out.terms["on_diagonal"].item() == pytest.approx(0.0, abs=1e-8)  # C_ii = var / (var + eps)
    assert out.terms["off_diagonal"].item() > 0


def test_matches_loop_reference() -> None:
    za, zb = randn(6, 4, seed=4), randn(6, 4, seed=5)
    for lam, scale in ((5e-3, 1.0), (0.5, 1.0), (5e-3, 0.024)):
        got = BarlowTwinsLoss(lam, scale, gather_distributed=False)(za, zb).loss.item()
        assert got == pytest.approx(reference_barlow(za.numpy(), zb.numpy(), lam, scale), rel=1e-10)


def test_scale_and_lambda() -> None:
    za, zb = randn(16, 5, seed=6), randn(16, 5, seed=7)
    base = BarlowTwinsLoss(gather_distributed=False)(za, zb)
    on, off = base.terms["on_diagonal"].item(), base.terms["off_diagonal"].item()
    assert base.loss.item() == pytest.approx(on + 5e-3 * off)
    scaled = BarlowTwinsLoss(5e-3, scale=0.1, gather_distributed=False)(za, zb)
    assert scaled.loss.item() == pytest.approx(0.1 * base.loss.item(), rel=1e-12)
    heavy = BarlowTwinsLoss(1.0, gather_distributed=False)(za, zb)
    assert heavy.loss.item() == pytest.approx(on + off)
    assert not any(t.requires_grad for t in base.terms.values())


def test_invalid_arguments() -> None:
    for bad in (lambda: BarlowTwinsLoss(-1.0), lambda: BarlowTwinsLoss(scale=0.0)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        BarlowTwinsLoss()(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        BarlowTwinsLoss()(torch.zeros(1, 2), torch.zeros(1, 2))


def _rank_loss(rank: int, world: int, z0: torch.Tensor, z1: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
    n = z0.shape[0] // world
    a = z0[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    b = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = BarlowTwinsLoss(0.5, scale=0.3)(a, b).loss
    loss.backward()
    # DDP averages parameter gradients over ranks; do the same for the inputs' gradients.
    return loss.item(), (a.grad / world).numpy(), (b.grad / world).numpy()


def test_two_workers_match_one_process() -> None:
    """A 2-process gloo run on a split batch gives the loss and input gradients of one process."""
    z0, z1 = randn(8, 5, seed=20, dtype=torch.float32), randn(8, 5, seed=21, dtype=torch.float32)
    out = run_on_ranks(_rank_loss, 2, z0, z1)
    a, b = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
    full = BarlowTwinsLoss(0.5, scale=0.3, gather_distributed=False)(a, b).loss
    full.backward()
    for r in range(2):  # every rank computes the global loss
        assert out[r][0] == pytest.approx(full.item(), rel=1e-5)
    np.testing.assert_allclose(np.concatenate([out[r][1] for r in range(2)]), a.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([out[r][2] for r in range(2)]), b.grad.numpy(), rtol=1e-4, atol=1e-6)
