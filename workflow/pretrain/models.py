"""Backbones and heads: a 1-D CNN for signals, a small ResNet for images, an MLP for plain vectors; SimCLR's
projector and SwAV's prototypes.

Every backbone takes the flat float32 rows of a vector table (B, D) and returns (B, embedding_dim); the
image backbone reshapes its rows to (B, C, H, W) with the image shape of its spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Conv1dEncoder(nn.Module):
    """A small 1-D CNN for signals such as MNIST-1D (length L, one channel).

    Three convolutions (32, 64, 64 channels; the first two stride 2) with batch norm and ReLU,
    then a linear map of the flattened feature map to the embedding, as in the MNIST-1D CNN
    baseline (Greydanus & Kobak 2024) widened for self-supervised learning.
    """

    def __init__(self, input_dim: int, embedding_dim: int = 128, channels: tuple[int, int, int] = (32, 64, 64)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c1, kernel_size=5, stride=2, padding=2), nn.BatchNorm1d(c1), nn.ReLU(inplace=True),
            nn.Conv1d(c1, c2, kernel_size=3, stride=2, padding=1), nn.BatchNorm1d(c2), nn.ReLU(inplace=True),
            nn.Conv1d(c2, c3, kernel_size=3, stride=1, padding=1), nn.BatchNorm1d(c3), nn.ReLU(inplace=True),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(2, 1, input_dim)).flatten(1).shape[1]
        self.head = nn.Linear(flat, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016, fig. 2 left): two 3x3 convolutions with batch norm, plus the
    identity shortcut, or a strided 1x1 convolution with batch norm where the shape changes (option B)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """A small ResNet for images (He et al. 2016), in its CIFAR form.

    A 3x3 stem convolution (stride 1, no max pooling: the small-image variant of He et al. 2016 sec. 4.2,
    also used by SimCLR on CIFAR-10, Chen et al. 2020 app. B.9), then one stage per entry of ``widths`` with
    ``blocks[i]`` basic blocks, each stage after the first halving the resolution, global average pooling
    and a linear map to the embedding. Input rows are flat (B, C*H*W) and reshaped to ``image_shape``.
    """

    def __init__(self, image_shape: tuple[int, int, int] | list[int], embedding_dim: int = 128,
                 widths: tuple[int, ...] | list[int] = (32, 64, 128),
                 blocks: tuple[int, ...] | list[int] = (1, 1, 1)) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} must be non-empty and of equal length")
        c, h, w = (int(v) for v in image_shape)
        self.image_shape = (c, h, w)
        self.stem = nn.Sequential(nn.Conv2d(c, widths[0], 3, stride=1, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for i, (width, n_blocks) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n_blocks):
                layers.append(BasicBlock(in_ch, width, stride=2 if i > 0 and j == 0 else 1))
                in_ch = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_ch, embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], *self.image_shape)
        return self.head(self.pool(self.stages(self.stem(x))).flatten(1))


class MLPEncoder(nn.Module):
    """An MLP for plain vectors: two hidden layers (Linear, BatchNorm, ReLU), then the embedding."""

    def __init__(self, input_dim: int, embedding_dim: int = 128, hidden_dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """SimCLR's projector g(h): Linear, BatchNorm, ReLU, Linear (Chen et al. 2020, sec. 2.1)."""

    def __init__(self, input_dim: int, hidden_dim: int = 256, output_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SwAVPrototypes(nn.Module):
    """SwAV's prototypes: a bias-free linear layer of K unit-norm rows giving scores ``z c^T``.

    Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments" (NeurIPS;
    arXiv 2006.09882); ``facebookresearch/swav:src/resnet50.py``. Call :meth:`normalize_` before each
    step (SwAV re-normalises the prototypes every iteration) and :meth:`freeze_if_needed` between
    ``backward()`` and ``optimizer.step()`` (SwAV freezes them for the first iterations).
    ``forward`` L2-normalises its input (a no-op on already normalised embeddings). The scores feed
    :class:`workflow.pretrain.losses.SwAVLoss`.

    Args:
        dim: embedding dimension.
        n_prototypes: K; 3000.
        n_frozen_steps: steps during which the prototypes' gradients are dropped; 0.
    """

    def __init__(self, dim: int, n_prototypes: int = 3000, n_frozen_steps: int = 0) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if n_prototypes < 1:
            raise ValueError(f"n_prototypes must be positive, got {n_prototypes}")
        if n_frozen_steps < 0:
            raise ValueError(f"n_frozen_steps must be non-negative, got {n_frozen_steps}")
        self.layer = nn.Linear(dim, n_prototypes, bias=False)
        self.n_frozen_steps = n_frozen_steps
        self.normalize_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layer(F.normalize(z, dim=1))

    @torch.no_grad()
    def normalize_(self) -> None:
        """Scale every prototype (row of the weight) to unit L2 norm, in place."""
        self.layer.weight.copy_(F.normalize(self.layer.weight, dim=1))

    def freeze_if_needed(self, step: int) -> bool:
        """Drop the prototypes' gradients (set them to ``None``, so the optimiser skips them, weight decay and
        momentum included) while ``step < n_frozen_steps``. Returns whether they were frozen."""
        frozen = step < self.n_frozen_steps
        if frozen:
            for p in self.parameters():
                p.grad = None
        return frozen


class EncoderWithProjector(nn.Module):
    """Backbone f followed by projector g; ``forward`` returns g(f(x)) (what the SSL loss sees)."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


def build_encoder(spec: dict[str, Any]) -> nn.Module:
    """The backbone described by ``spec`` (``input_kind``, ``input_dim``, ``embedding_dim``; for images also
    ``image_shape`` [C, H, W] and optionally the ResNet's ``widths`` and ``blocks``)."""
    if spec["input_kind"] == "image":
        shape = spec["image_shape"]
        if int(np.prod(shape)) != spec["input_dim"]:
            raise ValueError(f"image shape {shape} does not hold {spec['input_dim']} values")
        return ResNetEncoder(shape, spec["embedding_dim"], spec.get("widths", (32, 64, 128)),
                             spec.get("blocks", (1, 1, 1)))
    if spec["input_kind"] == "signal":
        return Conv1dEncoder(spec["input_dim"], spec["embedding_dim"])
    if spec["input_kind"] == "vector":
        return MLPEncoder(spec["input_dim"], spec["embedding_dim"])
    raise ValueError(f"unknown input kind {spec['input_kind']!r}")


def save_encoder(model: nn.Module, spec: dict[str, Any], path: str) -> None:
    """Save the backbone's weights as safetensors with its spec in the file's metadata."""
    import json

    from safetensors.torch import save_file

    from workflow.tables import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"strata_spec": json.dumps(spec, sort_keys=True)})


def load_encoder(path: str, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a backbone saved by :func:`save_encoder` (safetensors: no pickle, no code execution)."""
    import json

    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from workflow.errors import StrataError

    fix = "re-run the pretrain stage that writes it (`strata pretrain`)."
    if not Path(path).is_file():
        raise StrataError("encoder file not found" if not Path(path).exists() else "not a file", where=str(path),
                          fix=fix)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(path, device=device)
    # safetensors reports a corrupt, empty or truncated file (or a pickle under this name) as SafetensorError.
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise StrataError(f"not a readable safetensors encoder file ({err})", where=str(path), fix=fix) from err
    if "strata_spec" not in meta:
        raise StrataError("encoder file has no Strata spec in its metadata", where=str(path),
                          fix="use an encoder written by `strata pretrain`.")
    try:
        spec = json.loads(meta["strata_spec"])
        model = build_encoder(spec)
        model.load_state_dict(state)
    except (ValueError, TypeError, KeyError, RuntimeError) as err:  # a spec or weights that do not fit together
        raise StrataError(f"the encoder's spec and weights do not fit together ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:300]})", where=str(path), fix=fix) from err
    return model.to(device).eval(), spec
