"""Plain test helpers (no fixtures): synthetic NIfTI cases, tiny model settings, ports, pids.

Test files import these with ``from helpers import …`` (``tests/`` is on ``sys.path`` through
the rootdir ``conftest.py``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import nibabel as nib
import numpy as np

from stroke_ray.cohort import SEQUENCES, Case
from stroke_ray.config import ModelConfig, TrainConfig

__all__ = [
    "ISLES22_FILES",
    "DEFAULT_SHAPE",
    "DEMO_SHAPE",
    "TINY_MODEL",
    "TINY_MODEL_CONFIG",
    "TINY_SCHEDULE",
    "affine_for",
    "free_port",
    "head_mask",
    "ray_worker_pids",
    "rotation",
    "save_nifti",
    "synthetic_case",
    "tiny_train_config",
    "write_case",
    "coarse_grid",
    "write_isles22_case",
    "write_atlas_case",
    "write_nnunet",
]

DEFAULT_SHAPE: tuple[int, int, int] = (24, 28, 20)
DEMO_SHAPE: tuple[int, int, int] = (32, 32, 24)
TINY_MODEL_CONFIG = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 8, 8, 4, 4))
TINY_MODEL = {"model": TINY_MODEL_CONFIG}  # TrainConfig keyword arguments
TINY_SCHEDULE = {"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 1, "weights": "none"}
_WORLD_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
ISLES22_FILES = {"dwi": ("dwi", "dwi"), "adc": ("dwi", "adc"), "flair": ("anat", "FLAIR")}


def affine_for(
    axcodes: str,
    zooms: tuple[float, float, float] = (1.0, 1.0, 1.0),
    origin: tuple[float, float, float] = (-10.0, 5.0, 3.0),
) -> np.ndarray:
    """Return an axis-aligned affine whose voxel axes point towards ``axcodes`` (e.g. "LPS")."""
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for voxel_axis, (code, zoom) in enumerate(zip(axcodes, zooms, strict=True)):
        affine[_WORLD_AXIS[code], voxel_axis] = zoom if code in "RAS" else -zoom
    affine[:3, 3] = origin
    return affine


def rotation(axis: int, degrees: float) -> np.ndarray:
    """Return a 4x4 rotation about one world axis."""
    angle = np.deg2rad(degrees)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(4)
    matrix[i, i] = matrix[j, j] = np.cos(angle)
    matrix[i, j], matrix[j, i] = -np.sin(angle), np.sin(angle)
    return matrix


def head_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """Return an off-centre ellipsoid that stays clear of the grid borders."""
    grid = np.indices(shape, dtype=float)
    centre = [n / 2 + offset for n, offset in zip(shape, (1.5, -1.0, 0.5), strict=True)]
    radii = [0.33 * n for n in shape]
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return distance <= 1.0


def synthetic_case(
    shape: tuple[int, int, int] = DEFAULT_SHAPE, seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Return integer-valued sequences (positive in the head, 0 outside) and a 0/1 label."""
    rng = np.random.default_rng(seed)
    head = head_mask(shape)
    images = {
        name: np.where(head, rng.integers(50, 1000, size=shape), 0).astype(np.float32)
        for name in SEQUENCES
    }
    label = (head & (rng.random(shape) < 0.2)).astype(np.uint8)
    return images, label


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, dtype: type | None = None) -> Path:
    """Write ``data`` (cast to ``dtype`` when given) as a NIfTI-1 file with nibabel."""
    array = data if dtype is None else data.astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine, dtype=array.dtype), str(path))
    return path


def write_case(
    tmp_path: Path,
    case_id: str,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    affine: np.ndarray | None = None,
    dtype: type = np.float32,
    seed: int = 0,
    suffix: str = ".nii.gz",
) -> Case:
    """Write t1/t2/flair/dwi/label files under ``tmp_path/case_id`` and return the Case."""
    affine = np.eye(4) if affine is None else affine
    images, label = synthetic_case(shape, seed)
    folder = tmp_path / case_id
    paths = {
        name: str(save_nifti(images[name], affine, folder / f"{name}{suffix}", dtype))
        for name in SEQUENCES
    }
    paths["label"] = str(save_nifti(label, affine, folder / f"label{suffix}", np.uint8))
    label = paths.pop("label")
    return Case(case_id=case_id, images=paths, label=label)


