"""Tests for stroke_ray.report: the self-contained HTML report of segmentation and experiments."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from helpers import affine_for
from PIL import Image
from scipy import ndimage

from stroke_ray.case_outputs import CaseMasks, case_rows
from stroke_ray.cli import main
from stroke_ray.cohort import load_cohort
from stroke_ray.config import PLANES
from stroke_ray.demo import generate_cohort
from stroke_ray.io import image_like, write_nifti_atomic
from stroke_ray.outputs import (
    consolidate,
    mask_uri,
    source_order,
    source_summary,
    write_case_rows,
)
from stroke_ray.qc import agreement_scores
from stroke_ray.report import ReportError, write_report
from stroke_ray.report.cases import ras_views
from stroke_ray.report.figures import slice_centre
from stroke_ray.volumes import CaseVolumes, read_case

SHAPE = (32, 32, 24)
UNLABELLED = "demo_003"
BROKEN = "demo_004"
ERROR_MESSAGE = (
    f"case {BROKEN}: dwi {BROKEN}/{BROKEN}_dwi.nii.gz: invalid NIfTI "
    "(HeaderDataError: <b>sizeof_hdr</b> should be 348)"
)
PNG_SOURCE = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
RESOURCE = re.compile(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', re.IGNORECASE)
CASE_ANCHOR = re.compile(r'<figure id="case-([^"]+)"')


def _cohort(root: Path) -> Path:
    """Demo cohort of five cases; the fourth loses its label, the fifth will fail."""
    manifest = generate_cohort(root, n_cases=5, shape=SHAPE, thick_fraction=0.0)
    rows = list(csv.DictReader(manifest.open()))
    for row in rows:
        if row["case_id"] == UNLABELLED:
            row["label"] = ""
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _write_run(run_dir: Path, weights: str, quality: float) -> None:
    """run.json and a three-epoch history.parquet."""
    run_dir.mkdir(parents=True)
    history = [
        {
            "plane": plane,
            "epoch": epoch,
            "train_loss": 1.5 / (epoch + 1) + 0.1 * p,
            "val_loss": 1.2 / (epoch + 1),
            "val_dice": quality * (epoch + 1) / 3 - 0.05 * p,
            "lr": 1e-3,
            "encoder_frozen": weights != "none" and epoch == 0,
        }
        for p, plane in enumerate(PLANES)
        for epoch in range(3)
    ]
    pd.DataFrame(history).to_parquet(run_dir / "history.parquet")
    run = {
        "run_id": run_dir.name,
        "config": {"weights": weights},
        "model": {"encoder_name": "resnet18"},
        "planes": {plane: {"val_dice": quality, "epochs": 3} for plane in PLANES},
    }
    (run_dir / "run.json").write_text(json.dumps(run))


def _plane_masks(label: np.ndarray, index: int) -> dict[str, np.ndarray]:
    """Three imperfect plane predictions: shifted, dilated; case 1 gets a false positive."""
    base = np.roll(label, index, axis=0)
    if index == 1:
        base[10:14, 12:16, 8:12] = 1
    return {
        "axial": base,
        "coronal": np.roll(base, 1, axis=1),
        "sagittal": ndimage.binary_dilation(base).astype(np.uint8),
    }


def _case_rows(
    volumes: CaseVolumes, index: int, out: Path, common: dict, extra_fusions: bool
) -> list[dict]:
    """Write a case's fused mask and votes; return its metric rows (+ fused_weighted/_soft),
    made by the segmentation's own per-case core from the plane masks."""
    label = volumes.label
    if label is None:
        blob = np.zeros(volumes.images.shape[1:], np.uint8)
        blob[14:18, 14:18, 10:14] = 1
    planes = _plane_masks(blob if label is None else label, index)
    planes = {name: mask.astype(np.uint8) for name, mask in planes.items()}
    votes = sum(planes.values()).astype(np.uint8)
    fused = (votes >= 2).astype(np.uint8)
    case_id = volumes.case_id
    write_nifti_atomic(image_like(fused, volumes.header), mask_uri(str(out), case_id))
    write_nifti_atomic(
        image_like(votes, volumes.header), mask_uri(str(out), case_id, "qc", "_votes")
    )
    masks = {**planes, "fused": fused}
    if extra_fusions:
        masks |= {"fused_weighted": (votes >= 1).astype(np.uint8), "fused_soft": fused}
    result = CaseMasks(
        masks=masks,
        votes=votes,
        plane_agreement=agreement_scores(planes, votes, fused),
        brain_voxels=int(np.any(volumes.images != 0, axis=0).sum()),
    )
    rows = case_rows(case_id, result, label, volumes.spacing_mm, common)
    for row in rows:
        row["seconds"] = 1.0
    return rows


