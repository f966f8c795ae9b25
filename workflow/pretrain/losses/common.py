"""What every loss shares: the :class:`LossTerms` they return, and the distributed helpers.

With ``gather_distributed=True`` and ``torch.distributed`` initialised, a loss takes its batch statistics over
the global batch, with gradients that match one process holding the whole batch once DDP averages them over
ranks (lightly-ai/lightly#1977).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class LossTerms:
    """A loss to back-propagate and its separately logged terms (detached scalar tensors)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]

    def scalars(self) -> dict[str, float]:
        """``{"loss": ..., **terms}`` as Python floats, for logging."""
        return {"loss": float(self.loss.detach()), **{k: float(v) for k, v in self.terms.items()}}


def use_distributed(gather_distributed: bool) -> bool:
    """Whether to take statistics over every process: asked for, initialised and more than one process."""
    return gather_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over processes; the backward pass sums the gradients too (lightly-ai/lightly#1977)."""
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd all-reduce
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping gradients for every slice.

    ``torch.distributed.nn.functional.all_gather`` back-propagates the summed gradients to the
    process that owns each slice, so a loss over the global batch gets the same gradients as one
    process holding the whole batch (after DDP's gradient averaging). Identity when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x), dim=0)


def global_count(n: int, device: torch.device, distributed: bool) -> int:
    """The number of rows over every process (``n`` when not distributed)."""
    if not distributed:
        return n
    count = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(count)
    return int(count.item())


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def check_pair(z_a: torch.Tensor, z_b: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``z_a`` and ``z_b`` are two (N, D) tensors of the same shape."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of the same shape, got {tuple(z_a.shape)} and "
                         f"{tuple(z_b.shape)}")
