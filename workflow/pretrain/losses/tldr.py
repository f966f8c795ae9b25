"""TLDR's loss: Barlow Twins between an item and one of its neighbours (Kalantidis et al. 2022).

The pairs themselves are mined before training by :func:`workflow.pretrain.pairs.knn_pairs`.
"""

from __future__ import annotations

from workflow.pretrain.losses.barlow_twins import BarlowTwinsLoss


class TLDRLoss(BarlowTwinsLoss):
    """The Barlow Twins loss with TLDR's defaults, for pairs of neighbours (see
    :func:`workflow.pretrain.pairs.knn_pairs`).

    Kalantidis et al. 2022, "TLDR: Twin Learning for Dimensionality Reduction" (TMLR; arXiv 2110.09455);
    ``naver/tldr:tldr/loss.py``. With ``C`` as in :class:`BarlowTwinsLoss` for the embeddings of
    ``x`` and of one of its k nearest neighbours::

        L = (1/32) * [ sum_i (1 - C_ii)^2 + 3.9e-3 * sum_{i != j} C_ij^2 ]

    Args:
        lambda_param: off-diagonal weight; 3.9e-3.
        scale: overall factor; 1/32.
        gather_distributed: as for :class:`BarlowTwinsLoss`.

    Example::

        loss_fn = TLDRLoss()
        out = loss_fn(projector(backbone(x)), projector(backbone(x[pairs])))
        out.loss.backward()
    """

    def __init__(self, lambda_param: float = 3.9e-3, scale: float = 1 / 32, gather_distributed: bool = True) -> None:
        super().__init__(lambda_param=lambda_param, scale=scale, gather_distributed=gather_distributed)
