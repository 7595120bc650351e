"""Session fixtures for the end-to-end tests: a local Ray, a demo cohort, a tiny trained run,
and a local S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

TINY_MODEL = {"encoder_name": "resnet18", "decoder_channels": (16, 8, 8, 4, 4)}
TINY_SCHEDULE = {"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 1, "weights": "none"}
DEMO_SHAPE = (32, 32, 24)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 CPUs, no dashboard)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory) -> Path:
    """A 5-case demo cohort of 32×32×24 volumes."""
    from stroke_ray.demo import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("cohort"), n_cases=5, shape=DEMO_SHAPE)


def tiny_train_config(cohort: Path | str, out: Path | str, **overrides):
    """A TrainConfig for a tiny resnet18 U-Net and one step per epoch."""
    from stroke_ray.train import TrainConfig

    return TrainConfig(
        cohort=str(cohort), out=str(out), **{**TINY_MODEL, **TINY_SCHEDULE, **overrides}
    )


@pytest.fixture(scope="session")
def trained_run(ray_local, demo_manifest, tmp_path_factory) -> Path:
    """A finished three-plane run on the demo cohort."""
    from stroke_ray.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_train_config(demo_manifest, out))
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 at a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_options(s3_endpoint) -> dict:
    """fsspec storage options for the moto server, with a recognisable fake secret."""
    return {
        "key": "testing-key",
        "secret": f"SECRET-{uuid.uuid4().hex}",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }


@pytest.fixture
def s3_bucket(s3_options) -> str:
    """A fresh bucket; yields its s3:// URI."""
    import boto3

    name = f"bucket-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        aws_access_key_id=s3_options["key"],
        aws_secret_access_key=s3_options["secret"],
        **s3_options["client_kwargs"],
    ).create_bucket(Bucket=name)
    return f"s3://{name}"


def ray_worker_pids(title_fragment: str) -> list[int]:
    """Pids of local Ray worker processes whose process title contains ``title_fragment``."""
    import psutil

    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if command.startswith("ray::") and title_fragment in command:
            pids.append(process.info["pid"])
    return pids
