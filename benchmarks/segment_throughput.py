"""Bare plane-model forward vs the whole Ray Data segment job (slices/s), and job peak memory.

Full size by default (``stroke-ray demo --shape 230 230 154 --spacing 1``, ResNet50); ``--smoke``
runs tiny sizes. (a) bare: each case is read and prepared outside the timer, then
``predict_plane`` runs over the three planes with the job's batch size, precision and thread
count; (b) job: ``segment()`` on the same cohort in a fresh OUT after a one-case warm-up job
(``ray.init`` excluded); ratio = job slices/s / bare slices/s; the job's throughput.json
(per-stage seconds, Ray Data's per-operator stats) and the CPU seconds of every process of the
tree by kind are printed and saved. (c) peak RSS of the process tree (driver + every Ray
process) for a job on a small and a four-times larger cohort of small volumes.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    TINY_DECODER,
    CpuByProcess,
    PeakRss,
    bare_forward,
    base_parser,
    load_average,
    machine_info,
    make_random_run,
    start_ray,
    subset_manifest,
    workdir,
    write_results,
)
from stroke_ray.config import ModelConfig
from stroke_ray.demo import generate_cohort
from stroke_ray.inference import resolve_precision
from stroke_ray.segment import SegmentConfig, segment


def parse_args() -> argparse.Namespace:
    """Command-line options (defaults: the real measurement)."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-actors", type=int, default=1)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs=3, default=(230, 230, 154))
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--memory-cases", type=int, nargs=2, default=(10, 40))
    parser.add_argument("--memory-shape", type=int, nargs=3, default=(64, 64, 48))
    parser.add_argument("--no-memory", action="store_true", help="skip (c), the memory jobs")
    parser.add_argument("--name", default="segment_throughput", help="results file name")
    args = parser.parse_args()
    args.decoder = ModelConfig().decoder_channels
    if args.smoke:
        args.encoder, args.decoder, args.cases = "resnet18", TINY_DECODER, 2
        args.shape, args.spacing = (32, 32, 24), 3.0
        args.memory_cases, args.memory_shape = (2, 4), (32, 32, 24)
    return args


def _job_config(args: argparse.Namespace, manifest: Path, run_dir: Path, out: Path):
    return SegmentConfig(
        cohort=str(manifest),
        model=str(run_dir),
        out=str(out),
        batch_size=args.batch_size,
        precision=args.precision,
        num_actors=args.num_actors,
        overwrite=True,  # a workdir's earlier job (other precision, finished cases) is redone
    )


def cpu_bare_forward(args: argparse.Namespace, manifest: Path, run_dir: Path) -> dict[str, Any]:
    """The bare forward pass with the job's batch size, precision and threads."""
    device = torch.device("cpu")
    return bare_forward(manifest, run_dir, args.batch_size, args.precision, device, args.num_actors)


def run_job(args: argparse.Namespace, manifest: Path, run_dir: Path, out: Path) -> float:
    """Seconds of one segment job; fails unless every case ends ok."""
    started = time.perf_counter()
    _, summary = segment(_job_config(args, manifest, run_dir, out))
    seconds = time.perf_counter() - started
    if summary["status_counts"]["ok"] != summary["cases"]:
        raise RuntimeError(f"segment job had failures: {summary['errors']}")
    return seconds


def whole_job(
    args: argparse.Namespace, manifest: Path, run_dir: Path, root: Path, slices: int
) -> dict[str, Any]:
    """Warm-up job on one case, then the timed job on the whole cohort (its throughput.json)."""
    warmup = run_job(args, subset_manifest(manifest, 1, "warmup.csv"), run_dir, root / "out_warm")
    with CpuByProcess() as cpu:
        seconds = run_job(args, manifest, run_dir, root / "out_job")
    throughput = json.loads((root / "out_job" / "throughput.json").read_text())
    return {
        "warmup_seconds": round(warmup, 3),
        "slices": slices,
        "seconds": round(seconds, 3),
        "slices_per_s": round(slices / seconds, 2),
        "seconds_per_case": round(seconds / args.cases, 2),
        "job_slices_counted": throughput["slices"],
        "stage_seconds": throughput["stage_seconds"],
        "cpu_seconds_by_process": cpu.summary(),
        "cpu_seconds": round(sum(cpu.seconds.values()), 1),
        "throughput_json": throughput,
    }


