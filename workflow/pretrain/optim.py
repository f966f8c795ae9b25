"""Optimisers: AdamW and SGD from torch, and LARS.

LARS (You et al. 2017, "Large Batch Training of Convolutional Networks"), as in the official Barlow Twins
and VICReg code: SGD with momentum where each weight matrix's update is scaled by the trust ratio
eta * ||w|| / ||g + wd * w||; biases and normalisation parameters (1-D tensors) get neither weight decay
nor the adaptation.

Weight decay on AdamW and SGD applies to every parameter by default; ``weight_decay_scope: weights`` exempts
biases and normalisation parameters, as DINO's ``utils.get_params_groups`` (Caron et al. 2021) and BYOL's LARS
(Grill et al. 2020) do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of SGD with momentum."""

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float = 1e-6, momentum: float = 0.9,
                 eta: float = 0.001) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eta": eta})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:  # weights: decay and trust ratio; biases and norms: plain SGD
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(g)
                p.add_(mu, alpha=-group["lr"])
        return loss


def parameter_groups(params: Iterable[Any], weight_decay: float, scope: str = "all") -> list[dict[str, Any]]:
    """Optimiser parameter groups: weight decay on every parameter (``all``), or on weight matrices and kernels
    only (``weights``: 1-D tensors, the biases and normalisation parameters, get none).

    ``params`` holds tensors, or groups (``{"params": [...], ...}``: other keys, such as ``lr_scale``, are kept),
    each split the same way."""
    if scope not in ("all", "weights"):
        raise ValueError(f"unknown weight_decay_scope {scope!r}; choose all or weights")
    items = list(params)
    groups = items if items and isinstance(items[0], dict) else [{"params": items}]
    out = []
    for group in groups:
        tensors, keys = list(group["params"]), {k: v for k, v in group.items() if k != "params"}
        if scope == "all":
            out.append({**keys, "params": tensors, "weight_decay": weight_decay})
        else:
            out += [{**keys, "params": [p for p in tensors if p.ndim > 1], "weight_decay": weight_decay},
                    {**keys, "params": [p for p in tensors if p.ndim <= 1], "weight_decay": 0.0}]
    return [g for g in out if g["params"]]


def build_optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float, momentum: float = 0.9,
                    weight_decay_scope: str = "all") -> torch.optim.Optimizer:
    groups = parameter_groups(params, weight_decay, weight_decay_scope)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}")
