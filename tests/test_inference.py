"""Tests for stroke_ray.inference: brain slices in, float32 probabilities out, restacked in
slice order; test-time augmentation averages the prediction with its two in-plane flips."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL_CONFIG

from stroke_ray.config import PLANES
from stroke_ray.fusion import fuse
from stroke_ray.inference import autocast_dtype, predict_plane, restack
from stroke_ray.model import build_model
from stroke_ray.planes import brain_slice_indices, volume_to_slices


class PixelModel(torch.nn.Module):
    """Lesion logit = scale · channel 0 (background logit 0): probability sigmoid(scale·x₀)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lesion = self.scale * images[:, 0]
        return torch.stack([torch.zeros_like(lesion), lesion], dim=1)


class PositionModel(torch.nn.Module):
    """Lesion logit = channel 0 · a fixed per-pixel map: not equivariant to flips."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        ramp = torch.linspace(-2.0, 3.0, height * width).reshape(height, width)
        self.map = torch.nn.Parameter(ramp * torch.linspace(0.5, 1.5, width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lesion = images[:, 0] * self.map
        return torch.stack([torch.zeros_like(lesion), lesion], dim=1)


def _case(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 4-channel image and a box brain that leaves slices empty along every axis."""
    image = np.random.default_rng(seed).normal(size=(4, *shape)).astype(np.float32)
    brain = np.zeros(shape, dtype=bool)
    brain[1:-2, 2:-1, 1:-1] = True
    brain[1, 2, 1] = False  # not a perfect box: zeros inside brain slices too
    return image * brain, brain


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values.astype(np.float64)))


@pytest.mark.parametrize("plane", PLANES)
def test_predict_and_restack_round_trip(plane: str):
    shape = (6, 7, 8)
    image, brain = _case(shape)
    indices, probabilities = predict_plane(
        PixelModel(), image, brain, plane, batch_size=2, device=torch.device("cpu")
    )
    np.testing.assert_array_equal(indices, brain_slice_indices(brain, plane))
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(indices), *volume_to_slices(brain, plane).shape[1:])

    volume = restack((indices, probabilities), shape, plane)

    assert volume.shape == shape and volume.dtype == np.float32
    np.testing.assert_allclose(volume, _sigmoid(image[0]) * brain, rtol=1e-6, atol=1e-7)
    empty = np.setdiff1d(np.arange(volume_to_slices(brain, plane).shape[0]), indices)
    assert len(empty) > 0
    assert not volume_to_slices(volume, plane)[empty].any()


@pytest.mark.parametrize("plane", PLANES)
def test_restack_puts_each_slice_at_its_index(plane: str):
    shape = (5, 6, 7)
    count = volume_to_slices(np.empty(shape), plane).shape[0]
    in_plane = volume_to_slices(np.empty(shape), plane).shape[1:]
    indices = np.array([1, count - 2])
    probabilities = np.random.default_rng(1).random((2, *in_plane)).astype(np.float32) + 0.1
    volume = restack((indices, probabilities), shape, plane)
    slices = volume_to_slices(volume, plane)
    np.testing.assert_array_equal(slices[indices], probabilities)
    others = [i for i in range(count) if i not in indices]
    assert not slices[others].any()


@pytest.mark.parametrize("plane", PLANES)
def test_tta_averages_the_three_flipped_predictions(plane: str):
    shape = (8, 8, 8)
    image, brain = _case(shape, seed=3)
    model = PositionModel(8, 8)
    indices, plain = predict_plane(model, image, brain, plane, batch_size=3)
    same, averaged = predict_plane(model, image, brain, plane, batch_size=3, tta=True)
    np.testing.assert_array_equal(same, indices)

    x = volume_to_slices(image, plane)[indices][:, 0].astype(np.float64)
    weights = model.map.detach().numpy().astype(np.float64)
    brain_slices = volume_to_slices(brain, plane)[indices]
    direct = _sigmoid(x * weights)
    flip_w = np.flip(_sigmoid(np.flip(x, -1) * weights), -1)
    flip_h = np.flip(_sigmoid(np.flip(x, -2) * weights), -2)
    np.testing.assert_allclose(plain, direct * brain_slices, rtol=1e-5, atol=1e-6)
    expected = (direct + flip_w + flip_h) / 3 * brain_slices
    np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-6)
    assert averaged.dtype == np.float32
    assert np.abs(averaged - plain).max() > 0.01  # the flips matter for this model


def test_tiny_unet_prediction_is_float32_and_zero_outside_the_brain():
    torch.manual_seed(0)
    model = build_model(TINY_MODEL_CONFIG, "none").eval()
    image, brain = _case((32, 32, 32), seed=5)
    indices, probabilities = predict_plane(model, image, brain, "axial", batch_size=8)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(indices), 32, 32)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert not probabilities[~volume_to_slices(brain, "axial")[indices]].any()
    assert probabilities[volume_to_slices(brain, "axial")[indices]].min() > 0


def test_probability_just_below_one_half_is_kept():
    """A model saying 0.49995 everywhere: float32 keeps it below the vote threshold."""
    logit = float(np.log(0.49995 / 0.50005))
    model = PixelModel(scale=logit)
    shape = (4, 5, 6)
    image = np.ones((4, *shape), dtype=np.float32)
    brain = np.ones(shape, dtype=bool)
    predictions = {plane: predict_plane(model, image, brain, plane) for plane in PLANES}
    volumes = {plane: restack(p, shape, plane) for plane, p in predictions.items()}
    for volume in volumes.values():
        assert volume.dtype == np.float32
        assert volume.max() < 0.5 and volume.min() > 0.4999
    assert not fuse(volumes, "majority").any() and not fuse(volumes, "soft").any()


def test_no_brain_slices_gives_an_empty_prediction():
    image, brain = np.zeros((4, 3, 4, 5), np.float32), np.zeros((3, 4, 5), bool)
    indices, probabilities = predict_plane(PixelModel(), image, brain, "coronal")
    assert indices.size == 0 and probabilities.shape == (0, 3, 5)
    assert probabilities.dtype == np.float32
    assert not restack((indices, probabilities), (3, 4, 5), "coronal").any()


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set whether this CPU has native bf16 (the flags the check reads)."""
    from stroke_ray import machine

    def set_native(native: bool) -> None:
        flags = frozenset({"avx2", "avx512_bf16"} if native else {"avx2"})
        monkeypatch.setattr(machine, "cpu_flags", lambda: flags)

    return set_native


@pytest.mark.parametrize("native", [False, True])
def test_autocast_dtype(cpu_bf16, native):
    cpu_bf16(native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if native else None)
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cuda, "fp32") is None
    assert autocast_dtype(cuda, "auto") == torch.bfloat16
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16
    assert autocast_dtype(cuda, "fp16") == torch.float16


def test_auto_never_picks_emulated_bf16_and_explicit_bf16_warns(cpu_bf16, caplog):
    from stroke_ray.inference import _warn_emulated_bf16, resolve_precision

    cpu_bf16(False)
    _warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="stroke_ray.inference"):
        assert resolve_precision("auto", "cpu") == "fp32"
        assert not caplog.records
        assert resolve_precision("bf16", "cpu") == "bf16"
    assert "40× slower" in caplog.text and "avx512_bf16" in caplog.text
    cpu_bf16(True)
    caplog.clear()
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("bf16", "cuda") == "bf16" and not caplog.records
