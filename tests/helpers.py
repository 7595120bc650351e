"""Plain test helpers (no fixtures): synthetic NIfTI cases, tiny model settings, ports, pids.

Test files import these with ``from helpers import …`` (``tests/`` is on ``sys.path`` through
the rootdir ``conftest.py``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import nibabel as nib
import numpy as np

from stroke_ray.cohort import SEQUENCES, Case
from stroke_ray.config import ModelConfig, TrainConfig

__all__ = [
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
]

DEFAULT_SHAPE: tuple[int, int, int] = (24, 28, 20)
DEMO_SHAPE: tuple[int, int, int] = (32, 32, 24)
TINY_MODEL_CONFIG = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 8, 8, 4, 4))
TINY_MODEL = {"model": TINY_MODEL_CONFIG}  # TrainConfig keyword arguments
TINY_SCHEDULE = {"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 1, "weights": "none"}
_WORLD_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


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
