"""Tests for stroke_ray.cohort: manifests, ISLES 2015 SISS discovery and manifest errors."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from helpers import save_nifti, write_case

import stroke_ray.cohort as cohort_module
import stroke_ray.io as io_module
from stroke_ray.cohort import (
    MANIFEST_COLUMNS,
    SEQUENCES,
    Case,
    Cohort,
    ManifestError,
    cases_to_frame,
    describe_cohort,
    load_cohort,
    read_manifest,
    scan_cohort,
    write_manifest,
)
from stroke_ray.volumes import CaseError, read_case

ISLES_TAGS = {"t1": "MR_T1", "t2": "MR_T2", "flair": "MR_Flair", "dwi": "MR_DWI"}


def _write_csv(path: Path, rows: list[dict[str, str]], header: list[str] | None = None) -> Path:
    """Write manifest rows as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header or list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(case_id: str, folder: str, label: str | None = "label.nii.gz") -> dict[str, str]:
    """A manifest row pointing at ``folder/<sequence>.nii.gz``."""
    row = {name: f"{folder}/{name}.nii.gz" for name in SEQUENCES}
    return {"case_id": case_id, **row, "label": f"{folder}/{label}" if label else ""}


def test_csv_relative_absolute_and_empty_label(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    elsewhere = tmp_path / "elsewhere"
    manifest = _write_csv(
        root / "manifest.csv",
        [
            _row("case01", "case01"),
            _row("case02", str(elsewhere / "case02"), label=None),
            _row("case03", "./sub/../case03"),
        ],
    )
    cases = read_manifest(str(manifest))
    assert [case.case_id for case in cases] == ["case01", "case02", "case03"]
    first, second, third = cases
    for name in SEQUENCES:
        assert Path(first.images[name]) == root / "case01" / f"{name}.nii.gz"
        assert Path(second.images[name]) == elsewhere / "case02" / f"{name}.nii.gz"
        assert Path(third.images[name]) == root / "case03" / f"{name}.nii.gz"
    assert Path(first.label) == root / "case01" / "label.nii.gz"
    assert second.label is None


def test_csv_paths_resolve_to_readable_files(tmp_path: Path) -> None:
    written = write_case(tmp_path / "cohort", "case01")
    manifest = _write_csv(tmp_path / "cohort" / "manifest.csv", [_row("case01", "case01")])
    (case,) = load_cohort(str(manifest))
    assert case == written
    assert read_case(case).images.shape[0] == 4


def test_csv_header_with_spaces(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id, t1, t2, flair, dwi, label\nc1, c1/t1.nii, c1/t2.nii, c1/flair.nii, c1/dwi.nii, \n"
    )
    (case,) = read_manifest(str(manifest))
    assert Path(case.images["flair"]) == tmp_path / "c1" / "flair.nii"
    assert case.label is None


def test_csv_without_label_column(tmp_path: Path) -> None:
    rows = [{k: v for k, v in _row("c1", "c1").items() if k != "label"}]
    manifest = _write_csv(tmp_path / "m.csv", rows, header=list(MANIFEST_COLUMNS[:-1]))
    (case,) = read_manifest(str(manifest))
    assert case.label is None


def test_csv_keeps_leading_zeros_in_ids(tmp_path: Path) -> None:
    manifest = _write_csv(tmp_path / "m.csv", [_row("007", "a")])
    assert read_manifest(str(manifest))[0].case_id == "007"


def test_parquet_manifest(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        [
            {**_row("p1", "p1"), "label": None},
            {**_row("p2", "/abs/p2"), "label": "s3://bucket/p2/label.nii.gz"},
        ]
    )
    frame.to_parquet(tmp_path / "manifest.parquet")
    first, second = load_cohort(str(tmp_path))
    assert Path(first.images["dwi"]) == tmp_path / "p1" / "dwi.nii.gz"
    assert first.label is None
    assert second.images["t2"] == "/abs/p2/t2.nii.gz"
    assert second.label == "s3://bucket/p2/label.nii.gz"


def test_cases_to_frame_round_trip(tmp_path: Path) -> None:
    cases = [
        Case("a", {"t1": "/x/t1", "t2": "/x/t2", "flair": "/x/f", "dwi": "/x/d"}, None),
        Case("b", {"t1": "/y/t1", "t2": "/y/t2", "flair": "/y/f", "dwi": "/y/d"}, "/y/l"),
    ]
    cases_to_frame(cases).to_parquet(tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet")) == cases


def test_load_cohort_prefers_manifest_csv(tmp_path: Path) -> None:
    _write_csv(tmp_path / "manifest.csv", [_row("only", "only")])
    _write_isles_case(tmp_path, "1", ".nii")
    assert [case.case_id for case in load_cohort(str(tmp_path))] == ["only"]


def test_load_cohort_missing(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        load_cohort(str(tmp_path / "nothing.csv"))


def _write_image(path: Path, suffix: str, high: int, seed: int) -> None:
    """Write a tiny int16 volume with values in [high // 2, high] as NIfTI or MetaImage."""
    rng = np.random.default_rng(seed)
    if suffix == ".mha":
        path.parent.mkdir(parents=True, exist_ok=True)
        array = rng.integers(high // 2, high + 1, (6, 5, 4)).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    else:
        save_nifti(rng.integers(high // 2, high + 1, (4, 5, 6)).astype(np.int16), np.eye(4), path)


def _write_isles_case(root: Path, case_id: str, suffix: str, *, label: bool = True) -> None:
    """Write one ISLES 2015 SISS case folder (``VSD.Brain.XX.O.MR_*.<id>/…``)."""
    items = dict(ISLES_TAGS)
    if label:
        items["label"] = "OT"
    for offset, (name, tag) in enumerate(items.items()):
        prefix = "VSD.Brain_3more.XX.O" if name == "label" else "VSD.Brain.XX.O"
        stem = f"{prefix}.{tag}.{1000 * int(case_id) + offset}"
        high = 1 if name == "label" else 100
        _write_image(root / case_id / stem / f"{stem}{suffix}", suffix, high, offset)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha"])
def test_discover_isles_folder(tmp_path: Path, suffix: str) -> None:
    root = tmp_path / "ISLES2015.OT.SISS"  # a tag in the root path must not confuse matching
    _write_isles_case(root, "1", suffix)
    _write_isles_case(root, "2", suffix, label=False)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a case")

    cases = load_cohort(str(root))

    assert [case.case_id for case in cases] == ["1", "2"]
    for case in cases:
        for name, tag in ISLES_TAGS.items():
            uri = case.images[name]
            assert Path(uri).parent.parent == root / case.case_id
            assert f".{tag}." in Path(uri).name and uri.endswith(suffix)
    assert Path(cases[0].label).name.startswith("VSD.Brain_3more.XX.O.OT.")
    assert cases[1].label is None
    assert read_case(cases[0]).label is not None


def test_discover_isles_missing_sequence_named(tmp_path: Path) -> None:
    """A case without DWI is listed without it; reading it for the paper's model fails it
    alone, naming the sequence (the cohort is not stopped)."""
    _write_isles_case(tmp_path, "3", ".nii")
    _write_isles_case(tmp_path, "4", ".nii")
    for item in (tmp_path / "3").glob("*MR_DWI*"):
        for file in item.iterdir():
            file.unlink()
        item.rmdir()
    short, full = load_cohort(str(tmp_path))
    assert sorted(short.images) == ["flair", "t1", "t2"]
    with pytest.raises(CaseError, match=r"case 3: no dwi image"):
        read_case(short)
    assert read_case(full).images.shape[0] == 4


def test_discover_isles_skips_bad_folder_names(tmp_path: Path) -> None:
    _write_isles_case(tmp_path, "1", ".nii")
    _write_isles_case(tmp_path, "2", ".nii")
    (tmp_path / "1").rename(tmp_path / "case one")
    found = scan_cohort(str(tmp_path))
    assert [case.case_id for case in found.cases] == ["2"]
    assert re.search("case id 'case one' is not allowed", found.skipped["case one/"])


def test_discover_isles_records_what_it_skips(tmp_path: Path) -> None:
    _write_isles_case(tmp_path, "1", ".nii")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a case")
    (tmp_path / "index.txt").write_text("a stray file")
    found = scan_cohort(str(tmp_path))
    assert found.layout == "isles2015" and [case.case_id for case in found.cases] == ["1"]
    assert found.skipped == {
        "notes/": "no ISLES image (…MR_<sequence>…) inside",
        "index.txt": "stray file beside the case folders",
    }


def test_discover_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no cases found"):
        load_cohort(str(tmp_path))


def test_duplicate_case_ids_named(tmp_path: Path) -> None:
    rows = [_row("a", "a"), _row("b", "b"), _row("a", "a2"), _row("c", "c"), _row("c", "c")]
    manifest = _write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError, match=r"duplicate case_id values \['a', 'c'\]"):
        read_manifest(str(manifest))


def test_empty_manifest(tmp_path: Path) -> None:
    manifest = _write_csv(tmp_path / "m.csv", [])
    with pytest.raises(ManifestError, match="no cases"):
        read_manifest(str(manifest))
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(ManifestError, match="blank.csv"):
        read_manifest(str(tmp_path / "blank.csv"))


def test_missing_column(tmp_path: Path) -> None:
    """A manifest without a dwi column lists cases without DWI; a model that reads DWI
    fails each such case, naming the sequence."""
    header = [column for column in MANIFEST_COLUMNS if column != "dwi"]
    rows = [{k: v for k, v in _row("a", "a").items() if k != "dwi"}]
    manifest = _write_csv(tmp_path / "m.csv", rows, header=header)
    (case,) = read_manifest(str(manifest))
    assert sorted(case.images) == ["flair", "t1", "t2"]
    with pytest.raises(CaseError, match=r"case a: no dwi image \(the case has flair, t1, t2"):
        read_case(case)


def test_manifest_without_case_id_or_sequences(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,t1\nx,x.nii\n")
    with pytest.raises(ManifestError, match="need a case_id column"):
        read_manifest(str(tmp_path / "a.csv"))
    (tmp_path / "b.csv").write_text("case_id,label\nx,x.nii\n")
    with pytest.raises(ManifestError, match="need a case_id column and a column per sequence"):
        read_manifest(str(tmp_path / "b.csv"))
    (tmp_path / "c.csv").write_text("case_id,T1 pre\nx,x.nii\n")
    with pytest.raises(ManifestError, match="'t1 pre' is not a sequence name"):
        read_manifest(str(tmp_path / "c.csv"))
    (tmp_path / "d.csv").write_text("case_id,T1w,t1\nx,x.nii,y.nii\n")
    with pytest.raises(ManifestError, match=r"repeated columns \['t1'\]"):
        read_manifest(str(tmp_path / "d.csv"))


def test_empty_sequence_entry(tmp_path: Path) -> None:
    """An empty cell: the case has no such sequence (fine for a model that does not read it)."""
    manifest = _write_csv(tmp_path / "m.csv", [{**_row("a", "a"), "t2": "  "}])
    (case,) = read_manifest(str(manifest))
    assert "t2" not in case.images
    with pytest.raises(CaseError, match="case a: no t2 image"):
        read_case(case)


@pytest.mark.parametrize("entry", ["../../etc/passwd", "a/../../../etc/passwd", "..\\..\\x.nii"])
def test_escaping_path_is_the_case_problem_and_nothing_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    """An escaping entry no longer stops the cohort (ManifestError): it fails its own case,
    which then becomes one error row, and its files are never opened."""
    written = write_case(tmp_path / "cohort", "b")
    rows = [{**_row("a", "a"), "flair": entry}, _row("b", "b")]
    manifest = _write_csv(tmp_path / "cohort" / "m.csv", rows)
    read_uris: list[str] = []
    real_read_bytes = io_module.read_bytes

    def recording_read_bytes(uri: str, storage_options: object = None) -> bytes:
        """Record every file the cohort and image readers read."""
        read_uris.append(uri)
        return real_read_bytes(uri, storage_options)

    monkeypatch.setattr(cohort_module, "read_bytes", recording_read_bytes)
    monkeypatch.setattr(io_module, "read_bytes", recording_read_bytes)
    escaping, good = load_cohort(str(manifest))
    assert read_uris == [str(manifest)]
    assert escaping.problem is not None
    assert re.fullmatch(r"case a: flair path .* escapes the cohort folder .*", escaping.problem)
    assert escaping.images["flair"] == entry  # left unresolved
    assert good.problem is None and good == written
    with pytest.raises(CaseError, match=r"case a: flair path .* escapes the cohort folder"):
        read_case(escaping)
    assert read_uris == [str(manifest)]
    assert read_case(good).label is not None  # the other case reads as before
    assert len(read_uris) > 1


def test_case_dict_round_trip_keeps_the_problem() -> None:
    images = {"t1": "/t1", "t2": "/t2", "flair": "/f", "dwi": "/d"}
    case = Case("a", images, None, problem="case a: bad")
    assert Case.from_dict({**case.to_dict(), "work": "ignored"}) == case
    assert Case.from_dict({k: v for k, v in case.to_dict().items() if k != "problem"}) == (
        Case("a", images, None)
    )


def test_missing_case_id_in_parquet_rejected(tmp_path: Path) -> None:
    pd.DataFrame([{**_row("x", "x"), "case_id": None}]).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="case id '' is not allowed"):
        read_manifest(str(tmp_path / "m.parquet"))


@pytest.mark.parametrize(
    "case_id", ["a/b", "..", "a..b", "a\x00b", ".hidden", "-x", "a b", "tab\tid", "é"]
)
def test_bad_case_ids_rejected(tmp_path: Path, case_id: str) -> None:
    pd.DataFrame([_row(case_id, "x")]).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="is not allowed"):
        read_manifest(str(tmp_path / "m.parquet"))


def test_case_id_with_slash_in_csv(tmp_path: Path) -> None:
    manifest = _write_csv(tmp_path / "m.csv", [_row("../evil", "x")])
    with pytest.raises(ManifestError, match="is not allowed"):
        read_manifest(str(manifest))


def test_relative_manifest_gives_absolute_paths(tmp_path, monkeypatch):
    """Ray workers do not share the driver's working directory: entries must be absolute."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    (folder / "manifest.csv").write_text(
        "case_id,t1,t2,flair,dwi,label\nc1,a/t1.nii,a/t2.nii,a/flair.nii,a/dwi.nii,\n"
    )
    monkeypatch.chdir(tmp_path)
    (case,) = load_cohort("cohort/manifest.csv")
    assert case.images["t1"] == str(folder / "a" / "t1.nii")


def test_describe_cohort_counts_sequences_labels_problems_and_skips() -> None:
    cases = [
        Case("a", {"dwi": "/a/dwi", "adc": "/a/adc"}, "/a/label", problem="bad header"),
        Case("b", {"dwi": "/b/dwi"}, None, problem="case b: 2 dwi files (x, y); keep one"),
    ]
    found = Cohort("manifest", "m.csv", cases, {"x.txt": "stray"})
    assert describe_cohort(found) == [
        "layout: manifest (m.csv)",
        "cases: 2 (1 labelled, 1 unlabelled)",
        "sequences (cases with each): adc 1, dwi 2",
        "sequence sets (cases with each): adc dwi: 1; dwi: 1",
        "cases with a problem: 2",
        "  a: bad header",
        "  case b: 2 dwi files (x, y); keep one",
        "skipped: 1",
        "  x.txt: stray",
    ]


def test_manifest_round_trip_keeps_subject_session_problem_and_other_sequences(
    tmp_path: Path,
) -> None:
    cases = [
        Case("s1", {"dwi": "/d/1", "adc": "s3://b/a1"}, "/l/1", None, "01", "a"),
        Case("s2", {"flair": "/f/2", "swi": "/s/2"}, None, "case s2: odd", "02", None),
    ]
    write_manifest(cases, str(tmp_path / "m.csv"))
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == (
        "case_id,flair,dwi,adc,swi,label,subject,session,problem"
    )
    assert read_manifest(str(tmp_path / "m.csv")) == cases
