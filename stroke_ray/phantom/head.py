"""The normal brain: pose and size, anatomy draws, and tissue fractions on a grid (a Scene).

Brain coordinates put the brain in a unit ball: px left to right, py posterior to anterior,
pz inferior to superior; the head is slightly rotated and shifted in the field of view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from stroke_ray.phantom.grid import F32, Field, Grid, rotation_matrix

__all__ = [
    "CSF",
    "GM",
    "WM",
    "Head",
    "Anatomy",
    "Scene",
    "draw_head",
    "draw_anatomy",
    "ellipsoid_q",
    "nominal_mm",
    "rasterise_anatomy",
]

CSF, GM, WM = 0, 1, 2  # tissue indices of Scene.fractions
# Brain semi-axes as fractions of the half field of view along x, y, z (RAS voxel axes).
_BRAIN_SEMI_AXES_FOV = np.array([0.72, 0.82, 0.80])
_NOMINAL_BRAIN_RADIUS_MM = 73.0  # sizes given in mm are scaled by brain radius / this
_MAX_ROTATION_DEG = 5.0


@dataclass(frozen=True)
class Head:
    """Pose and size of the brain: world mm <-> brain coordinates (unit ball ~ brain)."""

    centre_mm: np.ndarray
    semi_mm: np.ndarray
    rotation: np.ndarray  # columns: the brain's x, y, z axes in world

    @property
    def radius_mm(self) -> float:
        """Mean semi-axis: how many mm one brain unit is."""
        return float(self.semi_mm.mean())

    def coords(self, axes_mm: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Brain coordinates (px, py, pz) of every voxel of the grid spanned by the axes."""
        offsets = [
            (x - F32(c)).reshape([-1 if a == i else 1 for a in range(3)])
            for i, (x, c) in enumerate(zip(axes_mm, self.centre_mm, strict=True))
        ]
        coords = []
        for column, semi in zip(self.rotation.T, self.semi_mm, strict=True):
            rotated = offsets[0] * F32(column[0]) + offsets[1] * F32(column[1])
            coords.append((rotated + offsets[2] * F32(column[2])) / F32(semi))
        return coords

    def world(self, points: np.ndarray) -> np.ndarray:
        """World mm of points (n, 3) given in brain coordinates."""
        return self.centre_mm + (np.asarray(points) * self.semi_mm) @ self.rotation.T

    def world_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World bounds of the brain-coordinate box [lo, hi]."""
        corners = np.array(
            [[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)]
        )
        world = self.world(corners)
        return world.min(axis=0), world.max(axis=0)


@dataclass(frozen=True)
class Anatomy:
    """Random draws of the normal brain."""

    deform: Field
    deform_amp: float
    folds: Field
    fold_amp: float
    ribbon: Field
    ribbon_inner: float
    deep_semi: np.ndarray
    vent_semi: np.ndarray
    vent_y: float
    csf_rim: float

    def ventricle_centres(self) -> np.ndarray:
        """Centres of the two lateral ventricles (brain coordinates)."""
        return np.array([[0.11 * side, self.vent_y, 0.12] for side in (-1.0, 1.0)])

    def deep_centres(self) -> np.ndarray:
        """Centres of the two deep grey-matter masses (basal ganglia / thalami)."""
        return np.array([[0.22 * side, -0.02, 0.0] for side in (-1.0, 1.0)])


def draw_head(rng: np.random.Generator, grid: Grid) -> Head:
    """A brain that fills the grid's field of view like a clinical scan, slightly off-centre."""
    fov = grid.fov_mm
    semi = _BRAIN_SEMI_AXES_FOV * fov / 2 * rng.uniform(0.92, 1.05, 3)
    centre = grid.centre_mm + rng.uniform(-0.02, 0.02, 3) * fov
    angles = np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, 3))
    return Head(centre, semi, rotation_matrix(angles))


