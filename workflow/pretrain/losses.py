"""Self-supervised losses (one small ``nn.Module`` each), and the few helpers they need.

Every module added here returns a :class:`LossTerms` (the loss to back-propagate plus the detached
terms worth logging separately); :class:`NTXentLoss` keeps returning a tensor and has
:meth:`NTXentLoss.terms` for the uniform form. With ``gather_distributed=True`` and
``torch.distributed`` initialised, batch statistics are taken over the global batch with gradients
that match one process holding the whole batch once DDP averages them over ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class LossTerms:
    """A loss to back-propagate and its separately logged terms (detached scalar tensors)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]

    def scalars(self) -> dict[str, float]:
        """``{"loss": ..., **terms}`` as Python floats, for logging."""
        return {"loss": float(self.loss.detach()), **{k: float(v) for k, v in self.terms.items()}}


def _distributed(gather_distributed: bool) -> bool:
    """Whether to take statistics over every process: asked for, initialised and more than one process."""
    return gather_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over processes; the backward pass sums the gradients too (lightly-ai/lightly#1977)."""
    import warnings

    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd all-reduce
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x)


def _global_count(n: int, device: torch.device, distributed: bool) -> int:
    """The number of rows over every process (``n`` when not distributed)."""
    if not distributed:
        return n
    count = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(count)
    return int(count.item())


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def _check_pair(z_a: torch.Tensor, z_b: torch.Tensor) -> None:
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of the same shape, got {tuple(z_a.shape)} and "
                         f"{tuple(z_b.shape)}")


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping gradients for every slice.

    ``torch.distributed.nn.functional.all_gather`` back-propagates the summed gradients to the
    process that owns each slice, so a loss over the global batch gets the same gradients as one
    process holding the whole batch (after DDP's gradient averaging). Identity when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x), dim=0)


class NTXentLoss(nn.Module):
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

    Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"
    (arXiv 2002.05709), eq. (1). With ``z`` L2-normalised, ``s_ij = z_i . z_j`` and view ``i``'s
    positive ``j`` (the other view of the same item), over the 2N views of a batch::

        l_i = -log( exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) ),   L = mean_i l_i

    i.e. a cross-entropy over the 2N x (2N - 1) logits. For identical, perfectly correlated views
    (all s = 1) the loss is ``log(2N - 1)``.

    Args:
        temperature: tau; 0.5 suits small data (SimCLR's CIFAR setting), 0.1 large batches.
        gather_distributed: use the negatives of every process (global batch), with correct gradients.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        if z0.shape != z1.shape or z0.ndim != 2:
            raise ValueError(f"expected two (N, D) tensors of the same shape, got {tuple(z0.shape)} and "
                             f"{tuple(z1.shape)}")
        n = z0.shape[0]
        local = F.normalize(torch.cat([z0, z1]), dim=1)  # (2n, D): views 0 then views 1
        if self.gather_distributed and dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
            g0 = gather_with_grad(F.normalize(z0, dim=1))
            g1 = gather_with_grad(F.normalize(z1, dim=1))
            everything = torch.cat([g0, g1])  # (2N, D), N = n * world
            big_n = g0.shape[0]
            offset = rank * n
        else:
            everything, big_n, offset = local, n, 0
        logits = local @ everything.T / self.temperature  # (2n, 2N)
        rows = torch.arange(2 * n, device=z0.device)
        # Column of each local view's own entry, and of its positive, in the global 2N layout.
        own = torch.where(rows < n, offset + rows, big_n + offset + rows - n)
        positive = torch.where(rows < n, big_n + offset + rows, offset + rows - n)
        logits = logits.masked_fill(F.one_hot(own, everything.shape[0]).bool(), float("-inf"))
        return F.cross_entropy(logits, positive)

    def terms(self, z0: torch.Tensor, z1: torch.Tensor) -> LossTerms:
        """The loss as a :class:`LossTerms`, its one term logged as ``nt_xent``."""
        loss = self(z0, z1)
        return LossTerms(loss, {"nt_xent": loss.detach()})


# --------------------------------------------------------------------------- Barlow Twins / TLDR


def _standardise(z: torch.Tensor, n_total: int, distributed: bool, eps: float) -> torch.Tensor:
    """Per-dimension standardisation over the (global) batch, as training-mode ``BatchNorm1d(affine=False)``.

    Biased variance; the sums are all-reduced with gradients when ``distributed``.
    """
    total = z.sum(dim=0)
    if distributed:
        total = _all_reduce_with_grad(total)
    centred = z - total / n_total
    squares = centred.pow(2).sum(dim=0)
    if distributed:
        squares = _all_reduce_with_grad(squares)
    return centred / torch.sqrt(squares / n_total + eps)


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins redundancy-reduction loss.

    Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction" (arXiv 2103.03230),
    eq. (1)-(2). With ``z_a``, ``z_b`` standardised per dimension over the batch of N items (biased variance,
    eps 1e-5, i.e. training-mode ``BatchNorm1d(affine=False)``) and ``C = z_a^T z_b / N``::

        L = scale * [ sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2 ]

    ``terms``: ``on_diagonal`` = sum_i (1 - C_ii)^2 and ``off_diagonal`` = sum_{i != j} C_ij^2, both unweighted
    and unscaled. The loss is invariant to a per-dimension affine map of either view.

    Args:
        lambda_param: weight of the redundancy (off-diagonal) term; 5e-3 (official code: 0.0051).
        scale: overall factor (1 in the paper; solo-learn's ``scale_loss``, TLDR's 1/32).
        gather_distributed: standardise and correlate over the global batch. The statistics and the
            cross-correlation are all-reduced with gradients, so after DDP's averaging the gradients
            equal those of one process holding the whole batch (lightly-ai/lightly#1977).

    Example::

        loss_fn = BarlowTwinsLoss()
        out = loss_fn(projector(backbone(x0)), projector(backbone(x1)))
        out.loss.backward()
    """

    eps: float = 1e-5

    def __init__(self, lambda_param: float = 5e-3, scale: float = 1.0, gather_distributed: bool = True) -> None:
        super().__init__()
        if lambda_param < 0:
            raise ValueError(f"lambda_param must be non-negative, got {lambda_param}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.lambda_param = lambda_param
        self.scale = scale
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> LossTerms:
        _check_pair(z_a, z_b)
        distributed = _distributed(self.gather_distributed)
        n = _global_count(z_a.shape[0], z_a.device, distributed)
        if n < 2:
            raise ValueError(f"Barlow Twins needs a (global) batch of at least 2, got {n}")
        a = _standardise(z_a, n, distributed, self.eps)
        b = _standardise(z_b, n, distributed, self.eps)
        c = a.T @ b
        if distributed:
            c = _all_reduce_with_grad(c)
        c = c / n
        on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
        off_diagonal = _off_diagonal(c).pow(2).sum()
        loss = self.scale * (on_diagonal + self.lambda_param * off_diagonal)
        return LossTerms(loss, {"on_diagonal": on_diagonal.detach(), "off_diagonal": off_diagonal.detach()})


class TLDRLoss(BarlowTwinsLoss):
    """The Barlow Twins loss with TLDR's defaults, for pairs of neighbours (see :func:`knn_pairs`).

    Kalantidis et al. 2022, "TLDR: Twin Learning for Dimensionality Reduction" (TMLR; arXiv 2110.09455);
    ``naver/tldr:tldr/loss.py``. With ``C`` as in :class:`BarlowTwinsLoss` for the embeddings of
    ``x`` and of one of its k nearest neighbours::

        L = (1/32) * [ sum_i (1 - C_ii)^2 + 3.9e-3 * sum_{i != j} C_ij^2 ]

    Args:
        lambda_param: off-diagonal weight; 3.9e-3.
        scale: overall factor; 1/32.
        gather_distributed: as for :class:`BarlowTwinsLoss`.
    """

    def __init__(self, lambda_param: float = 3.9e-3, scale: float = 1 / 32, gather_distributed: bool = True) -> None:
        super().__init__(lambda_param=lambda_param, scale=scale, gather_distributed=gather_distributed)


def knn_pairs(x: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """For each row of ``x``, the index of one of its ``k`` nearest neighbours, drawn uniformly (TLDR's pairs).

    Exact Euclidean search (``faiss.IndexFlatL2``); a row is never its own neighbour, duplicates included.
    (``naver/tldr`` builds its graph with inner products on unnormalised data; L2 here.)

    Args:
        x: (N, D) data.
        k: neighbours to draw from; 1 <= k < N.
        seed: seed of the draw; the same seed gives the same pairs.

    Returns:
        (N,) int64 array of neighbour indices.
    """
    import faiss

    if x.ndim != 2:
        raise ValueError(f"expected an (N, D) array, got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must satisfy 1 <= k < N = {n}, got {k}")
    data = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatL2(data.shape[1])
    index.add(data)
    _, idx = index.search(data, k + 1)
    rows = np.arange(n)
    keep = idx != rows[:, None]
    keep[keep.all(axis=1), -1] = False  # self not among the k + 1 (ties with duplicates): drop the farthest
    neighbours = idx[keep].reshape(n, k)
    choice = np.random.default_rng(seed).integers(0, k, size=n)
    return neighbours[rows, choice].astype(np.int64)


# --------------------------------------------------------------------------- VICReg


def _variance_term(z: torch.Tensor, eps: float) -> torch.Tensor:
    std = torch.sqrt(z.var(dim=0) + eps)  # unbiased
    return F.relu(1 - std).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    return _off_diagonal(cov).pow(2).sum() / d


class VICRegLoss(nn.Module):
    """VICReg: variance-invariance-covariance regularisation.

    Bardes et al. 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
    Learning" (ICLR; arXiv 2105.04906), eq. (1)-(6); ``facebookresearch/vicreg:main_vicreg.py``. Over a
    batch of N items with D dimensions::

        invariance = mean_{n,d} (z_a - z_b)^2
        variance   = 1/2 [ mean_d relu(1 - sqrt(Var(z_a^d) + eps)) + (same for z_b) ]    (unbiased Var)
        covariance = sum_{i != j} Cov(z_a)_ij^2 / D + (same for z_b)                      (Cov with 1/(N-1))
        L = lambda * invariance + mu * variance + nu * covariance

    ``terms`` hold the three unweighted terms ``invariance``, ``variance``, ``covariance``.

    Args:
        lambda_param: invariance weight; 25.
        mu_param: variance weight; 25.
        nu_param: covariance weight; 1.
        eps: added to the variance under the square root; 1e-4.
        gather_distributed: compute every term over the global batch (rows gathered with gradients,
            as the official code does).
    """

    def __init__(self, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0, eps: float = 1e-4,
                 gather_distributed: bool = True) -> None:
        super().__init__()
        for name, value in (("lambda_param", lambda_param), ("mu_param", mu_param), ("nu_param", nu_param)):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.lambda_param = lambda_param
        self.mu_param = mu_param
        self.nu_param = nu_param
        self.eps = eps
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> LossTerms:
        _check_pair(z_a, z_b)
        if _distributed(self.gather_distributed):
            z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        if z_a.shape[0] < 2:
            raise ValueError(f"VICReg needs a (global) batch of at least 2, got {z_a.shape[0]}")
        invariance = F.mse_loss(z_a, z_b)
        variance = 0.5 * (_variance_term(z_a, self.eps) + _variance_term(z_b, self.eps))
        covariance = _covariance_term(z_a) + _covariance_term(z_b)
        loss = self.lambda_param * invariance + self.mu_param * variance + self.nu_param * covariance
        terms = {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()}
        return LossTerms(loss, terms)


# --------------------------------------------------------------------------- BYOL


class BYOLLoss(nn.Module):
    """BYOL's symmetrised normalised-MSE loss, ``2 - 2 cos(p, sg(z))``.

    Grill et al. 2020, "Bootstrap Your Own Latent" (NeurIPS; arXiv 2006.07733), eq. (2)-(3). With online
    predictions ``p0``, ``p1`` of views 0 and 1 and target projections ``z0``, ``z1`` (gradient stopped)::

        L = mean_n [ (2 - 2 cos(p0_n, z1_n)) + (2 - 2 cos(p1_n, z0_n)) ] / 2

    ``terms``: ``cosine``, the mean cosine similarity (``L = 2 - 2 * cosine``). Identical directions give 0,
    orthogonal ones 2. The target network follows :func:`ema_update` with :func:`byol_tau`.
    """

    def forward(self, p0: torch.Tensor, z1: torch.Tensor, p1: torch.Tensor, z0: torch.Tensor) -> LossTerms:
        _check_pair(p0, z1)
        _check_pair(p1, z0)
        cosine = 0.5 * (F.cosine_similarity(p0, z1.detach(), dim=1).mean()
                        + F.cosine_similarity(p1, z0.detach(), dim=1).mean())
        return LossTerms(2 - 2 * cosine, {"cosine": cosine.detach()})


def byol_tau(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's target-network momentum at ``step``: ``final - (final - base) (cos(pi k / K) + 1) / 2``.

    Grill et al. 2020, Sec. 3.2. ``k = step`` and ``K = total_steps - 1``, so step 0 gives ``base`` and the
    last step (``total_steps - 1``) gives ``final`` (as lightly's ``cosine_schedule``); later steps give ``final``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if total_steps == 1 or step >= total_steps - 1:
        return final
    return final - (final - base) * (math.cos(math.pi * step / (total_steps - 1)) + 1) / 2


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """``target <- tau * target + (1 - tau) * online`` for parameters; buffers are copied from ``online``.

    ``tau = 0`` copies the online network, ``tau = 1`` leaves the target unchanged.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    online_params, target_params = list(online.parameters()), list(target.parameters())
    online_buffers, target_buffers = list(online.buffers()), list(target.buffers())
    if len(online_params) != len(target_params) or len(online_buffers) != len(target_buffers):
        raise ValueError("online and target networks must have the same parameters and buffers")
    for o, t in zip(online_params, target_params, strict=True):
        t.lerp_(o.detach(), 1.0 - tau)
    for o, t in zip(online_buffers, target_buffers, strict=True):
        t.copy_(o)


# --------------------------------------------------------------------------- SwAV


def _logsumexp(x: torch.Tensor, dim: int | None, distributed: bool) -> torch.Tensor:
    """``log sum exp`` over ``dim`` (all of ``x`` if None), keeping dims, over every process when ``distributed``."""
    if dim is None:
        x, dim = x.reshape(1, -1), 1
    if not distributed:
        return torch.logsumexp(x, dim=dim, keepdim=True)
    top = x.amax(dim=dim, keepdim=True)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(x - top).sum(dim=dim, keepdim=True)
    dist.all_reduce(total)
    return top + torch.log(total)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
                   gather_distributed: bool = True) -> torch.Tensor:
    """Equal-partition soft codes for a batch of prototype scores (SwAV's ``distributed_sinkhorn``).

    Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
    (NeurIPS; arXiv 2006.09882), Sec. 3.1; ``facebookresearch/swav:main_swav.py``. With ``scores`` (B, K),
    ``Q = exp(scores / epsilon)^T`` (K, B) is normalised to total 1, then ``iterations`` times its rows
    (prototypes) are scaled to sum to 1/K and its columns (samples) to 1/B; finally ``Q * B``, so each
    sample's code sums to 1 and, once converged, each prototype receives B/K. B is the global batch when
    distributed (the sums over samples are all-reduced).

    The same steps are taken in the log domain (normalising by log-sum-exp), which gives the official
    result without its overflow of ``exp`` or 0/0 when a prototype's or sample's scores underflow.
    The result is unchanged by a constant or a per-prototype shift of the scores; a per-sample shift is
    absorbed only as the iterations converge.

    Returns:
        (B_local, K) codes, without gradient, in the dtype of ``scores`` (computed in at least float32).
    """
    if scores.ndim != 2:
        raise ValueError(f"expected (B, K) scores, got shape {tuple(scores.shape)}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    distributed = _distributed(gather_distributed)
    work = scores.detach()
    if work.dtype in (torch.float16, torch.bfloat16):
        work = work.float()
    log_q = (work / epsilon).T  # (K, B)
    k = log_q.shape[0]
    log_b = math.log(_global_count(log_q.shape[1], log_q.device, distributed))
    log_q = log_q - _logsumexp(log_q, None, distributed)
    for _ in range(iterations):
        log_q = log_q - (_logsumexp(log_q, 1, distributed) + math.log(k))  # each prototype: 1/K
        log_q = log_q - (torch.logsumexp(log_q, dim=0, keepdim=True) + log_b)  # each sample: 1/B
    return torch.exp(log_q + log_b).T.to(scores.dtype)


class SwAVLoss(nn.Module):
    """SwAV's swapped-prediction loss.

    Caron et al. 2020 (arXiv 2006.09882), eq. (1)-(3); ``facebookresearch/swav:main_swav.py``. For V views
    with scores ``s_v = z_v c^T`` (B, K) of L2-normalised embeddings and prototypes, the codes ``q_t`` of
    each of the first two views come from :func:`sinkhorn_knopp` (no gradient) and predict every other view::

        L = 1/2 sum_{t in {0, 1}} 1/(V - 1) sum_{v != t} mean_n [ - sum_k q_t,nk log softmax(s_v,n / T)_k ]

    ``terms``: ``swapped_ce`` (equal to the loss). No queue. When distributed, the codes use the global
    batch and the cross-entropy is the local mean (DDP's averaging makes it global).

    Args:
        temperature: T of the softmax over prototypes; 0.1.
        epsilon: Sinkhorn regularisation; 0.05 (lower it, e.g. 0.03, if the loss is stuck at log K).
        sinkhorn_iterations: 3.
        gather_distributed: Sinkhorn over the global batch.
    """

    n_assign_views: int = 2

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        if sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be at least 1, got {sinkhorn_iterations}")
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.gather_distributed = gather_distributed

    def forward(self, scores_per_view: list[torch.Tensor]) -> LossTerms:
        n_views = len(scores_per_view)
        if n_views < 2:
            raise ValueError(f"SwAV needs at least 2 views, got {n_views}")
        shape = scores_per_view[0].shape
        if len(shape) != 2 or any(s.shape != shape for s in scores_per_view):
            raise ValueError(f"expected (B, K) scores of one shape per view, got "
                             f"{[tuple(s.shape) for s in scores_per_view]}")
        log_probs = [F.log_softmax(s / self.temperature, dim=1) for s in scores_per_view]
        loss = scores_per_view[0].new_zeros(())
        for t in range(self.n_assign_views):
            q = sinkhorn_knopp(scores_per_view[t], self.epsilon, self.sinkhorn_iterations, self.gather_distributed)
            sub = sum(-(q * log_probs[v]).sum(dim=1).mean() for v in range(n_views) if v != t)
            loss = loss + sub / (n_views - 1)
        loss = loss / self.n_assign_views
        return LossTerms(loss, {"swapped_ce": loss.detach()})


class SwAVPrototypes(nn.Module):
    """SwAV's prototypes: a bias-free linear layer of K unit-norm rows giving scores ``z c^T``.

    Caron et al. 2020; ``facebookresearch/swav:src/resnet50.py``. Call :meth:`normalize_` before each
    step (SwAV re-normalises the prototypes every iteration) and :meth:`freeze_if_needed` between
    ``backward()`` and ``optimizer.step()`` (SwAV freezes them for the first iterations).
    ``forward`` L2-normalises its input (a no-op on already normalised embeddings).

    Args:
        dim: embedding dimension.
        n_prototypes: K; 3000.
        n_frozen_steps: steps during which the prototypes' gradients are dropped; 0.
    """

    def __init__(self, dim: int, n_prototypes: int = 3000, n_frozen_steps: int = 0) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if n_prototypes < 1:
            raise ValueError(f"n_prototypes must be positive, got {n_prototypes}")
        if n_frozen_steps < 0:
            raise ValueError(f"n_frozen_steps must be non-negative, got {n_frozen_steps}")
        self.layer = nn.Linear(dim, n_prototypes, bias=False)
        self.n_frozen_steps = n_frozen_steps
        self.normalize_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layer(F.normalize(z, dim=1))

    @torch.no_grad()
    def normalize_(self) -> None:
        """Scale every prototype (row of the weight) to unit L2 norm, in place."""
        self.layer.weight.copy_(F.normalize(self.layer.weight, dim=1))

    def freeze_if_needed(self, step: int) -> bool:
        """Drop the prototypes' gradients (set them to ``None``, so the optimiser skips them, weight decay and
        momentum included) while ``step < n_frozen_steps``. Returns whether they were frozen."""
        frozen = step < self.n_frozen_steps
        if frozen:
            for p in self.parameters():
                p.grad = None
        return frozen