def cohort(args: argparse.Namespace, root: Path) -> Path:
    """The demo cohort, generated once per workdir and size (full size takes minutes)."""
    folder = root / "cohort"
    wanted = {"shape": list(args.shape), "spacing_mm": args.spacing}
    settings = folder / "benchmark_cohort.json"
    if settings.exists():
        made = json.loads(settings.read_text())
        if made.pop("cases") >= args.cases and made == wanted:
            return subset_manifest(folder / "manifest.csv", args.cases, f"cases_{args.cases}.csv")
    manifest = generate_cohort(
        folder, n_cases=args.cases, shape=args.shape, spacing_mm=args.spacing, thick_fraction=0.0
    )
    settings.write_text(json.dumps({"cases": args.cases, **wanted}))
    return manifest


def job_memory(args: argparse.Namespace, run_dir: Path, root: Path) -> dict[str, Any]:
    """Peak process-tree RSS of a job on the smaller and the larger cohort."""
    small, large = args.memory_cases
    manifest = generate_cohort(
        root / "memory_cohort", n_cases=large, shape=args.memory_shape, thick_fraction=0.0
    )
    runs = []
    for count in (small, large):
        cohort = subset_manifest(manifest, count, f"manifest_{count}.csv")
        gc.collect()
        with PeakRss() as peak:
            seconds = run_job(args, cohort, run_dir, root / f"out_memory_{count}")
        runs.append({"cases": count, "peak_mib": peak.peak_mib, "seconds": round(seconds, 2)})
    return {
        "shape": list(args.memory_shape),
        "runs": runs,
        "peak_ratio_large_over_small": round(runs[1]["peak_mib"] / runs[0]["peak_mib"], 3),
    }


def _rows(bare: dict, job: dict, memory: dict) -> list[dict[str, Any]]:
    rows = [{"kind": "bare_case", **row} for row in bare["per_case"]]
    rows.append({"kind": "bare_total", **{k: bare[k] for k in ("slices", "seconds")}})
    rows.append({"kind": "job_total", **{k: job[k] for k in ("slices", "seconds")}})
    rows.extend({"kind": "memory_job", **row} for row in (memory or {}).get("runs", ()))
    return rows


def main() -> None:
    """Run (a), (b), (c) and save segment_throughput.json/.csv."""
    args = parse_args()
    load_before = load_average()
    with workdir(args.workdir) as root:
        manifest = cohort(args, root)
        run_dir = make_random_run(root / "run", args.encoder, args.decoder)
        bare = cpu_bare_forward(args, manifest, run_dir)
        print(
            f"bare forward: {bare['slices']} slices in {bare['seconds']} s = "
            f"{bare['slices_per_s']} slices/s ({bare['threads']} threads)"
        )
        gc.collect()
        ray_init_seconds = start_ray()
        job = whole_job(args, manifest, run_dir, root, bare["slices"])
        ratio = round(job["slices_per_s"] / bare["slices_per_s"], 3)
        print(
            f"whole job: {job['slices']} slices in {job['seconds']} s = "
            f"{job['slices_per_s']} slices/s; job/bare = {ratio}"
        )
        print(f"stage seconds (summed over cases; stages overlap): {job['stage_seconds']}")
        print(f"CPU seconds by process during the job: {job['cpu_seconds_by_process']}")
        print("Ray Data stats of the job:")
        print(job["throughput_json"].get("ray_data_stats"))
        memory = None if args.no_memory else job_memory(args, run_dir, root)
        for row in memory["runs"] if memory else ():
            print(f"job on {row['cases']} cases: peak tree RSS {row['peak_mib']} MiB")
        if memory:
            print(f"peak ratio large/small = {memory['peak_ratio_large_over_small']}")
    payload = {
        "benchmark": "segment_throughput",
        "smoke": args.smoke,
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": {
            "encoder": args.encoder,
            "decoder_channels": list(args.decoder),
            "precision": args.precision,
            "precision_resolved": resolve_precision(args.precision, "cpu"),
            "batch_size": args.batch_size,
            "num_actors": args.num_actors,
            "cases": args.cases,
            "shape": list(args.shape),
            "spacing_mm": args.spacing,
        },
        "ray_init_seconds": round(ray_init_seconds, 2),
        "bare": bare,
        "job": job,
        "ratio_job_over_bare": ratio,
        # CPU work of the whole process tree during the job over the bare model's: robust to
        # other load where wall times are not (spinning model threads inflate both alike)
        "cpu_ratio_bare_over_job": round(bare["cpu_seconds"] / job["cpu_seconds"], 3),
        "job_overhead_vs_bare": round(job["seconds"] / bare["seconds"] - 1, 3),
        "memory": memory,
    }
    print(f"load average before {load_before}, after {payload['load_average_after']}")
    write_results(
        args.name,
        payload,
        _rows(bare, job, memory),
        results_dir=args.results_dir,
        smoke=args.smoke,
    )


if __name__ == "__main__":
    main()
