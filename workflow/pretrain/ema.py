"""The EMA target network of BYOL and DINO: its momentum schedule and its update.

BYOL's target (Grill et al. 2020) and DINO's teacher (Caron et al. 2021) are exponential moving averages of
the online network, ``target <- tau * target + (1 - tau) * online`` after every optimisation step
(:func:`ema_update`), with ``tau`` raised from its base to 1 along a cosine (:func:`byol_tau`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def byol_tau(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's target-network momentum at ``step``: ``final - (final - base) (cos(pi k / K) + 1) / 2``.

    Grill et al. 2020, "Bootstrap Your Own Latent" (NeurIPS; arXiv 2006.07733), Sec. 3.2. ``k = step`` and
    ``K = total_steps - 1``, so step 0 gives ``base`` and the last step (``total_steps - 1``) gives ``final``
    (as lightly's ``cosine_schedule``); later steps give ``final``. DINO's teacher follows it too.
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
    """``target <- tau * target + (1 - tau) * online`` for parameters; ``tau = 0`` copies the online network's
    parameters, ``tau = 1`` leaves the target unchanged.

    Buffers (batch-norm running statistics) are not averaged or copied: the target keeps the statistics of its
    own forward passes, as DINO's teacher (``main_dino.py``) and lightly's ``update_momentum`` do. They matter only
    when the target runs in eval mode (DINO's teacher, the representation that is evaluated); in training both
    networks normalise with batch statistics.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    online_params, target_params = list(online.parameters()), list(target.parameters())
    shapes = [p.shape for p in online_params], [p.shape for p in target_params]
    if shapes[0] != shapes[1]:
        raise ValueError("online and target networks must have the same parameters")
    for o, t in zip(online_params, target_params, strict=True):
        t.lerp_(o.detach(), 1.0 - tau)
