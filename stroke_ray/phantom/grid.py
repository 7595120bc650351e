"""Axis-aligned voxel grids in world millimetres, thick-slice slabs, smooth random fields."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["F32", "Grid", "slab_mean", "Field", "rotation_matrix", "random_rotation", "unit"]

F32 = np.float32


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid in world (RAS) millimetres."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]  # world position of voxel (0, 0, 0)

    @classmethod
    def centred(cls, shape: Sequence[int], spacing_mm: float | Sequence[float]) -> Grid:
        """The grid of ``shape`` whose centre is at world 0."""
        spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
        origin = -spacing * (np.asarray(shape) - 1) / 2
        return cls(
            tuple(int(n) for n in shape),  # type: ignore[arg-type]
            tuple(float(s) for s in spacing),  # type: ignore[arg-type]
            tuple(float(o) for o in origin),  # type: ignore[arg-type]
        )

    @property
    def affine(self) -> np.ndarray:
        """Voxel to world (RAS mm) affine."""
        affine = np.diag([*self.spacing_mm, 1.0])
        affine[:3, 3] = self.origin_mm
        return affine

    @property
    def centre_mm(self) -> np.ndarray:
        """World position of the grid centre."""
        return (
            np.asarray(self.origin_mm)
            + np.asarray(self.spacing_mm) * (np.asarray(self.shape) - 1) / 2
        )

    @property
    def fov_mm(self) -> np.ndarray:
        """Field of view along each axis."""
        return np.asarray(self.shape) * np.asarray(self.spacing_mm)

    def axes_mm(self, box: tuple[slice, ...] | None = None) -> list[np.ndarray]:
        """World coordinate of every voxel centre along each axis (of ``box`` if given)."""
        box = box or tuple(slice(0, n) for n in self.shape)
        return [
            (o + s * np.arange(b.start, b.stop)).astype(F32)
            for o, s, b in zip(self.origin_mm, self.spacing_mm, box, strict=True)
        ]

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice]:
        """Index box of the voxels whose centres may lie in the world box [lo, hi]."""
        origin, spacing = np.asarray(self.origin_mm), np.asarray(self.spacing_mm)
        start = np.clip(np.floor((lo_mm - origin) / spacing).astype(int), 0, self.shape)
        stop = np.clip(np.ceil((hi_mm - origin) / spacing).astype(int) + 1, 0, self.shape)
        return tuple(slice(int(a), int(max(a, b))) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]

    def moved(self, offset_mm: Sequence[float]) -> Grid:
        """The same grid shifted in world by ``offset_mm``."""
        return Grid(self.shape, self.spacing_mm, tuple(np.add(self.origin_mm, offset_mm)))  # type: ignore[arg-type]

    def slabs(self, factor: int) -> tuple[Grid, int]:
        """(grid of ``factor``-slice slabs along z, first fine slice used); the rest is dropped."""
        count = self.shape[2] // factor
        start = (self.shape[2] - factor * count) // 2
        origin_z = self.origin_mm[2] + self.spacing_mm[2] * (start + (factor - 1) / 2)
        grid = Grid(
            (*self.shape[:2], count),
            (*self.spacing_mm[:2], self.spacing_mm[2] * factor),
            (*self.origin_mm[:2], origin_z),
        )
        return grid, start


def slab_mean(volume: np.ndarray, factor: int, start: int) -> np.ndarray:
    """Average ``factor`` consecutive z slices from ``start`` (thick-slice partial volume)."""
    count = (volume.shape[-1] - start) // factor
    used = volume[..., start : start + factor * count].astype(F32, copy=False)
    return used.reshape(*volume.shape[:-1], count, factor).mean(axis=-1)


@dataclass(frozen=True)
class Field:
    """A smooth random field of zero mean and unit std over a world box (Gaussian RBFs)."""

    lo_mm: np.ndarray
    hi_mm: np.ndarray
    coeff: np.ndarray  # (kx, ky, kz)
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def draw(
        cls, rng: np.random.Generator, lo_mm: np.ndarray, hi_mm: np.ndarray, knots: Sequence[int]
    ) -> Field:
        """A field with ``knots`` basis functions per axis, standardised over [lo, hi]."""
        lo, hi = np.asarray(lo_mm, dtype=float), np.asarray(hi_mm, dtype=float)
        raw = cls(lo, np.maximum(hi, lo + 1e-3), rng.standard_normal(tuple(knots)))
        values = raw(list(np.linspace(raw.lo_mm, raw.hi_mm, 24).T))  # a fixed lattice
        return replace(raw, mean=float(values.mean()), std=max(float(values.std()), 1e-6))

    def _basis(self, axis: int, positions_mm: np.ndarray) -> np.ndarray:
        lo, hi, count = self.lo_mm[axis], self.hi_mm[axis], self.coeff.shape[axis]
        centres = lo + (hi - lo) * np.linspace(-0.15, 1.15, count)
        width = centres[1] - centres[0] if count > 1 else 1.3 * (hi - lo)
        x = np.asarray(positions_mm, dtype=float)
        return np.exp(-0.5 * ((x[:, None] - centres[None, :]) / width) ** 2).astype(F32)

    def __call__(self, axes_mm: Sequence[np.ndarray]) -> np.ndarray:
        """The field at every voxel of the grid spanned by the 1D world axes."""
        bx, by, bz = (self._basis(a, x) for a, x in enumerate(axes_mm))
        coeff = (self.coeff / self.std).astype(F32)
        values = np.tensordot(bx, coeff, axes=(1, 0))  # (nx, ky, kz)
        values = np.tensordot(values, by, axes=(1, 1))  # (nx, kz, ny)
        values = np.tensordot(values, bz, axes=(1, 1))  # (nx, ny, nz)
        return values - F32(self.mean / self.std)


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Return the rotation matrix Rz @ Ry @ Rx for angles (x, y, z) in radians."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Return a uniformly random 3D rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def unit(vector: Sequence[float]) -> np.ndarray:
    """``vector`` scaled to length 1."""
    vector = np.asarray(vector, dtype=float)
    return vector / np.linalg.norm(vector)