def draw_anatomy(rng: np.random.Generator, grid: Grid) -> Anatomy:
    """Random shape, folding, deep grey matter and ventricles (fields over the field of view)."""
    lo, hi = grid.centre_mm - grid.fov_mm / 2, grid.centre_mm + grid.fov_mm / 2
    return Anatomy(
        deform=Field.draw(rng, lo, hi, (5, 5, 5)),
        deform_amp=float(rng.uniform(0.03, 0.05)),
        folds=Field.draw(rng, lo, hi, (26, 32, 24)),
        fold_amp=float(rng.uniform(0.14, 0.18)),
        ribbon=Field.draw(rng, lo, hi, (8, 8, 6)),
        ribbon_inner=float(rng.uniform(0.83, 0.86)),
        deep_semi=np.array([0.13, 0.22, 0.13]) * rng.uniform(0.9, 1.1),
        vent_semi=np.array([0.07, 0.32, 0.12]) * rng.uniform(0.8, 1.5),
        vent_y=float(rng.uniform(-0.02, 0.08)),
        csf_rim=float(rng.uniform(0.965, 0.98)),
    )


def nominal_mm(size_mm: float) -> float:
    """Brain units of a size given in mm for an adult brain (scaled with the head's size)."""
    return size_mm / _NOMINAL_BRAIN_RADIUS_MM


def ellipsoid_q(
    coords: Sequence[np.ndarray], centre: Sequence[float], semi: np.ndarray
) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipsoid in brain coordinates."""
    return np.sqrt(
        sum(((c - F32(m)) / F32(s)) ** 2 for c, m, s in zip(coords, centre, semi, strict=True))
    )


@dataclass
class Scene:
    """A phantom on one grid: tissue fractions, tissue change, label and truth in a brain box."""

    grid: Grid
    box: tuple[slice, slice, slice]  # the brain's bounding box on the grid
    coords: list[np.ndarray]  # brain coordinates in the box
    tau: float  # half a voxel in brain units (partial-volume width)
    fractions: np.ndarray  # (3, *box) CSF, GM, WM
    brain: np.ndarray  # bool
    rb: np.ndarray  # normalised brain radius (1 at the surface)
    ventricle_q: np.ndarray  # normalised ventricle radius (1 at the wall)
    deep_gm: np.ndarray  # membership of the deep grey nuclei
    log_change: np.ndarray  # (4, *box) log factors of PD, T1, T2, ADC
    label: np.ndarray  # bool: true extent of the labelled lesions
    truth: np.ndarray  # uint8, TRUTH_CODES
    dwi_gain: np.ndarray | None = None  # multiplies DWI b0 and b1000
    b1000_gain: np.ndarray | None = None  # multiplies b1000 only
    flair_csf_gain: np.ndarray | None = None  # multiplies the CSF signal on FLAIR

    def changed_voxels(self) -> np.ndarray:
        """Flat box indices of the voxels whose tissue a pathology changed."""
        return np.flatnonzero(np.abs(self.log_change).max(axis=0) > 1e-4)

    def full(self, array: np.ndarray, dtype: type | None = None) -> np.ndarray:
        """``array`` (box-shaped) pasted into a zero volume of the whole grid."""
        out = np.zeros(self.grid.shape, dtype=dtype or array.dtype)
        out[self.box] = array
        return out

    def sub_box(
        self, head: Head, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(grid box, the same box relative to the brain box) of a brain-coordinate box."""
        world_lo, world_hi = head.world_box(lo, hi)
        box = self.grid.box(world_lo, world_hi)
        clipped = tuple(
            slice(max(b.start, o.start), max(max(b.start, o.start), min(b.stop, o.stop)))
            for b, o in zip(box, self.box, strict=True)
        )
        local = tuple(
            slice(c.start - o.start, c.stop - o.start)
            for c, o in zip(clipped, self.box, strict=True)
        )
        return clipped, local