def coarse_grid(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every second voxel of ``data`` and the affine of that 2× coarser grid (same world)."""
    return data[::2, ::2, ::2].copy(), affine @ np.diag([2.0, 2.0, 2.0, 1.0])


def _sequence_volumes(
    names: tuple[str, ...], shape: tuple[int, int, int], seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Positive random volumes inside the head (the lesion brighter on DWI) and a 0/1 label."""
    rng = np.random.default_rng(seed)
    head = head_mask(shape)
    label = (head & (rng.random(shape) < 0.2)).astype(np.uint8)
    images = {
        name: np.where(head, rng.integers(50, 1000, size=shape), 0).astype(np.float32)
        for name in names
    }
    if "dwi" in images:
        images["dwi"][label > 0] += 1000.0
    return images, label


def write_isles22_case(
    root: Path,
    subject: str,
    session: str = "0001",
    *,
    sequences: tuple[str, ...] = ("dwi", "adc", "flair"),
    label: bool = True,
    old_release: bool = False,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
) -> dict[str, Path]:
    """Write one ISLES'22-style BIDS case: DWI, ADC and the mask on one grid, FLAIR on a 2×
    coarser grid of the same head. ``old_release``: flat under ``rawdata/sub-…/ses-…/`` with a
    lower-case ``_flair``. Return the written paths by sequence (and ``label``)."""
    affine = affine_for("LPS", (1.0, 1.0, 1.0))
    images, lesion = _sequence_volumes(sequences, shape, seed)
    stem = f"sub-{subject}_ses-{session}"
    written = {}
    for name in sequences:
        datatype, suffix = ISLES22_FILES[name]
        data, grid = (
            coarse_grid(images[name], affine) if name == "flair" else (images[name], affine)
        )
        if old_release:
            path = (
                root
                / "rawdata"
                / f"sub-{subject}"
                / f"ses-{session}"
                / f"{stem}_{suffix.lower()}.nii.gz"
            )
        else:
            path = root / f"sub-{subject}" / f"ses-{session}" / datatype / f"{stem}_{suffix}.nii.gz"
        written[name] = save_nifti(data, grid, path)
    if label:
        mask = root / "derivatives" / f"sub-{subject}" / f"ses-{session}" / f"{stem}_msk.nii.gz"
        written["label"] = save_nifti(lesion, affine, mask, np.uint8)
    return written


def write_atlas_case(root: Path, subject: str, *, seed: int = 0) -> dict[str, Path]:
    """Write one ATLAS R2.0 case: an MNI-space T1w and its lesion mask beside it in anat/."""
    images, lesion = _sequence_volumes(("t1",), DEFAULT_SHAPE, seed)
    folder = root / f"sub-{subject}" / "ses-1" / "anat"
    stem = f"sub-{subject}_ses-1_space-MNI152NLin2009aSym"
    return {
        "t1": save_nifti(images["t1"], np.eye(4), folder / f"{stem}_T1w.nii.gz"),
        "label": save_nifti(
            lesion, np.eye(4), folder / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", np.uint8
        ),
    }


def write_nnunet(
    root: Path,
    training: tuple[str, ...],
    test: tuple[str, ...] = (),
    channel_names: dict[str, str] | None = None,
) -> Path:
    """Write an nnU-Net raw dataset: channel files in imagesTr/imagesTs, labels in labelsTr,
    and dataset.json (channels DWI, ADC, FLAIR by default). Return dataset.json's path."""
    channel_names = channel_names or {"0": "DWI", "1": "ADC", "2": "FLAIR"}
    for index, case_id in enumerate((*training, *test)):
        folder = "imagesTr" if case_id in training else "imagesTs"
        images, lesion = _sequence_volumes(tuple(channel_names), DEFAULT_SHAPE, index)
        for number in channel_names:
            name = f"{case_id}_{int(number):04d}.nii.gz"
            save_nifti(images[number], np.eye(4), root / folder / name)
        if case_id in training:
            save_nifti(lesion, np.eye(4), root / "labelsTr" / f"{case_id}.nii.gz", np.uint8)
    description = {
        "channel_names": channel_names,
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(training),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root / "dataset.json"


def tiny_train_config(cohort: Path | str, out: Path | str, **overrides) -> TrainConfig:
    """A TrainConfig for a tiny resnet18 U-Net and one step per epoch."""
    return TrainConfig(
        cohort=str(cohort), out=str(out), **{**TINY_MODEL, **TINY_SCHEDULE, **overrides}
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_worker_pids(title_fragment: str) -> list[int]:
    """Pids of local Ray worker processes whose process title contains ``title_fragment``."""
    import psutil

    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if command.startswith("ray::") and title_fragment in command:
            pids.append(process.info["pid"])
    return pids
