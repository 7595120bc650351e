"""Where a pathology lies: shapes in brain coordinates with a level (signed distance, in brain
units, positive inside) that the rasteriser turns into partial-volume membership."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stroke_ray.phantom.grid import F32, Field
from stroke_ray.phantom.head import ellipsoid_q

__all__ = ["Ellipsoids", "Wedge", "Periventricular", "Bump"]


@dataclass(frozen=True)
class Ellipsoids:
    """A union of rotated ellipsoids in brain coordinates with a noisy border."""

    centres: np.ndarray  # (n, 3)
    semi: np.ndarray  # (n, 3)
    rotations: np.ndarray  # (n, 3, 3)
    border: Field | None = None
    border_amp: float = 0.0  # brain units

    @property
    def size(self) -> float:
        """Largest semi-axis (brain units)."""
        return float(self.semi.max())

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """A brain-coordinate box that holds the shape."""
        reach = self.semi.max(axis=1, keepdims=True) * 1.15 + 2.5 * self.border_amp
        return (self.centres - reach).min(axis=0), (self.centres + reach).max(axis=0)

    def level(self, coords: list[np.ndarray], axes_mm: list[np.ndarray]) -> np.ndarray:
        """Approximate signed distance to the border (brain units), positive inside."""
        level = None
        for centre, semi, rotation in zip(self.centres, self.semi, self.rotations, strict=True):
            offsets = [c - F32(m) for c, m in zip(coords, centre, strict=True)]
            local = [
                sum(offsets[a] * F32(rotation[a, k]) for a in range(3)) / F32(semi[k])
                for k in range(3)
            ]
            inside = (1 - np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)) * F32(semi.min())
            level = inside if level is None else np.maximum(level, inside)
        if self.border is not None:
            level = level + F32(self.border_amp) * self.border(axes_mm)
        return level


@dataclass(frozen=True)
class Wedge:
    """A vascular territory: an elliptic cone from a deep apex out to the brain surface."""

    apex: np.ndarray
    axis: np.ndarray
    e_u: np.ndarray
    e_v: np.ndarray
    tan_u: float
    tan_v: float
    inner: float  # the lesion starts this far from the apex (brain units)
    side: float  # hemisphere: sign of px
    border: Field
    border_amp: float

    @property
    def size(self) -> float:
        """A typical radius (brain units)."""
        return 0.5

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Its hemisphere."""
        lo = np.array([-1.3, -1.3, -1.3])
        hi = np.array([1.3, 1.3, 1.3])
        if self.side > 0:
            lo[0] = -0.05
        else:
            hi[0] = 0.05
        return lo, hi

    def level(self, coords: list[np.ndarray], axes_mm: list[np.ndarray]) -> np.ndarray:
        """Approximate signed distance to the cone, the inner sphere and the midline."""
        offsets = [c - F32(a) for c, a in zip(coords, self.apex, strict=True)]

        def along(direction: np.ndarray) -> np.ndarray:
            return sum(o * F32(d) for o, d in zip(offsets, direction, strict=True))

        t, u, v = along(self.axis), along(self.e_u), along(self.e_v)
        spread = np.sqrt((u / F32(self.tan_u)) ** 2 + (v / F32(self.tan_v)) ** 2)
        sin_min = math.sin(math.atan(min(self.tan_u, self.tan_v)))
        noise = F32(self.border_amp) * self.border(axes_mm)
        cone = (t - spread) * F32(sin_min) + noise
        level = np.minimum(cone, t - F32(self.inner) + noise)
        return np.minimum(level, (coords[0] * F32(self.side) - F32(0.02)))


@dataclass(frozen=True)
class Periventricular:
    """A rim of white matter along the lateral ventricles, with optional confluent patches."""

    centres: np.ndarray  # (2, 3) ventricle centres
    semi: np.ndarray  # ventricle semi-axes
    rim: float  # rim thickness (brain units)
    confluence: Field | None
    reach: float  # how far from the ventricles confluent WMH extend (brain units)

    @property
    def size(self) -> float:
        """How far it reaches from the ventricles (brain units)."""
        return self.reach

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The ventricles and their surroundings."""
        reach = self.semi + max(self.rim, self.reach) + 0.05
        return self.centres.min(axis=0) - reach, self.centres.max(axis=0) + reach

    def level(self, coords: list[np.ndarray], axes_mm: list[np.ndarray]) -> np.ndarray:
        """Within ``rim`` of a ventricle wall, or inside a confluent patch within ``reach``."""
        scale = F32(self.semi.min())
        distance = np.minimum(
            *[(ellipsoid_q(coords, centre, self.semi) - 1) * scale for centre in self.centres]
        )
        level = F32(self.rim) - distance
        if self.confluence is not None:
            patches = F32(0.04) * (self.confluence(axes_mm) - F32(1.0))
            level = np.maximum(level, np.minimum(patches, F32(self.reach) - distance))
        return level


@dataclass(frozen=True)
class Bump:
    """A Gaussian bump in brain coordinates."""

    centre: np.ndarray
    width: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Three widths around the centre."""
        return self.centre - 3 * self.width, self.centre + 3 * self.width

    def value(self, coords: list[np.ndarray]) -> np.ndarray:
        """The bump (1 at the centre) at brain coordinates."""
        return np.exp(
            F32(-0.5)
            * sum(
                ((c - F32(m)) / F32(w)) ** 2
                for c, m, w in zip(coords, self.centre, self.width, strict=True)
            )
        )
