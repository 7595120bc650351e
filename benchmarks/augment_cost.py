"""Augmentation cost per training step against the step itself (forward + loss + backward + Adam).

Batches are sampled from prepared realistic-demo cases exactly as the training loop does; the
augmentation of each batch (``stroke_ray.augment.augment_batch``) and the training step are
timed apart, one thread each (a plane's worker has about one core on a CPU machine).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import base_parser, load_average, machine_info, workdir, write_results
from stroke_ray.augment import augment_batch
from stroke_ray.cohort import load_cohort
from stroke_ray.config import ModelConfig
from stroke_ray.demo import generate_cohort
from stroke_ray.losses import HybridLoss
from stroke_ray.model import build_model
from stroke_ray.planes import PLANES
from stroke_ray.preprocess import prepare
from stroke_ray.slices import PlaneSlices
from stroke_ray.volumes import read_case


def main() -> None:
    """Time augmentation and training steps per plane; write augment_cost.{json,csv}."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--decoder-channels", type=int, nargs=5, default=[128, 64, 32, 16, 16])
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64])
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.smoke:
        args.shape, args.steps = [32, 32, 24], 1
    torch.set_num_threads(args.threads)
    with workdir(args.workdir) as root:
        manifest = generate_cohort(
            root / "cohort", n_cases=2, shape=tuple(args.shape), spacing_mm=args.spacing
        )
        cases = [prepare(read_case(case)) for case in load_cohort(str(manifest))]
    config = ModelConfig(args.encoder, tuple(args.decoder_channels))
    rows = []
    for plane in PLANES:
        data = PlaneSlices.from_cases(cases, plane)
        model = build_model(config, "none").train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = HybridLoss()
        rng = np.random.default_rng(0)
        batches = list(data.sample_batches(rng, batch_size=args.batch_size, steps=args.steps + 1))
        augment_s, step_s = [], []
        for number, (images, targets) in enumerate(batches):
            started = time.perf_counter()
            images, targets = augment_batch(images, targets, rng)
            augmented = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), targets).backward()
            optimizer.step()
            if number:  # the first step warms up
                augment_s.append(augmented - started)
                step_s.append(time.perf_counter() - augmented)
        row = {
            "plane": plane,
            "slice_shape": "x".join(str(n) for n in images.shape[-2:]),
            "batch_size": args.batch_size,
            "augment_ms_per_step": round(1000 * float(np.median(augment_s)), 1),
            "train_ms_per_step": round(1000 * float(np.median(step_s)), 1),
        }
        row["augment_share"] = round(row["augment_ms_per_step"] / row["train_ms_per_step"], 3)
        rows.append(row)
        print(row)
    payload = {
        "machine": machine_info(),
        "load_average": load_average(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "results_dir")},
        "rows": rows,
    }
    write_results("augment_cost", payload, rows, results_dir=args.results_dir, smoke=args.smoke)


if __name__ == "__main__":
    main()
