"""One synthetic stroke head: anatomy, lesions by stage, look-alikes, MR signal per sequence.

A :class:`Phantom` holds every random draw of one head in world millimetres, so that it can be
rasterised on any axis-aligned grid (the case grid, a FLAIR grid of its own) and always shows
the same head. Contrast comes from tissue parameters (proton density, T1, T2, ADC) through
each sequence's signal equation, so relative intensities follow the physics: CSF dark on T1
and FLAIR and bright on T2; an ADC drop makes a lesion bright on DWI and dark on ADC; a long
T2 makes a lesion bright on FLAIR and T2 and, through T2 shine-through, on DWI.

What a head holds:

- anatomy: a deformed, slightly rotated brain with folded cortex, deep grey matter and
  ventricles (tissue fractions, so borders have partial volume);
- labelled lesions, each of one stage: ``hyperacute`` (ADC dark, DWI bright, nearly invisible
  on FLAIR and T2), ``acute`` (bright on DWI, FLAIR and T2), ``subacute`` (bright on DWI,
  FLAIR and T2, ADC pseudo-normalising); as vascular-territory wedges (MCA, ACA, PCA),
  embolic cortical-subcortical blobs, and lacunes of a few millimetres in deep grey or white
  matter;
- look-alikes that are not lesion: white-matter hyperintensities (periventricular caps and rim,
  punctate and confluent deep WMH), an old infarct (T2 shine-through on DWI with a raised ADC,
  sometimes cavitated), DWI susceptibility pile-up at the frontal and temporal base, N/2
  ghosting, and incomplete CSF suppression (flow) on FLAIR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import expit

__all__ = [
    "SEQUENCE_NAMES",
    "STAGES",
    "TRUTH_CODES",
    "Grid",
    "Phantom",
    "Scene",
    "draw_phantom",
    "rasterise",
    "render",
]

SEQUENCE_NAMES: tuple[str, ...] = ("t1", "t2", "flair", "dwi", "adc")
STAGES: tuple[str, ...] = ("hyperacute", "acute", "subacute")
# Codes of Scene.truth: what each voxel mostly holds (0: nothing of note).
TRUTH_CODES: dict[str, int] = {
    "hyperacute": 1,
    "acute": 2,
    "subacute": 3,
    "wmh": 4,
    "old": 5,
    "dwi_artefact": 6,
}

_F32 = np.float32
_CSF, _GM, _WM = 0, 1, 2

# Tissue parameters at 3 T (CSF, GM, WM): proton density, T1 and T2 (ms), ADC (mm²/s).
_PD = np.array([1.00, 0.80, 0.69])
_T1_MS = np.array([4000.0, 1350.0, 850.0])
_T2_MS = np.array([2000.0, 100.0, 80.0])
_ADC = np.array([3.0e-3, 0.85e-3, 0.75e-3])
_B_VALUE = 1000.0  # s/mm² of the diffusion-weighted image
_ADC_UNIT = 1e-6  # the ADC map is written in 10^-6 mm²/s, as clinical scanners do
_ADC_MAX = 4.0e-3
# Timing (TR, TE, TI in ms; TI 0 = no inversion): spin-echo T1, turbo spin-echo T2,
# FLAIR (TI near CSF's null), and spin-echo EPI for DWI (b0 and b1000).
_TIMING_MS = {
    "t1": (500.0, 10.0, 0.0),
    "t2": (4000.0, 100.0, 0.0),
    "flair": (9000.0, 120.0, 2500.0),
    "dwi": (5000.0, 90.0, 0.0),
}
# Scanner units of white matter per sequence (varied by +-20 % per case).
_WM_LEVEL = {"t1": 500.0, "t2": 400.0, "flair": 300.0, "dwi": 250.0}
# Rician noise sigma as a fraction of the white-matter signal.
_NOISE_FRACTION = {"t1": 0.025, "t2": 0.03, "flair": 0.035, "dwi": 0.05}

# Multiplicative change of (PD, T1, T2, ADC) at full severity, as (low, high) per kind.
_CHANGE = {
    "hyperacute": ((1.00, 1.01), (1.00, 1.03), (1.03, 1.08), (0.48, 0.60)),
    "acute": ((1.02, 1.06), (1.05, 1.15), (1.20, 1.40), (0.45, 0.60)),
    "subacute": ((1.05, 1.10), (1.30, 1.50), (1.50, 1.80), (0.75, 0.95)),
    "old": ((1.10, 1.20), (1.50, 1.90), (2.00, 2.60), (1.15, 1.40)),
    "wmh": ((1.03, 1.08), (1.10, 1.25), (1.35, 1.70), (1.10, 1.30)),
}
_STAGE_PROBABILITY = (0.3, 0.4, 0.3)
_FAZEKAS_PROBABILITY = (0.15, 0.35, 0.3, 0.2)  # white-matter disease grade 0-3

# Brain semi-axes as fractions of the half field of view along x, y, z (RAS voxel axes).
_BRAIN_SEMI_AXES_FOV = np.array([0.72, 0.82, 0.80])
_NOMINAL_BRAIN_RADIUS_MM = 73.0  # sizes in mm below are scaled by brain radius / this
_MAX_ROTATION_DEG = 5.0


# --------------------------------------------------------------------------- grids and fields


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
            (o + s * np.arange(b.start, b.stop)).astype(_F32)
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
    used = volume[..., start : start + factor * count].astype(_F32, copy=False)
    return used.reshape(*volume.shape[:-1], count, factor).mean(axis=-1)


@dataclass(frozen=True)
class _Field:
    """A smooth random field of zero mean and unit std over a world box (Gaussian RBFs)."""

    lo_mm: np.ndarray
    hi_mm: np.ndarray
    coeff: np.ndarray  # (kx, ky, kz)
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def draw(
        cls, rng: np.random.Generator, lo_mm: np.ndarray, hi_mm: np.ndarray, knots: Sequence[int]
    ) -> _Field:
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
        return np.exp(-0.5 * ((x[:, None] - centres[None, :]) / width) ** 2).astype(_F32)

    def __call__(self, axes_mm: Sequence[np.ndarray]) -> np.ndarray:
        """The field at every voxel of the grid spanned by the 1D world axes."""
        bx, by, bz = (self._basis(a, x) for a, x in enumerate(axes_mm))
        coeff = (self.coeff / self.std).astype(_F32)
        values = np.tensordot(bx, coeff, axes=(1, 0))  # (nx, ky, kz)
        values = np.tensordot(values, by, axes=(1, 1))  # (nx, kz, ny)
        values = np.tensordot(values, bz, axes=(1, 1))  # (nx, ny, nz)
        return values - _F32(self.mean / self.std)


def _rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Return the rotation matrix Rz @ Ry @ Rx for angles (x, y, z) in radians."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Return a uniformly random 3D rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _unit(vector: Sequence[float]) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    return vector / np.linalg.norm(vector)


# --------------------------------------------------------------------------- the head


@dataclass(frozen=True)
class _Head:
    """Pose and size of the brain: world mm <-> brain coordinates (unit ball ~ brain)."""

    centre_mm: np.ndarray
    semi_mm: np.ndarray
    rotation: np.ndarray  # columns: the brain's x, y, z axes in world

    @property
    def radius_mm(self) -> float:
        return float(self.semi_mm.mean())

    def mm(self, size_mm: float) -> float:
        """A size given in mm for a nominal adult brain, in brain units of this head."""
        return size_mm / _NOMINAL_BRAIN_RADIUS_MM

    def coords(self, axes_mm: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Brain coordinates (px, py, pz) of every voxel of the grid spanned by the axes."""
        offsets = [
            (x - _F32(c)).reshape([-1 if a == i else 1 for a in range(3)])
            for i, (x, c) in enumerate(zip(axes_mm, self.centre_mm, strict=True))
        ]
        coords = []
        for column, semi in zip(self.rotation.T, self.semi_mm, strict=True):
            rotated = offsets[0] * _F32(column[0]) + offsets[1] * _F32(column[1])
            coords.append((rotated + offsets[2] * _F32(column[2])) / _F32(semi))
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
class _Anatomy:
    """Random draws of the normal brain."""

    deform: _Field
    deform_amp: float
    folds: _Field
    fold_amp: float
    ribbon: _Field
    ribbon_inner: float
    deep_semi: np.ndarray
    vent_semi: np.ndarray
    vent_y: float
    csf_rim: float

    def ventricle_centres(self) -> np.ndarray:
        return np.array([[0.11 * side, self.vent_y, 0.12] for side in (-1.0, 1.0)])

    def deep_centres(self) -> np.ndarray:
        return np.array([[0.22 * side, -0.02, 0.0] for side in (-1.0, 1.0)])


