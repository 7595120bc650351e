"""Shared benchmark helpers: machine notes, result files, random-weight runs, Ray, peak RSS."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import torch

from stroke_ray import machine
from stroke_ray.cohort import load_cohort
from stroke_ray.config import ModelConfig
from stroke_ray.inference import predict_plane
from stroke_ray.io import write_json
from stroke_ray.model import build_model
from stroke_ray.planes import PLANES, brain_slice_indices, volume_to_slices
from stroke_ray.preprocess import prepare
from stroke_ray.runs import load_plane_model, package_versions, run_json_uri, save_plane_model
from stroke_ray.volumes import read_case

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TINY_DECODER = (16, 8, 8, 4, 4)
_SAMPLE_INTERVAL_S = 0.2


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs")
    parser.add_argument(
        "--workdir", help="keep cohorts, runs and outputs here (default: a deleted temp folder)"
    )
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="where JSON/CSV go")
    return parser


@contextmanager
def workdir(path: str | None) -> Iterator[Path]:
    """The given folder (created, kept) or a temporary one (deleted afterwards)."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="stroke-ray-bench-") as folder:
        yield Path(folder)


def load_average() -> dict[str, float]:
    """The 1, 5 and 15-minute load averages (as `uptime` shows them)."""
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def machine_info() -> dict[str, Any]:
    """CPU model and flags, cores, memory, GPU, library versions and the date."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **machine.machine_info(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }


def write_results(
    name: str,
    payload: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    results_dir: str,
    smoke: bool,
) -> Path:
    """Write ``<name>.json`` (payload) and ``<name>.csv`` (rows); smoke runs go to smoke/."""
    folder = Path(results_dir) / "smoke" if smoke else Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if rows:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        with (folder / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    print(f"results: {path}")
    return path


def make_random_run(
    run_dir: Path,
    encoder_name: str = "resnet50",
    decoder_channels: tuple[int, ...] = ModelConfig().decoder_channels,
    seed: int = 0,
) -> Path:
    """An untrained run folder: random weights for each plane and a minimal run.json."""
    config = ModelConfig(encoder_name=encoder_name, decoder_channels=decoder_channels)
    for number, plane in enumerate(PLANES):
        torch.manual_seed(seed + number)
        save_plane_model(build_model(config, "none").state_dict(), str(run_dir), plane)
    run = {
        "run_id": run_dir.name,
        "status": "finished",
        "model": config.to_dict(),
        "planes": {plane: {"val_dice": 0.5} for plane in PLANES},
    }
    write_json(run, run_json_uri(str(run_dir)))
    return run_dir


def subset_manifest(manifest: Path, count: int, name: str) -> Path:
    """A manifest beside ``manifest`` holding its first ``count`` cases."""
    lines = manifest.read_text().splitlines(keepends=True)
    target = manifest.with_name(name)
    target.write_text("".join(lines[: count + 1]))
    return target


def start_ray(num_cpus: int = 2, num_gpus: int = 0) -> float:
    """Start a private local Ray instance (never another session's cluster); its seconds."""
    import ray
    import ray.data

    # Ray starts its workers at nice 15, this process runs at 0: with anything else running,
    # the job's workers would yield to it and the bare model would not; same priority for both
    os.environ.setdefault("RAY_worker_niceness", "0")
    started = time.perf_counter()
    ray.init(
        address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
        log_to_driver=False,
    )  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    return time.perf_counter() - started


def tree_rss() -> int:
    """Sum of the RSS of this process and all its descendants, in bytes."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def _process_kind(process: psutil.Process) -> str:
    """A short name for a process of the tree: the Ray stage or service it runs."""
    try:
        name = " ".join(process.cmdline()[:1]) or process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if name.startswith("ray::"):
        for stage in ("read_stage", "PlanePredictor", "write_stage"):
            if stage in name:
                return stage
        return name.split("(")[0]
    return process.name()


SamplerT = TypeVar("SamplerT", bound="_Sampler")


class _Sampler:
    """Calls ``_sample`` every ``interval_s`` in a thread while the context is open (and once
    at each end)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self: SamplerT) -> SamplerT:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class CpuByProcess(_Sampler):
    """CPU seconds of this process and its descendants, by kind, sampled in a thread (a context).

    A process's CPU time since the previous sample goes to the kind it shows at this sample
    (a Ray worker's title says the stage it runs: ``ray::Map(read_stage)``; idle ones
    ``ray::IDLE``).
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        super().__init__(interval_s)
        self.seconds: dict[str, float] = {}
        self._last: dict[int, float] = {}
        self._processes: dict[int, psutil.Process] = {}

    def _sample(self) -> None:
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            process = self._processes.setdefault(process.pid, process)
            try:
                times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total = times.user + times.system
            previous = self._last.get(process.pid)
            self._last[process.pid] = total
            if previous is not None:
                kind = "driver" if process.pid == me.pid else _process_kind(process)
                self.seconds[kind] = self.seconds.get(kind, 0.0) + total - previous

    def summary(self) -> dict[str, float]:
        """CPU seconds by kind, largest first."""
        ranked = sorted(self.seconds.items(), key=lambda item: -item[1])
        return {kind: round(seconds, 1) for kind, seconds in ranked if seconds >= 0.05}


class PeakRss(_Sampler):
    """Samples :func:`tree_rss` every 0.2 s in a thread and keeps the peak (a context)."""

    def __init__(self, interval_s: float = _SAMPLE_INTERVAL_S) -> None:
        super().__init__(interval_s)
        self.peak_bytes = 0
        self.samples = 0

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, tree_rss())
        self.samples += 1

    @property
    def peak_mib(self) -> float:
        """The peak in MiB."""
        return round(self.peak_bytes / 2**20, 1)


def _warm_brain(brain: np.ndarray, plane: str, count: int) -> np.ndarray:
    """The brain mask restricted to the plane's first ``count`` brain slices."""
    keep = brain_slice_indices(brain, plane)[:count]
    mask = np.zeros_like(brain)
    volume_to_slices(mask, plane)[keep] = volume_to_slices(brain, plane)[keep]
    return mask