def _write_segmentation(
    out: Path, manifest: Path, run_dir: Path, extra_fusions: bool = False
) -> None:
    """A segmentation folder as `stroke-ray segment` leaves it (majority fusion)."""
    common = {"run_id": run_dir.name, "fusion": "majority"}
    for index, case in enumerate(load_cohort(str(manifest))):
        if case.case_id == BROKEN:
            rows = [{**common, "case_id": BROKEN, "source": "fused", "status": "error"}]
            rows[0]["error"] = ERROR_MESSAGE
        else:
            rows = _case_rows(read_case(case), index, out, common, extra_fusions)
        write_case_rows(rows, str(out), case.case_id)
    consolidate(str(out))
    settings = {"cohort": str(manifest), "model": str(run_dir), "fusion": "majority"}
    (out / "segment.json").write_text(json.dumps({**settings, "run_id": run_dir.name}))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return _cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory, manifest) -> Path:
    root = tmp_path_factory.mktemp("segmentation")
    _write_run(root / "run", "imagenet", 0.8)
    _write_segmentation(root / "out", manifest, root / "run")
    return root / "out"


@pytest.fixture(scope="module")
def report(segmentation) -> str:
    path = write_report(str(segmentation))
    return Path(path).read_text()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, manifest) -> Path:
    """Two arms (scratch listed first), each segmented once with all three fusion modes."""
    root = tmp_path_factory.mktemp("experiment")
    arms, frames = [], []
    for label, weights in (("scratch", "none"), ("imagenet", "imagenet")):
        run_dir = root / "runs" / label / "fold0"
        _write_run(run_dir, weights, 0.5 if weights == "none" else 0.8)
        segment_dir = f"segment/{label}/fold0"  # relative to the experiment folder
        _write_segmentation(root / segment_dir, manifest, run_dir, extra_fusions=True)
        metrics = pd.read_parquet(root / segment_dir / "metrics.parquet")
        frames.append(metrics.assign(weights=label, fold=0))
        arms.append(
            {
                "weights": label,
                "weights_source": weights,
                "weights_description": f"{label} weights",
                "fold": 0,
                "run_dir": str(run_dir),
                "segment_dirs": dict.fromkeys(("majority", "weighted", "soft"), segment_dir),
            }
        )
    metrics = pd.concat(frames, ignore_index=True)
    metrics.to_parquet(root / "metrics.parquet")
    ok = metrics[metrics["status"] == "ok"]
    table = ok.groupby(["weights", "source"])["dice"].agg(dice_mean="mean", dice_sd="std")
    table.reset_index().assign(cases=3).to_csv(root / "table.csv", index=False)
    experiment = {"cohort": str(manifest), "folds": [{}], "weights": ["none", "imagenet"]}
    (root / "experiment.json").write_text(json.dumps({**experiment, "arms": arms}))
    return root


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in PNG_SOURCE.findall(page)]


def test_segmentation_report_is_self_contained(report):
    assert RESOURCE.search(report) is None
    assert "<link" not in report and "@import" not in report
    assert "<script>" in report and "function sortTable" in report


def test_segmentation_report_has_every_figure(report):
    # 4 case pictures (3 labelled + 1 unlabelled; the error case has none) + box + curves + QC
    assert report.count("<img") == 7
    images = _pngs(report)
    assert len(images) == 7
    for png in images:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_case_pictures_fit_the_size_budget(report):
    # 50 case pictures must stay under 15 MB of base64 (4/3 of the PNG bytes)
    case_pngs = sorted(_pngs(report), key=len)
    assert max(len(png) for png in case_pngs) * 4 / 3 * 50 < 15e6