def _draw_head(rng: np.random.Generator, grid: Grid) -> _Head:
    fov = grid.fov_mm
    semi = _BRAIN_SEMI_AXES_FOV * fov / 2 * rng.uniform(0.92, 1.05, 3)
    centre = grid.centre_mm + rng.uniform(-0.02, 0.02, 3) * fov
    angles = np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, 3))
    return _Head(centre, semi, _rotation_matrix(angles))


def _draw_anatomy(rng: np.random.Generator, grid: Grid) -> _Anatomy:
    lo, hi = grid.centre_mm - grid.fov_mm / 2, grid.centre_mm + grid.fov_mm / 2
    return _Anatomy(
        deform=_Field.draw(rng, lo, hi, (5, 5, 5)),
        deform_amp=float(rng.uniform(0.03, 0.05)),
        folds=_Field.draw(rng, lo, hi, (26, 32, 24)),
        fold_amp=float(rng.uniform(0.14, 0.18)),
        ribbon=_Field.draw(rng, lo, hi, (8, 8, 6)),
        ribbon_inner=float(rng.uniform(0.83, 0.86)),
        deep_semi=np.array([0.13, 0.22, 0.13]) * rng.uniform(0.9, 1.1),
        vent_semi=np.array([0.07, 0.32, 0.12]) * rng.uniform(0.8, 1.5),
        vent_y=float(rng.uniform(-0.02, 0.08)),
        csf_rim=float(rng.uniform(0.965, 0.98)),
    )


