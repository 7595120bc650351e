"""Tests of the synthetic stroke MRI cohort generator."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from stroke_ray import demo
from stroke_ray.cohort import SEQUENCES

SHAPE = (64, 64, 48)
SPACING_MM = 3.0
N_CASES = 3


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the manifest of a small default-shape cohort."""
    return demo.generate_cohort(
        tmp_path_factory.mktemp("cohort"), n_cases=N_CASES, shape=SHAPE, spacing_mm=SPACING_MM
    )


@pytest.fixture(scope="module")
def cases(manifest: Path) -> dict[str, dict[str, np.ndarray]]:
    """Return every case of the cohort as {case_id: {key: array}} loaded from disk."""
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        row["case_id"]: {
            key: np.asanyarray(nib.load(manifest.parent / row[key]).dataobj)
            for key in ("t1", "t2", "flair", "dwi", "label")
        }
        for row in rows
    }


def _brain(case: dict[str, np.ndarray]) -> np.ndarray:
    """Return the brain mask (non-zero T1) of a case."""
    return case["t1"] != 0


def test_manifest_lists_every_file_with_relative_paths(manifest: Path) -> None:
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["case_id", "t1", "t2", "flair", "dwi", "label"]
    assert [row["case_id"] for row in rows] == [f"demo_{i:03d}" for i in range(N_CASES)]
    for row in rows:
        case_id = row["case_id"]
        for key in ("t1", "t2", "flair", "dwi", "label"):
            assert row[key] == f"{case_id}/{case_id}_{key}.nii.gz"
            assert (manifest.parent / row[key]).is_file()


def test_nifti_shape_dtype_and_centred_affine(manifest: Path) -> None:
    expected = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    expected[:3, 3] = -SPACING_MM * (np.asarray(SHAPE) - 1) / 2
    for path in sorted(manifest.parent.glob("demo_*/*.nii.gz")):
        img = nib.load(path)
        assert img.shape == SHAPE
        is_label = path.name.endswith("_label.nii.gz")
        assert img.get_data_dtype() == (np.uint8 if is_label else np.float32)
        assert np.asanyarray(img.dataobj).dtype == (np.uint8 if is_label else np.float32)
        qform, qform_code = img.header.get_qform(coded=True)
        sform, sform_code = img.header.get_sform(coded=True)
        assert (int(qform_code), int(sform_code)) == (1, 1)
        np.testing.assert_allclose(qform, sform, atol=1e-5)
        np.testing.assert_allclose(img.affine, expected, atol=1e-5)
        assert img.header.get_xyzt_units()[0] == "mm"
        centre_world = img.affine @ np.append((np.asarray(SHAPE) - 1) / 2, 1.0)
        np.testing.assert_allclose(centre_world[:3], 0.0, atol=1e-5)


def test_same_seed_is_identical_and_other_seed_differs() -> None:
    shape = (32, 32, 24)
    first = demo.synth_case(np.random.default_rng(5), shape, 6.0, lesion_count=2)
    again = demo.synth_case(np.random.default_rng(5), shape, 6.0, lesion_count=2)
    other = demo.synth_case(np.random.default_rng(6), shape, 6.0, lesion_count=2)
    assert set(first) == {"t1", "t2", "flair", "dwi", "label"}
    for key in first:
        assert first[key].shape == shape
        np.testing.assert_array_equal(first[key], again[key])
        assert not np.array_equal(first[key], other[key])


def test_cohort_is_deterministic_and_cases_do_not_depend_on_n_cases(
    tmp_path: Path, cases: dict[str, dict[str, np.ndarray]]
) -> None:
    def load(manifest: Path, case_id: str) -> np.ndarray:
        return nib.load(manifest.parent / case_id / f"{case_id}_dwi.nii.gz").get_fdata()

    kwargs = {"shape": SHAPE, "spacing_mm": SPACING_MM}
    fewer = demo.generate_cohort(tmp_path / "fewer", n_cases=1, seed=0, **kwargs)
    reseeded = demo.generate_cohort(tmp_path / "reseeded", n_cases=1, seed=1, **kwargs)
    np.testing.assert_array_equal(load(fewer, "demo_000"), cases["demo_000"]["dwi"])
    assert not np.array_equal(load(reseeded, "demo_000"), cases["demo_000"]["dwi"])


