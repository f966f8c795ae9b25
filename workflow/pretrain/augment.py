"""Batched augmentations on tensors; every random draw comes from an explicit ``torch.Generator``."""

from __future__ import annotations

import torch


class SignalAugment:
    """Views of 1-D signals (B, L): random crop with resize, circular shift, scaling, slope and
    offset, Gaussian noise and a masked segment.

    The shift and slope/offset follow the MNIST-1D SimCLR notebook (Greydanus & Kobak 2024); crop-and-
    resize is the 1-D analogue of SimCLR's random resized crop (Chen et al. 2020).
    """

    def __init__(self, min_crop: float = 0.75, max_shift: int = 8, scale: tuple[float, float] = (0.8, 1.2),
                 slope: float = 0.3, noise: float = 0.05, mask_fraction: float = 0.15) -> None:
        self.min_crop, self.max_shift, self.scale = min_crop, max_shift, scale
        self.slope, self.noise, self.mask_fraction = slope, noise, mask_fraction

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, length = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen, device=dev)

        # Random crop of relative length in [min_crop, 1], resized back to L by linear interpolation.
        crop = self.min_crop + (1 - self.min_crop) * rand(b, 1)
        start = (1 - crop) * rand(b, 1)
        grid = start + crop * torch.linspace(0, 1, length, device=dev)[None, :]  # positions in [0, 1]
        pos = grid * (length - 1)
        lo = pos.floor().long().clamp(0, length - 1)
        hi = (lo + 1).clamp(max=length - 1)
        w = pos - lo
        x = x.gather(1, lo) * (1 - w) + x.gather(1, hi) * w
        # Circular shift by up to max_shift positions.
        shift = torch.randint(-self.max_shift, self.max_shift + 1, (b, 1), generator=gen, device=dev)
        idx = (torch.arange(length, device=dev)[None, :] - shift) % length
        x = x.gather(1, idx)
        # Amplitude scaling, linear trend and offset.
        lo_s, hi_s = self.scale
        x = x * (lo_s + (hi_s - lo_s) * rand(b, 1))
        t = torch.linspace(-1, 1, length, device=dev)[None, :]
        x = x + self.slope * (2 * rand(b, 1) - 1) * t + self.slope * (2 * rand(b, 1) - 1)
        x = x + self.noise * torch.randn(x.shape, generator=gen, device=dev)
        # Zero one random segment.
        seg = max(1, int(self.mask_fraction * length))
        seg_start = torch.randint(0, length - seg + 1, (b, 1), generator=gen, device=dev)
        offs = torch.arange(length, device=dev)[None, :] - seg_start
        return x.masked_fill((offs >= 0) & (offs < seg), 0.0)


class VectorAugment:
    """Views of plain vectors (B, D): Gaussian noise (relative to each feature's batch std) and
    random feature masking, the augmentations used for tabular/feature SSL (e.g. VIME, SCARF)."""

    def __init__(self, noise: float = 0.1, mask_probability: float = 0.2) -> None:
        self.noise, self.mask_probability = noise, mask_probability

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        std = x.std(dim=0, keepdim=True).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(x[:1])
        x = x + self.noise * std * torch.randn(x.shape, generator=gen, device=x.device)
        keep = torch.rand(x.shape, generator=gen, device=x.device) >= self.mask_probability
        return x * keep


def build_augment(input_kind: str) -> SignalAugment | VectorAugment:
    return SignalAugment() if input_kind == "signal" else VectorAugment()
