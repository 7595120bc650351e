"""Checks cluster.yaml against Ray's cluster launcher schema and the project's needs."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"


def _config() -> dict[str, Any]:
    """The parsed cluster.yaml."""
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _schema() -> dict[str, Any]:
    """Ray's own cluster config JSON schema, shipped inside the ray package."""
    return json.loads(resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Node types other than the head node type."""
    head = config["head_node_type"]
    return {name: spec for name, spec in config["available_node_types"].items() if name != head}


def test_matches_ray_schema() -> None:
    jsonschema.validate(_config(), _schema())


def test_schema_rejects_a_broken_config() -> None:
    broken = copy.deepcopy(_config())
    broken["available_node_types"]["worker_type_typo"] = {"node_config": {}, "resources": "GPU"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_ray_prepares_and_validates_it() -> None:
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(_config())
    util.validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] == "us-east-1"
    assert not prepared.get("docker")  # docker-less: commands run on the host
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_head_is_cpu_and_worker_is_gpu() -> None:
    config = _config()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = _worker_types(config)
    gpu_workers = {name: spec for name, spec in workers.items() if spec["resources"].get("GPU")}
    assert gpu_workers, "no worker node type declares a GPU resource"
    for spec in gpu_workers.values():
        assert spec["resources"]["GPU"] >= 1
        assert re.match(r"^(g4dn|g5|g6|g6e|p3|p4d|p5)\.", spec["node_config"]["InstanceType"])
        assert spec["min_workers"] == 0
        assert 1 <= spec["max_workers"] <= config["max_workers"]


def test_setup_installs_this_working_copy() -> None:
    config = _config()
    mounts = config["file_mounts"]
    assert "~/stroke-ray" in mounts
    local = (REPO_ROOT / mounts["~/stroke-ray"]).resolve()
    pyproject = (local / "pyproject.toml").read_text()
    assert re.search(r'^name = "stroke-ray"$', pyproject, re.MULTILINE)
    commands = " && ".join(config["setup_commands"])
    assert re.search(r"pip install [^&;]*-e ~/stroke-ray", commands)
    assert ".venv" in " ".join(config["rsync_exclude"])


def test_cluster_ray_version_matches_local_ray() -> None:
    commands = " ".join(_config()["setup_commands"])
    pinned = re.findall(r"ray\[[^\]]*\]==([0-9][^\"' ]*)", commands)
    assert pinned == [ray.__version__]


def test_standard_start_commands() -> None:
    config = _config()
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert config["head_start_ray_commands"][0] == "ray stop"
    assert config["worker_start_ray_commands"][0] == "ray stop"
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
