"""Cut a RAS volume into 2D slices along one anatomical plane, and stack them back.

On the canonical RAS grid the sagittal plane is normal to axis 0 (x), the coronal plane to
axis 1 (y) and the axial plane to axis 2 (z). Slices keep the order of that axis, so
``slices_to_volume(volume_to_slices(v, p), p)`` is ``v`` exactly.
"""

from __future__ import annotations

import numpy as np

from stroke_ray.config import PLANES

__all__ = [
    "PLANES",
    "PLANE_AXIS",
    "volume_to_slices",
    "slices_to_volume",
    "brain_slice_indices",
]

PLANE_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


def _axis(volume_ndim: int, plane: str) -> int:
    if plane not in PLANE_AXIS:
        raise ValueError(f"unknown plane {plane!r}; choose one of {PLANES}")
    return volume_ndim - 3 + PLANE_AXIS[plane]


def volume_to_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """(..., X, Y, Z) → (N, ..., H, W): the plane's slices in axis order (a view)."""
    return np.moveaxis(volume, _axis(volume.ndim, plane), 0)


def slices_to_volume(slices: np.ndarray, plane: str) -> np.ndarray:
    """(N, ..., H, W) → (..., X, Y, Z): the inverse of :func:`volume_to_slices`."""
    return np.ascontiguousarray(np.moveaxis(slices, 0, _axis(slices.ndim, plane)))


def brain_slice_indices(brain: np.ndarray, plane: str) -> np.ndarray:
    """Indices of the plane's slices that contain at least one brain voxel."""
    axis = _axis(brain.ndim, plane)
    other = tuple(a for a in range(3) if a != axis)
    return np.flatnonzero(brain.any(axis=other))
