"""Synthetic multi-sequence ischemic stroke MRI cohort (T1, T2, FLAIR, DWI + lesion label)."""

from __future__ import annotations

import csv
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import expit

from stroke_ray.cohort import MANIFEST_COLUMNS, SEQUENCES

__all__ = ["generate_cohort", "synth_case"]

logger = logging.getLogger(__name__)


# Brain semi-axes as fractions of the half field of view along x, y, z (RAS voxel axes).
_BRAIN_SEMI_AXES_FOV = np.array([0.72, 0.82, 0.84])
# Tissue intensities (CSF, GM, WM) before the per-sequence scale.
_TISSUE_INTENSITY = {
    "t1": np.array([0.22, 0.52, 0.85], dtype=np.float32),
    "t2": np.array([1.00, 0.66, 0.42], dtype=np.float32),
    "flair": np.array([0.10, 0.66, 0.45], dtype=np.float32),
    "dwi": np.array([0.42, 0.56, 0.52], dtype=np.float32),
}
# Relative intensity change inside a lesion of strength 1.
_LESION_CONTRAST = {"t1": -0.30, "t2": 0.45, "flair": 0.55, "dwi": 1.40}
# Scanner-like scale of each sequence (varied by +-20 % per case).
_SEQUENCE_SCALE = {"t1": 600.0, "t2": 900.0, "flair": 400.0, "dwi": 300.0}
# Rician noise sigma as a fraction of the white-matter intensity.
_NOISE_FRACTION = {"t1": 0.025, "t2": 0.03, "flair": 0.035, "dwi": 0.05}
_MAX_ROTATION_DEG = 5.0
_CSF, _WM = 0, 2  # tissue indices in _Anatomy.fractions (GM is 1)


@dataclass
class _Anatomy:
    """Tissue fractions (CSF, GM, WM) and masks of one synthetic head."""

    fractions: np.ndarray  # (3, *shape) float32, sums to 1 inside the brain
    brain: np.ndarray  # bool
    lesion_candidates: np.ndarray  # bool: deep-enough GM/WM away from the ventricles
    brain_radius_vox: float


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], knots: tuple[int, int, int]
) -> np.ndarray:
    """Return a smooth random field of unit std (separable Gaussian-RBF expansion)."""
    bases = []
    for n, k in zip(shape, knots, strict=True):
        centres = np.linspace(-0.15, 1.15, k)
        width = (centres[1] - centres[0]) if k > 1 else 1.0
        pos = (np.arange(n) + 0.5) / n
        bases.append(np.exp(-0.5 * ((pos[:, None] - centres[None, :]) / width) ** 2))
    coeff = rng.standard_normal(knots)
    field = np.tensordot(bases[0], coeff, axes=(1, 0))  # (nx, ky, kz)
    field = np.tensordot(field, bases[1], axes=(1, 1))  # (nx, kz, ny)
    field = np.tensordot(field.astype(np.float32), bases[2].astype(np.float32), axes=(1, 1))
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Return the rotation matrix Rz @ Ry @ Rx for angles (x, y, z) in radians."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _head_coordinates(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Return brain-normalised coordinates (unit ball = brain) after random pose and scale."""
    semi_axes_vox = _BRAIN_SEMI_AXES_FOV * np.asarray(shape) / 2 * rng.uniform(0.92, 1.05, 3)
    centre_vox = (np.asarray(shape) - 1) / 2 + rng.uniform(-0.02, 0.02, 3) * np.asarray(shape)
    rotation = _rotation_matrix(np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, 3)))
    offsets = [
        (np.arange(n) - c).astype(np.float32).reshape([-1 if a == i else 1 for a in range(3)])
        for i, (n, c) in enumerate(zip(shape, centre_vox, strict=True))
    ]
    coords = []
    for row, semi in zip(rotation.T, semi_axes_vox, strict=True):
        rotated = offsets[0] * np.float32(row[0]) + offsets[1] * np.float32(row[1])
        coords.append((rotated + offsets[2] * np.float32(row[2])) / np.float32(semi))
    return coords, semi_axes_vox


