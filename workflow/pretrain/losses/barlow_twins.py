"""The Barlow Twins redundancy-reduction loss (Zbontar et al. 2021)."""

from __future__ import annotations

import torch
from torch import nn

from workflow.pretrain.losses.common import (
    LossTerms,
    all_reduce_with_grad,
    check_pair,
    global_count,
    off_diagonal,
    use_distributed,
)


def _standardise(z: torch.Tensor, n_total: int, distributed: bool, eps: float) -> torch.Tensor:
    """Per-dimension standardisation over the (global) batch, as training-mode ``BatchNorm1d(affine=False)``.

    Biased variance; the sums are all-reduced with gradients when ``distributed``.
    """
    total = z.sum(dim=0)
    if distributed:
        total = all_reduce_with_grad(total)
    centred = z - total / n_total
    squares = centred.pow(2).sum(dim=0)
    if distributed:
        squares = all_reduce_with_grad(squares)
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
        check_pair(z_a, z_b)
        distributed = use_distributed(self.gather_distributed)
        n = global_count(z_a.shape[0], z_a.device, distributed)
        if n < 2:
            raise ValueError(f"Barlow Twins needs a (global) batch of at least 2, got {n}")
        a = _standardise(z_a, n, distributed, self.eps)
        b = _standardise(z_b, n, distributed, self.eps)
        c = a.T @ b
        if distributed:
            c = all_reduce_with_grad(c)
        c = c / n
        on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
        off = off_diagonal(c).pow(2).sum()
        loss = self.scale * (on_diagonal + self.lambda_param * off)
        return LossTerms(loss, {"on_diagonal": on_diagonal.detach(), "off_diagonal": off.detach()})
