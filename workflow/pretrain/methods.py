"""The six self-supervised methods as (trainable module, loss step) pairs on a shared backbone.

Each method builds one ``nn.Module`` holding everything trained by gradient (wrapped in DDP by Ray Train),
plus, for BYOL, an EMA target network kept outside DDP (updated identically on every rank). ``step_loss``
turns a batch into a :class:`~workflow.pretrain.losses.LossTerms`.

==========  ==========================================  ======================================
method      views                                       loss
==========  ==========================================  ======================================
simclr      two augmentations                           NT-Xent (Chen et al. 2020)
byol        two augmentations, EMA target               2 - 2 cos (Grill et al. 2020)
barlowtwins two augmentations                           cross-correlation (Zbontar et al. 2021)
vicreg      two augmentations                           var/inv/cov (Bardes et al. 2022)
swav        two augmentations, prototypes, Sinkhorn     swapped prediction (Caron et al. 2020)
tldr        each item and one of its k input-space NNs  Barlow Twins, 1/32 (Kalantidis et al. 2022)
==========  ==========================================  ======================================
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from workflow.pretrain import losses as L
from workflow.pretrain.models import ProjectionHead

METHODS = ("simclr", "byol", "barlowtwins", "vicreg", "swav", "tldr")

# Method defaults where the papers differ (small-data settings; every one is a config key).
DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": {"temperature": 0.5, "projection_dim": 64},
    "byol": {"projection_dim": 128},
    "barlowtwins": {"projection_dim": 512, "lambda_param": 5e-3},
    "vicreg": {"projection_dim": 512},
    "swav": {"temperature": 0.1, "projection_dim": 64},
    "tldr": {"projection_dim": 512, "lambda_param": 3.9e-3},
}


def resolved(params: dict[str, Any], n_train: int) -> dict[str, Any]:
    """``params`` with the method's defaults filled in where the config leaves ``null``."""
    out = dict(params)
    for key, value in DEFAULTS[params["method"]].items():
        if out.get(key) is None:
            out[key] = value
    if params["method"] == "swav":
        if out.get("swav_prototypes") is None:  # 3000 in the paper; fewer for small data
            out["swav_prototypes"] = int(min(3000, max(10, n_train // 10)))
        if out.get("swav_freeze_prototypes_steps") is None:
            out["swav_freeze_prototypes_steps"] = int(min(313, out["steps"] // 10))
    return out


class Trainable(nn.Module):
    """Backbone + projector (+ predictor for BYOL, + prototypes for SwAV); ``forward`` gives what the loss sees."""

    def __init__(self, encoder: nn.Module, params: dict[str, Any], embedding_dim: int) -> None:
        super().__init__()
        method = params["method"]
        self.method = method
        hidden = params["projector_hidden_dim"]
        self.encoder = encoder
        self.projector = ProjectionHead(embedding_dim, hidden, params["projection_dim"])
        self.predictor = ProjectionHead(params["projection_dim"], hidden, params["projection_dim"]) \
            if method == "byol" else None
        self.prototypes = L.SwAVPrototypes(params["projection_dim"], params["swav_prototypes"],
                                           params["swav_freeze_prototypes_steps"]) if method == "swav" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projector(self.encoder(x))
        if self.predictor is not None:
            return self.predictor(z)
        if self.prototypes is not None:
            return self.prototypes(z)
        return z


class Method:
    """One SSL method: its trainable module, optional EMA target, loss and per-step hooks."""

    def __init__(self, encoder: nn.Module, params: dict[str, Any], embedding_dim: int) -> None:
        self.params = params
        self.name = params["method"]
        self.module = Trainable(encoder, params, embedding_dim)
        self.target: nn.Module | None = None
        if self.name == "byol":
            self.target = nn.Sequential(copy.deepcopy(encoder), copy.deepcopy(self.module.projector))
            for p in self.target.parameters():
                p.requires_grad_(False)
        p = params
        if self.name == "simclr":
            self.criterion: nn.Module = L.NTXentLoss(p["temperature"])
        elif self.name == "byol":
            self.criterion = L.BYOLLoss()
        elif self.name == "barlowtwins":
            self.criterion = L.BarlowTwinsLoss(p["lambda_param"])
        elif self.name == "vicreg":
            self.criterion = L.VICRegLoss(p["vicreg_invariance"], p["vicreg_variance"], p["vicreg_covariance"])
        elif self.name == "swav":
            self.criterion = L.SwAVLoss(p["temperature"], p["swav_epsilon"], p["swav_sinkhorn_iterations"])
        elif self.name == "tldr":
            self.criterion = L.TLDRLoss(p["lambda_param"])
        else:
            raise ValueError(f"unknown method {self.name!r}")

    @property
    def uses_augmentation(self) -> bool:
        return self.name != "tldr"

    def to(self, device: torch.device) -> Method:
        self.module.to(device)
        if self.target is not None:
            self.target.to(device)
        return self

    def before_step(self, step: int) -> None:
        if self.module.prototypes is not None:
            self.module.prototypes.normalize_()

    def before_optimizer_step(self, step: int) -> None:
        if self.module.prototypes is not None:
            self.module.prototypes.freeze_if_needed(step)

    def after_step(self, step: int, total: int) -> None:
        if self.target is not None:
            tau = L.byol_tau(step, total, self.params["byol_tau_base"])
            L.ema_update(nn.Sequential(self.module.encoder, self.module.projector), self.target, tau)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, v0: torch.Tensor, v1: torch.Tensor,
                   step: int, total: int, lr: float, use_amp: bool = False) -> L.LossTerms:
        """One optimisation step on a batch's two views, with the method's hooks in their places."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.before_step(step)
        with torch.autocast(v0.device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = self.step_loss(model, v0, v1)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.before_optimizer_step(step)
        optimizer.step()
        self.after_step(step, total)
        return out

    def step_loss(self, model: nn.Module, v0: torch.Tensor, v1: torch.Tensor) -> L.LossTerms:
        """The loss of one batch given its two views (``model`` is the possibly DDP-wrapped ``module``)."""
        n = v0.shape[0]
        out = model(torch.cat([v0, v1])).float()
        a, b = out[:n], out[n:]
        if self.name == "simclr":
            return self.criterion.terms(a, b)
        if self.name == "byol":
            assert self.target is not None
            with torch.no_grad():
                t = self.target(torch.cat([v0, v1])).float()
            return self.criterion(a, t[n:], b, t[:n])
        if self.name == "swav":
            return self.criterion([a, b])
        return self.criterion(a, b)