def _ellipsoid_q(
    coords: Sequence[np.ndarray], centre: Sequence[float], semi: np.ndarray
) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipsoid in brain coordinates."""
    return np.sqrt(
        sum(((c - _F32(m)) / _F32(s)) ** 2 for c, m, s in zip(coords, centre, semi, strict=True))
    )


# --------------------------------------------------------------------------- pathology shapes


@dataclass(frozen=True)
class _Ellipsoids:
    """A union of rotated ellipsoids in brain coordinates with a noisy border."""

    centres: np.ndarray  # (n, 3)
    semi: np.ndarray  # (n, 3)
    rotations: np.ndarray  # (n, 3, 3)
    border: _Field | None = None
    border_amp: float = 0.0  # brain units

    @property
    def size(self) -> float:
        return float(self.semi.max())

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = self.semi.max(axis=1, keepdims=True) * 1.15 + 2.5 * self.border_amp
        return (self.centres - reach).min(axis=0), (self.centres + reach).max(axis=0)

    def level(self, coords: list[np.ndarray], axes_mm: list[np.ndarray]) -> np.ndarray:
        """Approximate signed distance to the border (brain units), positive inside."""
        level = None
        for centre, semi, rotation in zip(self.centres, self.semi, self.rotations, strict=True):
            offsets = [c - _F32(m) for c, m in zip(coords, centre, strict=True)]
            local = [
                sum(offsets[a] * _F32(rotation[a, k]) for a in range(3)) / _F32(semi[k])
                for k in range(3)
            ]
            inside = (1 - np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)) * _F32(semi.min())
            level = inside if level is None else np.maximum(level, inside)
        if self.border is not None:
            level = level + _F32(self.border_amp) * self.border(axes_mm)
        return level


@dataclass(frozen=True)
class _Wedge:
    """A vascular territory: an elliptic cone from a deep apex out to the brain surface."""

    apex: np.ndarray
    axis: np.ndarray
    e_u: np.ndarray
    e_v: np.ndarray
    tan_u: float
    tan_v: float
    inner: float  # the lesion starts this far from the apex (brain units)
    side: float  # hemisphere: sign of px
    border: _Field
    border_amp: float

    @property
    def size(self) -> float:
        return 0.5

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([-1.3, -1.3, -1.3])
        hi = np.array([1.3, 1.3, 1.3])
        if self.side > 0:
            lo[0] = -0.05
        else:
            hi[0] = 0.05
        return lo, hi

    def level(self, coords: list[np.ndarray], axes_mm: list[np.ndarray]) -> np.ndarray:
        offsets = [c - _F32(a) for c, a in zip(coords, self.apex, strict=True)]

        def along(direction: np.ndarray) -> np.ndarray:
            return sum(o * _F32(d) for o, d in zip(offsets, direction, strict=True))

        t, u, v = along(self.axis), along(self.e_u), along(self.e_v)
        spread = np.sqrt((u / _F32(self.tan_u)) ** 2 + (v / _F32(self.tan_v)) ** 2)
        sin_min = math.sin(math.atan(min(self.tan_u, self.tan_v)))
        noise = _F32(self.border_amp) * self.border(axes_mm)
        cone = (t - spread) * _F32(sin_min) + noise
        level = np.minimum(cone, t - _F32(self.inner) + noise)
        return np.minimum(level, (coords[0] * _F32(self.side) - _F32(0.02)))


@dataclass(frozen=True)
class _Periventricular:
    """A rim of white matter along the lateral ventricles, with optional confluent patches."""

    centres: np.ndarray  # (2, 3) ventricle centres
    semi: np.ndarray  # ventricle semi-axes
    rim: float  # rim thickness (brain units)
    confluence: _Field | None
    reach: float  # how far from the ventricles confluent WMH extend (brain units)

    @property
    def size(self) -> float:
        return self.reach

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = self.semi + max(self.rim, self.reach) + 0.05
        return self.centres.min(axis=0) - reach, self.centres.max(axis=0) + reach

    def level(self, coords: list[np.ndarray], axes_mm: list[np.ndarray]) -> np.ndarray:
        scale = _F32(self.semi.min())
        distance = np.minimum(
            *[(_ellipsoid_q(coords, centre, self.semi) - 1) * scale for centre in self.centres]
        )
        level = _F32(self.rim) - distance
        if self.confluence is not None:
            patches = _F32(0.04) * (self.confluence(axes_mm) - _F32(1.0))
            level = np.maximum(level, np.minimum(patches, _F32(self.reach) - distance))
        return level


@dataclass(frozen=True)
class _Pathology:
    """One lesion or look-alike: where (a shape) and how tissue changes (log PD, T1, T2, ADC)."""

    kind: str  # a stage of STAGES (labelled), "wmh" or "old" (not labelled)
    shape: _Ellipsoids | _Wedge | _Periventricular
    log_change: np.ndarray  # (4,)
    texture: _Field
    cavity: float = 0.0  # fraction of the core replaced by CSF (old infarcts)

    @property
    def labelled(self) -> bool:
        return self.kind in STAGES


@dataclass(frozen=True)
class _Bump:
    """A Gaussian bump in brain coordinates."""

    centre: np.ndarray
    width: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.centre - 3 * self.width, self.centre + 3 * self.width

    def value(self, coords: list[np.ndarray]) -> np.ndarray:
        return np.exp(
            _F32(-0.5)
            * sum(
                ((c - _F32(m)) / _F32(w)) ** 2
                for c, m, w in zip(coords, self.centre, self.width, strict=True)
            )
        )


@dataclass(frozen=True)
class _Artefacts:
    """Non-lesion bright spots: DWI susceptibility and ghosting, FLAIR CSF flow."""

    pile_up: tuple[tuple[_Bump, float], ...]  # DWI signal pile-up (bump, gain)
    dropout: tuple[tuple[_Bump, float], ...]  # DWI signal loss (bump, loss)
    b1000_excess: float  # pile-up is this much stronger on b1000 than on b0 (ADC a bit low)
    ghost: float  # N/2 ghost amplitude along the phase-encoding (y) axis
    flow: tuple[_Bump, float] | None  # FLAIR: unsuppressed CSF (bump, gain)


@dataclass(frozen=True)
class Phantom:
    """Every random draw of one head; rasterise it on any axis-aligned grid."""

    head: _Head
    anatomy: _Anatomy
    pathologies: tuple[_Pathology, ...]
    artefacts: _Artefacts
    timing_ms: dict[str, tuple[float, float, float]]
    wm_level: dict[str, float]

    @property
    def stages(self) -> list[str]:
        """The stage of each labelled lesion."""
        return [p.kind for p in self.pathologies if p.labelled]


# --------------------------------------------------------------------------- rasterisation


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

    def full(self, array: np.ndarray, dtype: type | None = None) -> np.ndarray:
        """``array`` (box-shaped) pasted into a zero volume of the whole grid."""
        out = np.zeros(self.grid.shape, dtype=dtype or array.dtype)
        out[self.box] = array
        return out

    def sub_box(
        self, head: _Head, lo: np.ndarray, hi: np.ndarray
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


def _rasterise_anatomy(head: _Head, anatomy: _Anatomy, grid: Grid) -> Scene:
    """The normal brain on ``grid``, computed inside the brain's bounding box only."""
    extent = 1.22 * np.sqrt(((head.rotation * head.semi_mm) ** 2).sum(axis=1))
    box = grid.box(head.centre_mm - extent, head.centre_mm + extent)
    axes = grid.axes_mm(box)
    px, py, pz = head.coords(axes)
    px_shaped = px / (1 - _F32(0.08) * py)  # egg-shaped: narrower frontally
    pz_shaped = np.where(pz < 0, pz / _F32(0.9), pz)  # flatter inferiorly
    deform = 1 + _F32(anatomy.deform_amp) * np.clip(anatomy.deform(axes), -2, 2)
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
    tau = _F32(0.5 * np.mean(grid.spacing_mm) / head.radius_mm)

    # Cortex: CSF/GM and GM/WM boundaries folded together along the zero sheets of a smooth
    # noise field, so that sulci are V-shaped CSF clefts lined by a grey-matter ribbon.
    fold = np.exp(-((anatomy.folds(axes) / _F32(0.3)) ** 2))
    rf = rb + _F32(anatomy.fold_amp) * fold
    ribbon_inner = _F32(anatomy.ribbon_inner) + _F32(0.02) * anatomy.ribbon(axes)
    gm = expit((rf - ribbon_inner) / tau)

    # Deep grey matter (basal ganglia / thalami) lateral to the ventricles.
    deep_gm = np.zeros_like(gm)
    for centre in anatomy.deep_centres():
        q = _ellipsoid_q(coords, centre, anatomy.deep_semi)
        deep_gm = np.maximum(deep_gm, expit((1 - q) * _F32(anatomy.deep_semi.min()) / tau))
    gm = np.maximum(gm, deep_gm)

    # CSF: outer rim and sulci, lateral ventricles and the interhemispheric fissure.
    csf = expit((rf - _F32(anatomy.csf_rim)) / tau)
    ventricle_q = np.full(brain.shape, np.inf, dtype=_F32)
    for centre in anatomy.ventricle_centres():
        q = _ellipsoid_q(coords, centre, anatomy.vent_semi)
        csf = np.maximum(csf, expit((1 - q) * _F32(anatomy.vent_semi.min()) / tau))
        ventricle_q = np.minimum(ventricle_q, q)
    fissure = expit((_F32(0.02) - np.abs(px)) / tau) * expit((pz - _F32(0.3)) / tau)
    csf = np.maximum(csf, fissure)

    fractions = np.stack([csf, gm * (1 - csf), (1 - gm) * (1 - csf)]).astype(_F32)
    fractions *= brain
    shape = brain.shape
    return Scene(
        grid=grid,
        box=box,  # type: ignore[arg-type]
        coords=[px, py, pz],
        tau=float(tau),
        fractions=fractions,
        brain=brain,
        rb=rb.astype(_F32),
        ventricle_q=ventricle_q,
        deep_gm=deep_gm.astype(_F32),
        log_change=np.zeros((4, *shape), dtype=_F32),
        label=np.zeros(shape, dtype=bool),
        truth=np.zeros(shape, dtype=np.uint8),
    )


