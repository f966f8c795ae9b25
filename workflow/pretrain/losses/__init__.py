"""Self-supervised losses, one module per loss (as lightly's ``lightly/loss/``), each an ``nn.Module``.

Every loss returns a :class:`~workflow.pretrain.losses.common.LossTerms` (the loss to back-propagate plus the
detached terms worth logging separately); :class:`NTXentLoss` returns a tensor and has
:meth:`NTXentLoss.terms` for the uniform form. With ``gather_distributed=True`` and ``torch.distributed``
initialised, batch statistics are taken over the global batch with gradients that match one process holding
the whole batch once DDP averages them over ranks (:mod:`workflow.pretrain.losses.common`).

==================  =============================  ==========================================
module              loss                           paper
==================  =============================  ==========================================
``ntxent``          :class:`NTXentLoss`            SimCLR, Chen et al. 2020
``barlow_twins``    :class:`BarlowTwinsLoss`       Zbontar et al. 2021
``tldr``            :class:`TLDRLoss`              Kalantidis et al. 2022
``vicreg``          :class:`VICRegLoss`            Bardes et al. 2022
``byol``            :class:`BYOLLoss`              Grill et al. 2020
``swav``            :class:`SwAVLoss`              Caron et al. 2020
==================  =============================  ==========================================

DINO's loss lives with its head and multi-crop views in :mod:`workflow.pretrain.dino`.
"""

from workflow.pretrain.losses.barlow_twins import BarlowTwinsLoss
from workflow.pretrain.losses.byol import BYOLLoss
from workflow.pretrain.losses.common import LossTerms
from workflow.pretrain.losses.ntxent import NTXentLoss
from workflow.pretrain.losses.swav import SwAVLoss, sinkhorn_knopp
from workflow.pretrain.losses.tldr import TLDRLoss
from workflow.pretrain.losses.vicreg import VICRegLoss

__all__ = ["BYOLLoss", "BarlowTwinsLoss", "LossTerms", "NTXentLoss", "SwAVLoss", "TLDRLoss", "VICRegLoss",
           "sinkhorn_knopp"]
