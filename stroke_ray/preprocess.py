"""Prepare a case for the network: RAS orientation, brain crop, resampling, z-score, padding;
and undo it.

The network always sees volumes in canonical RAS voxel order (axis 0 left→right, 1
posterior→anterior, 2 inferior→superior), cropped to the brain's bounding box, optionally
resampled to a target voxel size, and padded so every axis is a multiple of 32.
:class:`Geometry` records each step so that a prediction on that grid maps back to the source
image: voxel for voxel without resampling (flips, axis permutations and crop only), and
through the inverse resampling otherwise.

Resampling (``spacing_mm`` of :func:`prepare`) uses SciPy (``ndimage.affine_transform``, order
1 = linear). The brain box keeps its extent in mm: its N source voxels of size s become
round(N·s/t) voxels of size N·s/round(N·s/t) ≈ t, edges aligned (voxel centres at
(j + ½)·size from the box's first edge on both grids). Labels and brain masks are resampled
linearly and thresholded at 0.5. Going back, probabilities are resampled linearly onto the
source brain box and only then thresholded (:func:`to_source_spacing`), so a mask lands on
the source grid within a voxel of where the network put it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from nibabel import orientations
from scipy import ndimage

from stroke_ray.volumes import CaseVolumes

__all__ = [
    "Geometry",
    "Prepared",
    "prepare",
    "restore",
    "to_canonical",
    "ras_spacing",
    "median_spacing",
    "resample",
    "resampled_shape",
    "to_source_spacing",
    "zscore",
    "PAD_MULTIPLE",
]

PAD_MULTIPLE = 32
_RAS = orientations.axcodes2ornt(("R", "A", "S"))
_IDENTITY = orientations.ornt_transform(_RAS, _RAS)


@dataclass(frozen=True)
class Geometry:
    """How the network grid relates to the source voxel grid."""

    source_shape: tuple[int, int, int]
    source_ornt: tuple[tuple[float, float], ...]  # nibabel orientation of the source axes
    crop_start: tuple[int, int, int]  # first voxel of the brain box in canonical RAS
    crop_shape: tuple[int, int, int]  # size of the brain box before padding
    spacing_mm: tuple[float, float, float]  # voxel size along canonical RAS axes
    # brain box on the network grid before padding when it was resampled (else None)
    grid_shape: tuple[int, int, int] | None = None

    @property
    def resampled(self) -> bool:
        """Whether the network grid has another voxel size than the source."""
        return self.grid_shape is not None

    @property
    def grid_spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size of the network grid along canonical RAS axes."""
        if self.grid_shape is None:
            return self.spacing_mm
        return tuple(  # type: ignore[return-value]
            s * n / m
            for s, n, m in zip(self.spacing_mm, self.crop_shape, self.grid_shape, strict=True)
        )

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Source shape with the axes in RAS order."""
        order = [int(axis) for axis, _ in self.source_ornt]
        permuted = [0, 0, 0]
        for source_axis, target_axis in enumerate(order):
            permuted[target_axis] = self.source_shape[source_axis]
        return tuple(permuted)  # type: ignore[return-value]


@dataclass
class Prepared:
    """A case on the network grid."""

    case_id: str
    image: (
        np.ndarray | None
    )  # (4, X, Y, Z) float32, z-scored, RAS, cropped, padded (None once predicted)
    label: np.ndarray | None  # (X, Y, Z) uint8 on the same grid
    brain: np.ndarray  # (X, Y, Z) bool: voxels inside the head/brain mask
    geometry: Geometry


def to_canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder the last three axes of ``volume`` from the affine's orientation to RAS."""
    return np.ascontiguousarray(_canonical_view(volume, affine))


