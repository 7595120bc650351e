"""Tests for stroke_ray.planes: slicing a RAS volume per plane and stacking it back."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from stroke_ray.planes import PLANES, brain_slice_indices, slices_to_volume, volume_to_slices

# On the RAS grid: sagittal slices run along x (axis 0), coronal along y, axial along z.
EXPECTED_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
SHAPE = (5, 6, 7)


def test_planes_cover_three_anatomical_planes() -> None:
    assert sorted(PLANES) == sorted(EXPECTED_AXIS)


@pytest.mark.parametrize("channels", [(), (3,), (2, 4)])
@pytest.mark.parametrize("plane", PLANES)
def test_round_trip_and_slice_content(plane: str, channels: tuple[int, ...]) -> None:
    volume = np.random.default_rng(0).normal(size=(*channels, *SHAPE)).astype(np.float32)
    axis = EXPECTED_AXIS[plane]
    in_plane = [n for a, n in enumerate(SHAPE) if a != axis]

    slices = volume_to_slices(volume, plane)

    assert slices.shape == (SHAPE[axis], *channels, *in_plane)
    for index in range(SHAPE[axis]):
        np.testing.assert_array_equal(
            slices[index], np.take(volume, index, axis=len(channels) + axis)
        )
    restored = slices_to_volume(slices, plane)
    assert restored.shape == volume.shape and restored.flags.c_contiguous
    np.testing.assert_array_equal(restored, volume)


@pytest.mark.parametrize("plane", PLANES)
def test_slices_to_volume_places_each_slice(plane: str) -> None:
    axis = EXPECTED_AXIS[plane]
    in_plane = [n for a, n in enumerate(SHAPE) if a != axis]
    slices = np.stack([np.full(in_plane, index, np.int16) for index in range(SHAPE[axis])])
    volume = slices_to_volume(slices, plane)
    assert volume.shape == SHAPE
    expected = np.indices(SHAPE)[axis]
    np.testing.assert_array_equal(volume, expected)


def test_brain_slice_indices() -> None:
    brain = np.zeros(SHAPE, dtype=bool)
    brain[1, 2, 3] = True
    brain[3, 2, 6] = True
    brain[3, 5, 0] = True
    assert brain_slice_indices(brain, "sagittal").tolist() == [1, 3]
    assert brain_slice_indices(brain, "coronal").tolist() == [2, 5]
    assert brain_slice_indices(brain, "axial").tolist() == [0, 3, 6]
    assert brain_slice_indices(np.zeros(SHAPE, bool), "axial").tolist() == []


@pytest.mark.parametrize(
    "call",
    [
        lambda: volume_to_slices(np.zeros(SHAPE), "transverse"),
        lambda: slices_to_volume(np.zeros(SHAPE), "Axial"),
        lambda: brain_slice_indices(np.zeros(SHAPE, bool), "oblique"),
    ],
)
def test_unknown_plane_rejected(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="unknown plane"):
        call()
