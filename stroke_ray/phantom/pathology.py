"""Lesions by stage and look-alikes: how tissue changes, where it lies, how it is drawn.

Labelled lesions are hyperacute, acute or subacute, shaped as vascular-territory wedges,
embolic blobs or lacunes. Look-alikes are not labelled: white-matter hyperintensities, an old
infarct (T2 shine-through, or a cavity), DWI susceptibility pile-up and FLAIR CSF flow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import expit

from stroke_ray.phantom.grid import F32, Field, random_rotation, rotation_matrix, unit
from stroke_ray.phantom.head import CSF, GM, WM, Anatomy, Head, Scene, nominal_mm
from stroke_ray.phantom.shapes import Bump, Ellipsoids, Periventricular, Wedge

__all__ = [
    "STAGES",
    "TRUTH_CODES",
    "CHANGE",
    "Pathology",
    "Artefacts",
    "Planner",
    "apply_pathology",
    "apply_artefacts",
    "draw_lesions",
    "draw_old_infarct",
    "draw_white_matter_disease",
    "draw_artefacts",
]

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
# Multiplicative change of (PD, T1, T2, ADC) at full severity, as (low, high) per kind.
CHANGE = {
    "hyperacute": ((1.00, 1.01), (1.00, 1.03), (1.03, 1.08), (0.48, 0.60)),
    "acute": ((1.02, 1.06), (1.05, 1.15), (1.20, 1.40), (0.45, 0.60)),
    "subacute": ((1.05, 1.10), (1.30, 1.50), (1.50, 1.80), (0.75, 0.95)),
    "old": ((1.10, 1.20), (1.50, 1.90), (2.00, 2.60), (1.15, 1.40)),
    "wmh": ((1.03, 1.08), (1.10, 1.25), (1.35, 1.70), (1.10, 1.30)),
}
_STAGE_PROBABILITY = (0.3, 0.4, 0.3)
_FAZEKAS_PROBABILITY = (0.15, 0.35, 0.3, 0.2)  # white-matter disease grade 0-3


@dataclass(frozen=True)
class Pathology:
    """One lesion or look-alike: where (a shape) and how tissue changes (log PD, T1, T2, ADC)."""

    kind: str  # a stage of STAGES (labelled), "wmh" or "old" (not labelled)
    shape: Ellipsoids | Wedge | Periventricular
    log_change: np.ndarray  # (4,)
    texture: Field
    cavity: float = 0.0  # fraction of the core replaced by CSF (old infarcts)

    @property
    def labelled(self) -> bool:
        """Whether it is a lesion of the label (a stage), not a look-alike."""
        return self.kind in STAGES


@dataclass(frozen=True)
class Artefacts:
    """Non-lesion bright spots: DWI susceptibility and ghosting, FLAIR CSF flow."""

    pile_up: tuple[tuple[Bump, float], ...]  # DWI signal pile-up (bump, gain)
    dropout: tuple[tuple[Bump, float], ...]  # DWI signal loss (bump, loss)
    b1000_excess: float  # pile-up is this much stronger on b1000 than on b0 (ADC a bit low)
    ghost: float  # N/2 ghost amplitude along the phase-encoding (y) axis
    flow: tuple[Bump, float] | None  # FLAIR: unsuppressed CSF (bump, gain)


def apply_pathology(scene: Scene, head: Head, pathology: Pathology) -> np.ndarray:
    """Add one pathology to the scene; return its membership (0-1) in its box, box-relative."""
    _, local = scene.sub_box(head, *pathology.shape.bounds())
    coords = [c[local] for c in scene.coords]
    grid_box = tuple(
        slice(s.start + o.start, s.stop + o.start) for s, o in zip(local, scene.box, strict=True)
    )
    axes = scene.grid.axes_mm(grid_box)
    if 0 in coords[0].shape:
        return np.zeros(coords[0].shape, dtype=F32)
    level = pathology.shape.level(coords, axes)
    member = expit(level / F32(scene.tau)) * scene.brain[local]
    fractions = scene.fractions[(slice(None), *local)]
    tissue = fractions[GM] + fractions[WM]
    if pathology.kind == "wmh":  # white matter only
        member = member * fractions[WM] / np.maximum(tissue, F32(1e-6))
    if pathology.cavity:  # an old infarct's core turns into CSF
        core = F32(pathology.cavity) * expit(
            (level - F32(0.5 * pathology.shape.size)) / F32(scene.tau)
        )
        core = core * scene.brain[local]
        fractions[CSF] += core * (1 - fractions[CSF])
        fractions[GM] *= 1 - core
        fractions[WM] *= 1 - core
    texture = np.clip(1 + F32(0.2) * pathology.texture(axes), 0.5, 1.5)
    scene.log_change[(slice(None), *local)] += (member * texture)[
        None
    ] * pathology.log_change.astype(F32)[:, None, None, None]
    inside = (member >= 0.5) & (fractions[CSF] < 0.5)
    if pathology.labelled:
        scene.label[local] |= inside
    else:  # a look-alike inside a lesion is lesion
        inside &= ~scene.label[local]
    scene.truth[local] = np.where(inside, TRUTH_CODES[pathology.kind], scene.truth[local])
    return member


def apply_artefacts(scene: Scene, head: Head, artefacts: Artefacts) -> None:
    """Set the scene's DWI gain maps and FLAIR CSF gain; mark strong pile-up in the truth."""
    shape = scene.brain.shape
    gain = np.ones(shape, dtype=F32)
    excess = np.ones(shape, dtype=F32)
    for (bump, amount), sign in [(item, 1.0) for item in artefacts.pile_up] + [
        (item, -1.0) for item in artefacts.dropout
    ]:
        _, local = scene.sub_box(head, *bump.bounds())
        value = bump.value([c[local] for c in scene.coords])
        gain[local] *= 1 + F32(sign * amount) * value
        if sign > 0:
            excess[local] *= 1 + F32(artefacts.b1000_excess) * value
    scene.dwi_gain, scene.b1000_gain = gain, excess
    bright = (gain * excess > 1.5) & scene.brain & (scene.truth == 0)
    scene.truth[bright] = TRUTH_CODES["dwi_artefact"]
    if artefacts.flow is not None:
        bump, amount = artefacts.flow
        flow = np.ones(shape, dtype=F32)
        _, local = scene.sub_box(head, *bump.bounds())
        flow[local] += F32(amount) * bump.value([c[local] for c in scene.coords])
        scene.flair_csf_gain = flow


