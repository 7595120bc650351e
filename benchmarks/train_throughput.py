"""Training slices/s per plane on CPU: forward + HybridLoss + backward + Adam step, no Ray.

Batches come from ``PlaneSlices.sample_batches`` over a prepared demo cohort, as in the
training loop (batch assembly is inside the timer, as it is in a real epoch).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import base_parser, load_average, machine_info, workdir, write_results
from stroke_ray.cohort import load_cohort
from stroke_ray.config import ModelConfig
from stroke_ray.demo import generate_cohort
from stroke_ray.losses import HybridLoss
from stroke_ray.model import build_model
from stroke_ray.planes import PLANES
from stroke_ray.preprocess import Prepared, prepare
from stroke_ray.slices import PlaneSlices
from stroke_ray.volumes import read_case

# Demo spacing per volume size: the (64, 64, 48) demo default and a finer full-size grid.
_SPACING_MM = {(64, 64, 48): 3.0, (128, 128, 96): 1.5}


def _shape(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.lower().split("x"))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"shape {text!r}: give XxYxZ, e.g. 64x64x48")
    return values  # type: ignore[return-value]


def parse_args() -> argparse.Namespace:
    """Command-line options (defaults: the real measurement)."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--shapes", nargs="+", type=_shape, default=[(64, 64, 48), (128, 128, 96)])
    parser.add_argument("--cases", type=int, default=2, help="demo cases per volume size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per plane")
    parser.add_argument("--warmup-steps", type=int, default=1)
    args = parser.parse_args()
    if args.smoke:
        args.shapes, args.cases, args.steps = [(32, 32, 24)], 1, 1
    return args


def prepared_cohort(root: Path, shape: tuple[int, int, int], cases: int) -> list[Prepared]:
    """A demo cohort of ``shape`` volumes, read and prepared."""
    folder = root / "x".join(str(n) for n in shape)
    spacing = _SPACING_MM.get(tuple(shape), 3.0)
    manifest = generate_cohort(
        folder, n_cases=cases, shape=shape, spacing_mm=spacing, thick_fraction=0.0
    )
    return [prepare(read_case(case)) for case in load_cohort(str(manifest))]


def time_steps(model, loss_fn, optimizer, data: PlaneSlices, args) -> float:
    """Seconds of ``args.steps`` training steps after ``args.warmup_steps`` untimed ones."""
    rng = np.random.default_rng(0)
    batches = data.sample_batches(
        rng, batch_size=args.batch_size, steps=args.warmup_steps + args.steps
    )
    started = time.perf_counter()
    for step, (images, targets) in enumerate(batches):
        if step == args.warmup_steps:
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def measure(encoder: str, shape, cases: list[Prepared], args) -> list[dict[str, Any]]:
    """One row per plane: slices/s of training steps for this encoder and volume size."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_name=encoder), "none").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = HybridLoss()
    rows = []
    for plane in PLANES:
        data = PlaneSlices.from_cases(cases, plane)
        seconds = time_steps(model, loss_fn, optimizer, data, args)
        slices = args.steps * args.batch_size
        height, width = data.images[0].shape[-2:]
        rows.append(
            {
                "encoder": encoder,
                "volume_shape": "x".join(str(n) for n in shape),
                "plane": plane,
                "slice_hw": f"{height}x{width}",
                "batch_size": args.batch_size,
                "steps": args.steps,
                "seconds": round(seconds, 3),
                "slices_per_s": round(slices / seconds, 2),
            }
        )
        print(
            f"{encoder} {rows[-1]['volume_shape']} {plane} ({height}x{width}): "
            f"{rows[-1]['slices_per_s']} slices/s"
        )
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per encoder and volume size: slices/s over all planes' timed steps."""
    summary: dict[str, dict[str, float]] = {}
    for row in rows:
        key = f"{row['encoder']}@{row['volume_shape']}"
        entry = summary.setdefault(key, {"slices": 0, "seconds": 0.0})
        entry["slices"] += row["steps"] * row["batch_size"]
        entry["seconds"] += row["seconds"]
    for entry in summary.values():
        entry["slices_per_s"] = round(entry["slices"] / entry["seconds"], 2)
    return summary


def main() -> None:
    """Measure every encoder × volume size and save train_throughput.json/.csv."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    rows = []
    with workdir(args.workdir) as root:
        for shape in args.shapes:
            cases = prepared_cohort(root, shape, args.cases)
            for encoder in args.encoders:
                rows.extend(measure(encoder, shape, cases, args))
    payload = {
        "benchmark": "train_throughput",
        "smoke": args.smoke,
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": {
            "precision": "fp32",
            "threads": args.threads,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "cases_per_size": args.cases,
            "decoder_channels": list(ModelConfig().decoder_channels),
        },
        "summary": _summary(rows),
        "rows": rows,
    }
    print(f"load average before {load_before}, after {payload['load_average_after']}")
    write_results("train_throughput", payload, rows, results_dir=args.results_dir, smoke=args.smoke)


if __name__ == "__main__":
    main()
