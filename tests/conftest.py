"""Session fixtures: a local Ray, a demo cohort, a tiny trained run and a local S3 server (moto)
on 127.0.0.1. Plain helpers live in ``helpers.py``."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from helpers import DEMO_SHAPE, free_port, tiny_train_config


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

    return generate_cohort(
        tmp_path_factory.mktemp("cohort"), n_cases=5, shape=DEMO_SHAPE, thick_fraction=0.0
    )


@pytest.fixture(scope="session")
def trained_run(ray_local, demo_manifest, tmp_path_factory) -> Path:
    """A finished three-plane run on the demo cohort."""
    from stroke_ray.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_train_config(demo_manifest, out))
    return out


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