def _apply(scene: Scene, head: _Head, pathology: _Pathology) -> np.ndarray:
    """Add one pathology to the scene; return its membership (0-1) in its box, box-relative."""
    _, local = scene.sub_box(head, *pathology.shape.bounds())
    coords = [c[local] for c in scene.coords]
    grid_box = tuple(
        slice(s.start + o.start, s.stop + o.start) for s, o in zip(local, scene.box, strict=True)
    )
    axes = scene.grid.axes_mm(grid_box)
    if 0 in coords[0].shape:
        return np.zeros(coords[0].shape, dtype=_F32)
    level = pathology.shape.level(coords, axes)
    member = expit(level / _F32(scene.tau)) * scene.brain[local]
    fractions = scene.fractions[(slice(None), *local)]
    tissue = fractions[_GM] + fractions[_WM]
    if pathology.kind == "wmh":  # white matter only
        member = member * fractions[_WM] / np.maximum(tissue, _F32(1e-6))
    if pathology.cavity:  # an old infarct's core turns into CSF
        core = _F32(pathology.cavity) * expit(
            (level - _F32(0.5 * pathology.shape.size)) / _F32(scene.tau)
        )
        core = core * scene.brain[local]
        fractions[_CSF] += core * (1 - fractions[_CSF])
        fractions[_GM] *= 1 - core
        fractions[_WM] *= 1 - core
    texture = np.clip(1 + _F32(0.2) * pathology.texture(axes), 0.5, 1.5)
    scene.log_change[(slice(None), *local)] += (member * texture)[
        None
    ] * pathology.log_change.astype(_F32)[:, None, None, None]
    inside = (member >= 0.5) & (fractions[_CSF] < 0.5)
    if pathology.labelled:
        scene.label[local] |= inside
    else:  # a look-alike inside a lesion is lesion
        inside &= ~scene.label[local]
    scene.truth[local] = np.where(inside, TRUTH_CODES[pathology.kind], scene.truth[local])
    return member