def _log_change(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Log factors of (PD, T1, T2, ADC) for a pathology of ``kind``, drawn in CHANGE's ranges."""
    return np.log([rng.uniform(lo, hi) for lo, hi in CHANGE[kind]])


def _texture(rng: np.random.Generator, head: Head, lo: np.ndarray, hi: np.ndarray) -> Field:
    """A smooth field over a brain-coordinate box that varies severity inside a pathology."""
    world_lo, world_hi = head.world_box(lo, hi)
    return Field.draw(rng, world_lo, world_hi, (3, 3, 3))


class Planner:
    """Picks lesion sites on the planning scene, keeping labelled lesions apart."""

    def __init__(self, rng: np.random.Generator, scene: Scene, head: Head) -> None:
        self.rng, self.scene, self.head = rng, scene, head
        self.occupied = np.zeros(scene.brain.shape, dtype=bool)
        tissue = np.argmax(scene.fractions, axis=0)
        brain = scene.brain
        wm = scene.fractions[WM]
        self.sites = {
            "tissue": brain & (tissue != CSF) & (scene.rb < 0.93) & (scene.ventricle_q > 1.4),
            "deep": brain
            & (tissue != CSF)
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
        for _ in range(40):  # the last try is taken even if it is not clear
            index = np.unravel_index(
                candidates[self.rng.integers(candidates.size)], self.occupied.shape
            )
            window = tuple(slice(max(i - half, 0), i + half + 1) for i in index)
            if not avoid or not self.occupied[window].any():
                break
        return np.array([c[index] for c in self.scene.coords], dtype=float)

    def occupy(self, member: np.ndarray, pathology: Pathology) -> None:
        """Keep later lesions away from this one (``member``: its membership in its box)."""
        _, local = self.scene.sub_box(self.head, *pathology.shape.bounds())
        self.occupied[local] |= member > 0.05


def _blob(
    rng: np.random.Generator,
    head: Head,
    centre: np.ndarray,
    radius: float,
    parts: int,
    roughness: float,
) -> Ellipsoids:
    """An irregular blob: a main ellipsoid and ``parts - 1`` smaller ones around it."""
    centres, semis = [], []
    for i in range(parts):
        offset = np.zeros(3) if i == 0 else rng.uniform(-0.7, 0.7, 3) * radius
        sub = radius * (1.0 if i == 0 else rng.uniform(0.4, 0.8))
        centres.append(centre + offset)
        semis.append(sub * rng.uniform(0.6, 1.4, 3))
    rotations = np.stack([random_rotation(rng) for _ in range(parts)])
    centres_arr, semis_arr = np.array(centres), np.maximum(np.array(semis), 0.3 * radius)
    lo = (centres_arr - semis_arr.max(axis=1, keepdims=True)).min(axis=0)
    hi = (centres_arr + semis_arr.max(axis=1, keepdims=True)).max(axis=0)
    border = Field.draw(rng, *head.world_box(lo, hi), (4, 4, 4))
    return Ellipsoids(centres_arr, semis_arr, rotations, border, roughness * radius)


def _lacune(rng: np.random.Generator, head: Head, centre: np.ndarray, radius: float) -> Ellipsoids:
    """A small deep infarct, elongated along the perforating arteries (z)."""
    semi = radius * np.array([rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1), rng.uniform(1.2, 1.8)])
    tilt = rotation_matrix(np.deg2rad(rng.uniform(-15, 15, 3)))
    border = Field.draw(rng, *head.world_box(centre - semi.max(), centre + semi.max()), (3, 3, 3))
    return Ellipsoids(centre[None], semi[None], tilt[None], border, 0.1 * radius)


def _territory(rng: np.random.Generator, head: Head) -> Wedge:
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
    axis = unit(axis)
    e_v = unit(np.asarray(ref, dtype=float) - np.dot(ref, axis) * axis)
    e_u = np.cross(axis, e_v)
    border = Field.draw(
        rng, head.centre_mm - head.semi_mm * 1.2, head.centre_mm + head.semi_mm * 1.2, (6, 7, 6)
    )
    return Wedge(
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


def draw_lesions(
    rng: np.random.Generator, planner: Planner, head: Head, lesion_count: int
) -> list[Pathology]:
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
                nominal_mm(math.exp(rng.uniform(math.log(4.0), math.log(max_mm)))), min_radius
            )
            centre = planner.pick("tissue", radius)
            if centre is None:
                continue
            shape = _blob(rng, head, centre, radius, int(rng.integers(1, 5)), 0.25)
        else:
            radius = max(nominal_mm(rng.uniform(1.5, 6.0)), min_radius)
            centre = planner.pick("deep", radius)
            if centre is None:
                continue
            shape = _lacune(rng, head, centre, radius)
        pathology = Pathology(
            stage, shape, _log_change(rng, stage), _texture(rng, head, *shape.bounds())
        )
        member = apply_pathology(planner.scene, head, pathology)
        planner.occupy(member, pathology)
        lesions.append(pathology)
    return lesions


def draw_old_infarct(rng: np.random.Generator, planner: Planner, head: Head) -> list[Pathology]:
    """An old infarct (not labelled): a shine-through blob or a cavitated lacune, or none."""
    if rng.random() >= 0.45:
        return []
    if rng.random() < 0.6:
        radius = max(nominal_mm(rng.uniform(4.0, 14.0)), 1.2 * planner.voxel)
        centre = planner.pick("tissue", radius)
        shape = (
            None
            if centre is None
            else _blob(rng, head, centre, radius, int(rng.integers(1, 3)), 0.2)
        )
        cavity = float(rng.uniform(0.0, 0.3))
    else:
        radius = max(nominal_mm(rng.uniform(2.0, 6.0)), planner.voxel)
        centre = planner.pick("deep", radius)
        shape = None if centre is None else _lacune(rng, head, centre, radius)
        cavity = float(rng.uniform(0.6, 1.0))
    if shape is None:
        return []
    old = Pathology(
        "old", shape, _log_change(rng, "old"), _texture(rng, head, *shape.bounds()), cavity
    )
    planner.occupy(apply_pathology(planner.scene, head, old), old)
    return [old]


def draw_white_matter_disease(
    rng: np.random.Generator, planner: Planner, head: Head, anatomy: Anatomy
) -> list[Pathology]:
    """WMH of a Fazekas grade: periventricular caps and rim, punctate and confluent deep WMH."""
    grade = int(rng.choice(4, p=_FAZEKAS_PROBABILITY))
    log_change = _log_change(rng, "wmh")
    parts: list[Ellipsoids | Periventricular] = []
    if grade >= 1:
        cap = anatomy.vent_semi.min() * (0.5 + 0.35 * grade)
        for centre in anatomy.ventricle_centres():
            for end in (-1.0, 1.0):
                tip = centre + np.array([0.0, end * anatomy.vent_semi[1] * 1.02, 0.0])
                semi = cap * rng.uniform(0.8, 1.3, 3)
                parts.append(Ellipsoids(tip[None], semi[None], np.eye(3)[None]))
        rim = Periventricular(
            anatomy.ventricle_centres(),
            anatomy.vent_semi,
            nominal_mm(1.0 + 1.2 * grade),
            None,
            0.1 + 0.04 * grade,
        )
        if grade == 3 or (grade == 2 and rng.random() < 0.5):
            confluence = Field.draw(rng, *head.world_box(*rim.bounds()), (8, 10, 7))
            rim = replace(rim, confluence=confluence)
        parts.append(rim)
    dots = int(rng.integers(*[(0, 3), (2, 7), (6, 16), (10, 26)][grade]))
    for _ in range(dots):
        radius = max(nominal_mm(rng.uniform(1.5, 4.0)), 0.7 * planner.voxel)
        centre = planner.pick("deep_wm", radius, avoid=False)
        if centre is not None:
            parts.append(_blob(rng, head, centre, radius, 1, 0.1))
    return [
        Pathology(
            "wmh", part, log_change * rng.uniform(0.7, 1.0), _texture(rng, head, *part.bounds())
        )
        for part in parts
    ]


def draw_artefacts(rng: np.random.Generator) -> Artefacts:
    """DWI susceptibility at the orbitofrontal and temporal base, ghosting, FLAIR flow."""
    sites = [(0.0, 0.62, -0.45)] + [(0.55 * side, 0.35, -0.55) for side in (-1.0, 1.0)]
    pile_up, dropout = [], []
    for site in sites:
        if rng.random() < 0.25:
            continue
        centre = np.asarray(site) + rng.uniform(-0.05, 0.05, 3)
        width = np.array([0.14, 0.06, 0.06]) * rng.uniform(0.7, 1.3, 3)
        pile_up.append((Bump(centre, width), float(rng.uniform(0.5, 1.6))))
        towards_air = np.array([0.0, 0.07, -0.04]) if site[0] == 0 else np.array([0.0, 0.0, -0.07])
        dropout.append((Bump(centre + towards_air, width), float(rng.uniform(0.3, 0.7))))
    ghost = float(rng.uniform(0.03, 0.1)) if rng.random() < 0.6 else 0.0
    flow = None
    if rng.random() < 0.5:
        side = float(rng.choice([-1.0, 1.0]))
        centre = np.array([0.1 * side, rng.uniform(-0.15, 0.15), 0.1])
        flow = (Bump(centre, np.array([0.04, 0.08, 0.05])), float(rng.uniform(2.0, 6.0)))
    return Artefacts(tuple(pile_up), tuple(dropout), float(rng.uniform(0.0, 0.12)), ghost, flow)
