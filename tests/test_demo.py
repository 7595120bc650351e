"""Tests of the synthetic stroke MRI cohort generator."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from stroke_ray import demo

SHAPE = (64, 64, 48)
SPACING_MM = 3.0
N_CASES = 3


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the manifest of a small default-shape cohort."""
    return demo.generate_cohort(
        tmp_path_factory.mktemp("cohort"),
        n_cases=N_CASES,
        shape=SHAPE,
        spacing_mm=SPACING_MM,
        thick_fraction=0.0,  # every case on the fine grid; thick slices are tested apart
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

    kwargs = {"shape": SHAPE, "spacing_mm": SPACING_MM, "thick_fraction": 0.0}
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


# --------------------------------------------------------------------------- thick slices


@pytest.mark.parametrize(
    ("fraction", "thick"),
    [(0.0, []), (0.5, [1, 3, 5, 7]), (0.25, [3, 7]), (1.0, list(range(8)))],
)
def test_thick_fraction_picks_evenly_spread_cases(fraction: float, thick: list[int]) -> None:
    assert [i for i in range(8) if demo._is_thick(i, fraction)] == thick


def test_thick_case_averages_slabs_and_keeps_the_lesion(
    tmp_path: Path, cases: dict[str, dict[str, np.ndarray]]
) -> None:
    manifest = demo.generate_cohort(
        tmp_path, n_cases=1, shape=SHAPE, spacing_mm=SPACING_MM, thick_fraction=1.0
    )
    img = nib.load(manifest.parent / "demo_000" / "demo_000_label.nii.gz")
    factor = 2  # round(5 mm / 3 mm)
    assert img.shape == (*SHAPE[:2], SHAPE[2] // factor)
    np.testing.assert_allclose(img.header.get_zooms(), (3.0, 3.0, 6.0))
    np.testing.assert_allclose(img.header.get_qform(), img.header.get_sform(), atol=1e-5)
    # Each thick voxel's centre is the mean of the centres of its fine slices.
    fine_affine = nib.load(manifest.parent / "demo_000" / "demo_000_t1.nii.gz").affine
    np.testing.assert_allclose(img.affine, fine_affine)
    expected_z0 = -SPACING_MM * (SHAPE[2] - 1) / 2 + SPACING_MM * (factor - 1) / 2
    assert img.affine[2, 3] == pytest.approx(expected_z0)
    thick = np.asanyarray(img.dataobj).astype(bool)
    fine = cases["demo_000"]["label"].astype(bool)
    upsampled = np.repeat(thick, factor, axis=2)
    dice = 2 * (upsampled & fine).sum() / (upsampled.sum() + fine.sum())
    assert dice > 0.7
    # Partial volume: the thick DWI is close to the mean of the fine slices.
    dwi = nib.load(manifest.parent / "demo_000" / "demo_000_dwi.nii.gz").get_fdata()
    fine_dwi = cases["demo_000"]["dwi"].reshape(*SHAPE[:2], -1, factor).mean(axis=-1)
    brain = (dwi > 0) & (fine_dwi > 0)
    assert np.corrcoef(dwi[brain], fine_dwi[brain])[0, 1] > 0.9


# --------------------------------------------------------------------------- sequences


def test_sequence_subset_in_order_and_the_same_images(
    tmp_path: Path, cases: dict[str, dict[str, np.ndarray]]
) -> None:
    manifest = demo.generate_cohort(
        tmp_path,
        n_cases=1,
        shape=SHAPE,
        spacing_mm=SPACING_MM,
        thick_fraction=0.0,
        sequences=("dwi", "adc", "flair"),
    )
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        row = next(reader)
    assert reader.fieldnames == ["case_id", "dwi", "adc", "flair", "label"]
    assert sorted(p.name for p in (tmp_path / "demo_000").iterdir()) == [
        f"demo_000_{key}.nii.gz" for key in ("adc", "dwi", "flair", "label")
    ]
    # A sequence looks the same whichever others are written with it.
    for key in ("dwi", "flair", "label"):
        image = np.asanyarray(nib.load(manifest.parent / row[key]).dataobj)
        np.testing.assert_array_equal(image, cases["demo_000"][key])
    adc = np.asanyarray(nib.load(manifest.parent / row["adc"]).dataobj)
    brain = _brain(cases["demo_000"])
    np.testing.assert_array_equal(adc != 0, brain)
    assert 500 < np.median(adc[brain]) < 1500  # 10^-6 mm²/s


@pytest.mark.parametrize(
    ("layout", "sequences", "message"),
    [
        ("atlas", ("t1", "flair"), "T1w only"),
        ("isles15", ("dwi", "adc"), "no ADC"),
        ("manifest", ("dwi", "swi"), "distinct names"),
        ("manifest", ("dwi", "dwi"), "distinct names"),
        ("bids2", None, "unknown layout"),
    ],
)
def test_bad_layout_or_sequences_are_refused(
    tmp_path: Path, layout: str, sequences: tuple[str, ...] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        demo.generate_cohort(tmp_path, n_cases=1, layout=layout, sequences=sequences)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- layouts

LAYOUT_SHAPE = (32, 32, 24)


def _expected_files(layout: str) -> set[str]:
    """The file tree of a two-case cohort with each layout's default sequences."""
    if layout in ("bids", "bids-flat"):
        files = {"dataset_description.json"}
        for i in (1, 2):
            sub = f"sub-strokecase{i:04d}"
            stem = f"{sub}/ses-0001"
            mask = f"derivatives/{stem}/{sub}_ses-0001_msk.nii.gz"
            if layout == "bids":
                images = [f"anat/{sub}_ses-0001_FLAIR", f"dwi/{sub}_ses-0001_dwi"]
                images += [f"dwi/{sub}_ses-0001_adc"]
                files |= {f"{stem}/{image}.nii.gz" for image in images}
            else:
                files |= {
                    f"rawdata/{stem}/{sub}_ses-0001_{suffix}.nii.gz"
                    for suffix in ("flair", "dwi", "adc")
                }
            files.add(mask)
        return files
    if layout == "atlas":
        files = {"dataset_description.json"}
        for i in (1, 2):
            stem = f"sub-r001s{i:03d}/ses-1/anat/sub-r001s{i:03d}_ses-1_space-MNI152NLin2009aSym"
            files |= {f"{stem}_T1w.nii.gz", f"{stem}_label-L_desc-T1lesion_mask.nii.gz"}
        return files
    if layout == "nnunet":
        files = {"dataset.json"}
        for case in ("demo_000", "demo_001"):
            files |= {f"imagesTr/{case}_{c:04d}.nii.gz" for c in range(4)}
            files.add(f"labelsTr/{case}.nii.gz")
        return files
    if layout == "isles15":
        files = set()
        for i, first in ((1, 70000), (2, 70010)):
            tags = ["MR_T1", "MR_T2", "MR_Flair", "MR_DWI"]
            names = [f"VSD.Brain.XX.O.{tag}.{first + n}" for n, tag in enumerate(tags)]
            names.append(f"VSD.Brain_3more.XX.O.OT.{first + 4}")
            files |= {f"{i}/{name}/{name}.nii" for name in names}
        return files
    keys = ("t1", "t2", "flair", "dwi", "label")
    return {"manifest.csv"} | {f"demo_00{i}/demo_00{i}_{k}.nii.gz" for i in (0, 1) for k in keys}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-case cohort in every layout (the second case with thick slices)."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        layout: demo.generate_cohort(
            root / layout, n_cases=2, shape=LAYOUT_SHAPE, layout=layout, workers=1
        )
        for layout in demo.LAYOUTS
    }


@pytest.mark.parametrize("layout", demo.LAYOUTS)
def test_layout_file_tree_and_returned_path(layouts: dict[str, Path], layout: str) -> None:
    cohort = layouts[layout]
    root = cohort.parent if layout == "manifest" else cohort
    assert cohort == (root / "manifest.csv" if layout == "manifest" else root)
    found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert found == _expected_files(layout)


@pytest.mark.parametrize("layout", demo.LAYOUTS)
def test_layout_images_are_valid_nifti_with_binary_labels(
    layouts: dict[str, Path], layout: str
) -> None:
    root = layouts[layout] if layout != "manifest" else layouts[layout].parent
    for path in root.rglob("*.nii*"):
        img = nib.load(path)
        assert len(img.shape) == 3
        qform, qform_code = img.header.get_qform(coded=True)
        sform, sform_code = img.header.get_sform(coded=True)
        assert (int(qform_code), int(sform_code)) == (1, 1)
        np.testing.assert_allclose(qform, sform, atol=1e-5)
        data = np.asanyarray(img.dataobj)
        label_tags = ("_msk.", "_mask.", "_label.", ".OT.")
        if any(tag in path.name for tag in label_tags) or path.parent.name == "labelsTr":
            assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}
        else:
            assert data.dtype == np.float32 and data.max() > 0