def _canonical_view(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """:func:`to_canonical` as a view (flips and transposes, no copy)."""
    transform = orientations.ornt_transform(orientations.io_orientation(affine), _RAS)
    return _orientation_view(volume, transform)


def ras_spacing(
    affine: np.ndarray, zooms: Sequence[float] | None = None
) -> tuple[float, float, float]:
    """Voxel size in mm along the RAS axes that :func:`to_canonical` produces.

    ``zooms`` (the header's, along the source axes) default to the affine's column norms.
    """
    if zooms is None:
        zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = [0.0, 0.0, 0.0]
    for source_axis, (target_axis, _) in enumerate(orientations.io_orientation(affine)):
        spacing[int(target_axis)] = float(zooms[source_axis])
    return tuple(spacing)  # type: ignore[return-value]


def _orientation_view(volume: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """nibabel's apply_orientation on the last three axes (channels first are kept), a view."""
    if np.array_equal(transform, _IDENTITY):
        return volume
    spatial_first = np.moveaxis(volume, range(volume.ndim - 3), range(3, volume.ndim))
    moved = orientations.apply_orientation(spatial_first, transform)
    return np.moveaxis(moved, range(3, volume.ndim), range(volume.ndim - 3))


def _apply_orientation(volume: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """:func:`_orientation_view`, C-contiguous (the volume itself when it already is)."""
    return np.ascontiguousarray(_orientation_view(volume, transform))


def zscore(images: np.ndarray, mask: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Z-score each channel over the mask voxels; zero outside the mask.

    ``in_place`` (float32 input) overwrites ``images`` instead of allocating a second volume;
    the values are the same. Other types give a new float32 volume.
    """
    if images.dtype != np.float32:
        out = np.zeros_like(images, dtype=np.float32)
        for channel, image in enumerate(images):
            values = image[mask]
            mean, scale = _moments(values)
            out[channel][mask] = (values - mean) / scale
        return out
    out = images if in_place else images.copy()
    outside = ~mask
    for image in out:
        mean, scale = _moments(image[mask])
        image -= mean
        image /= scale
        image[outside] = 0.0
    return out


def _moments(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of ``values`` (0 and 1 where they give none)."""
    if not values.size:
        return 0.0, 1.0
    std = float(values.std())
    return float(values.mean()), std if std > 1e-6 else 1.0


def _padded_size(size: int) -> int:
    return int(np.ceil(size / PAD_MULTIPLE) * PAD_MULTIPLE)


def _brain_box(brain: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    start, shape = [], []
    for axis in range(3):
        present = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            raise ValueError("empty brain mask: every voxel of every sequence is 0")
        start.append(int(present[0]))
        shape.append(int(present[-1]) + 1 - int(present[0]))
    return tuple(start), tuple(shape)


def _crop(volume: np.ndarray, start, shape) -> np.ndarray:
    lead = volume.ndim - 3
    window = (slice(None),) * lead + tuple(
        slice(a, a + n) for a, n in zip(start, shape, strict=True)
    )
    return volume[window]  # a view


def _pad(volume: np.ndarray) -> np.ndarray:
    lead = volume.ndim - 3
    pad = [(0, 0)] * lead + [(0, _padded_size(n) - n) for n in volume.shape[lead:]]
    return np.pad(volume, pad)


def _crop_pad(volume: np.ndarray, start, shape) -> np.ndarray:
    """The box of ``volume`` copied once into its padded array (C order whatever the input's
    layout)."""
    lead = volume.ndim - 3
    padded = np.zeros(volume.shape[:lead] + tuple(_padded_size(n) for n in shape), volume.dtype)
    padded[(slice(None),) * lead + tuple(slice(0, n) for n in shape)] = _crop(volume, start, shape)
    return padded


def resampled_shape(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    target_mm: Sequence[float] | None,
) -> tuple[int, int, int] | None:
    """The box's shape at ``target_mm`` (same extent in mm), or None when it stays as it is."""
    if target_mm is None:
        return None
    new = tuple(
        max(1, round(n * s / t)) for n, s, t in zip(shape, spacing_mm, target_mm, strict=True)
    )
    return None if new == tuple(shape) else new  # type: ignore[return-value]


def resample(volume: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample the last three axes of ``volume`` to ``shape``, voxel edges of the box aligned.

    Output voxel j of an axis samples the input at (j + ½)·n_in/n_out − ½ (SciPy
    ``affine_transform``; ``order`` 1 = linear, 0 = nearest; edges continue the border value).
    Float input stays float32; other types are resampled as float32 and cast back.
    """
    lead = volume.shape[:-3]
    ratio = np.array([a / b for a, b in zip(volume.shape[-3:], shape, strict=True)])
    offset = 0.5 * ratio - 0.5
    flat = volume.reshape((-1, *volume.shape[-3:]))
    out = np.empty((len(flat), *shape), dtype=np.float32)
    for index, channel in enumerate(flat):
        ndimage.affine_transform(
            channel.astype(np.float32, copy=False), ratio, offset=offset,
            output_shape=tuple(shape), output=out[index], order=order, mode="nearest",
        )  # fmt: skip
    out = out.reshape((*lead, *shape))
    return out if np.issubdtype(volume.dtype, np.floating) else out.astype(volume.dtype)


def _resample_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A binary mask resampled linearly and thresholded at 0.5 (same dtype)."""
    return (resample(mask.astype(np.float32), shape) >= 0.5).astype(mask.dtype)


def prepare(case: CaseVolumes, spacing_mm: Sequence[float] | None = None) -> Prepared:
    """Reorient to RAS, crop to the brain box, resample to ``spacing_mm`` (RAS order, mm; None
    keeps the source grid), z-score and pad to a multiple of 32."""
    images = _canonical_view(case.images, case.affine)  # cropping copies: no copy here
    brain_full = images[0] != 0
    for image in images[1:]:
        brain_full |= image != 0
    start, shape = _brain_box(brain_full)
    source_ornt = orientations.io_orientation(case.affine)
    source_spacing = ras_spacing(case.affine, case.spacing_mm)
    grid_shape = resampled_shape(shape, source_spacing, spacing_mm)
    geometry = Geometry(
        source_shape=tuple(int(n) for n in case.images.shape[1:]),  # type: ignore[arg-type]
        source_ornt=tuple((float(a), float(b)) for a, b in source_ornt),
        crop_start=start,  # type: ignore[arg-type]
        crop_shape=shape,  # type: ignore[arg-type]
        spacing_mm=source_spacing,
        grid_shape=grid_shape,
    )
    label = None if case.label is None else _canonical_view(case.label, case.affine)
    if grid_shape is None:
        brain = _crop_pad(brain_full, start, shape)
        if label is not None:
            label = _crop_pad(label, start, shape)
        image = _crop_pad(images, start, shape)
    else:
        brain = _pad(_resample_mask(_crop(brain_full, start, shape), grid_shape))
        if label is not None:
            label = _pad(_resample_mask(_crop(label, start, shape), grid_shape))
        image = _pad(resample(_crop(images, start, shape), grid_shape))
    return Prepared(
        case_id=case.case_id,
        image=zscore(image, brain, in_place=True),
        label=label,
        brain=brain,
        geometry=geometry,
    )


def to_source_spacing(volume: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """A network-grid volume on the source voxel size, with the geometry that restores it.

    Resampled back onto the source brain box: float volumes (probabilities) linearly, others
    by nearest neighbour; threshold probabilities after this step. Without resampling the
    volume and geometry come back unchanged.
    """
    if not geometry.resampled:
        return volume, geometry
    grid = volume[(..., *(slice(0, n) for n in geometry.grid_shape))]
    order = 1 if np.issubdtype(volume.dtype, np.floating) else 0
    return resample(grid, geometry.crop_shape, order), replace(geometry, grid_shape=None)


def restore(volume: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map a volume on the network grid back to the source voxel grid (exact inverse without
    resampling; see :func:`to_source_spacing` otherwise)."""
    volume, geometry = to_source_spacing(volume, geometry)
    canonical = np.zeros(geometry.canonical_shape, dtype=volume.dtype)
    window = tuple(
        slice(a, a + n) for a, n in zip(geometry.crop_start, geometry.crop_shape, strict=True)
    )
    canonical[window] = volume[tuple(slice(0, n) for n in geometry.crop_shape)]
    transform = orientations.ornt_transform(_RAS, np.asarray(geometry.source_ornt))
    return _apply_orientation(canonical, transform)


def median_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """Per-axis median of voxel sizes (mm), rounded to 0.1 µm."""
    if not len(spacings):
        raise ValueError("median_spacing needs at least one voxel size")
    return tuple(round(float(v), 4) for v in np.median(np.asarray(spacings), axis=0))  # type: ignore[return-value]
