"""CPU runtimes for the plane model on a full-size case: slices/s and mask Dice vs eager fp32.

One prepared full-size demo case (``--shape`` 230×230×154 at 1 mm), one plane's brain slices
(``--plane``), ResNet50 U-Net (random weights unless ``--run`` names a trained run), batches of
``--batch-size`` slices (the last one padded, so every runtime sees one static shape), 2
threads. For each runtime: seconds to get it ready (conversion, compilation), one untimed
batch, then every brain slice of the plane timed; probabilities → masks (≥ 0.5) compared with
eager fp32's (Dice, share of brain voxels that differ, largest probability difference).

Runtimes: ``eager`` (PyTorch, contiguous), ``eager-cl`` (channels-last, oneDNN), each fp32
and bf16 autocast; ``compile`` (``torch.compile``, inductor) fp32/bf16; ``onnxruntime`` fp32
(CPU execution provider); ``openvino`` f32/bf16 (inference precision hint). ONNX Runtime and
OpenVINO are optional: pass ``--extra-path`` where their wheels are installed (or install
them); a runtime that cannot load is recorded as skipped.

``--check-run RUN --check-cohort MANIFEST``: bf16 against fp32 masks of a trained run with the
project's own ``predict_plane`` over every case and plane (Dice per plane and of the fused
majority mask).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    TINY_DECODER,
    base_parser,
    load_average,
    machine_info,
    make_random_run,
    workdir,
    write_results,
)
from benchmarks.segment_throughput import cohort
from stroke_ray.case_outputs import FusionSettings, case_masks
from stroke_ray.cohort import load_cohort
from stroke_ray.config import PLANES, ModelConfig
from stroke_ray.inference import predict_plane
from stroke_ray.planes import brain_slice_indices, volume_to_slices
from stroke_ray.preprocess import prepare
from stroke_ray.runs import finished_run, load_model_of
from stroke_ray.volumes import read_case

Infer = Callable[[np.ndarray], np.ndarray]  # (B, 4, H, W) float32 → (B, H, W) lesion probability
RUNTIMES = (
    "eager-fp32",
    "eager-cl-fp32",
    "eager-bf16",
    "eager-cl-bf16",
    "compile-fp32",
    "compile-bf16",
    "onnxruntime-fp32",
    "openvino-fp32",
    "openvino-bf16",
)


def parse_args() -> argparse.Namespace:
    """Command-line options (defaults: the real measurement)."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--run", help="a trained run folder (default: random weights)")
    parser.add_argument("--plane", default="axial", choices=PLANES)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(230, 230, 154))
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--runtimes", nargs="+", default=RUNTIMES, choices=RUNTIMES)
    parser.add_argument("--max-slices", type=int, default=None, help="time fewer slices")
    parser.add_argument("--extra-path", help="a folder with onnxruntime/openvino (appended)")
    parser.add_argument("--check-run", help="trained run: bf16 vs fp32 masks over a cohort")
    parser.add_argument("--check-cohort", help="manifest for --check-run")
    parser.add_argument("--name", default="cpu_runtimes", help="results file name")
    args = parser.parse_args()
    args.decoder = ModelConfig().decoder_channels
    if args.smoke:
        args.encoder, args.decoder = "resnet18", TINY_DECODER
        args.shape, args.spacing, args.max_slices = (64, 64, 48), 3.0, 8
    if args.extra_path:
        sys.path.append(args.extra_path)  # after the venv: its numpy etc. stay first
    return args


def _probability(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1)[:, 1].numpy()