def _apply_artefacts(scene: Scene, head: _Head, artefacts: _Artefacts) -> None:
    shape = scene.brain.shape
    gain = np.ones(shape, dtype=_F32)
    excess = np.ones(shape, dtype=_F32)
    for (bump, amount), sign in [(item, 1.0) for item in artefacts.pile_up] + [
        (item, -1.0) for item in artefacts.dropout
    ]:
        _, local = scene.sub_box(head, *bump.bounds())
        value = bump.value([c[local] for c in scene.coords])
        gain[local] *= 1 + _F32(sign * amount) * value
        if sign > 0:
            excess[local] *= 1 + _F32(artefacts.b1000_excess) * value
    scene.dwi_gain, scene.b1000_gain = gain, excess
    bright = (gain * excess > 1.5) & scene.brain & (scene.truth == 0)
    scene.truth[bright] = TRUTH_CODES["dwi_artefact"]
    if artefacts.flow is not None:
        bump, amount = artefacts.flow
        flow = np.ones(shape, dtype=_F32)
        _, local = scene.sub_box(head, *bump.bounds())
        flow[local] += _F32(amount) * bump.value([c[local] for c in scene.coords])
        scene.flair_csf_gain = flow


def rasterise(phantom: Phantom, grid: Grid) -> Scene:
    """The phantom on ``grid`` (every pathology and artefact included)."""
    scene = _rasterise_anatomy(phantom.head, phantom.anatomy, grid)
    for pathology in phantom.pathologies:
        _apply(scene, phantom.head, pathology)
    _apply_artefacts(scene, phantom.head, phantom.artefacts)
    return scene


# --------------------------------------------------------------------------- drawing pathology


def _log_change(rng: np.random.Generator, kind: str) -> np.ndarray:
    return np.log([rng.uniform(lo, hi) for lo, hi in _CHANGE[kind]])


def _texture(rng: np.random.Generator, head: _Head, lo: np.ndarray, hi: np.ndarray) -> _Field:
    world_lo, world_hi = head.world_box(lo, hi)
    return _Field.draw(rng, world_lo, world_hi, (3, 3, 3))


class _Planner:
    """Picks lesion sites on the planning scene, keeping labelled lesions apart."""

    def __init__(self, rng: np.random.Generator, scene: Scene, head: _Head) -> None:
        self.rng, self.scene, self.head = rng, scene, head
        self.occupied = np.zeros(scene.brain.shape, dtype=bool)
        tissue = np.argmax(scene.fractions, axis=0)
        brain = scene.brain
        wm = scene.fractions[_WM]
        self.sites = {
            "tissue": brain & (tissue != _CSF) & (scene.rb < 0.93) & (scene.ventricle_q > 1.4),
            "deep": brain
            & (tissue != _CSF)
            & ((scene.deep_gm > 0.6) | ((wm > 0.6) & (scene.rb < 0.62)))
            & (scene.ventricle_q > 1.3),
            "deep_wm": brain & (wm > 0.7) & (scene.rb < 0.8) & (scene.ventricle_q > 1.25),
        }
        self.voxel = float(np.mean(scene.grid.spacing_mm)) / head.radius_mm  # brain units

    def pick(self, where: str, radius: float, *, avoid: bool = True) -> np.ndarray | None:
        """Brain coordinates of a random site of kind ``where`` clear of earlier lesions."""
        candidates = np.flatnonzero(self.sites[where])
        if candidates.size == 0:
            candidates = np.flatnonzero(self.sites["tissue"])
        if candidates.size == 0:
            return None
        side = self.rng.choice([-1.0, 1.0])  # hemisphere
        in_side = candidates[self.scene.coords[0].reshape(-1)[candidates] * side > 0]
        candidates = in_side if in_side.size else candidates
        half = int(math.ceil(radius / self.voxel)) + 2
        for attempt in range(40):
            flat = candidates[self.rng.integers(candidates.size)]
            index = np.unravel_index(flat, self.occupied.shape)
            window = tuple(slice(max(i - half, 0), i + half + 1) for i in index)
            if not avoid or not self.occupied[window].any() or attempt == 39:
                return np.array([c[index] for c in self.scene.coords], dtype=float)
        return None

    def occupy(self, member: np.ndarray, pathology: _Pathology) -> None:
        _, local = self.scene.sub_box(self.head, *pathology.shape.bounds())
        self.occupied[local] |= member > 0.05


def _blob(
    rng: np.random.Generator,
    head: _Head,
    centre: np.ndarray,
    radius: float,
    parts: int,
    roughness: float,
) -> _Ellipsoids:
    """An irregular blob: a main ellipsoid and ``parts - 1`` smaller ones around it."""
    centres, semis = [], []
    for i in range(parts):
        offset = np.zeros(3) if i == 0 else rng.uniform(-0.7, 0.7, 3) * radius
        sub = radius * (1.0 if i == 0 else rng.uniform(0.4, 0.8))
        centres.append(centre + offset)
        semis.append(sub * rng.uniform(0.6, 1.4, 3))
    rotations = np.stack([_random_rotation(rng) for _ in range(parts)])
    centres_arr, semis_arr = np.array(centres), np.maximum(np.array(semis), 0.3 * radius)
    lo = (centres_arr - semis_arr.max(axis=1, keepdims=True)).min(axis=0)
    hi = (centres_arr + semis_arr.max(axis=1, keepdims=True)).max(axis=0)
    border = _Field.draw(rng, *head.world_box(lo, hi), (4, 4, 4))
    return _Ellipsoids(centres_arr, semis_arr, rotations, border, roughness * radius)


