"""A 200-case segment job with 20 broken cases: wall time, ok/error counts, peak tree RSS.

180 demo cases plus 2 broken copies per kind of fault (truncated gzip, non-NIfTI bytes,
missing file, shape mismatch, affine mismatch, NaN voxels, all-zero, 4D, non-binary label,
unreadable URI). The job must end with exactly one ``ok`` fused row per good case and one
``error`` fused row per broken case; the script exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from benchmarks.common import (
    TINY_DECODER,
    PeakRss,
    base_parser,
    load_average,
    machine_info,
    make_random_run,
    start_ray,
    workdir,
    write_results,
)
from stroke_ray.cohort import MANIFEST_COLUMNS
from stroke_ray.demo import generate_cohort
from stroke_ray.segment import SegmentConfig, segment

UNREADABLE_URI = "nosuchprotocol://x/y.nii.gz"
Change = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _rewrite(change: Change) -> Callable[[Path], None]:
    """A file mutation that rewrites the NIfTI's data and affine with ``change``."""

    def mutate(path: Path) -> None:
        image = nib.load(path)
        data, affine = change(np.asarray(image.dataobj).copy(), image.affine.copy())
        nib.save(nib.Nifti1Image(data, affine), path)

    return mutate


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data[data.shape[0] // 2] = np.nan
    return data, affine


def _shift(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    affine[0, 3] += 2.5
    return data, affine


# kind: (file changed, mutation; None = the entry becomes an unreadable URI)
FAULTS: dict[str, tuple[str, Callable[[Path], None] | None]] = {
    "truncated_gz": ("t1", _truncate),
    "not_nifti": ("t2", lambda p: p.write_bytes(b"this is not an image" * 50)),
    "missing_file": ("dwi", lambda p: p.unlink()),
    "shape_mismatch": ("t2", _rewrite(lambda d, a: (d[:-2], a))),
    "affine_mismatch": ("dwi", _rewrite(_shift)),
    "nan_voxels": ("t1", _rewrite(_nan)),
    "all_zero": ("flair", _rewrite(lambda d, a: (np.zeros_like(d), a))),
    "four_d": ("t2", _rewrite(lambda d, a: (np.stack([d, d], axis=-1), a))),
    "label_not_binary": ("label", _rewrite(lambda d, a: (d.astype(np.uint8) * 2, a))),
    "unreadable_uri": ("flair", None),
}


def parse_args() -> argparse.Namespace:
    """Command-line options (defaults: the real measurement)."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--good", type=int, default=180, help="demo cases")
    parser.add_argument("--bad-per-kind", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 24))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-actors", type=int, default=1)
    args = parser.parse_args()
    if args.smoke:
        args.good, args.bad_per_kind = 6, 1
    return args


def _broken_copy(root: Path, template: dict[str, str], case_id: str, kind: str) -> dict:
    """Copy the template case under ``case_id`` and break it the ``kind`` way."""
    source_id = template["case_id"]
    shutil.copytree(root / source_id, root / case_id)
    row = {key: value.replace(f"{source_id}/", f"{case_id}/") for key, value in template.items()}
    row["case_id"] = case_id
    column, mutate = FAULTS[kind]
    if mutate is None:
        row[column] = UNREADABLE_URI
    else:
        mutate(root / row[column])
    return row


def messy_cohort(root: Path, args: argparse.Namespace) -> tuple[Path, set[str]]:
    """Demo cases plus broken copies; the manifest and the broken case ids."""
    manifest = generate_cohort(root, n_cases=args.good, shape=tuple(args.shape), thick_fraction=0.0)
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    bad_ids = set()
    for kind in FAULTS:
        for copy in range(args.bad_per_kind):
            template = rows[(len(bad_ids) + 2) % args.good]  # case 2 onwards: lesions
            case_id = f"bad_{kind}_{copy}"
            rows.append(_broken_copy(root, template, case_id, kind))
            bad_ids.add(case_id)
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest, bad_ids


def check(frame, good: int, bad_ids: set[str]) -> dict[str, Any]:
    """Fused-row status counts and whether they are exactly right."""
    fused = frame[frame["source"] == "fused"]
    counts = {key: int(value) for key, value in fused["status"].value_counts().items()}
    errors = set(fused.loc[fused["status"] == "error", "case_id"])
    correct = (
        counts.get("ok", 0) == good
        and counts.get("error", 0) == len(bad_ids)
        and errors == bad_ids
        and fused["case_id"].is_unique
    )
    first_errors = {
        kind: next(
            (row.error for row in fused.itertuples() if row.case_id == f"bad_{kind}_0"), None
        )
        for kind in FAULTS
    }
    return {"fused_status_counts": counts, "counts_correct": correct, "errors": first_errors}


def main() -> None:
    """Build the messy cohort, segment it, save load_cohort.json/.csv; exit 1 on wrong counts."""
    args = parse_args()
    load_before = load_average()
    with workdir(args.workdir) as root:
        started = time.perf_counter()
        manifest, bad_ids = messy_cohort(root / "cohort", args)
        cohort_seconds = time.perf_counter() - started
        run_dir = make_random_run(root / "run", "resnet18", TINY_DECODER)
        ray_init_seconds = start_ray()
        config = SegmentConfig(
            cohort=str(manifest),
            model=str(run_dir),
            out=str(root / "out"),
            batch_size=args.batch_size,
            num_actors=args.num_actors,
        )
        with PeakRss() as peak:
            started = time.perf_counter()
            frame, _ = segment(config)
            seconds = time.perf_counter() - started
        result = check(frame, args.good, bad_ids)
    cases = args.good + len(bad_ids)
    payload = {
        "benchmark": "load_cohort",
        "smoke": args.smoke,
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": {
            "good_cases": args.good,
            "bad_cases": len(bad_ids),
            "shape": list(args.shape),
            "encoder": "resnet18",
            "decoder_channels": list(TINY_DECODER),
            "batch_size": args.batch_size,
            "num_actors": args.num_actors,
        },
        "cohort_seconds": round(cohort_seconds, 2),
        "ray_init_seconds": round(ray_init_seconds, 2),
        "job_seconds": round(seconds, 2),
        "cases_per_s": round(cases / seconds, 2),
        "peak_tree_rss_mib": peak.peak_mib,
        **result,
    }
    print(
        f"{cases} cases in {payload['job_seconds']} s ({payload['cases_per_s']} cases/s), "
        f"fused rows {result['fused_status_counts']}, peak tree RSS {peak.peak_mib} MiB"
    )
    print(f"load average before {load_before}, after {payload['load_average_after']}")
    rows = [
        {"kind": kind, "case_id": f"bad_{kind}_0", "error": error}
        for kind, error in result["errors"].items()
    ]
    write_results("load_cohort", payload, rows, results_dir=args.results_dir, smoke=args.smoke)
    if not result["counts_correct"]:
        print(f"wrong counts: expected {args.good} ok and {len(bad_ids)} error", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
