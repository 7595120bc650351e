"""The prepared GPU check: the whole job on one GPU, in one command, in under 8 minutes.

1. Train the three planes concurrently on one GPU (``--gpus-per-worker 0.33``) on full-size
   demo cases for a couple of epochs; SIGKILL one training worker after its first
   checkpoint and let Ray Train resume it (``FailureConfig``). Each plane's history must hold
   every epoch exactly once.
2. Segment full-size (230×230×154, 1 mm) cases with the trained ResNet50s at bf16 and at
   fp32: the bare forward pass of the three models on the same prepared cases, then the
   whole ``segment`` job (model actors sharing the GPU, ``--gpus-per-actor``).

It prints and saves ``results/gpu/gpu_check.json`` and ``.csv``: device name, seconds per
case, bare-model slices/s against whole-job slices/s, peak GPU memory (nvidia-smi, the
whole card, sampled every 0.2 s; and torch's peak in this process for the bare pass).

``--smoke`` runs the same steps on the CPU at tiny sizes (the tests run it): it checks the
script, not the GPU. See benchmarks/README.md for running it on a lent device.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.common import (
    TINY_DECODER,
    bare_forward,
    base_parser,
    machine_info,
    start_ray,
    workdir,
    write_results,
)
from stroke_ray.config import ModelConfig, SegmentConfig, TrainConfig
from stroke_ray.demo import generate_cohort
from stroke_ray.segment import segment
from stroke_ray.train import train

_SAMPLE_INTERVAL_S = 0.2


def parse_args() -> argparse.Namespace:
    """Options; --smoke shrinks everything to CPU-sized figures."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--train-cases", type=int, default=8)
    parser.add_argument("--segment-cases", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="training steps per epoch")
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64, help="slices per forward")
    parser.add_argument("--num-actors", type=int, default=2)
    parser.add_argument("--gpus-per-worker", type=float, default=0.33)
    parser.add_argument("--gpus-per-actor", type=float, default=0.45)
    parser.add_argument("--encoder", default="resnet50")
    args = parser.parse_args()
    args.shape, args.spacing, args.decoder = (230, 230, 154), 1.0, ModelConfig().decoder_channels
    args.use_gpu = torch.cuda.is_available() and not args.smoke
    if args.smoke:
        args.train_cases, args.segment_cases, args.steps, args.train_batch_size = 4, 2, 1, 4
        args.batch_size, args.num_actors, args.encoder = 8, 1, "resnet18"
        args.shape, args.spacing, args.decoder = (32, 32, 24), 3.0, TINY_DECODER
    elif not args.use_gpu:
        parser.error("no CUDA device: run with --smoke on a CPU")
    return args


class GpuMemory:
    """Peak of the card's used memory (nvidia-smi, MiB), sampled in a thread (a context)."""

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            text = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return
        used = max(float(value) for value in text.split())
        self.peak_mib = max(self.peak_mib or 0.0, used)

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_INTERVAL_S):
            self._sample()

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _kill_after_first_checkpoint(storage: Path, killed: list[int], timeout_s: float) -> None:
    """SIGKILL one Ray Train worker once the plane has a checkpoint."""
    import psutil

    deadline = time.time() + timeout_s
    while time.time() < deadline and not list(storage.glob("checkpoint_*")):
        time.sleep(0.2)
    for process in psutil.process_iter(["pid", "cmdline"]):
        if "RayTrainWorker" in " ".join(process.info["cmdline"] or []):
            os.kill(process.info["pid"], signal.SIGKILL)
            killed.append(process.info["pid"])
            return


def train_step(args: argparse.Namespace, manifest: Path, root: Path) -> dict[str, Any]:
    """Three planes on one GPU, one worker killed after its first checkpoint."""
    config = TrainConfig(
        cohort=str(manifest),
        out=str(root / "run"),
        model=ModelConfig(encoder_name=args.encoder, decoder_channels=args.decoder),
        weights="none",
        epochs=args.epochs,
        max_steps_per_epoch=args.steps,
        batch_size=args.train_batch_size,
        use_gpu=args.use_gpu,
        gpus_per_worker=args.gpus_per_worker if args.use_gpu else None,
        max_failures=2,
    )
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_after_first_checkpoint, args=(root / "run" / "ray" / "axial", killed, 300)
    )
    started = time.perf_counter()
    with GpuMemory() as memory:
        killer.start()
        run = train(config)
        killer.join()
    seconds = time.perf_counter() - started
    history = pd.read_parquet(root / "run" / "history.parquet")
    epochs = {plane: sorted(rows["epoch"]) for plane, rows in history.groupby("plane")}
    return {
        "seconds": round(seconds, 1),
        "killed_worker_pids": killed,
        "every_epoch_once": all(e == list(range(args.epochs)) for e in epochs.values()),
        "epochs_per_plane": epochs,
        "val_dice": {plane: values["val_dice"] for plane, values in run["planes"].items()},
        "peak_gpu_memory_mib_card": memory.peak_mib,
        "peak_gpu_memory_mib_per_worker": _peak_per_worker(history),
        "steps_per_epoch": args.steps,
        "batch_size": args.train_batch_size,
        "gpus_per_worker": config.gpus_per_worker,
    }