def _lacune(
    rng: np.random.Generator, head: _Head, centre: np.ndarray, radius: float
) -> _Ellipsoids:
    """A small deep infarct, elongated along the perforating arteries (z)."""
    semi = radius * np.array([rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1), rng.uniform(1.2, 1.8)])
    tilt = _rotation_matrix(np.deg2rad(rng.uniform(-15, 15, 3)))
    border = _Field.draw(rng, *head.world_box(centre - semi.max(), centre + semi.max()), (3, 3, 3))
    return _Ellipsoids(centre[None], semi[None], tilt[None], border, 0.1 * radius)


def _territory(rng: np.random.Generator, head: _Head) -> _Wedge:
    """A vascular-territory wedge: MCA (whole or a branch), ACA or PCA, in one hemisphere."""
    side = float(rng.choice([-1.0, 1.0]))
    name = rng.choice(["mca_branch", "mca", "aca", "pca"], p=[0.5, 0.15, 0.15, 0.2])
    if name == "mca":
        apex, axis, ref = (0.16 * side, 0.0, -0.05), (side, 0.05, 0.35), (0, 0, 1)
        spread_u, spread_v, inner = rng.uniform(40, 55), rng.uniform(30, 42), 0.0
    elif name == "mca_branch":
        apex = (0.28 * side, rng.uniform(-0.1, 0.2), rng.uniform(-0.1, 0.2))
        axis, ref = (side, rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.7)), (0, 0, 1)
        spread_u, spread_v, inner = rng.uniform(15, 32), rng.uniform(15, 30), rng.uniform(0.2, 0.4)
    elif name == "aca":
        apex, axis, ref = (0.06 * side, 0.35, 0.05), (0.1 * side, 0.45, 1.0), (0, 1, 0)
        spread_u, spread_v, inner = rng.uniform(8, 14), rng.uniform(25, 40), 0.2
    else:  # pca
        apex, axis, ref = (0.14 * side, -0.3, -0.1), (0.3 * side, -1.0, -0.1), (0, 0, 1)
        spread_u, spread_v, inner = rng.uniform(22, 32), rng.uniform(20, 30), 0.15
    axis = _unit(axis)
    e_v = _unit(np.asarray(ref, dtype=float) - np.dot(ref, axis) * axis)
    e_u = np.cross(axis, e_v)
    border = _Field.draw(
        rng, head.centre_mm - head.semi_mm * 1.2, head.centre_mm + head.semi_mm * 1.2, (6, 7, 6)
    )
    return _Wedge(
        np.asarray(apex, dtype=float),
        axis,
        e_u,
        e_v,
        math.tan(math.radians(spread_u)),
        math.tan(math.radians(spread_v)),
        inner,
        side,
        border,
        0.05,
    )


def _draw_lesions(
    rng: np.random.Generator, planner: _Planner, head: _Head, lesion_count: int
) -> list[_Pathology]:
    """Labelled lesions: one main lesion (territorial, embolic or lacunar) and smaller ones."""
    lesions = []
    min_radius = 0.8 * planner.voxel
    for i in range(lesion_count):
        stage = str(rng.choice(STAGES, p=_STAGE_PROBABILITY))
        kind = rng.choice(
            ["territory", "embolic", "lacune"], p=[0.45, 0.35, 0.2] if i == 0 else [0, 0.5, 0.5]
        )
        if kind == "territory":
            shape = _territory(rng, head)
        elif kind == "embolic":
            max_mm = 20.0 if i == 0 else 12.0
            radius = max(
                head.mm(math.exp(rng.uniform(math.log(4.0), math.log(max_mm)))), min_radius
            )
            centre = planner.pick("tissue", radius)
            if centre is None:
                continue
            shape = _blob(rng, head, centre, radius, int(rng.integers(1, 5)), 0.25)
        else:
            radius = max(head.mm(rng.uniform(1.5, 6.0)), min_radius)
            centre = planner.pick("deep", radius)
            if centre is None:
                continue
            shape = _lacune(rng, head, centre, radius)
        pathology = _Pathology(
            stage, shape, _log_change(rng, stage), _texture(rng, head, *shape.bounds())
        )
        member = _apply(planner.scene, head, pathology)
        planner.occupy(member, pathology)
        lesions.append(pathology)
    return lesions


def _draw_old_infarct(rng: np.random.Generator, planner: _Planner, head: _Head) -> list[_Pathology]:
    """An old infarct (not labelled): a shine-through blob or a cavitated lacune, or none."""
    if rng.random() >= 0.45:
        return []
    if rng.random() < 0.6:
        radius = max(head.mm(rng.uniform(4.0, 14.0)), 1.2 * planner.voxel)
        centre = planner.pick("tissue", radius)
        shape = (
            None
            if centre is None
            else _blob(rng, head, centre, radius, int(rng.integers(1, 3)), 0.2)
        )
        cavity = float(rng.uniform(0.0, 0.3))
    else:
        radius = max(head.mm(rng.uniform(2.0, 6.0)), planner.voxel)
        centre = planner.pick("deep", radius)
        shape = None if centre is None else _lacune(rng, head, centre, radius)
        cavity = float(rng.uniform(0.6, 1.0))
    if shape is None:
        return []
    old = _Pathology(
        "old", shape, _log_change(rng, "old"), _texture(rng, head, *shape.bounds()), cavity
    )
    planner.occupy(_apply(planner.scene, head, old), old)
    return [old]