def test_index_files_describe_the_cohort(layouts: dict[str, Path]) -> None:
    dataset = json.loads((layouts["nnunet"] / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "T2", "2": "FLAIR", "3": "DWI"}
    assert dataset["labels"] == {"background": 0, "lesion": 1}
    assert dataset["numTraining"] == 2 and dataset["file_ending"] == ".nii.gz"
    for layout in ("bids", "bids-flat", "atlas"):
        description = json.loads((layouts[layout] / "dataset_description.json").read_text())
        assert description["DatasetType"] == "raw" and description["BIDSVersion"]
        assert description["GeneratedBy"][0]["Name"] == "stroke-ray demo"


def test_bids_flair_has_its_own_grid_and_is_not_registered(layouts: dict[str, Path]) -> None:
    root = layouts["bids"]
    for number in (1, 2):
        sub = f"sub-strokecase{number:04d}"
        base = root / sub / "ses-0001"
        flair = nib.load(base / "anat" / f"{sub}_ses-0001_FLAIR.nii.gz")
        dwi = nib.load(base / "dwi" / f"{sub}_ses-0001_dwi.nii.gz")
        adc = nib.load(base / "dwi" / f"{sub}_ses-0001_adc.nii.gz")
        mask = nib.load(root / "derivatives" / sub / "ses-0001" / f"{sub}_ses-0001_msk.nii.gz")
        for image in (adc, mask):  # DWI, ADC and the mask share one grid
            assert image.shape == dwi.shape
            np.testing.assert_allclose(image.affine, dwi.affine)
        assert flair.shape != dwi.shape  # FLAIR does not
        assert not np.allclose(flair.affine, dwi.affine)
        assert flair.header.get_zooms()[0] < dwi.header.get_zooms()[0]

        def centre(img: nib.Nifti1Image) -> np.ndarray:
            voxels = np.argwhere(np.asanyarray(img.dataobj) > 0).mean(axis=0)
            return (img.affine @ np.append(voxels, 1.0))[:3]

        # Both cover the same head, which moved 1-2 mm between the scans.
        assert 0.5 < np.linalg.norm(centre(flair) - centre(dwi)) < 3.0
    thick = nib.load(
        root / "sub-strokecase0002/ses-0001/dwi/sub-strokecase0002_ses-0001_dwi.nii.gz"
    )
    assert thick.header.get_zooms()[2] == pytest.approx(6.0)


def test_a_case_is_the_same_head_in_every_layout(layouts: dict[str, Path]) -> None:
    def load(path: Path) -> np.ndarray:
        return np.asanyarray(nib.load(path).dataobj)

    manifest_dwi = load(layouts["manifest"].parent / "demo_000" / "demo_000_dwi.nii.gz")
    bids_dwi = (
        layouts["bids"] / "sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_dwi.nii.gz"
    )
    nnunet_dwi = layouts["nnunet"] / "imagesTr" / "demo_000_0003.nii.gz"
    isles_dwi = layouts["isles15"] / "1/VSD.Brain.XX.O.MR_DWI.70003/VSD.Brain.XX.O.MR_DWI.70003.nii"
    for path in (bids_dwi, nnunet_dwi, isles_dwi):
        np.testing.assert_array_equal(load(path), manifest_dwi)


def test_workers_write_the_same_cohort(tmp_path: Path, layouts: dict[str, Path]) -> None:
    cohort = demo.generate_cohort(
        tmp_path, n_cases=2, shape=LAYOUT_SHAPE, layout="bids-flat", workers=2
    )
    for path in layouts["bids-flat"].rglob("*.nii.gz"):
        relative = path.relative_to(layouts["bids-flat"])
        np.testing.assert_array_equal(
            np.asanyarray(nib.load(cohort / relative).dataobj),
            np.asanyarray(nib.load(path).dataobj),
        )
