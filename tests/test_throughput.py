"""Tests for stroke_ray.throughput: throughput.json from per-case rows, and planning."""

from __future__ import annotations

import json

import pytest

from stroke_ray.cli import main
from stroke_ray.throughput import STAGES, cost_per_1000, plan, plan_text, throughput_record


def _result(case_id: str, status: str = "ok", slices: int = 400, scale: float = 1.0) -> dict:
    return {
        "case_id": case_id,
        "status": status,
        "read_seconds": 1.0 * scale,
        "predict_seconds": 30.0 * scale,
        "write_seconds": 2.0 * scale,
        "cpu_seconds": 60.0 * scale,
        "slices": slices,
    }


def _record(**overrides) -> dict:
    results = [_result("a"), _result("b", scale=2.0), _result("c", "error", slices=0, scale=0.0)]
    options = dict(
        wall_seconds=120.0,
        cluster={"CPU": 2.0, "memory": 1e9, "node:x": 1.0},
        nodes=1,
        num_actors=1,
        gpus_per_actor=0.0,
        machine={"cpu_model": "AMD EPYC", "cpu_flags": ["avx2"]},
        ray_data_stats="Operator 1 Map(read_stage): ...",
    )
    return throughput_record(results, **{**options, **overrides})


def test_record_counts_rates_and_stages():
    record = _record()
    assert record["cases"] == 3
    assert record["status_counts"] == {"error": 1, "ok": 2}
    assert record["slices"] == 800
    assert record["wall_seconds"] == 120.0
    assert record["cases_per_hour"] == pytest.approx(3 / (120 / 3600), abs=1e-3)
    assert record["slices_per_s"] == pytest.approx(800 / 120, abs=1e-3)
    assert record["seconds_per_case"] == 40.0
    assert set(record["stage_seconds"]) == set(STAGES)
    assert record["stage_seconds"]["predict"] == {"total": 90.0, "per_case": 30.0}
    assert record["stage_seconds"]["read"] == {"total": 3.0, "per_case": 1.0}
    assert record["cpu_seconds_measured"] == 180.0
    assert record["cpu_seconds_reserved"] == 240.0  # 2 CPUs × 120 s
    assert record["gpu_seconds_reserved"] == 0.0
    assert record["cluster"] == {"CPU": 2.0}
    assert record["machine"]["cpu_model"] == "AMD EPYC"
    assert record["ray_data_stats"].startswith("Operator 1")
    json.dumps(record)  # JSON-friendly throughout


def test_no_price_no_cost():
    record = _record()
    assert record["price_per_hour"] is None
    assert record["cost"] is None and record["cost_per_1000_volumes"] is None


def test_cost_per_1000_volumes_from_the_price_per_node_hour():
    # 3 cases in 120 s on 2 nodes at 3.2 per node-hour: 2 × 120/3600 × 3.2 = 0.2133 for 3
    record = _record(nodes=2, price_per_hour=3.2)
    assert record["cost"] == pytest.approx(2 * 120 / 3600 * 3.2, abs=1e-4)
    assert record["cost_per_1000_volumes"] == pytest.approx(2 * 120 / 3600 * 3.2 / 3 * 1000)
    assert cost_per_1000(3600.0, 100, 1, 2.0) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        cost_per_1000(10.0, 0, 1, 1.0)


def test_gpu_seconds_are_actors_times_share_times_wall():
    record = _record(num_actors=4, gpus_per_actor=0.25, cluster={"CPU": 16, "GPU": 1})
    assert record["gpu_seconds_reserved"] == 120.0
    assert record["cluster"] == {"CPU": 16.0, "GPU": 1.0}


def test_an_empty_job_has_no_rates():
    record = throughput_record(
        [], wall_seconds=5.0, cluster={"CPU": 2}, nodes=1, num_actors=1, gpus_per_actor=0.0,
        price_per_hour=1.0,
    )  # fmt: skip
    assert record["cases"] == 0 and record["seconds_per_case"] is None
    assert record["cost_per_1000_volumes"] is None


# --------------------------------------------------------------------------- planning


def _measured(cases_per_hour: float = 90.0, nodes: int = 1, price: float | None = None) -> dict:
    return {"cases_per_hour": cases_per_hour, "nodes": nodes, "price_per_hour": price}


def test_plan_nodes_hours_and_cost():
    # 90 cases/h per node; 1,000 cases in 2 h: 11.1 node-hours → 6 nodes, 1.85 h
    result = plan(_measured(90.0), cases=1000, hours=2.0, price_per_hour=3.2)
    assert result.cases_per_hour_per_node == 90.0
    assert result.node_hours == pytest.approx(1000 / 90, abs=1e-3)
    assert result.nodes == 6
    assert result.wall_hours == pytest.approx(1000 / 90 / 6, abs=1e-3)
    assert result.cost == pytest.approx(1000 / 90 * 3.2, abs=0.01)


def test_plan_per_node_pace_of_a_multi_node_job():
    result = plan(_measured(180.0, nodes=2), cases=90, hours=1.0)
    assert result.cases_per_hour_per_node == 90.0 and result.nodes == 1
    assert result.cost is None


def test_plan_exact_fit_does_not_round_up_and_uses_the_recorded_price():
    result = plan(_measured(100.0, price=2.0), cases=300, hours=1.0)
    assert result.nodes == 3 and result.wall_hours == 1.0
    assert result.price_per_hour == 2.0 and result.cost == 6.0


def test_plan_of_zero_cases_and_bad_inputs():
    assert plan(_measured(), cases=0, hours=1.0).nodes == 0
    with pytest.raises(ValueError, match="hours"):
        plan(_measured(), cases=10, hours=0)
    with pytest.raises(ValueError, match="cases_per_hour"):
        plan({"cases_per_hour": None}, cases=10, hours=1.0)


def test_plan_text_says_nodes_and_cost():
    text = plan_text(plan(_measured(90.0), 1000, 2.0, 3.2), {"cpu_model": "AMD EPYC"})
    assert "6 node(s)" in text and "AMD EPYC" in text and "35.56" in text
    assert "per 1,000 volumes" in text
    assert "--price-per-hour" in plan_text(plan(_measured(), 10, 1.0))


def test_plan_command_reads_a_job_folder(tmp_path, capsys):
    (tmp_path / "throughput.json").write_text(json.dumps(_measured(90.0, price=3.2)))
    assert main(["plan", "--cases", "1000", "--hours", "2", "--throughput", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "6 node(s)" in out and "35.56" in out
    argv = ["plan", "--cases", "10", "--hours", "1", "--throughput"]
    assert main([*argv, str(tmp_path / "throughput.json"), "--price-per-hour", "1"]) == 0
    assert "0.11 at 1 per node-hour" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps({"cases_per_hour": 0}))
    assert main([*argv, str(tmp_path / "bad.json")]) == 2


def test_plan_requires_its_numbers():
    with pytest.raises(SystemExit):
        main(["plan", "--cases", "10", "--throughput", "x"])
