"""BYOL's symmetrised normalised-MSE loss (Grill et al. 2020).

The target network's momentum schedule and update live in :mod:`workflow.pretrain.ema`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workflow.pretrain.losses.common import LossTerms, check_pair


class BYOLLoss(nn.Module):
    """BYOL's symmetrised normalised-MSE loss, ``2 - 2 cos(p, sg(z))``.

    Grill et al. 2020, "Bootstrap Your Own Latent" (NeurIPS; arXiv 2006.07733), eq. (2)-(3). With online
    predictions ``p0``, ``p1`` of views 0 and 1 and target projections ``z0``, ``z1`` (gradient stopped)::

        L = mean_n [ (2 - 2 cos(p0_n, z1_n)) + (2 - 2 cos(p1_n, z0_n)) ] / 2

    ``terms``: ``cosine``, the mean cosine similarity (``L = 2 - 2 * cosine``). Identical directions give 0,
    orthogonal ones 2. The target network follows :func:`workflow.pretrain.ema.ema_update` with
    :func:`workflow.pretrain.ema.byol_tau`.

    Example::

        loss_fn = BYOLLoss()
        out = loss_fn(predictor(projector(backbone(x0))), target(x1), predictor(projector(backbone(x1))), target(x0))
        out.loss.backward()
    """

    def forward(self, p0: torch.Tensor, z1: torch.Tensor, p1: torch.Tensor, z0: torch.Tensor) -> LossTerms:
        check_pair(p0, z1)
        check_pair(p1, z0)
        cosine = 0.5 * (F.cosine_similarity(p0, z1.detach(), dim=1).mean()
                        + F.cosine_similarity(p1, z0.detach(), dim=1).mean())
        return LossTerms(2 - 2 * cosine, {"cosine": cosine.detach()})