def test_segmentation_report_lists_cases_worst_first(report, segmentation):
    metrics = pd.read_parquet(segmentation / "metrics.parquet")
    for case_id in metrics["case_id"].unique():
        assert case_id in report
    fused = metrics[(metrics["source"] == "fused") & (metrics["status"] == "ok")]
    worst_first = fused.sort_values("dice")["case_id"].tolist()
    assert CASE_ANCHOR.findall(report) == [*worst_first, UNLABELLED]
    for case_id in [*worst_first, UNLABELLED]:
        assert f'href="#case-{case_id}"' in report


def test_report_states_run_and_weights(report, manifest):
    assert "imagenet: ImageNet-pretrained encoder" in report
    assert html.escape(str(manifest)) in report
    assert "5 (3 ok, 1 unlabelled, 1 errors)" in report
    assert "radiological convention" in report
    assert "Pearson r = " in report


def test_error_row_shows_its_message(report):
    assert html.escape(ERROR_MESSAGE) in report
    assert "<b>sizeof_hdr</b>" not in report
    row = re.search(rf'<tr class="error"><td>{BROKEN}</td><td>error</td>', report)
    assert row is not None
    assert f'id="case-{BROKEN}"' not in report


def test_source_summary_pools_counts(segmentation):
    metrics = pd.read_parquet(segmentation / "metrics.parquet")
    summary = source_summary(metrics).set_index("source")
    fused = metrics[(metrics["source"] == "fused") & (metrics["status"] == "ok")]
    tp, fp, fn = (int(fused[c].sum()) for c in ("tp", "fp", "fn"))
    assert summary.loc["fused", "cases"] == 3
    assert summary.loc["fused", "dice_pooled"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert summary.loc["fused", "dice_sd"] == pytest.approx(fused["dice"].std())
    assert list(summary.index) == [*PLANES, "fused"]


def test_source_order():
    sources = {"fused_soft", "sagittal", "fused", "axial", "fused_weighted", "coronal", "x"}
    assert source_order(sources) == [*PLANES, "fused", "fused_weighted", "fused_soft", "x"]


def test_max_cases_limits_pictures(segmentation, tmp_path):
    page = Path(write_report(str(segmentation), str(tmp_path / "r.html"), max_cases=1)).read_text()
    metrics = pd.read_parquet(segmentation / "metrics.parquet")
    fused = metrics[(metrics["source"] == "fused") & (metrics["status"] == "ok")]
    worst = fused.sort_values("dice")["case_id"].iloc[0]
    assert CASE_ANCHOR.findall(page) == [worst]
    assert page.count("<img") == 4
    assert page.count('href="#case-') == 1


def test_report_reads_and_writes_uris(segmentation):
    """Outputs on a non-local filesystem (fsspec memory://) are read and written alike."""
    fs = fsspec.filesystem("memory")
    for path in segmentation.rglob("*"):
        if path.is_file() and path.name != "report.html":
            fs.pipe(f"/report-test/{path.relative_to(segmentation)}", path.read_bytes())
    try:
        uri = write_report("memory://report-test", max_cases=2)
        assert uri == "memory://report-test/report.html"
        page = fs.cat(uri).decode()
        assert fs.glob("/report-test/report.html.tmp-*") == []
    finally:
        fs.rm("/report-test", recursive=True)
    assert page.count("<img") == 5 and CASE_ANCHOR.findall(page)[0] == "demo_001"


def test_report_rejects_a_folder_without_metrics(tmp_path):
    with pytest.raises(ReportError, match="no metrics.parquet"):
        write_report(str(tmp_path))
    assert main(["report", str(tmp_path)]) == 2


def test_experiment_report(experiment):
    page = Path(write_report(str(experiment))).read_text()
    assert "<td>TL (imagenet)</td>" in page and "<td>scratch</td>" in page
    assert "transfer learning (TL) vs scratch" in page
    assert "<th>dice mean ± sd</th>" in page and "<th>dice_sd</th>" not in page
    assert "Cases of TL (imagenet), majority fusion" in page
    # 4 case pictures of the ImageNet majority arm + box + curves + QC
    assert page.count("<img") == 7
    assert RESOURCE.search(page) is None
    assert html.escape(ERROR_MESSAGE) in page


def test_ras_views_reorient_and_keep_spacing(manifest):
    """A PSR-ordered, anisotropic copy of a case shows exactly as the RAS original."""
    case = load_cohort(str(manifest))[0]
    ras = read_case(case)
    prediction = np.roll(ras.label, 2, axis=0)

    def to_psr(volume: np.ndarray) -> np.ndarray:
        return np.flip(np.moveaxis(volume, (-3, -2, -1), (-1, -3, -2)), axis=-3).copy()

    source = CaseVolumes(
        case_id=case.case_id,
        images=to_psr(ras.images),
        sequences=ras.sequences,
        reference=ras.reference,
        label=to_psr(ras.label),
        affine=affine_for("PSR", zooms=(2.0, 3.0, 1.0)),
        header=ras.header,
    )
    images, truth, shown, spacing = ras_views(source, to_psr(prediction))
    assert spacing == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(images["FLAIR"], ras.images[2])
    np.testing.assert_array_equal(images["DWI"], ras.images[3])
    np.testing.assert_array_equal(truth, ras.label)
    np.testing.assert_array_equal(shown, prediction)


def test_slice_centre():
    empty = np.zeros((10, 12, 8), np.uint8)
    assert slice_centre(None, empty) == (5, 6, 4)
    truth, prediction = empty.copy(), empty.copy()
    truth[2:5, 2:5, 2:5] = 1
    assert slice_centre(truth, prediction) == (3, 3, 3)
    # two lesions: the centre of mass (4.8, 3, 3) lies between them; snap onto a lesion
    prediction[7:9, 2:5, 2:5] = 1
    centre = slice_centre(truth, prediction)
    assert centre == (4, 3, 3) and truth[centre]


def _chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Run headless Chromium offline with a throwaway profile."""
    command = [
        shutil.which("chromium"),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        *arguments,
    ]
    return subprocess.run(command, check=True, timeout=120, capture_output=True, text=True)


needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium")


@needs_chromium
def test_report_renders_in_chromium(segmentation, report, tmp_path):
    screenshot = tmp_path / "report.png"
    page = f"file://{segmentation / 'report.html'}"
    _chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,2000", page)
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20


@needs_chromium
def test_case_table_sorts_in_chromium(report, tmp_path):
    """Two clicks on 'fused Dice' sort the cases by descending Dice, missing values last."""
    probe = (
        "<script>const th = [...document.querySelectorAll('table.sortable th')]"
        ".find((t) => t.textContent === 'fused Dice'); th.click(); th.click();"
        "document.body.dataset.probe = [...th.closest('table').tBodies[0].rows]"
        ".map((r) => r.cells[0].textContent).join(',');</script></body>"
    )
    page = tmp_path / "probe.html"
    page.write_text(report.replace("</body>", probe))
    dom = _chromium(tmp_path, "--dump-dom", f"file://{page}").stdout
    order = re.search(r'data-probe="([^"]+)"', dom).group(1).split(",")
    assert order == ["demo_000", "demo_002", "demo_001", BROKEN, UNLABELLED]


def test_segmentation_report_shows_throughput_and_cost(segmentation, report, tmp_path):
    from stroke_ray.throughput import throughput_record

    assert "Throughput and cost" in report and "no throughput.json" in report
    results = [
        {"case_id": "a", "status": "ok", "read_seconds": 1.5, "predict_seconds": 20.0,
         "write_seconds": 0.5, "cpu_seconds": 40.0, "slices": 470},
    ]  # fmt: skip
    record = throughput_record(
        results, wall_seconds=30.0, cluster={"CPU": 2.0}, nodes=1, num_actors=1,
        gpus_per_actor=0.0, price_per_hour=3.2,
        machine={"cpu_model": "AMD EPYC", "cpu_flags": ["avx512_bf16"], "precision": "bf16"},
    )  # fmt: skip
    folder = tmp_path / "out"
    shutil.copytree(segmentation, folder)
    (folder / "throughput.json").write_text(json.dumps(record))
    page = Path(write_report(str(folder), max_cases=0)).read_text()
    section = page[page.index("Throughput and cost") :]
    assert "120.0" in section  # cases per hour
    assert "1.5 s / 20.0 s / 0.5 s" in section
    assert "AMD EPYC (bf16" in section and "avx512_bf16" in section
    assert f"{record['cost_per_1000_volumes']:.2f}" in section
