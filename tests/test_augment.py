"""Tests for stroke_ray.augment: every transform keeps shapes, keeps image and mask aligned,
leaves the background alone, is reproducible from its seed, and is off when switched off."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from stroke_ray.augment import (
    Augmentation,
    augment_batch,
    blur,
    brain_of,
    flip,
    gamma,
    gaussian_noise,
    rotate_scale,
    scale_shift,
    thick_slices,
)
from stroke_ray.config import TrainConfig
from stroke_ray.preprocess import Prepared
from stroke_ray.slices import PlaneSlices
from stroke_ray.train_loop import training_batches

H, W = 40, 48
NONE = Augmentation(flip_p=0, spatial_p=0, thick_p=0, blur_p=0, noise_p=0, intensity_p=0, gamma_p=0)
ALWAYS = Augmentation(
    flip_p=1, spatial_p=1, thick_p=1, blur_p=1, noise_p=1, intensity_p=1, gamma_p=1
)


def _slice(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (4, H, W) image: brain ellipse of noise, lesion square bright in channel 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    brain = ((yy - H / 2) / (0.4 * H)) ** 2 + ((xx - W / 2) / (0.4 * W)) ** 2 <= 1
    mask = np.zeros((H, W), np.int64)
    mask[12:20, 26:34] = 1
    image = rng.normal(0, 0.3, (4, H, W)).astype(np.float32) * brain
    image[0][mask == 1] = 5.0
    return torch.from_numpy(image), torch.from_numpy(mask)


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_flips_move_image_and_mask_together():
    image, mask = _slice()
    for dims in [(-1,), (-2,), (-2, -1)]:
        flipped, flipped_mask = flip(image, mask, dims)
        assert flipped.shape == image.shape and flipped_mask.shape == mask.shape
        torch.testing.assert_close((flipped[0] > 2.5).long(), flipped_mask)
        assert not torch.equal(flipped_mask, mask)
    same, same_mask = flip(image, mask, ())
    assert same is image and same_mask is mask


@pytest.mark.parametrize(("angle", "scale"), [(15.0, 1.0), (-12.0, 0.85), (0.0, 1.15)])
def test_rotation_and_scaling_keep_the_mask_on_the_lesion(angle, scale):
    image, mask = _slice()
    moved, moved_mask = rotate_scale(image, mask, angle, scale)
    assert moved.shape == image.shape and moved.dtype == image.dtype
    assert moved_mask.shape == mask.shape and moved_mask.dtype == mask.dtype
    assert set(moved_mask.unique().tolist()) <= {0, 1}  # nearest: still a label
    assert _dice(moved[0] > 2.5, moved_mask) > 0.85
    assert abs(int(moved_mask.sum()) - int(mask.sum()) * scale**2) < 0.25 * int(mask.sum())
    centre = lambda m: torch.nonzero(m).float().mean(dim=0)  # noqa: E731
    assert torch.dist(centre(moved[0] > 2.5), centre(moved_mask)) < 1.0


def test_thick_slices_average_along_one_axis_only():
    image, _ = _slice()
    ramp = torch.arange(W, dtype=torch.float32).expand(4, H, W).clone()
    along_rows = thick_slices(ramp, -2, 4)  # averaging identical rows changes nothing
    torch.testing.assert_close(along_rows, ramp)
    along_columns = thick_slices(image, -1, 4)
    assert along_columns.shape == image.shape
    # neighbouring columns get closer; rows are untouched in that they stay different
    column_steps = (along_columns[..., 1:] - along_columns[..., :-1]).abs().mean()
    assert column_steps < (image[..., 1:] - image[..., :-1]).abs().mean()
    assert float(along_columns.mean()) == pytest.approx(float(image.mean()), abs=0.05)


def test_intensity_transforms_leave_the_background_and_shape():
    image, _ = _slice()
    brain = brain_of(image)
    generator = torch.Generator().manual_seed(0)
    outputs = {
        "blur": blur(image, 1.0) * brain,
        "noise": gaussian_noise(image, brain, 0.1, generator),
        "scale_shift": scale_shift(image, brain, np.array([1.1, 0.9, 1, 1]), np.full(4, 0.1)),
        "gamma": gamma(image, brain, np.array([0.7, 1.5, 1.0, 1.2])),
    }
    for name, out in outputs.items():
        assert out.shape == image.shape and out.dtype == image.dtype, name
        assert not out[:, ~brain].any(), name
        assert not torch.equal(out, image), name
    shifted = outputs["scale_shift"]
    torch.testing.assert_close(shifted[0][brain], image[0][brain] * 1.1 + 0.1)
    torch.testing.assert_close(outputs["gamma"][2], image[2])  # gamma 1 is the identity
    for channel in range(4):  # gamma keeps each channel's range
        inside, before = outputs["gamma"][channel][brain], image[channel][brain]
        assert float(inside.min()) == pytest.approx(float(before.min()), abs=1e-5)
        assert float(inside.max()) == pytest.approx(float(before.max()), abs=1e-5)


def test_batch_keeps_shapes_and_alignment_with_every_transform_on():
    pairs = [_slice(seed) for seed in range(6)]
    images = torch.stack([image for image, _ in pairs])
    masks = torch.stack([mask for _, mask in pairs])
    out, out_masks = augment_batch(images, masks, np.random.default_rng(1), ALWAYS)
    assert out.shape == images.shape and out_masks.shape == masks.shape
    assert out.dtype == torch.float32 and out_masks.dtype == torch.int64
    assert set(out_masks.unique().tolist()) <= {0, 1}
    for image, mask in zip(out, out_masks, strict=True):
        assert mask.sum() > 0
        # the lesion stays the brightest part of channel 0 where the mask is
        assert image[0][mask == 1].mean() > image[0][(mask == 0) & brain_of(image)].mean() + 1


def test_batch_is_reproducible_from_its_seed():
    pairs = [_slice(seed) for seed in range(4)]
    images = torch.stack([image for image, _ in pairs])
    masks = torch.stack([mask for _, mask in pairs])
    first = augment_batch(images, masks, np.random.default_rng(7))
    again = augment_batch(images, masks, np.random.default_rng(7))
    other = augment_batch(images, masks, np.random.default_rng(8))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first[0], other[0])
    untouched = augment_batch(images, masks, np.random.default_rng(7), NONE)
    torch.testing.assert_close(untouched, (images, masks))


def _plane_slices() -> PlaneSlices:
    image, mask = _slice()
    volume = image.numpy()[..., None].repeat(3, axis=-1)
    label = mask.numpy().astype(np.uint8)[..., None].repeat(3, axis=-1)
    brain = brain_of(image).numpy()[..., None].repeat(3, axis=-1)
    prepared = Prepared("c", volume, label, brain, geometry=None)
    return PlaneSlices.from_cases([prepared], "axial")


def test_off_switch_gives_the_sampled_batches_untouched():
    data = _plane_slices()
    config = TrainConfig(cohort="c", out="o", batch_size=3, augment=False)

    def batches(cfg: TrainConfig) -> list:
        rng, augment_rng = np.random.default_rng(0), np.random.default_rng(1)
        return list(training_batches(data, cfg, 4, rng, augment_rng))

    sampled = list(data.sample_batches(np.random.default_rng(0), batch_size=3, steps=4))
    plain = batches(config)
    for (images, masks), (expected_images, expected_masks) in zip(plain, sampled, strict=True):
        assert torch.equal(images, expected_images) and torch.equal(masks, expected_masks)
    augmented = batches(replace(config, augment=True))
    assert len(augmented) == 4
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(augmented, sampled, strict=True))
    assert TrainConfig.augment is True  # on by default