def _soft_ellipsoid(
    coords: list[np.ndarray], centre: tuple[float, ...], semi: np.ndarray, tau: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return (soft membership, normalised radius) of an ellipsoid in brain coordinates."""
    q = np.sqrt(
        sum(((c - float(m)) / float(s)) ** 2 for c, m, s in zip(coords, centre, semi, strict=True))
    )
    return expit((1 - q) * np.float32(semi.min() / tau)), q


def _synth_anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> _Anatomy:
    """Return the tissue fractions of a random, slightly rotated and deformed brain."""
    (px, py, pz), semi_axes_vox = _head_coordinates(rng, shape)
    radius_vox = float(semi_axes_vox.mean())
    tau = np.float32(0.5 / radius_vox)  # half a voxel in brain-normalised units

    # Egg-shaped brain: narrower frontally, flatter inferiorly; smooth surface deformation.
    px_shaped = px / (1 - np.float32(0.08) * py)
    pz_shaped = np.where(pz < 0, pz / np.float32(0.9), pz)
    deform = 1 + np.float32(rng.uniform(0.03, 0.05)) * _smooth_noise(rng, shape, (5, 5, 5))
    rb = np.sqrt(px_shaped**2 + py**2 + pz_shaped**2) / deform
    brain = rb < 1

    # Cortex: CSF/GM and GM/WM boundaries folded together along the zero sheets of a smooth
    # noise field, so that sulci are V-shaped CSF clefts lined by a grey-matter ribbon.
    fold = np.exp(-((_smooth_noise(rng, shape, (20, 24, 18)) / np.float32(0.3)) ** 2))
    rf = rb + np.float32(rng.uniform(0.12, 0.16)) * fold
    ribbon_inner = np.float32(rng.uniform(0.74, 0.78)) + np.float32(0.02) * _smooth_noise(
        rng, shape, (8, 8, 6)
    )
    gm = expit((rf - ribbon_inner) / tau)

    # Deep grey matter (basal ganglia / thalami) lateral to the ventricles.
    deep_semi = np.array([0.13, 0.22, 0.13]) * rng.uniform(0.9, 1.1)
    for side in (-1.0, 1.0):
        deep, _ = _soft_ellipsoid([px, py, pz], (0.22 * side, -0.02, 0.0), deep_semi, tau)
        gm = np.maximum(gm, deep)

    # CSF: outer rim and sulci, lateral ventricles and the interhemispheric fissure.
    vent_semi = np.array([0.07, 0.32, 0.12]) * rng.uniform(0.8, 1.5)
    vent_centre_y = rng.uniform(-0.02, 0.08)
    csf = expit((rf - np.float32(rng.uniform(0.965, 0.98))) / tau)
    vent_radius = np.full(shape, np.inf, dtype=np.float32)
    for side in (-1.0, 1.0):
        vent, q = _soft_ellipsoid([px, py, pz], (0.11 * side, vent_centre_y, 0.12), vent_semi, tau)
        csf = np.maximum(csf, vent)
        vent_radius = np.minimum(vent_radius, q)
    fissure = expit((np.float32(0.02) - np.abs(px)) / tau) * expit((pz - np.float32(0.3)) / tau)
    csf = np.maximum(csf, fissure)

    fractions = np.stack([csf, gm * (1 - csf), (1 - gm) * (1 - csf)]).astype(np.float32)
    tissue = np.argmax(fractions, axis=0)
    candidates = brain & (tissue != _CSF) & (rb < 0.93) & (vent_radius > 1.4)
    return _Anatomy(fractions, brain, candidates, radius_vox)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Return a uniformly random 3D rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _lesion_blob(
    rng: np.random.Generator, size: tuple[int, int, int], centre: np.ndarray, radius_vox: float
) -> np.ndarray:
    """Return an irregular blob (union of ellipsoids with a noisy border) in a box."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size], indexing="ij"))
    field = np.full(size, -np.inf, dtype=np.float32)
    for i in range(int(rng.integers(1, 5))):
        offset = 0.0 if i == 0 else rng.uniform(-0.7, 0.7, 3) * radius_vox
        sub_radius = radius_vox * (1.0 if i == 0 else rng.uniform(0.4, 0.8))
        semi = sub_radius * rng.uniform(0.6, 1.4, 3)
        local = np.tensordot(
            _random_rotation(rng).T.astype(np.float32),
            grid - (centre + offset).astype(np.float32)[:, None, None, None],
            axes=1,
        )
        q = sum((local[a] / np.float32(semi[a])) ** 2 for a in range(3))
        field = np.maximum(field, 1 - q)
    return field + np.float32(0.3) * _smooth_noise(rng, size, (4, 4, 4)) > 0


def _pick_lesion_centre(
    rng: np.random.Generator,
    candidates_xyz: np.ndarray,
    midline_x: float,
    taken: list[tuple[np.ndarray, int]],
    half: int,
) -> np.ndarray:
    """Return a random candidate voxel, preferring one whose box misses earlier lesion boxes."""
    side = rng.choice([-1, 1])  # hemisphere: x below or above the midline
    in_side = candidates_xyz[(candidates_xyz[:, 0] - midline_x) * side > 0]
    pool = in_side if len(in_side) else candidates_xyz
    for centre, other_half in taken:
        apart = np.abs(pool - centre).max(axis=1) > half + other_half + 1
        if apart.any():
            pool = pool[apart]
    return pool[rng.integers(len(pool))]


def _add_lesions(
    rng: np.random.Generator, anatomy: _Anatomy, lesion_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (binary label, lesion strength map) with `lesion_count` separate lesions."""
    shape = anatomy.brain.shape
    tissue_ok = anatomy.fractions[_CSF] < 0.5
    label = np.zeros(shape, dtype=bool)
    strength = np.zeros(shape, dtype=np.float32)
    taken: list[tuple[np.ndarray, int]] = []
    candidates_xyz = np.argwhere(anatomy.lesion_candidates)
    midline_x = shape[0] / 2
    min_radius_vox = 1.5
    max_radius_vox = max(0.22 * anatomy.brain_radius_vox, min_radius_vox)
    for _ in range(lesion_count):
        radius_vox = math.exp(rng.uniform(math.log(min_radius_vox), math.log(max_radius_vox)))
        half = math.ceil(2.2 * radius_vox) + 1
        centre = _pick_lesion_centre(rng, candidates_xyz, midline_x, taken, half)
        taken.append((centre, half))
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        size = tuple(int(n) for n in hi - lo)
        blob = (
            _lesion_blob(rng, size, (centre - lo).astype(np.float32), radius_vox) & tissue_ok[box]
        )
        blob[tuple(centre - lo)] = True
        texture = 1 + np.float32(0.15) * _smooth_noise(rng, size, (3, 3, 3))
        lesion_strength = np.float32(rng.uniform(0.6, 1.0)) * texture
        label[box] |= blob
        strength[box] = np.where(blob, np.maximum(strength[box], lesion_strength), strength[box])
    return label, strength


def _render_sequence(
    rng: np.random.Generator, seq: str, anatomy: _Anatomy, lesion_map: np.ndarray | None
) -> np.ndarray:
    """Return one skull-stripped sequence with lesion contrast, bias field and Rician noise."""
    shape = anatomy.brain.shape
    intensity = np.tensordot(_TISSUE_INTENSITY[seq], anatomy.fractions, axes=1)
    if lesion_map is not None:
        intensity *= 1 + np.float32(_LESION_CONTRAST[seq]) * lesion_map
    bias = np.exp(np.float32(rng.uniform(0.08, 0.15)) * _smooth_noise(rng, shape, (3, 3, 3)))
    scale = np.float32(_SEQUENCE_SCALE[seq] * rng.uniform(0.8, 1.2))
    signal = intensity * bias * scale
    sigma = np.float32(_NOISE_FRACTION[seq]) * _TISSUE_INTENSITY[seq][_WM] * scale
    real = signal + sigma * rng.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape, dtype=np.float32)
    return np.where(anatomy.brain, np.sqrt(real**2 + imag**2), np.float32(0)).astype(np.float32)


def synth_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing_mm: float,
    *,
    lesion_count: int,
) -> dict[str, np.ndarray]:
    """Return one synthetic case: t1, t2, flair, dwi (float32) and label (uint8), RAS axes."""
    del spacing_mm  # geometry is defined relative to the shape; spacing only enters the affine
    shape = tuple(int(n) for n in shape)
    anatomy = _synth_anatomy(rng, shape)
    label, strength = _add_lesions(rng, anatomy, lesion_count)
    lesion_map = gaussian_filter(strength, sigma=0.6) if lesion_count else None
    case = {seq: _render_sequence(rng, seq, anatomy, lesion_map) for seq in SEQUENCES}
    case["label"] = (label & anatomy.brain).astype(np.uint8)
    return case


def _case_lesion_count(rng: np.random.Generator, case_index: int) -> int:
    """Return the number of lesions of a case: none for case 1, three for case 2, else 1-3."""
    if case_index == 1:
        return 0
    if case_index == 2:
        return 3
    return int(rng.integers(1, 4))


def _centred_affine(shape: tuple[int, int, int], spacing_mm: float) -> np.ndarray:
    """Return the RAS affine with isotropic `spacing_mm` and the volume centre at world 0."""
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = -spacing_mm * (np.asarray(shape) - 1) / 2
    return affine


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write `array` as NIfTI-1 with qform and sform both set to `affine` (code 1, mm)."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def _write_case(
    out_dir: Path,
    seed: int,
    case_index: int,
    shape: tuple[int, int, int],
    spacing_mm: float,
) -> dict[str, str]:
    """Write one demo case (deterministic in seed and index); return its manifest row."""
    case_id = f"demo_{case_index:03d}"
    rng = np.random.default_rng([seed, case_index])
    lesion_count = _case_lesion_count(rng, case_index)
    case = synth_case(rng, shape, spacing_mm, lesion_count=lesion_count)
    (out_dir / case_id).mkdir(exist_ok=True)
    row = {"case_id": case_id}
    affine = _centred_affine(shape, spacing_mm)
    for key, array in case.items():
        rel_path = f"{case_id}/{case_id}_{key}.nii.gz"
        _save_nifti(array, affine, out_dir / rel_path)
        row[key] = rel_path
    logger.debug("wrote %s with %d lesion(s)", case_id, lesion_count)
    return row


def generate_cohort(
    out_dir: str | Path,
    *,
    n_cases: int = 8,
    shape: tuple[int, int, int] = (64, 64, 48),
    spacing_mm: float = 3.0,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Write a synthetic cohort and its manifest (``workers`` processes); return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(n) for n in shape)
    start = time.perf_counter()
    arguments = [(out_dir, seed, index, shape, spacing_mm) for index in range(n_cases)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_write_case, *zip(*arguments, strict=True)))
    else:
        rows = [_write_case(*values) for values in arguments]
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    logger.info(
        "synthetic cohort: %d cases of %s at %.1f mm in %s (%.1f s)",
        n_cases,
        shape,
        spacing_mm,
        out_dir,
        time.perf_counter() - start,
    )
    return manifest