def _draw_white_matter_disease(
    rng: np.random.Generator, planner: _Planner, head: _Head, anatomy: _Anatomy
) -> list[_Pathology]:
    """WMH of a Fazekas grade: periventricular caps and rim, punctate and confluent deep WMH."""
    grade = int(rng.choice(4, p=_FAZEKAS_PROBABILITY))
    log_change = _log_change(rng, "wmh")
    parts: list[_Ellipsoids | _Periventricular] = []
    if grade >= 1:
        cap = anatomy.vent_semi.min() * (0.5 + 0.35 * grade)
        for centre in anatomy.ventricle_centres():
            for end in (-1.0, 1.0):
                tip = centre + np.array([0.0, end * anatomy.vent_semi[1] * 1.02, 0.0])
                semi = cap * rng.uniform(0.8, 1.3, 3)
                parts.append(_Ellipsoids(tip[None], semi[None], np.eye(3)[None]))
        rim = _Periventricular(
            anatomy.ventricle_centres(),
            anatomy.vent_semi,
            head.mm(1.0 + 1.2 * grade),
            None,
            0.1 + 0.04 * grade,
        )
        if grade == 3 or (grade == 2 and rng.random() < 0.5):
            confluence = _Field.draw(rng, *head.world_box(*rim.bounds()), (8, 10, 7))
            rim = replace(rim, confluence=confluence)
        parts.append(rim)
    dots = int(rng.integers(*[(0, 3), (2, 7), (6, 16), (10, 26)][grade]))
    for _ in range(dots):
        radius = max(head.mm(rng.uniform(1.5, 4.0)), 0.7 * planner.voxel)
        centre = planner.pick("deep_wm", radius, avoid=False)
        if centre is not None:
            parts.append(_blob(rng, head, centre, radius, 1, 0.1))
    return [
        _Pathology(
            "wmh", part, log_change * rng.uniform(0.7, 1.0), _texture(rng, head, *part.bounds())
        )
        for part in parts
    ]


def _draw_artefacts(rng: np.random.Generator) -> _Artefacts:
    """DWI susceptibility at the orbitofrontal and temporal base, ghosting, FLAIR flow."""
    sites = [(0.0, 0.62, -0.45)] + [(0.55 * side, 0.35, -0.55) for side in (-1.0, 1.0)]
    pile_up, dropout = [], []
    for site in sites:
        if rng.random() < 0.25:
            continue
        centre = np.asarray(site) + rng.uniform(-0.05, 0.05, 3)
        width = np.array([0.14, 0.06, 0.06]) * rng.uniform(0.7, 1.3, 3)
        pile_up.append((_Bump(centre, width), float(rng.uniform(0.5, 1.6))))
        towards_air = np.array([0.0, 0.07, -0.04]) if site[0] == 0 else np.array([0.0, 0.0, -0.07])
        dropout.append((_Bump(centre + towards_air, width), float(rng.uniform(0.3, 0.7))))
    ghost = float(rng.uniform(0.03, 0.1)) if rng.random() < 0.6 else 0.0
    flow = None
    if rng.random() < 0.5:
        side = float(rng.choice([-1.0, 1.0]))
        centre = np.array([0.1 * side, rng.uniform(-0.15, 0.15), 0.1])
        flow = (_Bump(centre, np.array([0.04, 0.08, 0.05])), float(rng.uniform(2.0, 6.0)))
    return _Artefacts(tuple(pile_up), tuple(dropout), float(rng.uniform(0.0, 0.12)), ghost, flow)


def draw_phantom(
    rng: np.random.Generator, grid: Grid, *, lesion_count: int
) -> tuple[Phantom, Scene]:
    """Draw a head with ``lesion_count`` labelled lesions; return it and its scene on ``grid``.

    ``grid`` sets the field of view (the head fills it like a clinical scan) and serves to
    place lesions in tissue and apart from each other.
    """
    head = _draw_head(rng, grid)
    anatomy = _draw_anatomy(rng, grid)
    scene = _rasterise_anatomy(head, anatomy, grid)
    planner = _Planner(rng, scene, head)
    pathologies = _draw_lesions(rng, planner, head, lesion_count)
    pathologies += _draw_old_infarct(rng, planner, head)
    for wmh in _draw_white_matter_disease(rng, planner, head, anatomy):
        _apply(scene, head, wmh)
        pathologies.append(wmh)
    artefacts = _draw_artefacts(rng)
    _apply_artefacts(scene, head, artefacts)
    timing = {
        seq: tuple(float(t * rng.uniform(0.93, 1.07)) for t in values)
        for seq, values in _TIMING_MS.items()
    }
    wm_level = {seq: float(level * rng.uniform(0.8, 1.2)) for seq, level in _WM_LEVEL.items()}
    phantom = Phantom(head, anatomy, tuple(pathologies), artefacts, timing, wm_level)  # type: ignore[arg-type]
    return phantom, scene


# --------------------------------------------------------------------------- MR signal


def _signal(
    timing_ms: tuple[float, float, float],
    pd: np.ndarray,
    t1: np.ndarray,
    t2: np.ndarray,
    adc: np.ndarray,
    b_value: float = 0.0,
) -> np.ndarray:
    """Spin-echo / inversion-recovery signal of tissue with these parameters."""
    tr, te, ti = (_F32(t) for t in timing_ms)
    inversion = np.abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1))
    recovery = inversion if ti else 1 - np.exp(-tr / t1)
    signal = pd * recovery * np.exp(-te / t2)
    if b_value:
        signal = signal * np.exp(-_F32(b_value) * adc)
    return signal


