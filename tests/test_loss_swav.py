"""SwAV's Sinkhorn-Knopp codes and swapped-prediction loss against the official algorithm in numpy, the
prototype head in a training step, and the distributed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_helpers import randn, run_on_ranks

from workflow.pretrain.losses import SwAVLoss, sinkhorn_knopp
from workflow.pretrain.models import SwAVPrototypes


def reference_sinkhorn(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """facebookresearch/swav:main_swav.py distributed_sinkhorn, one process, in numpy (no max shift)."""
    q = np.exp(scores.astype(np.float64) / eps).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def reference_swav(scores: list[np.ndarray], tau: float, eps: float, iters: int) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    total = 0.0
    for t in (0, 1):
        q = reference_sinkhorn(scores[t], eps, iters)
        total += sum(-np.mean(np.sum(q * log_softmax(scores[v] / tau), axis=1))
                     for v in range(len(scores)) if v != t) / (len(scores) - 1)
    return total / 2


def _swav_scores(n: int = 48, k: int = 10, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    z = F.normalize(randn(n, d, seed=seed), dim=1)
    c = F.normalize(randn(k, d, seed=seed + 100), dim=1)
    return z @ c.T, c


def test_sinkhorn_marginals() -> None:
    scores, _ = _swav_scores()
    b, k = scores.shape
    q = sinkhorn_knopp(scores)  # default 3 iterations: each sample's code sums to 1 exactly
    assert q.shape == (b, k) and not q.requires_grad
    np.testing.assert_allclose(q.sum(1).numpy(), 1.0, atol=1e-12)
    q50 = sinkhorn_knopp(scores, iterations=50)
    np.testing.assert_allclose(q50.sum(1).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(q50.sum(0).numpy(), b / k, atol=1e-3)  # equal partition
    assert (q50 >= 0).all()
    # float32 and half inputs.
    q32 = sinkhorn_knopp(scores.float())
    assert q32.dtype == torch.float32
    np.testing.assert_allclose(q32.sum(1).numpy(), 1.0, atol=1e-5)
    assert sinkhorn_knopp(scores.half()).dtype == torch.float16


def test_sinkhorn_matches_official_algorithm() -> None:
    scores, _ = _swav_scores(seed=1)
    for eps, iters in ((0.05, 3), (0.1, 1), (0.03, 10)):
        np.testing.assert_allclose(sinkhorn_knopp(scores, eps, iters).numpy(),
                                   reference_sinkhorn(scores.numpy(), eps, iters), rtol=1e-9, atol=1e-12)


def test_sinkhorn_invariances() -> None:
    scores, _ = _swav_scores(seed=2)
    per_sample = randn(scores.shape[0], 1, seed=3)
    per_prototype = randn(1, scores.shape[1], seed=4)
    # Exactly invariant to a constant, and to a per-prototype shift (the first row normalisation absorbs it).
    q = sinkhorn_knopp(scores)
    torch.testing.assert_close(sinkhorn_knopp(scores + 7.0), q, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sinkhorn_knopp(scores + per_prototype), q, rtol=1e-9, atol=1e-12)
    # A per-sample shift is absorbed by the column scaling only once converged (not after 3 iterations).
    q50 = sinkhorn_knopp(scores, iterations=50)
    np.testing.assert_allclose(sinkhorn_knopp(scores + per_sample, iterations=50).numpy(), q50.numpy(), atol=1e-3)
    # Scores far outside [-1, 1] neither overflow nor underflow to 0/0 (the exp domain would give NaN here).
    wild = scores.float() * 100
    wild[0] -= 1000  # a sample far below every other
    q_wild = sinkhorn_knopp(wild)
    assert torch.isfinite(q_wild).all()
    np.testing.assert_allclose(q_wild.sum(1).numpy(), 1.0, atol=1e-5)


def test_swav_loss() -> None:
    s0, _ = _swav_scores(seed=5)
    s_other, _ = _swav_scores(seed=6)
    loss = SwAVLoss(gather_distributed=False)
    aligned = loss([s0, s0.clone()])
    unrelated = loss([s0, s_other])
    assert torch.isfinite(aligned.loss) and aligned.loss.item() > 0
    assert aligned.loss.item() < unrelated.loss.item()
    assert aligned.terms["swapped_ce"].item() == pytest.approx(aligned.loss.item())
    views = [_swav_scores(seed=s)[0] for s in (7, 8, 9)]  # multi-crop: 3 views
    for vs in ([s0, s_other], views):
        assert loss(vs).loss.item() == pytest.approx(reference_swav([v.numpy() for v in vs], 0.1, 0.05, 3), rel=1e-9)
    # Gradients reach every view's scores (through the softmax), none through the codes.
    vs = [v.clone().requires_grad_(True) for v in views]
    loss(vs).loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in vs)


def test_swav_prototypes() -> None:
    torch.manual_seed(0)
    protos = SwAVPrototypes(16, n_prototypes=10, n_frozen_steps=2)
    with torch.no_grad():
        protos.layer.weight.mul_(3.0).add_(1.0)
    protos.normalize_()
    np.testing.assert_allclose(protos.layer.weight.norm(dim=1).detach().numpy(), 1.0, rtol=1e-6)
    z = torch.randn(8, 16)
    scores = protos(z)
    assert scores.shape == (8, 10) and scores.abs().max() <= 1 + 1e-6  # cosines
    opt = torch.optim.SGD(protos.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for step, frozen in ((0, True), (1, True), (2, False)):
        opt.zero_grad()
        before = protos.layer.weight.detach().clone()
        SwAVLoss(gather_distributed=False)([protos(z), protos(z + 0.1 * torch.randn(8, 16))]).loss.backward()
        assert protos.freeze_if_needed(step) is frozen
        grad = protos.layer.weight.grad
        assert (grad is None or not grad.any()) if frozen else grad.abs().sum() > 0
        opt.step()
        assert torch.equal(protos.layer.weight, before) is frozen


def test_invalid_arguments() -> None:
    for bad in (lambda: SwAVLoss(temperature=0.0), lambda: SwAVLoss(epsilon=-1.0),
                lambda: SwAVLoss(sinkhorn_iterations=0), lambda: SwAVPrototypes(0),
                lambda: SwAVPrototypes(4, n_frozen_steps=-1), lambda: sinkhorn_knopp(torch.zeros(3)),
                lambda: sinkhorn_knopp(torch.zeros(3, 2), epsilon=0.0), lambda: SwAVLoss()([torch.zeros(3, 2)]),
                lambda: SwAVLoss()([torch.zeros(3, 2), torch.zeros(4, 2)])):
        with pytest.raises(ValueError):
            bad()


def _rank_codes_and_loss(rank: int, world: int, scores: list[torch.Tensor]) -> dict[str, object]:
    m = scores[0].shape[0] // world
    local = [s[rank * m:(rank + 1) * m].clone().requires_grad_(True) for s in scores]
    codes = sinkhorn_knopp(local[0]).numpy()
    swav = SwAVLoss()(local).loss
    swav.backward()
    # DDP averages parameter gradients over ranks; do the same for the inputs' gradients.
    return {"codes": codes, "loss": swav.item(), "grads": [(s.grad / world).numpy() for s in local]}


def test_two_workers_match_one_process() -> None:
    """A 2-process gloo run: codes over the global batch, the cross-entropy the local mean (the rank average is
    the global loss), and the input gradients of one process."""
    scores = [_swav_scores(n=8, seed=s)[0].float() for s in (22, 23, 24)]
    out = run_on_ranks(_rank_codes_and_loss, 2, scores)
    codes = np.concatenate([out[r]["codes"] for r in range(2)])
    np.testing.assert_allclose(codes, sinkhorn_knopp(scores[0], gather_distributed=False).numpy(), rtol=1e-4,
                               atol=1e-6)
    local = [s.clone().requires_grad_(True) for s in scores]
    full = SwAVLoss(gather_distributed=False)(local).loss
    full.backward()
    assert np.mean([out[r]["loss"] for r in range(2)]) == pytest.approx(full.item(), rel=1e-5)
    for v in range(3):
        grad = np.concatenate([out[r]["grads"][v] for r in range(2)])
        np.testing.assert_allclose(grad, local[v].grad.numpy(), rtol=1e-4, atol=1e-6)
