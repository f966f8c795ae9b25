"""SwAV's swapped-prediction loss and its Sinkhorn-Knopp codes (Caron et al. 2020).

The prototypes the scores come from are a model head, :class:`workflow.pretrain.models.SwAVPrototypes`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from workflow.pretrain.losses.common import LossTerms, global_count, use_distributed


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
    distributed = use_distributed(gather_distributed)
    work = scores.detach()
    if work.dtype in (torch.float16, torch.bfloat16):
        work = work.float()
    log_q = (work / epsilon).T  # (K, B)
    k = log_q.shape[0]
    log_b = math.log(global_count(log_q.shape[1], log_q.device, distributed))
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

    Example::

        loss_fn = SwAVLoss()
        out = loss_fn([prototypes(projector(backbone(x0))), prototypes(projector(backbone(x1)))])
        out.loss.backward()
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
