"""The TLDR loss: Barlow Twins with TLDR's defaults."""

from __future__ import annotations

import pytest
import torch
from loss_helpers import randn

from workflow.pretrain.losses import BarlowTwinsLoss, TLDRLoss


def test_tldr_loss_is_scaled_barlow_twins() -> None:
    za, zb = randn(20, 6, seed=8), randn(20, 6, seed=9)
    tldr = TLDRLoss(gather_distributed=False)
    assert (tldr.lambda_param, tldr.scale) == (3.9e-3, 1 / 32)
    expected = BarlowTwinsLoss(lambda_param=3.9e-3, gather_distributed=False)(za, zb).loss.item() / 32
    assert tldr(za, zb).loss.item() == pytest.approx(expected, rel=1e-12)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        TLDRLoss()(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        TLDRLoss()(torch.zeros(1, 2), torch.zeros(1, 2))
