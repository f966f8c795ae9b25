"""DINO: self-distillation with no labels (Caron et al. 2021) -- its loss, head and multi-crop views.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (ICCV; arXiv 2104.14294),
Sec. 3.1 and Algorithm 1; ``facebookresearch/dino:main_dino.py`` (``DINOLoss``, ``DataAugmentationDINO``) and
``vision_transformer.py`` (``DINOHead``). A student network g_s (backbone + :class:`DINOHead`) and a teacher g_t,
an exponential moving average of the student (:func:`~workflow.pretrain.ema.ema_update` with BYOL's cosine
schedule :func:`~workflow.pretrain.ema.byol_tau`, 0.996 -> 1), see the views of one batch: the teacher only the
two global views, the student every view (global and local, :class:`MultiCrop`). The teacher's outputs are
centred and sharpened, the student's tempered::

    P_t(x) = softmax((g_t(x) - c) / tau_t),    P_s(x) = softmax(g_s(x) / tau_s)
    L = 1 / #pairs * sum_{t in global views} sum_{v in all views, v != t} mean_n H(P_t(x_t,n), P_s(x_v,n))
    H(a, b) = - sum_k a_k log b_k
    c <- m c + (1 - m) * mean over the (global) batch of the teacher outputs g_t(x_t,n), both global views

with tau_s = 0.1, tau_t warmed up linearly from 0.04 to 0.07 (:func:`teacher_temperature`), m = 0.9.
Centering (subtracting c) keeps one output dimension from dominating; sharpening (a small tau_t) keeps the
teacher from the uniform output; together they avoid collapse without negatives or a predictor.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from workflow.pretrain.augment import ImageAugment, SignalAugment, VectorAugment
from workflow.pretrain.losses.common import LossTerms, global_count, use_distributed


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def teacher_temperature(step: int, warmup_steps: int, warmup_temp: float = 0.04, final_temp: float = 0.07) -> float:
    """tau_t at ``step``: linear from ``warmup_temp`` (step 0) to ``final_temp`` (step ``warmup_steps - 1``), then
    ``final_temp`` -- ``np.linspace(warmup, final, warmup_steps)`` as ``main_dino.py`` (per epoch there)."""
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if step >= warmup_steps:
        return final_temp
    if warmup_steps == 1:
        return warmup_temp
    return warmup_temp + (final_temp - warmup_temp) * step / (warmup_steps - 1)


class DINOLoss(nn.Module):
    """DINO's cross-entropy between the centred, sharpened teacher and the student, with a momentum centre.

    Caron et al. 2021 (arXiv 2104.14294), eq. (1)-(4), Algorithm 1; ``facebookresearch/dino:main_dino.py``
    ``DINOLoss``. See the module docstring for the formulas. The loss uses the centre *before* this batch's
    update (as the official code); ``forward`` then updates the centre (a buffer, saved with the state dict).

    ``terms``: ``cross_entropy`` (the loss), ``teacher_entropy`` (mean entropy of P_t: log K when the teacher is
    uniform, 0 when one-hot) and ``teacher_temperature``.

    Args:
        out_dim: K, the head's output dimension (65536 in the paper).
        warmup_teacher_temp: tau_t at step 0; 0.04.
        teacher_temp: tau_t after the warm-up; 0.07 (the paper's warm-up target; ``main_dino.py`` defaults 0.04).
        warmup_steps: steps of the linear warm-up of tau_t (30 epochs in the paper); 0 = ``teacher_temp`` throughout.
        student_temp: tau_s; 0.1.
        center_momentum: m; 0.9.
        gather_distributed: update the centre with the mean over every process's rows (an all-reduced sum
            divided by the global count: exactly the centre of one process holding the whole batch). The
            cross-entropy is the local mean; DDP's gradient averaging makes it the global one.

    Example::

        loss_fn = DINOLoss(out_dim=1024, warmup_steps=300)
        out = loss_fn(teacher_out=[t0, t1], student_out=[s0, s1, *locals_], step=step)
        out.loss.backward()
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.07,
                 warmup_steps: int = 0, student_temp: float = 0.1, center_momentum: float = 0.9,
                 gather_distributed: bool = True) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be positive, got {out_dim}")
        for name, value in (("warmup_teacher_temp", warmup_teacher_temp), ("teacher_temp", teacher_temp),
                            ("student_temp", student_temp)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be non-negative, got {warmup_steps}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.warmup_teacher_temp = warmup_teacher_temp
        self.teacher_temp = teacher_temp
        self.warmup_steps = warmup_steps
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.gather_distributed = gather_distributed
        self.register_buffer("center", torch.zeros(1, out_dim))

    def temperature(self, step: int) -> float:
        """tau_t at ``step`` (:func:`teacher_temperature`)."""
        return teacher_temperature(step, self.warmup_steps, self.warmup_teacher_temp, self.teacher_temp)

    def forward(self, teacher_out: Sequence[torch.Tensor], student_out: Sequence[torch.Tensor],
                step: int = 0) -> LossTerms:
        """The loss for teacher outputs of the global views (N, K) each and student outputs of every view, the
        global ones first in the same order; then the centre update."""
        n_global, n_views = len(teacher_out), len(student_out)
        if n_global < 1 or n_views < 2 or n_views < n_global:
            raise ValueError(f"DINO needs at least one teacher view and two student views, the teacher's among them; "
                             f"got {n_global} and {n_views}")
        shape = teacher_out[0].shape
        if len(shape) != 2 or shape[1] != self.center.shape[1] or any(
                v.shape != shape for v in (*teacher_out, *student_out)):
            raise ValueError(f"expected (N, {self.center.shape[1]}) outputs of one shape per view, got "
                             f"{[tuple(v.shape) for v in (*teacher_out, *student_out)]}")
        temp = self.temperature(step)
        teacher = _at_least_float32(torch.cat([t.detach() for t in teacher_out]))
        probs = F.softmax((teacher - self.center) / temp, dim=1).chunk(n_global)
        log_student = [F.log_softmax(_at_least_float32(s) / self.student_temp, dim=1) for s in student_out]
        loss = teacher.new_zeros(())
        pairs = 0
        for t, q in enumerate(probs):
            for v, log_p in enumerate(log_student):
                if v == t:  # never the same view for teacher and student
                    continue
                loss = loss + (-(q * log_p).sum(dim=1)).mean()
                pairs += 1
        loss = loss / pairs
        p = torch.cat(probs)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1).mean()
        self.update_center(teacher)
        return LossTerms(loss, {"cross_entropy": loss.detach(), "teacher_entropy": entropy.detach(),
                                "teacher_temperature": torch.tensor(temp)})

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """``c <- m c + (1 - m) * mean_n teacher_n``, the mean over the global batch when distributed."""
        distributed = use_distributed(self.gather_distributed)
        total = teacher.detach().sum(dim=0, keepdim=True).to(self.center.dtype)
        if distributed:
            dist.all_reduce(total)
        count = global_count(teacher.shape[0], teacher.device, distributed)
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU) to a bottleneck, L2 normalisation, and a weight-normalised
    bias-free linear layer to K outputs.

    ``facebookresearch/dino:vision_transformer.py`` ``DINOHead`` (``use_bn=False``, ``norm_last_layer=True``):
    Linear(in, hidden) GELU Linear(hidden, hidden) GELU Linear(hidden, bottleneck), truncated-normal init
    (std 0.02, zero biases); the last layer is ``weight_norm`` with its gain fixed to 1, i.e. each output row
    ``v_k / ||v_k||``, written here directly (``last_layer``'s rows are normalised in ``forward``).

    Args:
        input_dim: backbone embedding width.
        hidden_dim: MLP width; 2048 in the paper (here the config's ``projector_hidden_dim``).
        bottleneck_dim: 256.
        out_dim: K.
    """

    def __init__(self, input_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 out_dim: int = 65536) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.last_layer.weight, dim=1))


# --------------------------------------------------------------------------- multi-crop views

#: Local crops' share of the input (main_dino.py ``local_crops_scale``): of the area for images; for signals the
#: square roots, the side of that area, as a share of the length.
LOCAL_CROP_SCALE = {"image": (0.05, 0.4), "signal": (math.sqrt(0.05), math.sqrt(0.4))}
#: Local crops' side relative to the image's (96 / 224 px in the paper).
LOCAL_CROP_SIZE = 96 / 224


class MultiCrop:
    """DINO's multi-crop (Caron et al. 2021, Sec. 3.1; Caron et al. 2020, Sec. 3.2): two global views and
    ``n_local`` local views of a batch, every draw from the generator passed in, on the batch's device.

    The global views are the views every other method trains on (``augment``, the data's augmentation). The
    local views are the same augmentation with a smaller share of the input:

    * images: a random resized crop of ``local_scale`` of the area (paper 0.05-0.4) resized to
      ``local_size`` of the side (paper 96/224 px), returned as (B, C, h, w); the ResNet pools globally, so it
      takes both resolutions (the student runs each resolution as one batch, as DINO's ``MultiCropWrapper``);
    * signals: a crop of ``local_scale`` of the length (default the square roots of the paper's area shares,
      0.22-0.63: the side of the same area), resized back to the input length as the global crops are (the
      1-D CNN ends with a linear map of its flattened feature map, so it needs one length; a local view is
      then a zoomed-in short segment, the 1-D analogue of a small crop upsampled to the network's input);
    * vectors (no spatial structure to crop): the vector augmentation at twice the noise and masking half
      the features (the global views mask 20%), a view that keeps less of the input.
    """

    def __init__(self, augment: Any, n_local: int, local_scale: Sequence[float] | None = None,
                 local_size: float = LOCAL_CROP_SIZE) -> None:
        if n_local < 0:
            raise ValueError(f"n_local must be non-negative, got {n_local}")
        self.augment = augment
        self.n_local = n_local
        self.local = local_augment(augment, local_scale, local_size)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        views = [self.augment(x, gen), self.augment(x, gen)]
        return views + [self.local(x, gen) for _ in range(self.n_local)]


def local_augment(augment: Any, scale: Sequence[float] | None = None,
                  size: float = LOCAL_CROP_SIZE) -> ImageAugment | SignalAugment | VectorAugment:
    """The local-view version of an augmentation (see :class:`MultiCrop`); ``scale`` None = the kind's default."""
    if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"local crop scale must be a range [low, high] within (0, 1], got {list(scale)}")
    if not 0 < size <= 1:
        raise ValueError(f"local crop size must be in (0, 1], got {size}")
    if isinstance(augment, ImageAugment):
        lo, hi = scale if scale is not None else LOCAL_CROP_SCALE["image"]
        _, h, w = augment.image_shape
        local = copy.copy(augment)
        local.crop_scale = (float(lo), float(hi))
        local.set_output_size((max(1, round(size * h)), max(1, round(size * w))))
        return local
    if isinstance(augment, SignalAugment):
        lo, hi = scale if scale is not None else LOCAL_CROP_SCALE["signal"]
        local = copy.copy(augment)
        local.min_crop, local.max_crop = float(lo), float(hi)
        return local
    if isinstance(augment, VectorAugment):
        return VectorAugment(noise=2 * augment.noise, mask_probability=0.5)
    raise TypeError(f"no local views for {type(augment).__name__}")
