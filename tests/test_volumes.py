"""Tests for stroke_ray.volumes: reading a case and rejecting bad inputs with clear errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import DEFAULT_SHAPE, affine_for, save_nifti, write_case

from stroke_ray.cohort import SEQUENCES, Case
from stroke_ray.volumes import AFFINE_TOLERANCE_MM, CaseError, Inputs, read_case

CASE_ID = "case07"


def _loaded(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the data and affine of a NIfTI file as nibabel reads it."""
    image = nib.load(path)
    return np.asarray(image.get_fdata()), image.affine


def _rewrite(path: str, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Overwrite a case file with new data (same affine unless given)."""
    save_nifti(data, _loaded(path)[1] if affine is None else affine, Path(path))


def test_read_case_ok(tmp_path: Path) -> None:
    affine = affine_for("LPS", (0.9, 1.2, 3.0))
    case = write_case(tmp_path, CASE_ID, affine=affine)
    volumes = read_case(case)
    assert volumes.case_id == CASE_ID
    assert volumes.images.shape == (4, *DEFAULT_SHAPE)
    assert volumes.images.dtype == np.float32
    assert volumes.label is not None
    assert volumes.label.dtype == np.uint8 and volumes.label.shape == DEFAULT_SHAPE
    for channel, name in enumerate(SEQUENCES):
        np.testing.assert_array_equal(volumes.images[channel], _loaded(case.images[name])[0])
    np.testing.assert_array_equal(volumes.label, _loaded(case.label)[0])
    np.testing.assert_allclose(volumes.affine, affine)
    assert volumes.spacing_mm == pytest.approx((0.9, 1.2, 3.0))


def test_read_case_without_label(tmp_path: Path) -> None:
    case = replace(write_case(tmp_path, CASE_ID), label=None)
    assert read_case(case).label is None


def test_int16_scaled_data_applies_scaling(tmp_path: Path) -> None:
    case = write_case(tmp_path, CASE_ID)
    raw = np.random.default_rng(3).integers(1, 3000, DEFAULT_SHAPE).astype(np.int16)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(DEFAULT_SHAPE)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header.set_slope_inter(0.25, -7.0)
    header["vox_offset"] = 352
    block = header.binaryblock + b"\x00" * (352 - len(header.binaryblock))
    Path(case.images["t2"]).unlink()
    t2 = tmp_path / "scaled_t2.nii"
    t2.write_bytes(block + raw.tobytes(order="F"))

    volumes = read_case(replace(case, images={**case.images, "t2": str(t2)}))

    np.testing.assert_allclose(volumes.images[1], raw.astype(np.float64) * 0.25 - 7.0)


def test_4d_with_single_volume_accepted(tmp_path: Path) -> None:
    case = write_case(tmp_path, CASE_ID)
    data = _loaded(case.images["dwi"])[0]
    _rewrite(case.images["dwi"], data[..., np.newaxis])
    np.testing.assert_array_equal(read_case(case).images[3], data)


def test_affine_within_tolerance_accepted(tmp_path: Path) -> None:
    case = write_case(tmp_path, CASE_ID)
    shifted = np.eye(4)
    shifted[:3, 3] = AFFINE_TOLERANCE_MM / 5
    _rewrite(case.images["t1"], _loaded(case.images["t1"])[0], shifted)
    np.testing.assert_allclose(read_case(case).affine, np.eye(4))


def _delete(case: Case) -> tuple[str, str]:
    """Remove the T2 file."""
    Path(case.images["t2"]).unlink()
    return case.images["t2"], "file not found"


def _not_nifti(case: Case) -> tuple[str, str]:
    """Replace DWI with random bytes."""
    Path(case.images["dwi"]).write_bytes(np.random.default_rng(0).bytes(4096))
    return case.images["dwi"], "not a NIfTI"


def _truncate(case: Case) -> tuple[str, str]:
    """Cut the gzip stream of the reference FLAIR in half."""
    data = Path(case.images["flair"]).read_bytes()
    Path(case.images["flair"]).write_bytes(data[: len(data) // 2])
    return case.images["flair"], "truncated"


def _other_shape(case: Case) -> tuple[str, str]:
    """Give T1 one extra slice."""
    _rewrite(case.images["t1"], np.ones((DEFAULT_SHAPE[0], DEFAULT_SHAPE[1], DEFAULT_SHAPE[2] + 1)))
    return case.images["t1"], "shape"


def _label_other_shape(case: Case) -> tuple[str, str]:
    """Give the label a different grid."""
    _rewrite(case.label or "", np.zeros((4, 4, 4), np.uint8))
    return case.label or "", "shape"


def _far_affine(case: Case) -> tuple[str, str]:
    """Shift T2 by half a millimetre."""
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    _rewrite(case.images["t2"], _loaded(case.images["t2"])[0], shifted)
    return case.images["t2"], "affine differs"


def _nan(case: Case) -> tuple[str, str]:
    """Put one NaN voxel in T1."""
    data = _loaded(case.images["t1"])[0].astype(np.float32)
    data[3, 4, 5] = np.nan
    _rewrite(case.images["t1"], data)
    return case.images["t1"], "1 NaN/Inf voxels"


def _inf(case: Case) -> tuple[str, str]:
    """Put two infinite voxels in DWI."""
    data = _loaded(case.images["dwi"])[0].astype(np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.inf, -np.inf
    _rewrite(case.images["dwi"], data)
    return case.images["dwi"], "2 NaN/Inf voxels"


def _all_zero(case: Case) -> tuple[str, str]:
    """Blank the T2 volume."""
    _rewrite(case.images["t2"], np.zeros(DEFAULT_SHAPE, np.float32))
    return case.images["t2"], "all voxels are zero"


def _four_d(case: Case) -> tuple[str, str]:
    """Make FLAIR a two-volume 4D series."""
    data = _loaded(case.images["flair"])[0]
    _rewrite(case.images["flair"], np.stack([data, data], axis=-1))
    return case.images["flair"], "4D volume"


def _non_binary_label(case: Case) -> tuple[str, str]:
    """Write a label with values 0, 1 and 2."""
    data = np.zeros(DEFAULT_SHAPE, np.uint8)
    data[1, 1, 1], data[2, 2, 2] = 1, 2
    _rewrite(case.label or "", data)
    return case.label or "", "label is not binary (values 0, 1, 2"


def _fractional_label(case: Case) -> tuple[str, str]:
    """Write a soft (probability) label."""
    data = np.zeros(DEFAULT_SHAPE, np.float32)
    data[1, 1, 1] = 0.5
    _rewrite(case.label or "", data)
    return case.label or "", "not binary"


BREAKERS: dict[str, Callable[[Case], tuple[str, str]]] = {
    "missing_file": _delete,
    "not_nifti": _not_nifti,
    "truncated_gz": _truncate,
    "other_shape": _other_shape,
    "label_other_shape": _label_other_shape,
    "affine_beyond_tolerance": _far_affine,
    "nan": _nan,
    "inf": _inf,
    "all_zero": _all_zero,
    "four_d": _four_d,
    "non_binary_label": _non_binary_label,
    "fractional_label": _fractional_label,
}


@pytest.mark.parametrize("breaker", BREAKERS.values(), ids=BREAKERS.keys())
def test_bad_input_names_case_file_and_problem(
    tmp_path: Path, breaker: Callable[[Case], tuple[str, str]]
) -> None:
    case = write_case(tmp_path, CASE_ID)
    read_case(case)  # the untouched case is valid
    broken_path, problem = breaker(case)
    with pytest.raises(CaseError) as caught:
        read_case(case)
    message = str(caught.value)
    assert f"case {CASE_ID}" in message
    assert broken_path in message
    assert problem in message


# --------------------------------------------------------------------------- sequences, resampling


def test_channels_follow_the_sequences_and_the_reference_gives_the_header(tmp_path: Path) -> None:
    case = write_case(tmp_path, CASE_ID, affine=affine_for("LPS", (0.9, 1.2, 3.0)))
    volumes = read_case(case, inputs=Inputs(("dwi", "t1"), "t1"))
    assert volumes.sequences == ("dwi", "t1") and volumes.reference == "t1"
    np.testing.assert_array_equal(volumes.images[0], _loaded(case.images["dwi"])[0])
    np.testing.assert_array_equal(volumes.images[1], _loaded(case.images["t1"])[0])
    np.testing.assert_allclose(volumes.affine, nib.load(case.images["t1"]).affine)


@pytest.mark.parametrize(
    ("sequences", "reference", "words"),
    [
        ((), "flair", "one or more distinct"),
        (("dwi", "dwi"), "dwi", "one or more distinct"),
        (("DWI",), "DWI", "lower-case"),
        (("dwi", "adc"), "flair", "reference 'flair' is not one of the sequences"),
    ],
)
def test_inputs_are_checked(sequences, reference, words) -> None:
    with pytest.raises(ValueError, match=words):
        Inputs(sequences, reference)


def test_inputs_of_older_runs_are_the_papers() -> None:
    assert Inputs.of({}) == Inputs(SEQUENCES, "flair", False)
    assert Inputs.of({"sequences": ["dwi", "adc"], "reference": "dwi", "resample": True}) == (
        Inputs(("dwi", "adc"), "dwi", True)
    )


def _ramp_case(tmp_path: Path) -> tuple[Case, np.ndarray, np.ndarray]:
    """DWI on a 1 mm LPS grid; FLAIR on a 2 mm RAS grid, shifted, whose intensity is a
    linear function of world x, y, z (linear interpolation reproduces it exactly)."""
    dwi_affine = affine_for("LPS", (1.0, 1.0, 1.0), origin=(12.0, 14.0, -10.0))
    flair_affine = affine_for("RAS", (2.0, 2.0, 2.0), origin=(-20.5, -20.5, -20.5))
    world = lambda affine, shape: nib.affines.apply_affine(affine, np.indices(shape).T).T  # noqa: E731
    ramp = lambda xyz: 1000.0 + 3.0 * xyz[0] - 2.0 * xyz[1] + 5.0 * xyz[2]  # noqa: E731
    case = write_case(tmp_path, CASE_ID, affine=dwi_affine)
    flair_shape = (24, 24, 24)
    _rewrite(case.images["flair"], ramp(world(flair_affine, flair_shape)), flair_affine)
    return case, ramp(world(dwi_affine, DEFAULT_SHAPE)), dwi_affine


def test_another_grid_is_an_error_naming_it_without_resample(tmp_path: Path) -> None:
    case, _, _ = _ramp_case(tmp_path)
    with pytest.raises(CaseError) as caught:
        read_case(case, inputs=Inputs(("dwi", "flair"), "dwi"))
    message = str(caught.value)
    assert (
        f"case {CASE_ID}: flair {case.images['flair']}: shape (24, 24, 24) != dwi shape" in message
    )
    assert "--resample puts it onto the dwi grid" in message


def test_resample_goes_by_world_coordinates(tmp_path: Path) -> None:
    case, expected, dwi_affine = _ramp_case(tmp_path)
    volumes = read_case(case, inputs=Inputs(("dwi", "flair"), "dwi", resample=True))
    assert volumes.images.shape == (2, *DEFAULT_SHAPE)
    np.testing.assert_array_equal(volumes.images[0], _loaded(case.images["dwi"])[0])
    np.testing.assert_allclose(volumes.images[1], expected, rtol=1e-5)
    np.testing.assert_allclose(volumes.affine, dwi_affine)
    assert volumes.label is not None  # the label shares the DWI grid


def test_resample_leaves_a_sequence_on_the_reference_grid_untouched(tmp_path: Path) -> None:
    case = write_case(tmp_path, CASE_ID, affine=affine_for("PSR", (0.9, 1.2, 3.0)))
    plain = read_case(case)
    resampled = read_case(case, inputs=Inputs(resample=True))
    np.testing.assert_array_equal(plain.images, resampled.images)


def test_a_sequence_outside_the_reference_grid_is_named(tmp_path: Path) -> None:
    case = write_case(tmp_path, CASE_ID)
    far = affine_for("RAS", origin=(500.0, 0.0, 0.0))
    _rewrite(case.images["t2"], _loaded(case.images["t2"])[0], far)
    with pytest.raises(
        CaseError, match=r"t2 \(resampled onto the flair grid\) .*all voxels are zero"
    ):
        read_case(case, inputs=Inputs(resample=True))


def test_labels_are_never_resampled(tmp_path: Path) -> None:
    case = write_case(tmp_path, CASE_ID)
    shifted = affine_for("RAS", origin=(1.0, 0.0, 0.0))
    _rewrite(case.label, _loaded(case.label)[0], shifted)
    with pytest.raises(CaseError, match=r"label .*affine differs from flair .*never resampled"):
        read_case(case, inputs=Inputs(resample=True))
