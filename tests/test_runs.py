"""The run folder: a segmentation job only starts on a finished, complete run."""

from __future__ import annotations

import pytest

from stroke_ray.config import ModelConfig, SegmentConfig
from stroke_ray.demo import generate_cohort
from stroke_ray.io import write_json
from stroke_ray.model import build_model
from stroke_ray.runs import (
    RunNotReadyError,
    finished_run,
    load_plane_model,
    model_uri,
    run_json_uri,
    save_plane_model,
)
from stroke_ray.segment import segment

TINY = ModelConfig(encoder_name="resnet18", decoder_channels=(16, 8, 8, 4, 4))


def _run(tmp_path, status: str = "finished") -> str:
    run_dir = str(tmp_path / "run")
    model = build_model(TINY, "none")
    planes = {}
    for plane in ("axial", "coronal", "sagittal"):
        save_plane_model(model.state_dict(), run_dir, plane)
        planes[plane] = {"val_dice": 0.5}
    write_json({"status": status, "model": TINY.to_dict(), "planes": planes}, run_json_uri(run_dir))
    return run_dir


def test_finished_run_loads_every_plane(tmp_path):
    run_dir = _run(tmp_path)
    assert set(finished_run(run_dir)["planes"]) == {"axial", "coronal", "sagittal"}
    reference = build_model(TINY, "none")
    assert load_plane_model(run_dir, "axial").state_dict().keys() == reference.state_dict().keys()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("unfinished", "has not finished"),
        ("no_weights", "weights missing for planes ['coronal']"),
        ("no_run_json", "no readable run.json"),
    ],
)
def test_unusable_runs_are_refused_before_any_work(tmp_path, damage, words):
    run_dir = _run(tmp_path, status="running" if damage == "unfinished" else "finished")
    if damage == "no_weights":
        (tmp_path / "run" / "models" / "coronal.pt").unlink()
    if damage == "no_run_json":
        (tmp_path / "run" / "run.json").unlink()
    manifest = generate_cohort(tmp_path / "cohort", n_cases=1, shape=(32, 32, 24))
    out = tmp_path / "out"
    with pytest.raises(RunNotReadyError, match=words.replace("[", r"\[").replace("]", r"\]")):
        segment(SegmentConfig(cohort=str(manifest), model=run_dir, out=str(out)))
    assert not out.exists()
    assert model_uri(run_dir, "axial").endswith("models/axial.pt")


def test_loaded_model_holds_the_saved_tensors_and_predicts_alike(tmp_path):
    import torch

    from stroke_ray.runs import load_model_of

    run_dir = _run(tmp_path)
    torch.manual_seed(3)
    saved = build_model(TINY, "none").eval()
    save_plane_model(saved.state_dict(), run_dir, "axial")
    loaded = load_model_of(finished_run(run_dir), run_dir, "axial")
    assert not loaded.training
    expected = saved.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert tensor.device.type == "cpu" and not tensor.is_meta, name
        assert torch.equal(tensor, expected[name]), name
    assert all(p.requires_grad for p in loaded.parameters())
    batch = torch.randn(2, 4, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(batch), saved(batch))
