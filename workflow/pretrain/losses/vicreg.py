"""VICReg: variance-invariance-covariance regularisation (Bardes et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workflow.pretrain.losses.common import LossTerms, check_pair, gather_with_grad, off_diagonal, use_distributed


def _variance_term(z: torch.Tensor, eps: float) -> torch.Tensor:
    std = torch.sqrt(z.var(dim=0) + eps)  # unbiased
    return F.relu(1 - std).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    return off_diagonal(cov).pow(2).sum() / d


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

    Example::

        loss_fn = VICRegLoss()
        out = loss_fn(projector(backbone(x0)), projector(backbone(x1)))
        out.loss.backward()
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
        check_pair(z_a, z_b)
        if use_distributed(self.gather_distributed):
            z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        if z_a.shape[0] < 2:
            raise ValueError(f"VICReg needs a (global) batch of at least 2, got {z_a.shape[0]}")
        invariance = F.mse_loss(z_a, z_b)
        variance = 0.5 * (_variance_term(z_a, self.eps) + _variance_term(z_b, self.eps))
        covariance = _covariance_term(z_a) + _covariance_term(z_b)
        loss = self.lambda_param * invariance + self.mu_param * variance + self.nu_param * covariance
        terms = {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()}
        return LossTerms(loss, terms)