def _peak_per_worker(history: pd.DataFrame) -> dict[str, float] | None:
    if "peak_gpu_memory_mib" not in history or history["peak_gpu_memory_mib"].isna().all():
        return None
    return history.groupby("plane")["peak_gpu_memory_mib"].max().round(1).to_dict()


def segment_step(
    args: argparse.Namespace, manifest: Path, run_dir: Path, root: Path, precision: str
) -> dict[str, Any]:
    """Bare forward pass vs whole job at one precision."""
    device = torch.device("cuda" if args.use_gpu else "cpu")
    if args.use_gpu:
        torch.cuda.reset_peak_memory_stats()
    bare = bare_forward(manifest, run_dir, args.batch_size, precision, device, args.num_actors)
    bare_peak = torch.cuda.max_memory_allocated() / 2**20 if args.use_gpu else None
    config = SegmentConfig(
        cohort=str(manifest),
        model=str(run_dir),
        out=str(root / f"segment_{precision}"),
        use_gpu=args.use_gpu,
        gpus_per_actor=args.gpus_per_actor if args.use_gpu else None,
        num_actors=args.num_actors,
        batch_size=args.batch_size,
        precision=precision,
    )
    segment(replace(config, out=str(root / f"warmup_{precision}")))  # worker start-up, untimed
    with GpuMemory() as memory:
        started = time.perf_counter()
        _, summary = segment(config)
        seconds = time.perf_counter() - started
    if summary["status_counts"]["ok"] != summary["cases"]:
        raise RuntimeError(f"segment job had failures: {summary['errors']}")
    cases = summary["cases"]
    return {
        "precision": precision,
        "cases": cases,
        "slices": bare["slices"],
        "bare_seconds": bare["seconds"],
        "bare_slices_per_s": bare["slices_per_s"],
        "job_seconds": round(seconds, 2),
        "job_seconds_per_case": round(seconds / cases, 3),
        "job_slices_per_s": round(bare["slices"] / seconds, 1),
        "ratio_job_over_bare": round(bare["seconds"] / seconds, 3),
        "fused_dice_mean": summary["sources"].get("fused", {}).get("dice_mean"),
        "peak_gpu_memory_mib_bare_process": None if bare_peak is None else round(bare_peak, 1),
        "peak_gpu_memory_mib_card_job": memory.peak_mib,
    }


def main() -> None:
    """Train, kill, resume, segment at bf16 and fp32; save results/gpu/gpu_check.*."""
    args = parse_args()
    started = time.perf_counter()
    info = machine_info()
    print(f"device: {info['gpu'] or 'CPU (smoke)'}")
    with workdir(args.workdir) as root:
        ray_seconds = start_ray(num_cpus=os.cpu_count() or 2, num_gpus=1 if args.use_gpu else 0)
        workers = min(os.cpu_count() or 1, 8)
        train_manifest = generate_cohort(
            root / "train_cohort", n_cases=args.train_cases, shape=args.shape,
            spacing_mm=args.spacing, seed=1, workers=workers, thick_fraction=0.0,
        )  # fmt: skip
        segment_manifest = generate_cohort(
            root / "segment_cohort", n_cases=args.segment_cases, shape=args.shape,
            spacing_mm=args.spacing, seed=2, workers=workers, thick_fraction=0.0,
        )  # fmt: skip
        training = train_step(args, train_manifest, root)
        print(f"training: {training}")
        segmentation = [
            segment_step(args, segment_manifest, root / "run", root, precision)
            for precision in ("bf16", "fp32")
        ]
        for row in segmentation:
            print(f"segmentation: {row}")
    payload = {
        "machine": info,
        "ray_init_seconds": round(ray_seconds, 2),
        "shape": list(args.shape),
        "encoder": args.encoder,
        "training": training,
        "segmentation": segmentation,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(
        "gpu_check", payload, segmentation, results_dir=str(Path(args.results_dir) / "gpu"),
        smoke=args.smoke,
    )  # fmt: skip
    if not training["every_epoch_once"] or not training["killed_worker_pids"]:
        raise SystemExit("the killed training worker did not resume cleanly")


if __name__ == "__main__":
    main()