def _eager(model: torch.nn.Module, bf16: bool, channels_last: bool, compiled: bool) -> Infer:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    forward = torch.compile(model) if compiled else model
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    )

    def infer(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast():
            tensor = torch.from_numpy(batch).contiguous(memory_format=layout)
            return _probability(forward(tensor))

    return infer


def _onnx_bytes(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    try:
        torch.onnx.export(
            model, (example,), buffer, input_names=["x"], output_names=["y"],
            opset_version=17, dynamo=False,
        )  # fmt: skip
    except Exception:  # noqa: BLE001 - older/newer exporters: try the default one
        buffer = io.BytesIO()
        torch.onnx.export(model, (example,), buffer, input_names=["x"], output_names=["y"])
    return buffer.getvalue()


def _onnxruntime(model: torch.nn.Module, example: torch.Tensor, threads: int) -> Infer:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        _onnx_bytes(model, example), options, providers=["CPUExecutionProvider"]
    )

    def infer(batch: np.ndarray) -> np.ndarray:
        return _probability(torch.from_numpy(session.run(None, {"x": batch})[0]))

    return infer


def _openvino(model: torch.nn.Module, example: torch.Tensor, threads: int, bf16: bool) -> Infer:
    import openvino as ov

    converted = ov.convert_model(model, example_input=example)
    compiled = ov.Core().compile_model(
        converted,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()

    def infer(batch: np.ndarray) -> np.ndarray:
        result = request.infer({0: batch})
        return _probability(torch.from_numpy(np.asarray(next(iter(result.values())))))

    return infer


def build_runtime(name: str, model: torch.nn.Module, example: torch.Tensor, threads: int) -> Infer:
    """The inference function of a runtime (conversion/compilation happens here)."""
    kind, precision = name.rsplit("-", 1)
    bf16 = precision == "bf16"
    if kind in ("eager", "eager-cl", "compile"):
        return _eager(model, bf16, channels_last=kind != "eager", compiled=kind == "compile")
    if kind == "onnxruntime":
        return _onnxruntime(model, example, threads)
    if kind == "openvino":
        return _openvino(model, example, threads, bf16)
    raise ValueError(name)


def _batches(slices: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, int]]:
    """Static-shape batches: (batch padded to ``batch_size``, real slice count)."""
    batches = []
    for start in range(0, len(slices), batch_size):
        chunk = np.ascontiguousarray(slices[start : start + batch_size])
        real = len(chunk)
        if real < batch_size:
            pad = np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        batches.append((chunk, real))
    return batches


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def measure(
    name: str, model: torch.nn.Module, batches: list, brain: np.ndarray, threads: int
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Ready time, slices/s and probabilities of one runtime (None where it cannot run)."""
    torch.set_num_threads(threads)
    example = torch.from_numpy(batches[0][0])
    started = time.perf_counter()
    try:
        infer = build_runtime(name, model, example, threads)
        infer(batches[0][0])  # warm-up (compilation happens on the first call)
    except Exception as err:  # noqa: BLE001 - a runtime that cannot load is reported
        traceback.print_exc()
        return {"runtime": name, "skipped": f"{type(err).__name__}: {err}"[:300]}, None
    ready = time.perf_counter() - started
    outputs, slices = [], 0
    started = time.perf_counter()
    for batch, real in batches:
        outputs.append(infer(batch)[:real])
        slices += real
    seconds = time.perf_counter() - started
    probabilities = np.concatenate(outputs) * brain
    return {
        "runtime": name,
        "ready_seconds": round(ready, 2),
        "slices": slices,
        "seconds": round(seconds, 3),
        "slices_per_s": round(slices / seconds, 2),
    }, probabilities


def compare(row: dict[str, Any], probabilities: np.ndarray, reference: np.ndarray) -> None:
    """Mask agreement with eager fp32, added to the row."""
    mask, expected = probabilities >= 0.5, reference >= 0.5
    row["dice_vs_eager_fp32"] = round(_dice(mask, expected), 5)
    row["voxels_differing_fraction"] = float(np.mean(mask != expected))
    row["max_abs_probability_diff"] = float(np.abs(probabilities - reference).max())
    row["lesion_voxels"] = int(mask.sum())


def runtime_table(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Every runtime on one full-size case's plane."""
    args.cases = 1  # the first case of the workdir's benchmark cohort (made if missing)
    manifest = cohort(args, root)
    prepared = prepare(read_case(load_cohort(str(manifest))[0]))
    run_dir = (
        Path(args.run) if args.run else make_random_run(root / "run", args.encoder, args.decoder)
    )
    model = load_model_of(finished_run(str(run_dir)), str(run_dir), args.plane)
    indices = brain_slice_indices(prepared.brain, args.plane)[: args.max_slices]
    slices = volume_to_slices(prepared.image, args.plane)[indices]
    brain = volume_to_slices(prepared.brain, args.plane)[indices]
    batches = _batches(slices, args.batch_size)
    rows, reference = [], None
    for name in ["eager-fp32", *[r for r in args.runtimes if r != "eager-fp32"]]:
        row, probabilities = measure(name, model, batches, brain, args.threads)
        if probabilities is not None:
            reference = probabilities if reference is None else reference
            compare(row, probabilities, reference)
        rows.append({**row, "plane": args.plane, "slice_shape": list(slices.shape[-2:])})
        print(row)
    return rows


def check_run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """bf16 vs fp32 masks of a trained run over a cohort, with predict_plane."""
    run = finished_run(args.check_run)
    models = {p: load_model_of(run, args.check_run, p) for p in run["planes"]}
    torch.set_num_threads(args.threads)
    rows = []
    for case in load_cohort(args.check_cohort):
        prepared = prepare(read_case(case))
        masks = {}
        for precision in ("fp32", "bf16"):
            predictions = {
                plane: predict_plane(
                    model,
                    prepared.image,
                    prepared.brain,
                    plane,
                    batch_size=args.batch_size,
                    precision=precision,
                )  # fmt: skip
                for plane, model in models.items()
            }
            result = case_masks(predictions, prepared.brain, prepared.geometry, FusionSettings())
            masks[precision] = result.masks
        for source in masks["fp32"]:
            fp32, bf16 = masks["fp32"][source] > 0, masks["bf16"][source] > 0
            rows.append(
                {
                    "case_id": case.case_id,
                    "source": source,
                    "lesion_voxels_fp32": int(fp32.sum()),
                    "voxels_differing": int((fp32 != bf16).sum()),
                    "dice_bf16_vs_fp32": round(_dice(bf16, fp32), 5),
                }
            )
    return rows


def main() -> None:
    """Measure and save cpu_runtimes.json/.csv."""
    args = parse_args()
    load_before = load_average()
    with workdir(args.workdir) as root:
        rows = runtime_table(args, root) if not args.check_run else []
    checks = check_run(args) if args.check_run else []
    for row in checks:
        print(row)
    payload = {
        "benchmark": "cpu_runtimes",
        "smoke": args.smoke,
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("smoke", "workdir", "results_dir")
        },
        "runtimes": rows,
        "bf16_check": checks,
    }
    print(f"load average before {load_before}, after {payload['load_average_after']}")
    write_results(
        args.name, payload, rows or checks, results_dir=args.results_dir, smoke=args.smoke
    )


if __name__ == "__main__":
    main()