def _tissue_signal(phantom: Phantom, scene: Scene, name: str) -> np.ndarray:
    """Noise-free signal in the brain box: ``t1``, ``t2``, ``flair``, ``b0`` or ``b1000``."""
    seq = "dwi" if name in ("b0", "b1000") else name
    timing = phantom.timing_ms[seq]
    b_value = _B_VALUE if name == "b1000" else 0.0
    params = [np.asarray(p, dtype=_F32) for p in (_PD, _T1_MS, _T2_MS, _ADC)]
    normal = _signal(timing, *params, b_value=b_value)  # (3,) CSF, GM, WM
    compartments = np.broadcast_to(normal[:, None, None, None], scene.fractions.shape).copy()
    if name == "flair" and scene.flair_csf_gain is not None:
        compartments[_CSF] = compartments[_CSF] * scene.flair_csf_gain
    changed = np.flatnonzero(np.abs(scene.log_change).max(axis=0) > 1e-4)
    if changed.size:
        factors = np.exp(scene.log_change.reshape(4, -1)[:, changed])
        for tissue in (_GM, _WM):
            modified = [_F32(p[tissue]) * f for p, f in zip(params, factors, strict=True)]
            compartments[tissue].reshape(-1)[changed] = _signal(timing, *modified, b_value=b_value)
    signal = (compartments * scene.fractions).sum(axis=0)
    if name in ("b0", "b1000") and scene.dwi_gain is not None:
        signal = signal * scene.dwi_gain
        if name == "b1000":
            signal = signal * scene.b1000_gain
    return signal * scene.brain


def _acquire(
    rng: np.random.Generator,
    signals: list[np.ndarray],
    brain: np.ndarray,
    grid: Grid,
    scale: float,
    sigma: float,
) -> list[np.ndarray]:
    """Bias field, scanner scale and Rician noise inside the brain (zero outside)."""
    lo, hi = grid.centre_mm - grid.fov_mm / 2, grid.centre_mm + grid.fov_mm / 2
    bias = np.exp(
        _F32(rng.uniform(0.08, 0.15)) * _Field.draw(rng, lo, hi, (3, 3, 3))(grid.axes_mm())
    )
    gain = (bias[brain] * _F32(scale)).astype(_F32)
    images = []
    for signal in signals:
        values = signal[brain] * gain
        real = values + _F32(sigma) * rng.standard_normal(values.shape, dtype=_F32)
        imag = _F32(sigma) * rng.standard_normal(values.shape, dtype=_F32)
        image = np.zeros(grid.shape, dtype=_F32)
        image[brain] = np.sqrt(real**2 + imag**2)
        images.append(image)
    return images


def _wm_signal(phantom: Phantom, name: str) -> float:
    seq = "dwi" if name in ("b0", "b1000") else name
    b_value = _B_VALUE if name == "b1000" else 0.0
    params = [_PD[_WM], _T1_MS[_WM], _T2_MS[_WM], _ADC[_WM]]
    return float(_signal(phantom.timing_ms[seq], *(np.float32(p) for p in params), b_value=b_value))


def render(
    phantom: Phantom, scene: Scene, sequences: Sequence[str], seed: int, *, slab: int = 1
) -> dict[str, np.ndarray]:
    """Images of ``sequences`` on the scene's grid (``slab`` > 1: thick slices) and the label.

    Noise and bias are drawn from ``seed`` and the sequence, so a sequence looks the same
    whichever others are rendered with it. ``adc`` is computed from the noisy b0 and b1000
    images, as a scanner does; the DWI image is the b1000 one.
    """
    unknown = sorted(set(sequences) - set(SEQUENCE_NAMES))
    if unknown:
        raise ValueError(f"unknown sequences {unknown}; choose from {list(SEQUENCE_NAMES)}")
    grid, brain = scene.grid, scene.full(scene.brain)
    start = 0
    if slab > 1:
        grid, start = scene.grid.slabs(slab)
        brain = slab_mean(brain, slab, start) >= 0.5

    def signal(name: str) -> np.ndarray:
        full = scene.full(_tissue_signal(phantom, scene, name))
        if name in ("b0", "b1000") and phantom.artefacts.ghost:
            full += _F32(phantom.artefacts.ghost) * np.roll(full, full.shape[1] // 2, axis=1)
        return slab_mean(full, slab, start) if slab > 1 else full

    images: dict[str, np.ndarray] = {}
    for seq in sequences:
        if seq in images:
            continue
        rng = np.random.default_rng([seed, SEQUENCE_NAMES.index("dwi" if seq == "adc" else seq)])
        if seq in ("dwi", "adc"):
            reference = _wm_signal(phantom, "b1000")
            scale = phantom.wm_level["dwi"] / reference
            sigma = _NOISE_FRACTION["dwi"] * phantom.wm_level["dwi"]
            b0, b1000 = _acquire(rng, [signal("b0"), signal("b1000")], brain, grid, scale, sigma)
            ratio = np.log(np.maximum(b0[brain], 1e-3) / np.maximum(b1000[brain], 1e-3))
            adc = np.zeros(grid.shape, dtype=_F32)
            adc[brain] = np.clip(ratio / _B_VALUE, _ADC_UNIT, _ADC_MAX) / _ADC_UNIT
            images["dwi"], images["adc"] = b1000, adc
        else:
            scale = phantom.wm_level[seq] / _wm_signal(phantom, seq)
            sigma = _NOISE_FRACTION[seq] * phantom.wm_level[seq]
            (images[seq],) = _acquire(rng, [signal(seq)], brain, grid, scale, sigma)
    label = scene.full(scene.label, np.uint8)
    if slab > 1:
        label = ((slab_mean(label, slab, start) >= 0.5) & brain).astype(np.uint8)
    return {**{seq: images[seq] for seq in sequences}, "label": label}
