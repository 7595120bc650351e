"""Bad cases next to good ones: each becomes one clear error row; the good cases finish."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from stroke_ray.cli import main
from stroke_ray.config import SegmentConfig
from stroke_ray.segment import segment

pytestmark = pytest.mark.slow


def _rewrite(
    path: Path, change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
) -> None:
    image = nib.load(path)
    data, affine = change(np.asarray(image.dataobj).copy(), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _nan(data, affine):
    data[data.shape[0] // 2, :, :] = np.nan
    return data, affine


def _shift(data, affine):
    affine[0, 3] += 2.5
    return data, affine


BAD_KINDS: dict[str, tuple[str, Callable[[Path], None] | None, str]] = {
    # kind: (sequence, mutation of the file, expected words in the error)
    "truncated_gz": ("t1", _truncate, "truncated"),
    "not_nifti": ("t2", lambda p: p.write_bytes(b"this is not an image" * 50), "not a NIfTI"),
    "missing_file": ("dwi", lambda p: p.unlink(), "not found"),
    "unreadable_uri": ("flair", None, "cannot read"),
    "shape_mismatch": ("t2", lambda p: _rewrite(p, lambda d, a: (d[:-2], a)), "shape"),
    "affine_mismatch": ("dwi", lambda p: _rewrite(p, _shift), "affine"),
    "nan_voxels": ("t1", lambda p: _rewrite(p, _nan), "NaN"),
    "all_zero": (
        "flair",
        lambda p: _rewrite(p, lambda d, a: (np.zeros_like(d), a)),
        "all voxels are zero",
    ),
    "four_d": ("t2", lambda p: _rewrite(p, lambda d, a: (np.stack([d, d], axis=-1), a)), "4D"),
    "label_not_binary": (
        "label",
        lambda p: _rewrite(p, lambda d, a: (d.astype(np.uint8) * 2, a)),
        "not binary",
    ),
}


@pytest.fixture(scope="module")
def messy_cohort(demo_manifest, tmp_path_factory) -> Path:
    """Two good demo cases plus one broken case per kind (copies of demo_000)."""
    root = tmp_path_factory.mktemp("messy")
    source = demo_manifest.parent
    manifest = pd.read_csv(demo_manifest)
    rows = manifest[manifest.case_id.isin(["demo_000", "demo_002"])].to_dict("records")
    for case in ("demo_000", "demo_002"):
        shutil.copytree(source / case, root / case)
    template = manifest[manifest.case_id == "demo_002"].iloc[0].to_dict()
    for kind, (sequence, mutate, _) in BAD_KINDS.items():
        shutil.copytree(source / "demo_002", root / kind)
        row = {key: value.replace("demo_002/", f"{kind}/") for key, value in template.items()}
        row["case_id"] = kind
        target = root / row[sequence]
        if mutate is None:
            row[sequence] = "nosuchprotocol://bucket/flair.nii.gz"
        else:
            mutate(target)
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_each_bad_case_is_one_error_row_and_good_cases_finish(
    ray_local, trained_run, messy_cohort, tmp_path
):
    out = tmp_path / "out"
    frame, summary = segment(
        SegmentConfig(cohort=str(messy_cohort), model=str(trained_run), out=str(out))
    )
    good = frame[frame.case_id.isin(["demo_000", "demo_002"])]
    assert len(good) == 8 and (good.status == "ok").all()
    for kind, (sequence, _, words) in BAD_KINDS.items():
        rows = frame[frame.case_id == kind]
        assert len(rows) == 1, kind
        row = rows.iloc[0]
        assert row.status == "error" and row.source == "fused", kind
        assert f"case {kind}" in row.error and sequence in row.error, row.error
        assert words.lower() in row.error.lower(), row.error
        assert not (out / "masks" / f"{kind}.nii.gz").exists()
    assert summary["status_counts"] == {"ok": 2, "unlabelled": 0, "error": len(BAD_KINDS)}


def test_cli_exit_codes_and_summary_line(ray_local, trained_run, messy_cohort, tmp_path, capsys):
    args = [
        "segment",
        "--cohort",
        str(messy_cohort),
        "--model",
        str(trained_run),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"{len(BAD_KINDS)} errors" in printed and "case truncated_gz" in printed
    assert main([*args, "--fail-on-error"]) == 1


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        (
            [{"case_id": "a"}, {"case_id": "a"}, {"case_id": "b"}, {"case_id": "b"}],
            "duplicate case_id values ['a', 'b']",
        ),
        ([], "lists no cases"),
        ([{"case_id": "../evil"}], "not allowed"),
    ],
)
def test_manifest_problems_stop_before_any_work(
    ray_local, trained_run, tmp_path, caplog, rows, words
):
    files = {
        "t1": "x/t1.nii.gz",
        "t2": "x/t2.nii.gz",
        "flair": "x/flair.nii.gz",
        "dwi": "x/dwi.nii.gz",
        "label": "",
    }
    frame = pd.DataFrame([{**files, **row} for row in rows], columns=["case_id", *files])
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            "--cohort",
            str(tmp_path / "manifest.csv"),
            "--model",
            str(trained_run),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert words in caplog.text
    assert not out.exists()