def test_labels_are_binary_with_one_lesion_free_case(
    cases: dict[str, dict[str, np.ndarray]],
) -> None:
    for case_id, case in cases.items():
        assert set(np.unique(case["label"])) <= {0, 1}
        assert (case["label"].sum() == 0) == (case_id == "demo_001")


def test_some_case_has_several_separate_lesions(cases: dict[str, dict[str, np.ndarray]]) -> None:
    components = [ndimage.label(case["label"])[1] for case in cases.values()]
    assert max(components) >= 2


def test_lesions_lie_inside_the_brain(cases: dict[str, dict[str, np.ndarray]]) -> None:
    for case in cases.values():
        lesion = case["label"] == 1
        for seq in ("t1", "t2", "flair", "dwi"):
            assert np.all(case[seq][lesion] > 0)


def test_outside_brain_is_exactly_zero_in_every_sequence(
    cases: dict[str, dict[str, np.ndarray]],
) -> None:
    for case in cases.values():
        brain = _brain(case)
        assert 0.1 < brain.mean() < 0.6
        assert ndimage.label(brain)[1] == 1
        for seq in ("t2", "flair", "dwi"):
            np.testing.assert_array_equal(case[seq] != 0, brain)
            assert np.all(case[seq] >= 0)
        for face_axis in range(3):
            assert not np.take(brain, [0, -1], axis=face_axis).any()


def test_lesions_are_bright_on_dwi_and_flair(cases: dict[str, dict[str, np.ndarray]]) -> None:
    for case_id, case in cases.items():
        if case_id == "demo_001":
            continue
        lesion = case["label"] == 1
        rest = _brain(case) & ~lesion
        assert case["dwi"][lesion].mean() > 1.3 * case["dwi"][rest].mean()
        assert case["flair"][lesion].mean() > case["flair"][rest].mean()


def test_t1_and_t2_have_opposite_tissue_contrast(
    cases: dict[str, dict[str, np.ndarray]],
) -> None:
    for case in cases.values():
        brain = _brain(case) & (case["label"] == 0)
        correlation = np.corrcoef(case["t1"][brain], case["t2"][brain])[0, 1]
        assert correlation < -0.3


def test_tissue_ordering_per_sequence() -> None:
    rng = np.random.default_rng(11)
    anatomy = demo._synth_anatomy(rng, SHAPE)
    tissue = np.argmax(anatomy.fractions, axis=0)
    pure = anatomy.brain & (anatomy.fractions.max(axis=0) > 0.8)
    means = {}
    for seq in SEQUENCES:
        image = demo._render_sequence(rng, seq, anatomy, None)
        means[seq] = [image[pure & (tissue == t)].mean() for t in range(3)]  # CSF, GM, WM
    csf, gm, wm = means["t1"]
    assert wm > gm > csf
    csf, gm, wm = means["t2"]
    assert csf > gm > wm
    csf, gm, wm = means["flair"]
    assert gm > wm > csf
    assert max(means["dwi"]) / min(means["dwi"]) < 1.6


def test_lesion_contrast_signs_per_sequence() -> None:
    rng = np.random.default_rng(21)
    anatomy = demo._synth_anatomy(rng, SHAPE)
    label, strength = demo._add_lesions(rng, anatomy, lesion_count=2)
    ratio = {}
    for seq in SEQUENCES:
        # Same render seed: identical bias field and noise, only the lesion contrast differs.
        with_lesion = demo._render_sequence(np.random.default_rng(1), seq, anatomy, strength)
        without = demo._render_sequence(np.random.default_rng(1), seq, anatomy, None)
        ratio[seq] = with_lesion[label].mean() / without[label].mean()
    assert ratio["t1"] < 0.9
    assert ratio["t2"] > 1.1
    assert 1.1 < ratio["flair"] < ratio["dwi"]
    assert ratio["dwi"] > 1.5
