"""The hybrid loss: alpha · class-weighted cross-entropy + beta · soft Dice on the lesion class.

The defaults (declared on ``TrainConfig``; the paper leaves them blank): ``alpha = 1``,
``beta = 1`` and a lesion class weight of 10 in the cross-entropy, which offsets the ~1 % lesion fraction of brain slices without
making background errors cheap; the Dice term (smp's ``DiceLoss`` on the lesion channel)
is insensitive to class balance and pulls the overlap directly.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from stroke_ray.config import TrainConfig

__all__ = ["HybridLoss"]


class HybridLoss(nn.Module):
    """``alpha * CE(weights=[1, lesion_weight]) + beta * Dice(lesion)`` over 2-class logits."""

    def __init__(
        self,
        *,
        alpha: float = TrainConfig.alpha,
        beta: float = TrainConfig.beta,
        lesion_weight: float = TrainConfig.lesion_weight,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.register_buffer("class_weights", torch.tensor([1.0, lesion_weight]))
        self.dice = DiceLoss(mode="multiclass", classes=[1], from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, 2, H, W) float; target (B, H, W) integer 0/1."""
        target = target.long()
        cross_entropy = nn.functional.cross_entropy(
            logits.float(), target, weight=self.class_weights
        )
        return self.alpha * cross_entropy + self.beta * self.dice(logits.float(), target)
