"""Tests for the resampling step of stroke_ray.preprocess: a case on a target voxel size and back
(issue 15). The exact no-resampling round trip stays in test_preprocess.py."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from helpers import affine_for, head_mask
from scipy import ndimage

from stroke_ray.config import SEQUENCES
from stroke_ray.preprocess import (
    PAD_MULTIPLE,
    median_spacing,
    prepare,
    resample,
    resampled_shape,
    restore,
    to_source_spacing,
)
from stroke_ray.volumes import CaseVolumes

THICK = (1.0, 1.0, 5.0)  # source voxel size along the LPS source axes (= RAS x, y, z sizes)
SHAPE = (40, 44, 14)
BLOB = (slice(14, 22), slice(18, 27), slice(5, 9))  # source voxels of the lesion


def _thick_case(label: np.ndarray | None = None) -> CaseVolumes:
    """An LPS-oriented case of 1×1×5 mm voxels with a box lesion."""
    affine = affine_for("LPS", THICK)
    head = head_mask(SHAPE)
    rng = np.random.default_rng(3)
    images = np.stack([np.where(head, rng.uniform(50, 500, SHAPE), 0) for _ in range(4)])
    if label is None:
        label = np.zeros(SHAPE, np.uint8)
        label[BLOB] = 1
    header = nib.Nifti1Image(images[0].astype(np.float32), affine).header
    return CaseVolumes(
        "thick", images.astype(np.float32), SEQUENCES, "flair", label, affine, header
    )


def _box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    where = np.argwhere(mask)
    return where.min(axis=0), where.max(axis=0)


@pytest.mark.parametrize("target", [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (1.5, 1.5, 3.0)])
def test_lesion_of_thick_lps_slices_ends_where_it_should(target):
    """Source → target grid → probabilities back → threshold: the blob's first and last voxel
    along every source axis move by at most one voxel (none when upsampling only)."""
    case = _thick_case()
    prepared = prepare(case, spacing_mm=target)
    geometry = prepared.geometry
    assert geometry.resampled
    assert geometry.grid_spacing_mm == pytest.approx(target, rel=0.1)
    # on the network grid the lesion spans the same millimetres (within one target voxel)
    low, high = _box(prepared.label)
    source_extent_mm = np.array([8.0, 9.0, 4 * 5.0])  # RAS x, y, z of BLOB
    extent_mm = (high - low + 1) * np.array(geometry.grid_spacing_mm)
    assert np.all(np.abs(extent_mm - source_extent_mm) <= np.array(geometry.grid_spacing_mm))

    probability = prepared.label.astype(np.float32)  # a network that returns the label
    back = restore(probability, geometry)
    assert back.shape == SHAPE and back.dtype == np.float32
    mask = back >= 0.5
    (low, high), (true_low, true_high) = _box(mask), _box(case.label)
    tolerance = 0 if all(t <= s for t, s in zip(target, THICK, strict=True)) else 1
    assert np.all(np.abs(low - true_low) <= tolerance), (low, true_low)
    assert np.all(np.abs(high - true_high) <= tolerance), (high, true_high)


def test_brain_and_padding_on_the_resampled_grid():
    prepared = prepare(_thick_case(), spacing_mm=(2.0, 2.0, 2.0))
    geometry = prepared.geometry
    grid = prepared.image.shape[1:]
    for size, box in zip(grid, geometry.grid_shape, strict=True):
        assert size % PAD_MULTIPLE == 0 and box <= size < box + PAD_MULTIPLE
    assert prepared.brain.shape == grid == prepared.label.shape
    for channel in prepared.image:
        assert channel[prepared.brain].mean() == pytest.approx(0.0, abs=1e-4)
        assert not channel[~prepared.brain].any()
    # the brain comes back onto the source head; differences lie on its one-voxel border
    head = restore(prepared.brain.astype(np.float32), geometry) >= 0.5
    source_head = np.any(_thick_case().images != 0, axis=0)
    border = ndimage.binary_dilation(source_head) & ~ndimage.binary_erosion(source_head)
    assert not ((head != source_head) & ~border).any()


def test_source_spacing_or_none_keeps_the_exact_grid():
    case = _thick_case()
    plain = prepare(case)
    for target in (None, THICK):
        same = prepare(case, spacing_mm=target)
        assert not same.geometry.resampled and same.geometry == plain.geometry
        np.testing.assert_array_equal(same.image, plain.image)
        np.testing.assert_array_equal(same.label, plain.label)
    volume, geometry = to_source_spacing(plain.label, plain.geometry)
    assert volume is plain.label and geometry is plain.geometry
    np.testing.assert_array_equal(restore(plain.label, plain.geometry), case.label)


def test_resample_is_linear_and_keeps_the_box_edges():
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None], (4, 2, 2))
    up = resample(ramp, (8, 2, 2))
    # voxel centres of the fine grid at 0.25 + j/2 − 0.5 in coarse voxels; edges clamp
    expected = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    np.testing.assert_allclose(up[:, 0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(resample(up, (4, 2, 2))[:, 0, 0], [0.125, 1, 2, 2.875], atol=1e-6)
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    nearest = resample(mask, (8, 8, 8), order=0)
    assert nearest.dtype == np.uint8 and nearest.sum() == 8 * mask.sum()


def test_resampled_shape_and_median_spacing():
    assert resampled_shape((10, 10, 10), (1, 1, 5), None) is None
    assert resampled_shape((10, 10, 10), (1, 1, 5), (1, 1, 5)) is None
    assert resampled_shape((10, 10, 10), (1, 1, 5), (2, 2, 2)) == (5, 5, 25)
    assert resampled_shape((3, 3, 3), (1, 1, 1), (10, 10, 10)) == (1, 1, 1)
    assert median_spacing([(1, 1, 5), (1, 1, 1), (0.9, 1.1, 3)]) == (1.0, 1.0, 3.0)
    with pytest.raises(ValueError):
        median_spacing([])


def test_resolve_spacing_auto_is_the_per_axis_median():
    from stroke_ray.train import resolve_spacing

    spacings = [(1.0, 1.0, 5.0), (1.0, 1.0, 1.0), (0.9, 1.2, 3.0), (1.0, 1.0, 5.0)]
    assert resolve_spacing(("auto",), spacings) == (1.0, 1.0, 4.0)
    assert resolve_spacing(("source",), spacings) is None
    assert resolve_spacing((2.0, 2.0, 2.0), spacings) == (2.0, 2.0, 2.0)
