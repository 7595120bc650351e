"""Training augmentation of 2D slice batches: spatial, intensity, noise, blur, thick slices.

Applied per batch on the training worker's CPU, after sampling and before the forward pass
(``TrainConfig.augment``, on by default). Each slice of a batch draws its own parameters from
a seeded NumPy generator, so a run is reproducible; each transform is a plain function of
explicit parameters that the unit tests call directly.

Every transform keeps the shapes. Spatial ones move image and mask together (torchvision
``transforms.v2.functional.affine``: bilinear for the image, nearest for the
``tv_tensors.Mask``); the others change intensities only, inside the slice's brain (non-zero
voxels of any channel), so the background stays 0 as at inference. In order:

- flips of each in-plane axis (p 0.5 each, the ones ``--tta`` averages over);
- rotation ±15° and scaling ±15 % about the slice centre (p 0.3);
- thick-slice simulation (p 0.2): average 2–5 neighbouring rows (or columns) and stretch
  back linearly, as a 3–5 mm acquisition resampled to a finer grid looks;
- Gaussian blur, σ 0.5–1 pixel (p 0.2); Gaussian noise, σ up to 0.1 z-score units (p 0.2);
- per channel, intensity scale ×(1 ± 0.15) and shift ±0.1 (p 0.5), and gamma 0.7–1.5 on the
  channel's min–max range (p 0.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = [
    "Augmentation",
    "augment_batch",
    "augment_batches",
    "flip",
    "rotate_scale",
    "thick_slices",
    "blur",
    "gaussian_noise",
    "scale_shift",
    "gamma",
    "brain_of",
]


@dataclass(frozen=True)
class Augmentation:
    """How often each transform is applied to a slice and how strongly."""

    flip_p: float = 0.5  # per in-plane axis
    spatial_p: float = 0.3
    rotation_deg: float = 15.0
    scale: float = 0.15
    thick_p: float = 0.2
    thick_factors: tuple[int, int] = (2, 5)
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    noise_p: float = 0.2
    noise_sd: float = 0.1
    intensity_p: float = 0.5
    intensity_scale: float = 0.15
    intensity_shift: float = 0.1
    gamma_p: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)


def brain_of(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) → (H, W) bool: pixels where any channel is non-zero."""
    return image.ne(0).any(dim=0)


def flip(
    image: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a (C, H, W) image and its (H, W) mask along in-plane ``dims`` (-2 rows, -1 columns)."""
    if not dims:
        return image, mask
    return image.flip(dims), mask.flip(dims)


def rotate_scale(
    image: torch.Tensor, mask: torch.Tensor, angle_deg: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate and scale about the centre: the image bilinearly, the mask by nearest neighbour."""
    moved = F.affine(
        tv_tensors.Image(image), angle=angle_deg, translate=[0.0, 0.0], scale=scale,
        shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR, fill=0.0,
    )  # fmt: skip
    moved_mask = F.affine(
        tv_tensors.Mask(mask[None]), angle=angle_deg, translate=[0.0, 0.0], scale=scale,
        shear=[0.0, 0.0], fill=0,
    )  # fmt: skip
    return moved.as_subclass(torch.Tensor), moved_mask.as_subclass(torch.Tensor)[0]


def thick_slices(image: torch.Tensor, axis: int, factor: int) -> torch.Tensor:
    """Average ``factor`` neighbouring pixels along ``axis`` (-2 or -1), then stretch back linearly."""
    size = image.shape[-2:]
    kernel = (factor, 1) if axis == -2 else (1, factor)
    pooled = torch.nn.functional.avg_pool2d(image[None], kernel, stride=kernel, ceil_mode=True)
    return torch.nn.functional.interpolate(pooled, size=size, mode="bilinear", align_corners=False)[
        0
    ]


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of every channel (σ in pixels, kernel 2·⌈3σ⌉ + 1)."""
    kernel = 2 * int(np.ceil(3 * sigma)) + 1
    return F.gaussian_blur(image, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def gaussian_noise(
    image: torch.Tensor, brain: torch.Tensor, sd: float, generator: torch.Generator
) -> torch.Tensor:
    """Add N(0, sd²) noise inside the brain."""
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype) * sd
    return image + noise * brain


def scale_shift(
    image: torch.Tensor, brain: torch.Tensor, scales: np.ndarray, shifts: np.ndarray
) -> torch.Tensor:
    """Per channel ``x · scale + shift`` inside the brain."""
    scale = torch.as_tensor(scales, dtype=image.dtype)[:, None, None]
    shift = torch.as_tensor(shifts, dtype=image.dtype)[:, None, None]
    return torch.where(brain, image * scale + shift, image)


def gamma(image: torch.Tensor, brain: torch.Tensor, gammas: np.ndarray) -> torch.Tensor:
    """Per channel gamma on the brain's min–max range, mapped back to that range."""
    if not bool(brain.any()):
        return image
    out = image.clone()
    for channel, value in enumerate(gammas):
        inside = image[channel][brain]
        low, high = inside.min(), inside.max()
        span = torch.clamp(high - low, min=1e-6)
        out[channel][brain] = ((inside - low) / span) ** float(value) * span + low
    return out


def _augment_slice(
    image: torch.Tensor,
    mask: torch.Tensor,
    rng: np.random.Generator,
    settings: Augmentation,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    dims = tuple(d for d in (-2, -1) if rng.random() < settings.flip_p)
    image, mask = flip(image, mask, dims)
    if rng.random() < settings.spatial_p:
        angle = rng.uniform(-settings.rotation_deg, settings.rotation_deg)
        scale = rng.uniform(1 - settings.scale, 1 + settings.scale)
        image, mask = rotate_scale(image, mask, float(angle), float(scale))
    brain = brain_of(image)
    if rng.random() < settings.thick_p:
        factor = int(rng.integers(settings.thick_factors[0], settings.thick_factors[1] + 1))
        image = thick_slices(image, int(rng.choice([-2, -1])), factor) * brain
    if rng.random() < settings.blur_p:
        image = blur(image, float(rng.uniform(*settings.blur_sigma))) * brain
    if rng.random() < settings.noise_p:
        image = gaussian_noise(image, brain, float(rng.uniform(0, settings.noise_sd)), generator)
    channels = image.shape[0]
    if rng.random() < settings.intensity_p:
        scales = rng.uniform(1 - settings.intensity_scale, 1 + settings.intensity_scale, channels)
        shifts = rng.uniform(-settings.intensity_shift, settings.intensity_shift, channels)
        image = scale_shift(image, brain, scales, shifts)
    if rng.random() < settings.gamma_p:
        image = gamma(image, brain, rng.uniform(*settings.gamma_range, channels))
    return image, mask


def augment_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    rng: np.random.Generator,
    settings: Augmentation | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a (B, C, H, W) image batch and its (B, H, W) targets, each slice on its own."""
    settings = settings or Augmentation()
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    pairs = [
        _augment_slice(image, mask, rng, settings, generator)
        for image, mask in zip(images, targets, strict=True)
    ]
    return (
        torch.stack([image for image, _ in pairs]).contiguous(),
        torch.stack([mask for _, mask in pairs]).contiguous(),
    )


def augment_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    rng: np.random.Generator,
    settings: Augmentation | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`augment_batch` over a stream of batches."""
    for images, targets in batches:
        yield augment_batch(images, targets, rng, settings)
