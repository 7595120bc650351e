"""How fast a segmentation job went and what it cost: ``OUT/throughput.json``, and planning.

Every ``segment`` job that segments at least one case writes ``throughput.json``:

- ``cases``, ``slices`` (brain slices predicted over the three planes), ``wall_seconds`` (the
  Ray Data pipeline, actor start and model loading included), ``cases_per_hour``,
  ``slices_per_s``;
- ``stage_seconds``: per stage (``read``, ``predict``, ``write``) the wall seconds summed over
  cases (the stages overlap, so their sum exceeds the wall time) and per case; the per-case
  timings are measured inside each stage and carried by the rows;
- ``cpu_seconds_measured``: process CPU time of the stages (all threads), summed over cases;
  ``cpu_seconds_reserved`` = cluster CPUs × wall; ``gpu_seconds_reserved`` = actors × GPUs per
  actor × wall (0 without ``--use-gpu``);
- ``machine``: where the model ran (CPU model and flags, cores, GPU, the precision it resolved
  to, torch threads), ``nodes`` in the cluster;
- with ``--price-per-hour P`` (per node, as the user states it; nothing is built in):
  ``cost`` = nodes × wall hours × P, and ``cost_per_1000_volumes``;
- ``ray_data_stats``: Ray Data's per-operator statistics of the job, as text.

:func:`plan` answers "how many nodes for N cases in T hours, and at what cost?" from such a
file, assuming throughput grows linearly with nodes of the same type (each node runs what the
measured job ran per node).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["STAGES", "Plan", "throughput_record", "plan", "plan_text", "cost_per_1000"]

STAGES: tuple[str, ...] = ("read", "predict", "write")
_ROUND = 3


def cost_per_1000(wall_seconds: float, cases: int, nodes: int, price_per_hour: float) -> float:
    """Cost of 1,000 volumes at a job's pace: nodes × hours × price, scaled to 1,000 cases."""
    if cases <= 0:
        raise ValueError("cost per volume needs at least one case")
    return nodes * wall_seconds / 3600.0 * price_per_hour * 1000.0 / cases


def _stage_seconds(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    stages = {}
    for stage in STAGES:
        values = [float(r.get(f"{stage}_seconds") or 0.0) for r in results]
        total = sum(values)
        stages[stage] = {
            "total": round(total, _ROUND),
            "per_case": round(total / len(values), _ROUND) if values else 0.0,
        }
    return stages


def throughput_record(
    results: Sequence[Mapping[str, Any]],
    *,
    wall_seconds: float,
    cluster: Mapping[str, float],
    nodes: int,
    num_actors: int,
    gpus_per_actor: float,
    price_per_hour: float | None = None,
    machine: Mapping[str, Any] | None = None,
    ray_data_stats: str | None = None,
) -> dict[str, Any]:
    """throughput.json of a job from its per-case result rows and the cluster it ran on."""
    cases = len(results)
    slices = sum(int(r.get("slices") or 0) for r in results)
    hours = wall_seconds / 3600.0
    record: dict[str, Any] = {
        "cases": cases,
        "status_counts": {s: sum(r["status"] == s for r in results) for s in _statuses(results)},
        "slices": slices,
        "wall_seconds": round(wall_seconds, _ROUND),
        "cases_per_hour": round(cases / hours, _ROUND) if hours > 0 else None,
        "slices_per_s": round(slices / wall_seconds, _ROUND) if wall_seconds > 0 else None,
        "seconds_per_case": round(wall_seconds / cases, _ROUND) if cases else None,
        "stage_seconds": _stage_seconds(results),
        "cpu_seconds_measured": round(sum(float(r.get("cpu_seconds") or 0) for r in results), 1),
        "cpu_seconds_reserved": round(float(cluster.get("CPU", 0)) * wall_seconds, 1),
        "gpu_seconds_reserved": round(num_actors * gpus_per_actor * wall_seconds, 1),
        "nodes": nodes,
        "num_actors": num_actors,
        "cluster": {k: float(v) for k, v in cluster.items() if k in ("CPU", "GPU")},
        "machine": dict(machine or {}),
        "price_per_hour": price_per_hour,
        "cost": None,
        "cost_per_1000_volumes": None,
    }
    if price_per_hour is not None and cases:
        record["cost"] = round(nodes * hours * price_per_hour, 4)
        record["cost_per_1000_volumes"] = round(
            cost_per_1000(wall_seconds, cases, nodes, price_per_hour), 4
        )
    record["ray_data_stats"] = ray_data_stats
    return record


def _statuses(results: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(r["status"]) for r in results})


@dataclass(frozen=True)
class Plan:
    """Nodes and cost for a cohort, at a measured job's pace per node."""

    cases: int
    hours: float
    cases_per_hour_per_node: float
    nodes: int
    wall_hours: float  # with that many nodes
    node_hours: float
    price_per_hour: float | None
    cost: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return dict(self.__dict__)


def plan(
    throughput: Mapping[str, Any],
    cases: int,
    hours: float,
    price_per_hour: float | None = None,
) -> Plan:
    """Nodes needed to segment ``cases`` in ``hours``, and the cost, from a throughput.json.

    Per node the pace is the measured job's ``cases_per_hour / nodes``; ``price_per_hour``
    (per node) defaults to the one recorded in the file.
    """
    if cases < 0 or hours <= 0:
        raise ValueError(f"need cases >= 0 and hours > 0, got cases={cases}, hours={hours}")
    measured = throughput.get("cases_per_hour")
    if not measured or measured <= 0:
        raise ValueError("throughput.json has no positive cases_per_hour (did the job run?)")
    per_node = float(measured) / max(int(throughput.get("nodes") or 1), 1)
    node_hours = cases / per_node
    nodes = max(math.ceil(node_hours / hours - 1e-9), 1) if cases else 0
    price = price_per_hour if price_per_hour is not None else throughput.get("price_per_hour")
    return Plan(
        cases=cases,
        hours=hours,
        cases_per_hour_per_node=round(per_node, _ROUND),
        nodes=nodes,
        wall_hours=round(node_hours / nodes, _ROUND) if nodes else 0.0,
        node_hours=round(node_hours, _ROUND),
        price_per_hour=price,
        cost=round(node_hours * float(price), 2) if price is not None else None,
    )


def plan_text(result: Plan, machine: Mapping[str, Any] | None = None) -> str:
    """The plan as a few lines for the terminal."""
    where = ""
    if machine:
        where = f" ({machine.get('gpu') or machine.get('cpu_model', 'unknown CPU')})"
    lines = [
        f"measured pace: {result.cases_per_hour_per_node:.1f} cases/h per node{where}",
        f"{result.cases} cases in {result.hours:g} h: {result.nodes} node(s), "
        f"done in {result.wall_hours:.2f} h, {result.node_hours:.2f} node-hours",
    ]
    if result.cost is None:
        lines.append("cost: give --price-per-hour (per node) to see it")
    else:
        lines.append(
            f"cost: {result.cost:.2f} at {result.price_per_hour:g} per node-hour "
            f"({1000 * result.cost / result.cases:.2f} per 1,000 volumes)"
            if result.cases
            else "cost: 0"
        )
    return "\n".join(lines)
