"""Batched augmentations on tensors; every random draw comes from an explicit ``torch.Generator``.

They run on the device of the batch (the GPU when the training batch lives there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


class SignalAugment:
    """Views of 1-D signals (B, L): random crop with resize, circular shift, scaling, slope and
    offset, Gaussian noise and a masked segment.

    The shift and slope/offset follow the MNIST-1D SimCLR notebook (Greydanus & Kobak 2024); crop-and-
    resize is the 1-D analogue of SimCLR's random resized crop (Chen et al. 2020).
    """

    def __init__(self, min_crop: float = 0.75, max_shift: int = 8, scale: tuple[float, float] = (0.8, 1.2),
                 slope: float = 0.3, noise: float = 0.05, mask_fraction: float = 0.15, max_crop: float = 1.0) -> None:
        self.min_crop, self.max_crop, self.max_shift, self.scale = min_crop, max_crop, max_shift, scale
        self.slope, self.noise, self.mask_fraction = slope, noise, mask_fraction

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, length = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen, device=dev)

        # Random crop of relative length in [min_crop, max_crop], resized back to L by linear interpolation.
        crop = self.min_crop + (self.max_crop - self.min_crop) * rand(b, 1)
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


class ImageAugment:
    """SimCLR's image views (Chen et al. 2020, app. A) on a batch of images, with kornia's image operations.

    In order: random resized crop (area fraction in ``crop_scale``, log-uniform aspect ratio in ``crop_ratio``,
    resized back to H x W), a random rotation about the centre (uniform in +-``rotation_degrees``) and shift
    (uniform in +-``translate`` of each side, as torchvision's ``RandomAffine``; zeros fill the uncovered corners:
    the background of digits; both 0 by default, as in SimCLR), horizontal flip with probability
    ``horizontal_flip``, colour jitter with probability ``color_jitter_probability`` (brightness, contrast,
    saturation 0.8 s and hue 0.2 s for strength s, in a random order per batch; saturation and hue only on RGB),
    random grayscale with probability ``grayscale_probability`` (RGB only), Gaussian blur with probability
    ``blur_probability`` (sigma uniform in ``blur_sigma`` pixels, kernel about a tenth of the image side, odd, at
    least 3).

    The defaults are SimCLR's CIFAR-10 recipe (colour strength 0.5, no blur, app. B.9) with the smallest crop
    raised from 8% to 20% of the area, since 8% of a 16x16 or 32x32 image is a few pixels. Crops are drawn as
    in torchvision's ``RandomResizedCrop`` (ten tries, else the central crop of the closest allowed ratio).

    Images are rows (B, C*H*W) of a vector table, or (B, C, H, W), with values in [0, 1]; the output has the
    input's shape and dtype. With an ``output_size`` (h, w) other than (H, W) (DINO's smaller local crops) the
    crops are resized to it and the output is (B, C, h, w). Every random draw comes from the ``torch.Generator``
    passed in, so a seeded generator gives the same views on the same device.
    """

    def __init__(self, image_shape: Sequence[int], crop_scale: Sequence[float] = (0.2, 1.0),
                 crop_ratio: Sequence[float] = (3 / 4, 4 / 3), horizontal_flip: float = 0.5,
                 color_jitter_probability: float = 0.8, color_jitter_strength: float = 0.5,
                 grayscale_probability: float = 0.2, blur_probability: float = 0.0,
                 blur_sigma: Sequence[float] = (0.1, 2.0), rotation_degrees: float = 0.0, translate: float = 0.0,
                 output_size: Sequence[int] | None = None) -> None:
        c, h, w = (int(v) for v in image_shape)
        if c not in (1, 3):
            raise ValueError(f"images need 1 or 3 channels, got shape {list(image_shape)}")
        self.image_shape = (c, h, w)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.horizontal_flip = float(horizontal_flip)
        self.color_jitter_probability = float(color_jitter_probability)
        s = float(color_jitter_strength)
        self.brightness, self.contrast, self.saturation, self.hue = 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s
        self.grayscale_probability = float(grayscale_probability)
        self.blur_probability = float(blur_probability)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.rotation_degrees = float(rotation_degrees)
        self.translate = float(translate)
        self.set_output_size(output_size or (h, w))

    def set_output_size(self, size: Sequence[int]) -> None:
        """Resize the crops to ``size`` (h, w); the blur kernel follows the output's side."""
        self.output_size = (int(size[0]), int(size[1]))
        side = min(self.output_size)
        self.blur_kernel = max(3, round(0.1 * side) // 2 * 2 + 1)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        flat = x.dim() == 2
        dtype = x.dtype
        img = x.reshape(x.shape[0], *self.image_shape).float() if flat else x.float()
        img = self._crop(img, gen)
        img = self._affine(img, gen)
        img = self._flip(img, gen)
        img = self._jitter(img, gen)
        img = self._grayscale(img, gen)
        img = self._blur(img, gen)
        img = img.to(dtype)
        return img.reshape(x.shape) if flat and self.output_size == self.image_shape[1:] else img

    @staticmethod
    def _chosen(b: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        """Indices of the batch items an operation of probability ``p`` applies to (one draw per item)."""
        return torch.nonzero(torch.rand(b, generator=gen, device=device) < p).flatten()

    def _crop(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from kornia.geometry.transform import crop_and_resize

        b, _, h, w = img.shape
        dev = img.device
        tries = 10
        area = h * w * (self.crop_scale[0] + (self.crop_scale[1] - self.crop_scale[0])
                        * torch.rand(b, tries, generator=gen, device=dev))
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, tries, generator=gen, device=dev))
        cw = torch.round(torch.sqrt(area * ratio))
        ch = torch.round(torch.sqrt(area / ratio))
        ok = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
        first = torch.argmax(ok.int(), dim=1)  # the first valid try (0 when none is valid)
        rows = torch.arange(b, device=dev)
        cw, ch, found = cw[rows, first], ch[rows, first], ok.any(dim=1)
        # Fallback (torchvision): the central crop whose aspect ratio is the closest allowed one.
        in_ratio = w / h
        if in_ratio < self.crop_ratio[0]:
            fw, fh = w, round(w / self.crop_ratio[0])
        elif in_ratio > self.crop_ratio[1]:
            fw, fh = round(h * self.crop_ratio[1]), h
        else:
            fw, fh = w, h
        cw = torch.where(found, cw, torch.full_like(cw, fw))
        ch = torch.where(found, ch, torch.full_like(ch, fh))
        u = torch.rand(b, 2, generator=gen, device=dev)
        x0 = torch.where(found, torch.floor(u[:, 0] * (w - cw + 1)), torch.full_like(cw, (w - fw) // 2))
        y0 = torch.where(found, torch.floor(u[:, 1] * (h - ch + 1)), torch.full_like(ch, (h - fh) // 2))
        if bool(((cw == w) & (ch == h)).all()) and self.output_size == (h, w):
            return img  # every crop is the whole image: nothing to resample
        x1, y1 = x0 + cw - 1, y0 + ch - 1
        boxes = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1), torch.stack([x1, y1], -1),
                             torch.stack([x0, y1], -1)], dim=1)  # (B, 4, 2): corners clockwise from top-left
        return crop_and_resize(img, boxes.to(img.dtype), self.output_size, mode="bilinear", align_corners=True)

    def _affine(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from kornia.geometry.transform import get_rotation_matrix2d, warp_affine

        if self.rotation_degrees == 0 and self.translate == 0:
            return img  # no draws: views of configs without it stay as they were
        b, _, h, w = img.shape
        dev = img.device
        u = 2 * torch.rand(b, 3, generator=gen, device=dev) - 1  # angle, x shift, y shift in [-1, 1)
        centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=dev).expand(b, 2)
        matrix = get_rotation_matrix2d(centre, u[:, 0] * self.rotation_degrees, torch.ones(b, 2, device=dev))
        shift = torch.round(u[:, 1:] * self.translate * torch.tensor([w, h], device=dev))  # whole pixels
        matrix = torch.cat([matrix[:, :, :2], matrix[:, :, 2:] + shift[:, :, None]], dim=2)
        return warp_affine(img, matrix.to(img.dtype), (h, w), mode="bilinear", padding_mode="zeros",
                           align_corners=True)

    def _flip(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        idx = self._chosen(img.shape[0], self.horizontal_flip, gen, img.device)
        if len(idx):
            img = img.clone()
            img[idx] = img[idx].flip(-1)
        return img

    def _jitter(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from kornia.enhance import (
            adjust_brightness_accumulative,
            adjust_contrast_with_mean_subtraction,
            adjust_hue,
            adjust_saturation_with_gray_subtraction,
        )

        b, c = img.shape[:2]
        dev = img.device
        idx = self._chosen(b, self.color_jitter_probability, gen, dev)
        # Factors for every item (so the number of draws does not depend on which items are chosen).
        factors = torch.rand(4, b, generator=gen, device=dev)
        order = torch.randperm(4, generator=gen, device=dev).tolist()
        if not len(idx):
            return img
        sub = img[idx].clamp(0.0, 1.0)
        f = factors[:, idx]
        for op in order:
            if op == 0 and self.brightness > 0:
                lo = max(0.0, 1 - self.brightness)
                sub = adjust_brightness_accumulative(sub, lo + (1 + self.brightness - lo) * f[0])
            elif op == 1 and self.contrast > 0:
                lo = max(0.0, 1 - self.contrast)
                sub = adjust_contrast_with_mean_subtraction(sub, lo + (1 + self.contrast - lo) * f[1])
            elif op == 2 and self.saturation > 0 and c == 3:
                lo = max(0.0, 1 - self.saturation)
                sub = adjust_saturation_with_gray_subtraction(sub, lo + (1 + self.saturation - lo) * f[2])
            elif op == 3 and self.hue > 0 and c == 3:  # hue shift in turns, kornia takes radians
                sub = adjust_hue(sub, (2 * f[3] - 1) * self.hue * 2 * math.pi)
        img = img.clone()
        img[idx] = sub.clamp(0.0, 1.0)
        return img

    def _grayscale(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from kornia.color import rgb_to_grayscale

        idx = self._chosen(img.shape[0], self.grayscale_probability, gen, img.device)
        if img.shape[1] != 3 or not len(idx):
            return img
        img = img.clone()
        img[idx] = rgb_to_grayscale(img[idx]).expand(-1, 3, -1, -1)
        return img

    def _blur(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from kornia.filters import gaussian_blur2d

        b = img.shape[0]
        idx = self._chosen(b, self.blur_probability, gen, img.device)
        lo, hi = self.blur_sigma
        sigma = lo + (hi - lo) * torch.rand(b, generator=gen, device=img.device)
        if not len(idx):
            return img
        s = sigma[idx, None].expand(-1, 2).to(img.dtype)
        img = img.clone()
        img[idx] = gaussian_blur2d(img[idx], self.blur_kernel, s, border_type="reflect")
        return img


IMAGE_AUGMENT_DEFAULTS: dict[str, Any] = {
    "crop_scale": [0.2, 1.0], "crop_ratio": [3 / 4, 4 / 3], "horizontal_flip": 0.5,
    "color_jitter_probability": 0.8, "color_jitter_strength": 0.5, "grayscale_probability": 0.2,
    "blur_probability": 0.0, "blur_sigma": [0.1, 2.0], "rotation_degrees": 0.0, "translate": 0.0,
}


def build_augment(input_kind: str, image_shape: Sequence[int] | None = None,
                  options: dict[str, Any] | None = None) -> SignalAugment | VectorAugment | ImageAugment:
    """The augmentation of an input kind: ``signal``, ``vector``, or ``image`` (which needs ``image_shape``
    [C, H, W]; ``options`` are :class:`ImageAugment`'s keyword arguments, the schema's ``ssl.image_augment``)."""
    if input_kind == "image":
        if image_shape is None:
            raise ValueError("image augmentation needs the image shape [C, H, W]")
        kwargs = {**IMAGE_AUGMENT_DEFAULTS, **{k: v for k, v in (options or {}).items() if v is not None}}
        return ImageAugment(image_shape, **kwargs)
    return SignalAugment() if input_kind == "signal" else VectorAugment()