def bare_forward(
    manifest: Path,
    run_dir: Path,
    batch_size: int,
    precision: str,
    device: torch.device,
    num_actors: int = 1,
) -> dict[str, Any]:
    """Time predict_plane over every case's three planes, data prepared beforehand.

    On the CPU the thread count is the job's own rule (cores // actors); one untimed batch
    per plane warms up first.
    """
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_actors))
    models = {plane: load_plane_model(str(run_dir), plane).to(device) for plane in PLANES}
    if device.type == "cuda":
        models = {p: m.to(memory_format=torch.channels_last) for p, m in models.items()}
    options = {"batch_size": batch_size, "precision": precision, "device": device}
    per_case = []
    for case in load_cohort(str(manifest)):
        prepared = prepare(read_case(case))
        if not per_case:
            for plane, model in models.items():
                warm = _warm_brain(prepared.brain, plane, batch_size)
                predict_plane(model, prepared.image, warm, plane, **options)
        _synchronise(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        slices = sum(
            len(predict_plane(model, prepared.image, prepared.brain, plane, **options)[0])
            for plane, model in models.items()
        )
        _synchronise(device)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        per_case.append(
            {
                "case_id": prepared.case_id,
                "slices": slices,
                "seconds": seconds,
                "cpu_seconds": round(cpu_seconds, 3),
            }
        )
    slices = sum(row["slices"] for row in per_case)
    seconds = sum(row["seconds"] for row in per_case)
    return {
        "threads": torch.get_num_threads(),
        "slices": slices,
        "seconds": round(seconds, 3),
        "slices_per_s": round(slices / seconds, 2),
        "cpu_seconds": round(sum(row["cpu_seconds"] for row in per_case), 2),
        "per_case": per_case,
    }


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
