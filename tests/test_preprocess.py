"""Tests for stroke_ray.preprocess: RAS network grid, crop/pad, z-score and exact restore."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import affine_for, rotation, write_case

from stroke_ray.preprocess import PAD_MULTIPLE, prepare, restore, to_canonical, zscore
from stroke_ray.volumes import CaseVolumes, read_case

ZOOMS = (0.9, 1.7, 3.1)
ORIENTATIONS: dict[str, np.ndarray] = {
    "LPS": affine_for("LPS", ZOOMS),
    "RAS": affine_for("RAS", ZOOMS),
    "PSL": affine_for("PSL", ZOOMS),
    "SRA": affine_for("SRA", ZOOMS),
    "AIL": affine_for("AIL", ZOOMS),
    "oblique": rotation(0, 12.0) @ rotation(2, -20.0) @ affine_for("PIR", ZOOMS),
}
SHAPE = (22, 26, 18)


def _case(tmp_path: Path, orientation: str, dtype: type = np.float32) -> CaseVolumes:
    """Read a synthetic case written with the given orientation and on-disk dtype."""
    return read_case(write_case(tmp_path, "c1", SHAPE, ORIENTATIONS[orientation], dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_restore_label_exactly(tmp_path: Path, orientation: str, dtype: type) -> None:
    case = write_case(tmp_path, "c1", SHAPE, ORIENTATIONS[orientation], dtype)
    source_label = np.asarray(nib.load(case.label).dataobj)
    source_head = np.any(
        [np.asarray(nib.load(uri).dataobj) != 0 for uri in case.images.values()], axis=0
    )
    prepared = prepare(read_case(case))
    assert prepared.label is not None

    restored = restore(prepared.label.astype(np.uint8), prepared.geometry)

    assert restored.dtype == np.uint8 and restored.shape == SHAPE
    np.testing.assert_array_equal(restored, source_label)
    np.testing.assert_array_equal(restore(prepared.brain, prepared.geometry), source_head)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_network_grid_is_ras(tmp_path: Path, orientation: str) -> None:
    volumes = _case(tmp_path, orientation)
    affine = ORIENTATIONS[orientation]
    centre = np.array(SHAPE) // 2
    markers = [centre] + [centre + 3 * np.eye(3, dtype=int)[axis] for axis in range(3)]
    positions = []
    for marker in markers:
        label = np.zeros(SHAPE, np.uint8)
        label[tuple(marker)] = 1
        prepared = prepare(replace(volumes, label=label))
        assert prepared.label is not None
        (position,) = np.argwhere(prepared.label)
        positions.append(position)
    for axis in range(3):
        world_step = affine[:3, :3] @ (markers[axis + 1] - centre)
        ras_axis = int(np.argmax(np.abs(world_step)))
        expected = np.zeros(3, dtype=int)
        expected[ras_axis] = 3 * int(np.sign(world_step[ras_axis]))
        np.testing.assert_array_equal(positions[axis + 1] - positions[0], expected)


@pytest.mark.parametrize("orientation", ["RAS", "PSL", "oblique"])
def test_geometry_and_padding(tmp_path: Path, orientation: str) -> None:
    volumes = _case(tmp_path, orientation)
    prepared = prepare(volumes)
    geometry = prepared.geometry
    grid = prepared.image.shape[1:]
    assert prepared.image.shape[0] == 4 and prepared.image.dtype == np.float32
    assert prepared.brain.shape == grid and prepared.brain.dtype == bool
    assert prepared.label is not None and prepared.label.shape == grid
    for size, crop in zip(grid, geometry.crop_shape, strict=True):
        assert size % PAD_MULTIPLE == 0 and crop <= size < crop + PAD_MULTIPLE
    assert not prepared.brain[tuple(slice(n, None) for n in geometry.crop_shape)].any()

    affine = ORIENTATIONS[orientation]
    dominant = np.argmax(np.abs(affine[:3, :3]), axis=0)  # RAS axis of each source axis
    expected_shape = [0, 0, 0]
    expected_spacing = [0.0, 0.0, 0.0]
    for source_axis, ras_axis in enumerate(dominant):
        expected_shape[ras_axis] = SHAPE[source_axis]
        expected_spacing[ras_axis] = float(np.linalg.norm(affine[:3, source_axis]))
    assert geometry.source_shape == SHAPE
    assert geometry.canonical_shape == tuple(expected_shape)
    assert geometry.spacing_mm == pytest.approx(expected_spacing, rel=1e-5)

    canonical_head = np.any(to_canonical(volumes.images, volumes.affine) != 0, axis=0)
    nonzero = np.argwhere(canonical_head)
    assert geometry.crop_start == tuple(nonzero.min(axis=0))
    assert geometry.crop_shape == tuple(nonzero.max(axis=0) - nonzero.min(axis=0) + 1)


def test_prepared_image_is_zscored_in_brain(tmp_path: Path) -> None:
    prepared = prepare(_case(tmp_path, "LPS", np.int16))
    brain = prepared.brain
    assert 0 < brain.sum() < brain.size
    for channel in prepared.image:
        assert channel[brain].mean() == pytest.approx(0.0, abs=1e-4)
        assert channel[brain].std() == pytest.approx(1.0, abs=1e-4)
        assert not channel[~brain].any()


def test_zscore_against_formula() -> None:
    rng = np.random.default_rng(5)
    images = rng.normal(40.0, 7.0, size=(3, 6, 5, 4)).astype(np.float32)
    images[2] = 9.0  # constant channel: no division by zero
    mask = rng.random((6, 5, 4)) < 0.5
    out = zscore(images, mask)
    for channel in range(2):
        values = images[channel][mask].astype(np.float64)
        expected = (values - values.mean()) / values.std()
        np.testing.assert_allclose(out[channel][mask], expected, rtol=1e-4, atol=1e-4)
        assert out[channel][mask].mean() == pytest.approx(0.0, abs=1e-5)
        assert out[channel][mask].std() == pytest.approx(1.0, abs=1e-4)
    assert not out[:, ~mask].any()
    assert not out[2].any()
    assert out.dtype == np.float32


def test_to_canonical_moves_channels_with_space() -> None:
    volume = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    affine = affine_for("PSL")  # axis 0 → posterior, axis 1 → superior, axis 2 → left
    canonical = to_canonical(volume, affine)
    assert canonical.shape == (2, 5, 3, 4)
    for c, i, j, k in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 3)]:
        assert canonical[c, 4 - k, 2 - i, j] == volume[c, i, j, k]


def _zscore_allocating(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The previous zscore: a zero volume filled at the mask voxels."""
    out = np.zeros(images.shape, np.float32)
    for image, target in zip(images, out, strict=True):
        inside = image[mask]
        spread = float(inside.std()) if inside.size else 0.0
        target[mask] = (inside - float(inside.mean())) / (spread if spread > 1e-6 else 1.0)
    return out