def rasterise_anatomy(head: Head, anatomy: Anatomy, grid: Grid) -> Scene:
    """The normal brain on ``grid``, computed inside the brain's bounding box only."""
    extent = 1.22 * np.sqrt(((head.rotation * head.semi_mm) ** 2).sum(axis=1))
    box = grid.box(head.centre_mm - extent, head.centre_mm + extent)
    axes = grid.axes_mm(box)
    px, py, pz = head.coords(axes)
    px_shaped = px / (1 - F32(0.08) * py)  # egg-shaped: narrower frontally
    pz_shaped = np.where(pz < 0, pz / F32(0.9), pz)  # flatter inferiorly
    deform = 1 + F32(anatomy.deform_amp) * np.clip(anatomy.deform(axes), -2, 2)
    rb = np.sqrt(px_shaped**2 + py**2 + pz_shaped**2) / deform
    brain = rb < 1
    # Crop to the brain itself: everything outside it is zero in every image.
    tight = tuple(
        slice(int(idx.min()), int(idx.max()) + 1) if idx.size else slice(0, 0)
        for idx in (
            np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)
        )
    )
    box = tuple(slice(b.start + t.start, b.start + t.stop) for b, t in zip(box, tight, strict=True))
    axes = [a[t] for a, t in zip(axes, tight, strict=True)]
    coords = [np.ascontiguousarray(c[tight]) for c in (px, py, pz)]
    rb, brain = rb[tight], brain[tight]
    px, py, pz = coords
    tau = F32(0.5 * np.mean(grid.spacing_mm) / head.radius_mm)

    # Cortex: CSF/GM and GM/WM boundaries folded together along the zero sheets of a smooth
    # noise field, so that sulci are V-shaped CSF clefts lined by a grey-matter ribbon.
    fold = np.exp(-((anatomy.folds(axes) / F32(0.3)) ** 2))
    rf = rb + F32(anatomy.fold_amp) * fold
    ribbon_inner = F32(anatomy.ribbon_inner) + F32(0.02) * anatomy.ribbon(axes)
    gm = expit((rf - ribbon_inner) / tau)

    # Deep grey matter (basal ganglia / thalami) lateral to the ventricles.
    deep_gm = np.zeros_like(gm)
    for centre in anatomy.deep_centres():
        q = ellipsoid_q(coords, centre, anatomy.deep_semi)
        deep_gm = np.maximum(deep_gm, expit((1 - q) * F32(anatomy.deep_semi.min()) / tau))
    gm = np.maximum(gm, deep_gm)

    # CSF: outer rim and sulci, lateral ventricles and the interhemispheric fissure.
    csf = expit((rf - F32(anatomy.csf_rim)) / tau)
    ventricle_q = np.full(brain.shape, np.inf, dtype=F32)
    for centre in anatomy.ventricle_centres():
        q = ellipsoid_q(coords, centre, anatomy.vent_semi)
        csf = np.maximum(csf, expit((1 - q) * F32(anatomy.vent_semi.min()) / tau))
        ventricle_q = np.minimum(ventricle_q, q)
    fissure = expit((F32(0.02) - np.abs(px)) / tau) * expit((pz - F32(0.3)) / tau)
    csf = np.maximum(csf, fissure)

    fractions = np.stack([csf, gm * (1 - csf), (1 - gm) * (1 - csf)]).astype(F32)
    fractions *= brain
    shape = brain.shape
    return Scene(
        grid=grid,
        box=box,  # type: ignore[arg-type]
        coords=[px, py, pz],
        tau=float(tau),
        fractions=fractions,
        brain=brain,
        rb=rb.astype(F32),
        ventricle_q=ventricle_q,
        deep_gm=deep_gm.astype(F32),
        log_change=np.zeros((4, *shape), dtype=F32),
        label=np.zeros(shape, dtype=bool),
        truth=np.zeros(shape, dtype=np.uint8),
    )
