"""Tests for stroke_ray.losses.HybridLoss against hand-written cross-entropy and Dice."""

from __future__ import annotations

import math

import pytest
import torch

from stroke_ray.config import TrainConfig
from stroke_ray.losses import HybridLoss

DEFAULT_LESION_WEIGHT = TrainConfig.lesion_weight

# One 2x2 image: logits per class and a target with two lesion pixels.
BACKGROUND = [[2.0, 0.5], [-1.0, 0.0]]
LESION = [[0.0, 1.5], [1.0, -2.0]]
TARGET = [[0, 1], [1, 0]]


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1x2x2x2 logits and 1x2x2 target above as tensors."""
    return torch.tensor([[BACKGROUND, LESION]]), torch.tensor([TARGET])


def _pixels() -> list[tuple[float, float, int]]:
    """(background logit, lesion logit, target) for each pixel."""
    return [(BACKGROUND[i][j], LESION[i][j], TARGET[i][j]) for i in range(2) for j in range(2)]


def _weighted_ce(lesion_weight: float) -> float:
    """Class-weighted mean negative log-likelihood, written out."""
    total, weights = 0.0, 0.0
    for l0, l1, t in _pixels():
        nll = math.log(math.exp(l0) + math.exp(l1)) - (l1 if t else l0)
        weight = lesion_weight if t else 1.0
        total += weight * nll
        weights += weight
    return total / weights


def _dice_loss() -> float:
    """1 - soft Dice of the lesion probability against the target."""
    probabilities = [1.0 / (1.0 + math.exp(l0 - l1)) for l0, l1, _ in _pixels()]
    targets = [t for _, _, t in _pixels()]
    overlap = sum(p * t for p, t in zip(probabilities, targets, strict=True))
    return 1.0 - 2.0 * overlap / (sum(probabilities) + sum(targets))


def test_cross_entropy_term_by_hand() -> None:
    logits, target = _inputs()
    loss = HybridLoss(alpha=1.0, beta=0.0)(logits, target)
    assert loss.item() == pytest.approx(_weighted_ce(DEFAULT_LESION_WEIGHT), rel=1e-6)
    unweighted = HybridLoss(alpha=1.0, beta=0.0, lesion_weight=1.0)(logits, target)
    assert unweighted.item() == pytest.approx(_weighted_ce(1.0), rel=1e-6)
    assert _weighted_ce(DEFAULT_LESION_WEIGHT) != pytest.approx(_weighted_ce(1.0))


def test_dice_term_by_hand() -> None:
    logits, target = _inputs()
    loss = HybridLoss(alpha=0.0, beta=1.0)(logits, target)
    assert loss.item() == pytest.approx(_dice_loss(), rel=1e-5)


@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.3, 2.5), (2.0, 0.0)])
def test_alpha_beta_scaling(alpha: float, beta: float) -> None:
    logits, target = _inputs()
    loss = HybridLoss(alpha=alpha, beta=beta, lesion_weight=4.0)(logits, target)
    expected = alpha * _weighted_ce(4.0) + beta * _dice_loss()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_perfect_and_inverted_logits() -> None:
    target = torch.tensor([[[0, 1, 1], [0, 0, 1]], [[1, 0, 0], [0, 0, 0]]])
    lesion = (target.float() * 2 - 1) * 30.0
    perfect = torch.stack([-lesion, lesion], dim=1)
    loss_fn = HybridLoss()
    assert loss_fn(perfect, target).item() < 1e-6
    assert HybridLoss(alpha=0.0)(perfect, target).item() < 1e-6
    inverted = torch.stack([lesion, -lesion], dim=1)
    assert HybridLoss(alpha=0.0)(inverted, target).item() == pytest.approx(1.0, abs=1e-6)
    assert HybridLoss(beta=0.0)(inverted, target).item() > 50.0


def test_dice_pools_the_batch() -> None:
    logits = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    target[0, 1, 1] = target[1, 0, 2] = target[1, 2, 2] = 1
    probability = torch.softmax(logits.double(), dim=1)[:, 1]
    dice = 2 * (probability * target).sum() / (probability.sum() + target.sum())
    loss = HybridLoss(alpha=0.0)(logits, target)
    assert loss.item() == pytest.approx(1.0 - dice.item(), rel=1e-5)


def test_no_lesion_batch_has_no_dice_term() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.uint8)
    confident_lesion = torch.stack([torch.full((1, 4, 4), -5.0), torch.full((1, 4, 4), 5.0)], 1)
    assert HybridLoss(alpha=0.0)(confident_lesion, target).item() == 0.0
    expected_ce = math.log(1 + math.exp(10.0))
    assert HybridLoss()(confident_lesion, target).item() == pytest.approx(expected_ce, rel=1e-6)


def test_gradients_flow() -> None:
    logits, target = _inputs()
    logits.requires_grad_(True)
    HybridLoss()(logits, target).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
