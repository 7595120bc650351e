"""Read one case's sequences and check them: 3D, same grid, finite, not empty, binary label."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import nibabel as nib
import numpy as np

from stroke_ray.cohort import SEQUENCES, Case
from stroke_ray.io import ImageReadError, StorageOptions, read_image

__all__ = ["CaseError", "CaseVolumes", "read_case", "AFFINE_TOLERANCE_MM"]

AFFINE_TOLERANCE_MM = 1e-2
REFERENCE_SEQUENCE = "flair"


class CaseError(ValueError):
    """One case cannot be used; the message names the case, the file and the problem."""


@dataclass
class CaseVolumes:
    """A case's sequences in their source voxel order, with the reference (FLAIR) header."""

    case_id: str
    images: np.ndarray  # (4, X, Y, Z) float32, channel order SEQUENCES
    label: np.ndarray | None  # (X, Y, Z) uint8 0/1
    affine: np.ndarray  # 4x4, the reference image's
    header: nib.Nifti1Header  # the reference image's NIfTI-1/2 header (qform/sform and codes)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along the source axes."""
        return tuple(float(z) for z in self.header.get_zooms()[:3])  # type: ignore[return-value]


def _failer(case_id: str, name: str, uri: str) -> Callable[[str], NoReturn]:
    def fail(problem: str) -> NoReturn:
        raise CaseError(f"case {case_id}: {name} {uri}: {problem}")

    return fail


def _as_3d(image: nib.spatialimages.SpatialImage, fail: Callable[[str], NoReturn]) -> np.ndarray:
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        fail(f"{len(image.shape)}D volume of shape {image.shape}; a 3D volume is required")
    return image.get_fdata(dtype=np.float32).reshape(shape)


def _nifti_header(image: nib.spatialimages.SpatialImage) -> nib.Nifti1Header:
    """The image's NIfTI-1 or NIfTI-2 header; other formats get a NIfTI-1 header of their affine."""
    if isinstance(image.header, nib.Nifti1Header):  # NIfTI-2 headers are a subclass
        return image.header.copy()
    converted = nib.Nifti1Image(np.zeros(image.shape[:3], np.uint8), image.affine)
    converted.set_qform(image.affine, code=1)
    converted.set_sform(image.affine, code=1)
    converted.header.set_zooms(image.header.get_zooms()[:3])
    return converted.header


def _load(case_id: str, name: str, uri: str, options: StorageOptions):
    """Read one file as float32 3D data; return (image, data, fail)."""
    fail = _failer(case_id, name, uri)
    try:
        image = read_image(uri, options)
    except ImageReadError as err:
        raise CaseError(f"case {case_id}: {name} {err}") from err
    return image, _as_3d(image, fail), fail


def _check_grid(image, data, reference, fail: Callable[[str], NoReturn]) -> None:
    ref_image, ref_data = reference
    if data.shape != ref_data.shape:
        fail(f"shape {data.shape} != {REFERENCE_SEQUENCE} shape {ref_data.shape}")
    if not np.allclose(image.affine, ref_image.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        worst = float(np.abs(image.affine - ref_image.affine).max())
        fail(
            f"affine differs from {REFERENCE_SEQUENCE} by up to {worst:.4g} "
            f"(tolerance {AFFINE_TOLERANCE_MM} mm)"
        )


def _check_intensities(data: np.ndarray, fail: Callable[[str], NoReturn]) -> np.ndarray:
    values = data.astype(np.float32, copy=False)
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        fail(f"{bad} NaN/Inf voxels")
    if not np.any(values):
        fail("all voxels are zero")
    return values


def _check_label(data: np.ndarray, fail: Callable[[str], NoReturn]) -> np.ndarray:
    values = np.unique(data)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:8])
        fail(f"label is not binary (values {shown}{', …' if len(values) > 8 else ''}; need 0/1)")
    return data.astype(np.uint8)


def read_case(case: Case, storage_options: StorageOptions = None) -> CaseVolumes:
    """Read and validate a case; raise CaseError naming the file and problem."""
    if case.problem:
        raise CaseError(case.problem)
    uris = case.sequence_uris()
    reference = _load(case.case_id, REFERENCE_SEQUENCE, uris[REFERENCE_SEQUENCE], storage_options)
    ref_image, ref_data, _ = reference
    channels = []
    for name in SEQUENCES:
        image, data, fail = (
            reference
            if name == REFERENCE_SEQUENCE
            else _load(case.case_id, name, uris[name], storage_options)
        )
        _check_grid(image, data, (ref_image, ref_data), fail)
        channels.append(_check_intensities(data, fail))
    label = None
    if case.label:
        image, data, fail = _load(case.case_id, "label", case.label, storage_options)
        _check_grid(image, data, (ref_image, ref_data), fail)
        label = _check_label(data, fail)
    return CaseVolumes(
        case_id=case.case_id,
        images=np.stack(channels),
        label=label,
        affine=ref_image.affine.copy(),
        header=_nifti_header(ref_image),
    )
