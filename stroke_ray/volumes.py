"""Read one case's sequences and check them: 3D, one grid, finite, not empty, binary label.

:class:`Inputs` says which sequences a model reads (in channel order), the reference sequence
whose grid the others must share (its header becomes the masks'), and whether a sequence on
another grid is resampled onto the reference grid by world coordinates (linear,
``nibabel.processing.resample_from_to``) instead of being rejected. Resampling does not
register: scans that are misaligned in world space stay misaligned. Labels are never
resampled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import nibabel as nib
import numpy as np

from stroke_ray.cohort import Case
from stroke_ray.config import REFERENCE, SEQUENCES
from stroke_ray.io import ImageReadError, StorageOptions, read_image

__all__ = ["CaseError", "CaseVolumes", "Inputs", "read_case", "AFFINE_TOLERANCE_MM"]

AFFINE_TOLERANCE_MM = 1e-2
_NAME = re.compile(r"^[a-z0-9]+$")


class CaseError(ValueError):
    """One case cannot be used; the message names the case, the file and the problem."""


@dataclass(frozen=True)
class Inputs:
    """The sequences a model reads (channel order), the reference grid, and resampling."""

    sequences: tuple[str, ...] = SEQUENCES
    reference: str = REFERENCE
    resample: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sequences", tuple(self.sequences))
        bad = [name for name in self.sequences if not _NAME.fullmatch(name)]
        if not self.sequences or bad or len(set(self.sequences)) != len(self.sequences):
            raise ValueError(
                f"sequences {list(self.sequences)}: give one or more distinct lower-case names "
                "(letters and digits)"
            )
        if self.reference not in self.sequences:
            raise ValueError(
                f"reference {self.reference!r} is not one of the sequences {list(self.sequences)}"
            )

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Inputs:
        """From training options (run.json's ``config``); runs that predate them use the paper's."""
        return cls(
            sequences=tuple(options.get("sequences") or SEQUENCES),
            reference=options.get("reference") or REFERENCE,
            resample=bool(options.get("resample", False)),
        )


@dataclass
class CaseVolumes:
    """A case's sequences in their source voxel order, with the reference image's header."""

    case_id: str
    images: np.ndarray  # (C, X, Y, Z) float32, channel order ``sequences``
    sequences: tuple[str, ...]
    reference: str  # the sequence whose grid and header the volumes have
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


def _grid_problem(image, data: np.ndarray, reference, reference_name: str) -> str | None:
    """Why an image is not on the reference grid (shape, affine); None when it is."""
    ref_image, ref_data = reference
    if data.shape != ref_data.shape:
        return f"shape {data.shape} != {reference_name} shape {ref_data.shape}"
    if not np.allclose(image.affine, ref_image.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        worst = float(np.abs(image.affine - ref_image.affine).max())
        return (
            f"affine differs from {reference_name} by up to {worst:.4g} "
            f"(tolerance {AFFINE_TOLERANCE_MM} mm)"
        )
    return None


def _resampled(image, data: np.ndarray, reference) -> np.ndarray:
    """``data`` resampled onto the reference grid by world coordinates (linear, 0 outside)."""
    from nibabel.processing import resample_from_to

    ref_image, ref_data = reference
    moving = nib.Nifti1Image(data, image.affine)
    target = (ref_data.shape, ref_image.affine)
    return resample_from_to(moving, target, order=1, mode="constant", cval=0.0).get_fdata(
        dtype=np.float32
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


def _channel(case: Case, name: str, loaded, inputs: Inputs, options: StorageOptions):
    """One sequence on the reference grid (resampled when allowed), checked; ``loaded`` is
    the reference's (image, data, fail)."""
    ref_image, ref_data, _ = loaded
    if name == inputs.reference:
        image, data, fail = loaded
    else:
        image, data, fail = _load(case.case_id, name, case.images[name], options)
    problem = _grid_problem(image, data, (ref_image, ref_data), inputs.reference)
    if problem and not inputs.resample:
        fail(f"{problem}; --resample puts it onto the {inputs.reference} grid")
    if problem:
        data = _resampled(image, data, (ref_image, ref_data))
        where = f"{name} (resampled onto the {inputs.reference} grid)"
        fail = _failer(case.case_id, where, case.images[name])
    return _check_intensities(data, fail)


def read_case(
    case: Case, storage_options: StorageOptions = None, *, inputs: Inputs | None = None
) -> CaseVolumes:
    """Read and validate a case's ``inputs`` (default: the paper's); raise CaseError naming
    the case, the file and the problem."""
    inputs = inputs or Inputs()
    if case.problem:
        raise CaseError(case.problem)
    missing = [name for name in inputs.sequences if name not in case.images]
    if missing:
        raise CaseError(
            f"case {case.case_id}: no {'/'.join(missing)} image (the case has "
            f"{', '.join(sorted(case.images)) or 'no image'}; the model reads "
            f"{', '.join(inputs.sequences)})"
        )
    loaded = _load(case.case_id, inputs.reference, case.images[inputs.reference], storage_options)
    ref_image, ref_data, _ = loaded
    reference = (ref_image, ref_data)
    channels = [_channel(case, name, loaded, inputs, storage_options) for name in inputs.sequences]
    label = None
    if case.label:
        image, data, fail = _load(case.case_id, "label", case.label, storage_options)
        problem = _grid_problem(image, data, reference, inputs.reference)
        if problem:
            fail(f"{problem} (labels are never resampled)")
        label = _check_label(data, fail)
    return CaseVolumes(
        case_id=case.case_id,
        images=np.stack(channels),
        sequences=inputs.sequences,
        reference=inputs.reference,
        label=label,
        affine=ref_image.affine.copy(),
        header=_nifti_header(ref_image),
    )
