"""Backbones and heads: a 1-D CNN for signals, an MLP for plain vectors."""

from __future__ import annotations

from typing import Any

import torch
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


class EncoderWithProjector(nn.Module):
    """Backbone f followed by projector g; ``forward`` returns g(f(x)) (what the SSL loss sees)."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


def build_encoder(spec: dict[str, Any]) -> nn.Module:
    """The backbone described by ``spec`` (``input_kind``, ``input_dim``, ``embedding_dim``)."""
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

    from safetensors import safe_open
    from safetensors.torch import load_file

    from workflow.errors import StrataError

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(path, device=device)
    except (OSError, ValueError, RuntimeError) as err:
        raise StrataError(f"not a readable encoder file ({err})", where=str(path),
                          fix="re-run the pretrain stage that writes it.") from err
    if "strata_spec" not in meta:
        raise StrataError("encoder file has no Strata spec in its metadata", where=str(path),
                          fix="use an encoder written by `strata pretrain`.")
    spec = json.loads(meta["strata_spec"])
    model = build_encoder(spec)
    model.load_state_dict(state)
    return model.to(device).eval(), spec
