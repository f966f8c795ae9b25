"""Barlow Twins, VICReg, BYOL, SwAV and TLDR losses against independent computations, and their distributed forms."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from workflow.pretrain.losses import (
    BarlowTwinsLoss,
    BYOLLoss,
    LossTerms,
    NTXentLoss,
    SwAVLoss,
    SwAVPrototypes,
    TLDRLoss,
    VICRegLoss,
    byol_tau,
    ema_update,
    knn_pairs,
    sinkhorn_knopp,
)
from workflow.ui import free_port


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- independent references


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


# --------------------------------------------------------------------------- Barlow Twins / TLDR


def test_barlow_twins_affine_invariance() -> None:
    x = _randn(32, 8)
    loss = BarlowTwinsLoss(gather_distributed=False)
    assert loss(x, x).loss.item() == pytest.approx(loss(x, 2 * x + 4).loss.item(), abs=1e-5)
    # A per-dimension affine map (different scale and shift per column) of either view.
    a, b = _randn(8, seed=1).abs() + 0.5, _randn(8, seed=2)
    y = _randn(32, 8, seed=3)
    assert loss(x, y).loss.item() == pytest.approx(loss(x * a + b, y).loss.item(), abs=1e-5)


def test_barlow_twins_identical_views_have_zero_on_diagonal() -> None:
    x = _randn(64, 6)
    out = BarlowTwinsLoss(gather_distributed=False)(x, x)
    assert out.terms["on_diagonal"].item() == pytest.approx(0.0, abs=1e-8)  # C_ii = var / (var + eps)
    assert out.terms["off_diagonal"].item() > 0


def test_barlow_twins_matches_loop_reference() -> None:
    za, zb = _randn(6, 4, seed=4), _randn(6, 4, seed=5)
    for lam, scale in ((5e-3, 1.0), (0.5, 1.0), (5e-3, 0.024)):
        got = BarlowTwinsLoss(lam, scale, gather_distributed=False)(za, zb).loss.item()
        assert got == pytest.approx(reference_barlow(za.numpy(), zb.numpy(), lam, scale), rel=1e-10)


def test_barlow_twins_scale_and_lambda() -> None:
    za, zb = _randn(16, 5, seed=6), _randn(16, 5, seed=7)
    base = BarlowTwinsLoss(gather_distributed=False)(za, zb)
    on, off = base.terms["on_diagonal"].item(), base.terms["off_diagonal"].item()
    assert base.loss.item() == pytest.approx(on + 5e-3 * off)
    scaled = BarlowTwinsLoss(5e-3, scale=0.1, gather_distributed=False)(za, zb)
    assert scaled.loss.item() == pytest.approx(0.1 * base.loss.item(), rel=1e-12)
    heavy = BarlowTwinsLoss(1.0, gather_distributed=False)(za, zb)
    assert heavy.loss.item() == pytest.approx(on + off)
    assert not any(t.requires_grad for t in base.terms.values())


def test_tldr_loss_is_scaled_barlow_twins() -> None:
    za, zb = _randn(20, 6, seed=8), _randn(20, 6, seed=9)
    tldr = TLDRLoss(gather_distributed=False)
    assert (tldr.lambda_param, tldr.scale) == (3.9e-3, 1 / 32)
    expected = BarlowTwinsLoss(lambda_param=3.9e-3, gather_distributed=False)(za, zb).loss.item() / 32
    assert tldr(za, zb).loss.item() == pytest.approx(expected, rel=1e-12)


def test_knn_pairs_are_true_neighbours_and_deterministic() -> None:
    x = np.random.default_rng(0).normal(size=(150, 6)).astype(np.float32)
    k = 5
    d2 = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    true_knn = np.argsort(d2, axis=1)[:, :k]
    pairs = knn_pairs(x, k=k, seed=3)
    assert pairs.shape == (150,) and pairs.dtype == np.int64
    assert all(pairs[i] in true_knn[i] for i in range(len(x)))
    assert not np.any(pairs == np.arange(len(x)))
    np.testing.assert_array_equal(pairs, knn_pairs(x, k=k, seed=3))
    assert not np.array_equal(pairs, knn_pairs(x, k=k, seed=4))
    # Every one of the k neighbours is drawn somewhere (uniform choice, not always the nearest).
    ranks = [int(np.flatnonzero(true_knn[i] == pairs[i])[0]) for i in range(len(x))]
    assert set(ranks) == set(range(k))
    np.testing.assert_array_equal(knn_pairs(x, k=1), true_knn[:, 0])


def test_knn_pairs_never_returns_itself_with_duplicates() -> None:
    base = np.random.default_rng(1).normal(size=(10, 3))
    x = np.concatenate([base, base, base])  # every point has two exact copies at distance 0
    for seed in range(5):
        pairs = knn_pairs(x, k=2, seed=seed)
        assert not np.any(pairs == np.arange(len(x)))
        np.testing.assert_array_equal(pairs % 10, np.arange(len(x)) % 10)  # the copies are the 2 nearest


# --------------------------------------------------------------------------- VICReg


def test_vicreg_constant_batch() -> None:
    z = torch.full((4, 3), 2.0, dtype=torch.float64)
    out = VICRegLoss(gather_distributed=False)(z, z)
    assert out.terms["invariance"].item() == 0.0
    assert out.terms["variance"].item() == pytest.approx(1 - math.sqrt(1e-4))  # std = sqrt(0 + eps) = 0.01
    assert out.terms["covariance"].item() == 0.0
    assert out.loss.item() == pytest.approx(25 * 0.99)


def test_vicreg_hand_made_terms() -> None:
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


def test_vicreg_matches_numpy_reference() -> None:
    za, zb = _randn(12, 5, seed=10), 0.3 * _randn(12, 5, seed=11)
    for params in ((25.0, 25.0, 1.0), (1.0, 2.0, 3.0)):
        out = VICRegLoss(*params, gather_distributed=False)(za, zb)
        loss, inv, var, cov = reference_vicreg(za.numpy(), zb.numpy(), *params)
        assert out.loss.item() == pytest.approx(loss, rel=1e-10)
        assert out.terms["invariance"].item() == pytest.approx(inv, rel=1e-10)
        assert out.terms["variance"].item() == pytest.approx(var, rel=1e-10)
        assert out.terms["covariance"].item() == pytest.approx(cov, rel=1e-10)
    assert var > 0  # the 0.3-scaled view is penalised, so the variance term was exercised


# --------------------------------------------------------------------------- BYOL


def test_byol_loss_values() -> None:
    p = _randn(8, 4)
    loss = BYOLLoss()
    assert loss(p, 3 * p, p, p).loss.item() == pytest.approx(0.0, abs=1e-12)  # same direction
    e0, e1 = torch.eye(2, dtype=torch.float64)
    a, b = e0.expand(5, 2), e1.expand(5, 2)
    out = loss(a, b, b, a)
    assert out.loss.item() == pytest.approx(2.0) and out.terms["cosine"].item() == pytest.approx(0.0)
    assert loss(a, -a, a, a).loss.item() == pytest.approx(2.0)  # (4 + 0) / 2
    # Against 2 - 2 cos written out, and stop-gradient on the targets.
    p0, z1, p1, z0 = (_randn(6, 3, seed=s).requires_grad_(True) for s in range(4))
    out = loss(p0, z1, p1, z0)
    cos = lambda u, v: (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))  # noqa: E731
    expected = ((2 - 2 * cos(p0, z1)) + (2 - 2 * cos(p1, z0))).mean() / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    out.loss.backward()
    assert z0.grad is None and z1.grad is None and p0.grad is not None and p1.grad is not None


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
    assert all(torch.equal(b, c) for b, c in zip(target.buffers(), online.buffers(), strict=True))
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


# --------------------------------------------------------------------------- Sinkhorn / SwAV


def _swav_scores(n: int = 48, k: int = 10, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    z = F.normalize(_randn(n, d, seed=seed), dim=1)
    c = F.normalize(_randn(k, d, seed=seed + 100), dim=1)
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
    per_sample = _randn(scores.shape[0], 1, seed=3)
    per_prototype = _randn(1, scores.shape[1], seed=4)
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


# --------------------------------------------------------------------------- misc


def test_ntxent_terms_and_loss_terms() -> None:
    z0, z1 = _randn(6, 4, seed=12), _randn(6, 4, seed=13)
    out = NTXentLoss(0.5, gather_distributed=False).terms(z0, z1)
    assert isinstance(out, LossTerms)
    assert out.loss.item() == NTXentLoss(0.5, gather_distributed=False)(z0, z1).item()
    assert out.scalars() == {"loss": out.loss.item(), "nt_xent": out.loss.item()}


def test_invalid_arguments() -> None:
    for bad in (lambda: BarlowTwinsLoss(-1.0), lambda: BarlowTwinsLoss(scale=0.0), lambda: VICRegLoss(eps=0.0),
                lambda: VICRegLoss(mu_param=-1.0), lambda: SwAVLoss(temperature=0.0), lambda: SwAVLoss(epsilon=-1.0),
                lambda: SwAVLoss(sinkhorn_iterations=0), lambda: SwAVPrototypes(0),
                lambda: SwAVPrototypes(4, n_frozen_steps=-1), lambda: sinkhorn_knopp(torch.zeros(3)),
                lambda: sinkhorn_knopp(torch.zeros(3, 2), epsilon=0.0), lambda: knn_pairs(np.zeros((4, 2)), k=4),
                lambda: knn_pairs(np.zeros(4)), lambda: SwAVLoss()([torch.zeros(3, 2)]),
                lambda: SwAVLoss()([torch.zeros(3, 2), torch.zeros(4, 2)])):
        with pytest.raises(ValueError):
            bad()
    for loss in (BarlowTwinsLoss(), VICRegLoss(), TLDRLoss()):
        with pytest.raises(ValueError):
            loss(torch.zeros(3, 2), torch.zeros(4, 2))
        with pytest.raises(ValueError):
            loss(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError):
        BYOLLoss()(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(3, 2), torch.zeros(3, 2))


# --------------------------------------------------------------------------- distributed


def _pair_losses() -> dict[str, nn.Module]:
    return {"barlow": BarlowTwinsLoss(0.5, scale=0.3), "vicreg": VICRegLoss(1.0, 2.0, 3.0)}


def _worker(rank: int, world: int, port: int, z0: torch.Tensor, z1: torch.Tensor, scores: list[torch.Tensor],
            out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = z0.shape[0] // world
    rows = slice(rank * n, (rank + 1) * n)
    result = {}
    for name, loss_fn in _pair_losses().items():
        a = z0[rows].clone().requires_grad_(True)
        b = z1[rows].clone().requires_grad_(True)
        loss = loss_fn(a, b).loss
        loss.backward()
        # DDP averages parameter gradients over ranks; do the same for the inputs' gradients.
        result[name] = (loss.item(), (a.grad / world).numpy(), (b.grad / world).numpy())
    m = scores[0].shape[0] // world
    local = [s[rank * m:(rank + 1) * m].clone().requires_grad_(True) for s in scores]
    result["codes"] = sinkhorn_knopp(local[0]).numpy()
    swav = SwAVLoss()(local).loss
    swav.backward()
    result["swav"] = (swav.item(), *[(s.grad / world).numpy() for s in local])
    out[rank] = result
    dist.destroy_process_group()


def test_two_workers_match_one_process() -> None:
    """A 2-process gloo run on a split batch gives the loss, input gradients and codes of one process."""
    z0, z1 = _randn(8, 5, seed=20, dtype=torch.float32), _randn(8, 5, seed=21, dtype=torch.float32)
    scores = [_swav_scores(n=8, seed=s)[0].float() for s in (22, 23, 24)]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, free_port(), z0, z1, scores, out), nprocs=2, join=True)
    for name, loss_fn in _pair_losses().items():
        loss_fn.gather_distributed = False
        a, b = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
        full = loss_fn(a, b).loss
        full.backward()
        for r in range(2):  # every rank computes the global loss
            assert out[r][name][0] == pytest.approx(full.item(), rel=1e-5), name
        grad0 = np.concatenate([out[r][name][1] for r in range(2)])
        grad1 = np.concatenate([out[r][name][2] for r in range(2)])
        np.testing.assert_allclose(grad0, a.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(grad1, b.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    codes = np.concatenate([out[r]["codes"] for r in range(2)])
    np.testing.assert_allclose(codes, sinkhorn_knopp(scores[0], gather_distributed=False).numpy(), rtol=1e-4,
                               atol=1e-6)
    # SwAV: codes over the global batch, cross-entropy the local mean (the rank average is the global loss).
    local = [s.clone().requires_grad_(True) for s in scores]
    full = SwAVLoss(gather_distributed=False)(local).loss
    full.backward()
    assert np.mean([out[r]["swav"][0] for r in range(2)]) == pytest.approx(full.item(), rel=1e-5)
    for v in range(3):
        grad = np.concatenate([out[r]["swav"][1 + v] for r in range(2)])
        np.testing.assert_allclose(grad, local[v].grad.numpy(), rtol=1e-4, atol=1e-6)
