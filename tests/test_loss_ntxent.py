"""NT-Xent (SimCLR) against independent computations, and its distributed gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_helpers import randn, run_on_ranks

from workflow.pretrain.losses import LossTerms, NTXentLoss


def reference_ntxent(z0: np.ndarray, z1: np.ndarray, tau: float) -> float:
    """Chen et al. 2020, eq. (1), written out with explicit loops over the 2N views."""
    z = np.concatenate([z0, z1]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z0)
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        denom = sum(math.exp(z[i] @ z[k] / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / tau) / denom)
    return total / (2 * n)


def test_perfectly_correlated_views_give_log_2n_minus_1() -> None:
    for n in (2, 5, 16):
        z = torch.ones(n, 8)
        assert NTXentLoss(0.5)(z, z).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_matches_loop_reference(tau: float) -> None:
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    got = NTXentLoss(tau)(z0.double(), z1.double()).item()
    assert got == pytest.approx(reference_ntxent(z0.numpy(), z1.numpy(), tau), rel=1e-9)


def test_same_bits_as_masking_with_a_one_hot_matrix() -> None:
    """The self-similarity mask is written in place; loss and gradients keep the bits of the one-hot masking it
    replaced, so encoders trained before the change are reproduced exactly (float32, the training dtype)."""
    gen = torch.Generator().manual_seed(1)
    for n, tau in ((512, 0.2), (7, 0.5)):
        z0 = torch.randn(n, 64, generator=gen, requires_grad=True)
        z1 = torch.randn(n, 64, generator=gen, requires_grad=True)
        z = F.normalize(torch.cat([z0, z1]), dim=1)
        rows = torch.arange(2 * n)
        logits = (z @ z.T / tau).masked_fill(F.one_hot(rows, 2 * n).bool(), float("-inf"))
        want = F.cross_entropy(logits, torch.where(rows < n, rows + n, rows - n))
        got = NTXentLoss(tau, gather_distributed=False)(z0, z1)
        assert torch.equal(got, want)
        for g_got, g_want in zip(torch.autograd.grad(got, [z0, z1]), torch.autograd.grad(want, [z0, z1]), strict=True):
            assert torch.equal(g_got, g_want)


def test_hand_sized_case() -> None:
    # N = 1: two views, each other's only candidate, so the softmax is over one logit: loss 0.
    assert NTXentLoss(0.5)(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(0.0)
    # N = 2, orthogonal unit vectors a, b and views (a, b) / (a, b): s(i, pos) = 1, s(i, other) = 0.
    a, b = [1.0, 0.0], [0.0, 1.0]
    z = torch.tensor([a, b])
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * math.exp(0)))
    assert NTXentLoss(tau)(z, z).item() == pytest.approx(expected, rel=1e-6)


def test_terms_and_loss_terms() -> None:
    z0, z1 = randn(6, 4, seed=12), randn(6, 4, seed=13)
    out = NTXentLoss(0.5, gather_distributed=False).terms(z0, z1)
    assert isinstance(out, LossTerms)
    assert out.loss.item() == NTXentLoss(0.5, gather_distributed=False)(z0, z1).item()
    assert out.scalars() == {"loss": out.loss.item(), "nt_xent": out.loss.item()}


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        NTXentLoss(0.0)
    with pytest.raises(ValueError):
        NTXentLoss()(torch.zeros(3, 2), torch.zeros(4, 2))


def _rank_loss(rank: int, world: int, z0: torch.Tensor, z1: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
    import torch.distributed as dist

    n = z0.shape[0] // world
    a = z0[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    b = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = NTXentLoss(0.5, gather_distributed=True)(a, b)
    loss.backward()
    # DDP averages parameter gradients over ranks; do the same for the inputs' gradients.
    ga, gb = a.grad.clone(), b.grad.clone()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    return float(torch.stack(losses).mean()), (ga / world).numpy(), (gb / world).numpy()


def test_two_workers_match_one_process() -> None:
    """A 2-process run on a split batch gives the loss and gradients of one process on the whole batch."""
    gen = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    a, b = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
    full = NTXentLoss(0.5, gather_distributed=False)(a, b)
    full.backward()
    out = run_on_ranks(_rank_loss, 2, z0, z1)
    loss = np.mean([out[r][0] for r in range(2)])
    grad0 = np.concatenate([out[r][1] for r in range(2)])
    grad1 = np.concatenate([out[r][2] for r in range(2)])
    assert loss == pytest.approx(full.item(), rel=1e-5)
    np.testing.assert_allclose(grad0, a.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad1, b.grad.numpy(), rtol=1e-4, atol=1e-6)
