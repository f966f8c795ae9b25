"""The seven self-supervised methods as (trainable module, loss step) pairs on a shared backbone.

Each method builds one ``nn.Module`` holding everything trained by gradient (wrapped in DDP by Ray Train),
plus, for BYOL and DINO, an EMA target (teacher) network kept outside DDP (updated identically on every rank;
DINO's target also holds the loss's centre, so checkpoints keep it). ``views`` makes a batch's views (two, or
DINO's multi-crop) and ``step_loss`` turns them into a :class:`~workflow.pretrain.losses.LossTerms`.

==========  ==========================================  ======================================
method      views                                       loss
==========  ==========================================  ======================================
simclr      two augmentations                           NT-Xent (Chen et al. 2020)
byol        two augmentations, EMA target               2 - 2 cos (Grill et al. 2020)
barlowtwins two augmentations                           cross-correlation (Zbontar et al. 2021)
vicreg      two augmentations                           var/inv/cov (Bardes et al. 2022)
swav        two augmentations, prototypes, Sinkhorn     swapped prediction (Caron et al. 2020)
tldr        each item and one of its k input-space NNs  Barlow Twins, 1/32 (Kalantidis et al. 2022)
dino        2 global + N local crops, EMA teacher       centred/sharpened CE (Caron et al. 2021)
==========  ==========================================  ======================================
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from workflow.config import enum
from workflow.pretrain import losses as L
from workflow.pretrain.dino import DINOHead, DINOLoss, MultiCrop
from workflow.pretrain.ema import byol_tau, ema_update
from workflow.pretrain.models import ProjectionHead, SwAVPrototypes
from workflow.pretrain.optim import build_optimizer

# The schema's list, in its order, less `none` (a frozen-feature entry: evaluated, never trained).
METHODS = tuple(m for m in enum("ssl", "method") if m != "none")

# Method defaults where the papers differ (small-data settings; every one is a config key).
DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": {"temperature": 0.5, "projection_dim": 64},
    "byol": {"projection_dim": 128},
    "barlowtwins": {"projection_dim": 512, "lambda_param": 5e-3},
    "vicreg": {"projection_dim": 512},
    "swav": {"temperature": 0.1, "projection_dim": 64},
    "tldr": {"projection_dim": 512, "lambda_param": 3.9e-3},
    "dino": {"projection_dim": 256},  # the DINO head's bottleneck (Caron et al. 2021)
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
    if params["method"] == "dino":
        if out.get("dino_out_dim") is None:  # 65536 in the paper; about four training items per output here
            out["dino_out_dim"] = int(min(65536, max(256, n_train // 4)))
        if out.get("dino_freeze_last_layer_steps") is None:  # the paper's first epoch, at most a tenth of the run
            out["dino_freeze_last_layer_steps"] = int(min(max(1, n_train // out["batch_size"]), out["steps"] // 10))
    return out


class Trainable(nn.Module):
    """Backbone + projector (DINO's head for DINO; + predictor for BYOL, + prototypes for SwAV); ``forward``
    gives what the loss sees, for one batch or (multi-crop) a list of views, each resolution one backbone batch."""

    def __init__(self, encoder: nn.Module, params: dict[str, Any], embedding_dim: int) -> None:
        super().__init__()
        method = params["method"]
        self.method = method
        hidden = params["projector_hidden_dim"]
        self.encoder = encoder
        self.projector: nn.Module = DINOHead(embedding_dim, hidden, params["projection_dim"], params["dino_out_dim"]) \
            if method == "dino" else ProjectionHead(embedding_dim, hidden, params["projection_dim"])
        self.predictor = ProjectionHead(params["projection_dim"], hidden, params["projection_dim"]) \
            if method == "byol" else None
        self.prototypes = SwAVPrototypes(params["projection_dim"], params["swav_prototypes"],
                                         params["swav_freeze_prototypes_steps"]) if method == "swav" else None
        self.predictor_lr_scale = float(params.get("byol_predictor_lr_scale", 1.0))

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: one, or for BYOL with ``byol_predictor_lr_scale`` ≠ 1 the predictor
        apart, its learning rate scaled by ``lr_scale`` (:meth:`Method.train_step` applies it)."""
        if self.predictor is None or self.predictor_lr_scale == 1.0:
            return [{"params": list(self.parameters())}]
        predictor = {id(p) for p in self.predictor.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in predictor]},
                {"params": list(self.predictor.parameters()), "lr_scale": self.predictor_lr_scale}]

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # views in order; consecutive views of one shape share a batch
            groups: list[list[torch.Tensor]] = []
            for view in x:
                if groups and groups[-1][0].shape[1:] == view.shape[1:]:
                    groups[-1].append(view)
                else:
                    groups.append([view])
            z = self.projector(torch.cat([self.encoder(torch.cat(g)) for g in groups]))
        else:
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
        if self.name in ("byol", "dino"):
            self.target = nn.Sequential(copy.deepcopy(encoder), copy.deepcopy(self.module.projector))
            for p in self.target.parameters():
                p.requires_grad_(False)
        self.multi_crop: MultiCrop | None = None  # DINO's views, built from the data's augmentation on first use
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
        elif self.name == "dino":
            self.criterion = DINOLoss(p["dino_out_dim"], p["dino_warmup_teacher_temp"], p["dino_teacher_temp"],
                                      round(p["dino_warmup_teacher_temp_fraction"] * p["steps"]),
                                      p["dino_student_temp"], p["dino_center_momentum"])
            # The teacher (EMA network) and the centre travel together: one state dict, saved in checkpoints.
            self.target = nn.ModuleDict({"network": self.target, "loss": self.criterion})
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
        if self.name == "dino" and step < self.params["dino_freeze_last_layer_steps"]:
            self.module.projector.last_layer.weight.grad = None  # DINO keeps its output layer fixed at first

    def after_step(self, step: int, total: int) -> None:
        if self.name == "byol":
            assert self.target is not None
            tau = byol_tau(step, total, self.params["byol_tau_base"])
            ema_update(nn.Sequential(self.module.encoder, self.module.projector), self.target, tau)
        elif self.name == "dino":  # the teacher follows BYOL's cosine schedule from dino_teacher_momentum to 1
            tau = byol_tau(step, total, self.params["dino_teacher_momentum"])
            ema_update(nn.Sequential(self.module.encoder, self.module.projector), self.teacher, tau)

    @property
    def representation(self) -> nn.Module:
        """The backbone whose embeddings are the method's result (saved, monitored, evaluated): DINO's teacher
        backbone, which Caron et al. 2021 evaluate (sec. 5.2: the teacher beats the student throughout training;
        ``eval_knn.py`` takes ``checkpoint_key teacher``); else the trained encoder (BYOL evaluates its online
        encoder, Grill et al. 2020 sec. 3.1). Callers put it in eval mode to embed, and back in train mode after."""
        return self.teacher[0] if self.name == "dino" else self.module.encoder

    @property
    def teacher(self) -> nn.Module:
        """The EMA network (BYOL's target, DINO's teacher)."""
        assert self.target is not None
        return self.target["network"] if isinstance(self.target, nn.ModuleDict) else self.target

    def views(self, batch: torch.Tensor, augment: Any, gen: torch.Generator) -> list[torch.Tensor]:
        """A batch's views, every draw from ``gen``: two augmentations, or DINO's two global and
        ``dino_local_crops`` local ones (:class:`~workflow.pretrain.dino.MultiCrop`)."""
        if self.name != "dino":
            return [augment(batch, gen), augment(batch, gen)]
        if self.multi_crop is None or self.multi_crop.augment is not augment:
            p = self.params
            self.multi_crop = MultiCrop(augment, p["dino_local_crops"], p["dino_local_crop_scale"],
                                        p["dino_local_crop_size"])
        return self.multi_crop(batch, gen)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the method's settings (``optimizer``, ``lr``, ``weight_decay`` and its scope,
        ``momentum``) over :meth:`Trainable.optimizer_groups`; :meth:`train_step` sets each group's learning rate."""
        p = self.params
        return build_optimizer(p["optimizer"], self.module.optimizer_groups(), p["lr"], p["weight_decay"],
                               p["momentum"], p["weight_decay_scope"])

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, v0: torch.Tensor, v1: torch.Tensor,
                   step: int, total: int, lr: float, use_amp: bool = False,
                   local_views: Sequence[torch.Tensor] = ()) -> L.LossTerms:
        """One optimisation step on a batch's two views (and DINO's local views), with the method's hooks in
        their places."""
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.before_step(step)
        with torch.autocast(v0.device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = self.step_loss(model, v0, v1, local_views, step)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.before_optimizer_step(step)
        optimizer.step()
        self.after_step(step, total)
        return out

    def step_loss(self, model: nn.Module, v0: torch.Tensor, v1: torch.Tensor,
                  local_views: Sequence[torch.Tensor] = (), step: int = 0) -> L.LossTerms:
        """The loss of one batch given its views (``model`` is the possibly DDP-wrapped ``module``; local
        views only for DINO)."""
        if self.name == "dino":
            student = model([v0, v1, *local_views]).float()
            with torch.no_grad():
                teacher = self.teacher(torch.cat([v0, v1])).float()
            return self.criterion(teacher.chunk(2), student.chunk(2 + len(local_views)), step)
        if len(local_views):
            raise ValueError(f"{self.name} takes two views, got {2 + len(local_views)}")
        n = v0.shape[0]
        out = model(torch.cat([v0, v1])).float()
        a, b = out[:n], out[n:]
        if self.name == "simclr":
            return self.criterion.terms(a, b)
        if self.name == "byol":
            with torch.no_grad():
                t = self.teacher(torch.cat([v0, v1])).float()
            return self.criterion(a, t[n:], b, t[:n])
        if self.name == "swav":
            return self.criterion([a, b])
        return self.criterion(a, b)
