"""Tests for stroke_ray.layouts: BIDS (ISLES'22 both releases, ATLAS), nnU-Net raw and ISLES 2015
folders found over fsspec (local and the local S3 server), with bad input skipped or given to
its case, never stopping the cohort."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import write_atlas_case, write_isles22_case, write_nnunet

from stroke_ray.cohort import ManifestError, load_cohort, scan_cohort
from stroke_ray.layouts import detect_layout, list_files
from stroke_ray.volumes import CaseError, Inputs, read_case

ISLES22 = Inputs(("dwi", "adc", "flair"), "dwi", resample=True)


def _isles22(root: Path, *, old_release: bool = False) -> dict[str, dict[str, Path]]:
    """Two labelled cases and one without FLAIR and mask."""
    return {
        "0001": write_isles22_case(root, "strokecase0001", old_release=old_release),
        "0002": write_isles22_case(root, "strokecase0002", old_release=old_release, seed=1),
        "0003": write_isles22_case(
            root, "strokecase0003", sequences=("dwi", "adc"), label=False, seed=2,
            old_release=old_release,
        ),
    }  # fmt: skip


@pytest.mark.parametrize("old_release", [False, True], ids=["bids", "rawdata-flat"])
def test_isles22_bids(tmp_path: Path, old_release: bool) -> None:
    written = _isles22(tmp_path, old_release=old_release)
    (tmp_path / "dataset_description.json").write_text('{"Name": "ISLES22"}')
    (tmp_path / "participants.tsv").write_text("participant_id\n")
    sidecar = written["0001"]["dwi"].with_name("sub-strokecase0001_ses-0001_dwi.json")
    sidecar.write_text("{}")

    found = scan_cohort(str(tmp_path))

    assert found.layout == "bids" and found.skipped == {}
    assert [case.case_id for case in found.cases] == [
        "sub-strokecase0001_ses-0001",
        "sub-strokecase0002_ses-0001",
        "sub-strokecase0003_ses-0001",
    ]
    first, _, third = found.cases
    assert (first.subject, first.session) == ("strokecase0001", "0001")
    assert first.images == {name: str(written["0001"][name]) for name in ("dwi", "adc", "flair")}
    assert first.label == str(written["0001"]["label"])
    assert sorted(third.images) == ["adc", "dwi"] and third.label is None
    assert first.problem is None
    volumes = read_case(first, inputs=ISLES22)
    assert volumes.images.shape == (3, 24, 28, 20) and volumes.label is not None
    with pytest.raises(CaseError, match="case sub-strokecase0003_ses-0001: no flair image"):
        read_case(third, inputs=ISLES22)


def test_bids_suffixes_are_case_insensitive(tmp_path: Path) -> None:
    written = write_isles22_case(tmp_path, "a")
    upper = written["dwi"].with_name("sub-a_ses-0001_DWI.nii.gz")
    written["dwi"].rename(upper)
    (case,) = load_cohort(str(tmp_path))
    assert case.images["dwi"] == str(upper) and case.images["flair"] == str(written["flair"])


def test_bad_bids_input_is_skipped_or_given_to_its_case(tmp_path: Path) -> None:
    written = write_isles22_case(tmp_path, "good")
    write_isles22_case(tmp_path, "twice", seed=1)
    anat = tmp_path / "sub-twice" / "ses-0001" / "anat"
    shutil.copy(
        anat / "sub-twice_ses-0001_FLAIR.nii.gz", anat / "sub-twice_ses-0001_run-2_FLAIR.nii.gz"
    )
    orphan = tmp_path / "derivatives" / "sub-gone" / "ses-0001" / "sub-gone_ses-0001_msk.nii.gz"
    shutil.copy(written["label"], orphan.parent.mkdir(parents=True) or orphan)
    stray = tmp_path / "sub-good" / "ses-0001" / "anat" / "notes.txt"
    stray.write_text("seen on the scanner console")
    badly_named = tmp_path / "sub-good" / "ses-0001" / "anat" / "flair copy.nii.gz"
    shutil.copy(written["flair"], badly_named)
    brain = written["dwi"].with_name("sub-good_ses-0001_desc-brain_mask.nii.gz")
    shutil.copy(written["label"], brain)
    derived = (
        tmp_path
        / "derivatives"
        / "sub-good"
        / "ses-0001"
        / "sub-good_ses-0001_desc-preproc_dwi.nii.gz"
    )
    shutil.copy(written["dwi"], derived)

    found = scan_cohort(str(tmp_path))

    assert [case.case_id for case in found.cases] == ["sub-good_ses-0001", "sub-twice_ses-0001"]
    good, twice = found.cases
    assert good.problem is None and read_case(good, inputs=ISLES22).label is not None
    assert twice.problem.startswith("case sub-twice_ses-0001: 2 flair files (")
    assert "run-2_FLAIR" in twice.problem
    with pytest.raises(CaseError, match="2 flair files"):
        read_case(twice, inputs=ISLES22)
    relative = lambda path: str(path.relative_to(tmp_path))  # noqa: E731
    assert found.skipped == {
        relative(orphan): "lesion mask without images of its subject/session",
        relative(stray): "not a NIfTI image",
        relative(
            badly_named
        ): "not a BIDS image name (sub-<label>[_ses-<label>]_…_<suffix>.nii.gz)",
        relative(brain): "not a lesion mask (no _msk, label-L or desc-*lesion*)",
        relative(derived): "derivative image that is not a lesion mask",
    }


def test_atlas_r2(tmp_path: Path) -> None:
    first = write_atlas_case(tmp_path / "ATLAS_2" / "Training" / "R001", "r001s001")
    write_atlas_case(tmp_path / "ATLAS_2" / "Training" / "R001", "r001s002", seed=1)
    found = scan_cohort(str(tmp_path))
    assert found.layout == "bids" and found.skipped == {}
    case = found.cases[0]
    assert case.case_id == "sub-r001s001_ses-1" and case.images == {"t1": str(first["t1"])}
    assert case.label == str(first["label"])
    volumes = read_case(case, inputs=Inputs(("t1",), "t1"))
    assert volumes.images.shape[0] == 1 and volumes.label.any()


def test_bids_without_sessions(tmp_path: Path) -> None:
    written = write_isles22_case(tmp_path / "source", "x", sequences=("dwi",), label=False)
    target = tmp_path / "bids" / "sub-07" / "anat" / "sub-07_T1w.nii.gz"
    target.parent.mkdir(parents=True)
    shutil.copy(written["dwi"], target)
    (case,) = load_cohort(str(tmp_path / "bids"))
    assert case.case_id == "sub-07" and case.subject == "07" and case.session is None
    assert case.images == {"t1": str(target)}


def test_nnunet_raw(tmp_path: Path) -> None:
    write_nnunet(tmp_path, ("stroke_001", "stroke_002"), ("stroke_101",))
    found = scan_cohort(str(tmp_path))
    assert found.layout == "nnunet" and found.skipped == {}
    assert [case.case_id for case in found.cases] == ["stroke_001", "stroke_002", "stroke_101"]
    first, _, test = found.cases
    assert first.images == {
        "dwi": str(tmp_path / "imagesTr" / "stroke_001_0000.nii.gz"),
        "adc": str(tmp_path / "imagesTr" / "stroke_001_0001.nii.gz"),
        "flair": str(tmp_path / "imagesTr" / "stroke_001_0002.nii.gz"),
    }
    assert first.label == str(tmp_path / "labelsTr" / "stroke_001.nii.gz")
    assert test.label is None and sorted(test.images) == ["adc", "dwi", "flair"]
    volumes = read_case(first, inputs=Inputs(("flair", "dwi"), "flair"))
    assert volumes.images.shape[0] == 2


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ({"0": "T1w", "1": "T2", "2": "FLAIR"}, ["flair", "t1", "t2"]),
        ({"0": "T1", "1": "t2w", "2": "ADC"}, ["adc", "t1", "t2"]),
    ],
)
def test_nnunet_channel_names_map_to_sequences(tmp_path: Path, names, expected) -> None:
    write_nnunet(tmp_path, ("a",), channel_names=names)
    (case,) = load_cohort(str(tmp_path))
    assert sorted(case.images) == expected


def test_nnunet_v1_modality_key(tmp_path: Path) -> None:
    write_nnunet(tmp_path, ("a",))
    description = json.loads((tmp_path / "dataset.json").read_text())
    description["modality"] = description.pop("channel_names")
    (tmp_path / "dataset.json").write_text(json.dumps(description))
    assert sorted(load_cohort(str(tmp_path))[0].images) == ["adc", "dwi", "flair"]


def _not_both(folder: str, names: list[str]) -> list[str]:
    """shutil.copytree's ignore: every file but case "both"'s."""
    return [name for name in names if not name.startswith("both_")]


def test_bad_nnunet_input_is_skipped_or_given_to_its_case(tmp_path: Path) -> None:
    write_nnunet(tmp_path, ("ok", "short", "both"))
    shutil.copytree(tmp_path / "imagesTr", tmp_path / "imagesTs", ignore=_not_both)
    (tmp_path / "imagesTr" / "short_0002.nii.gz").unlink()  # no FLAIR
    extra = tmp_path / "imagesTr" / "ok_0003.nii.gz"
    shutil.copy(tmp_path / "imagesTr" / "ok_0000.nii.gz", extra)
    (tmp_path / "imagesTr" / "readme.txt").write_text("stray")
    orphan = tmp_path / "labelsTr" / "gone.nii.gz"
    shutil.copy(tmp_path / "labelsTr" / "ok.nii.gz", orphan)

    found = scan_cohort(str(tmp_path))

    assert [case.case_id for case in found.cases] == ["both", "ok", "short"]
    both, ok, short = found.cases
    assert both.label == str(tmp_path / "labelsTr" / "both.nii.gz")
    assert sorted(short.images) == ["adc", "dwi"] and ok.problem is None
    with pytest.raises(CaseError, match="case short: no flair image"):
        read_case(short, inputs=Inputs(("dwi", "flair"), "dwi"))
    assert found.skipped == {
        "imagesTr/ok_0003.nii.gz": "channel 0003 is not in dataset.json channel_names",
        "imagesTr/readme.txt": "not a channel file <CASE>_<XXXX>.nii.gz",
        "imagesTs/both_0000.nii.gz": "case both is also in imagesTr/",
        "imagesTs/both_0001.nii.gz": "case both is also in imagesTr/",
        "imagesTs/both_0002.nii.gz": "case both is also in imagesTr/",
        "labelsTr/gone.nii.gz": "label without images",
    }


@pytest.mark.parametrize(
    "text", ["{not json", '{"labels": {}}', '{"channel_names": {"0": "T1 pre"}}']
)
def test_unreadable_dataset_json_names_the_file(tmp_path: Path, text: str) -> None:
    write_nnunet(tmp_path, ("a",))
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(ManifestError, match=r"dataset\.json: not an nnU-Net dataset\.json"):
        scan_cohort(str(tmp_path))


def test_detect_layout() -> None:
    assert detect_layout({"dataset.json": "x", "imagesTr/a_0000.nii.gz": "x"}) == "nnunet"
    assert detect_layout({"imagesTr/a_0000.nii.gz": "x"}) == "isles2015"
    assert detect_layout({"rawdata/sub-1/ses-1/sub-1_ses-1_dwi.nii.gz": "x"}) == "bids"
    assert detect_layout({"sub-1/anat/sub-1_T1w.nii.gz": "x"}) == "bids"
    assert detect_layout({"1/VSD.Brain.XX.O.MR_T1.1/VSD.Brain.XX.O.MR_T1.1.mha": "x"}) == (
        "isles2015"
    )


def test_discovery_over_s3(tmp_path: Path, s3_bucket: str, s3_options: dict) -> None:
    """The same BIDS and nnU-Net folders, uploaded to the local S3 server, give the same
    cases with s3:// URIs that read as the local files."""
    import s3fs

    _isles22(tmp_path / "isles22")
    write_nnunet(tmp_path / "nnunet", ("stroke_001",), ("stroke_101",))
    fs = s3fs.S3FileSystem(**s3_options)
    for name in ("isles22", "nnunet"):
        fs.put(str(tmp_path / name) + "/", f"{s3_bucket}/{name}/", recursive=True)
        local = scan_cohort(str(tmp_path / name))
        remote = scan_cohort(f"{s3_bucket}/{name}", s3_options)
        assert remote.layout == local.layout and remote.skipped == local.skipped
        assert [c.case_id for c in remote.cases] == [c.case_id for c in local.cases]
        for here, there in zip(local.cases, remote.cases, strict=True):
            assert there.images == {
                seq: uri.replace(str(tmp_path), s3_bucket) for seq, uri in here.images.items()
            }
    case = scan_cohort(f"{s3_bucket}/isles22", s3_options).cases[0]
    volumes = read_case(case, s3_options, inputs=ISLES22)
    assert volumes.images.shape == (3, 24, 28, 20)


def test_list_files_is_relative_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c.txt").write_text("x")
    (tmp_path / "d.txt").write_text("x")
    assert list_files(str(tmp_path)) == {
        "a/b/c.txt": str(tmp_path / "a" / "b" / "c.txt"),
        "d.txt": str(tmp_path / "d.txt"),
    }