@pytest.mark.parametrize("in_place", [False, True])
def test_zscore_in_place_gives_the_same_bits(in_place: bool) -> None:
    rng = np.random.default_rng(6)
    images = rng.normal(300.0, 50.0, size=(4, 9, 7, 5)).astype(np.float32)
    mask = rng.random((9, 7, 5)) < 0.6
    expected = _zscore_allocating(images, mask)
    given = images.copy()
    out = zscore(given, mask, in_place=in_place)
    np.testing.assert_array_equal(out, expected)
    assert (out is given) is in_place
    if not in_place:
        np.testing.assert_array_equal(given, images)


def test_zscore_of_integer_images_is_unchanged() -> None:
    rng = np.random.default_rng(7)
    images = rng.integers(0, 900, size=(2, 5, 6, 4)).astype(np.int16)
    mask = rng.random((5, 6, 4)) < 0.5
    np.testing.assert_array_equal(
        zscore(images, mask, in_place=True), _zscore_allocating(images, mask)
    )


def test_ras_input_is_not_copied() -> None:
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert to_canonical(volume, np.eye(4)) is volume


def test_prepared_arrays_are_c_contiguous_from_any_layout(tmp_path: Path) -> None:
    prepared = prepare(_case(tmp_path, "LPS", np.int16))
    fortran = _case(tmp_path, "LPS", np.int16)
    fortran.images = np.asfortranarray(fortran.images)
    again = prepare(fortran)
    for array in (prepared.image, prepared.brain, again.image, again.brain):
        assert array.flags.c_contiguous
    np.testing.assert_array_equal(again.image, prepared.image)
    assert again.geometry == prepared.geometry
