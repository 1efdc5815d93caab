"""Shared test fixtures, one section per kind of resource a test needs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from backfills.resources.storage import LocalObjectStore, ObjectStore, S3ObjectStore

# Object stores: a local folder and the S3 API (moto in server mode over HTTP)

S3_TEST_PREFIX = "backfills-test"


@pytest.fixture(scope="session")
def s3_endpoint_url() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the whole session, with fake credentials so nothing reaches AWS."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        # Port 0: the OS picks a free port at bind time, so parallel sessions never collide.
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint_url: str) -> object:
    """A boto3 S3 client pointed at the moto server."""
    return boto3.client("s3", endpoint_url=s3_endpoint_url, region_name="us-east-1")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same tests on both backends: a local folder, and a fresh bucket (with a prefix) on the S3 API."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "root")
    client = request.getfixturevalue("s3_client")
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return S3ObjectStore(bucket, S3_TEST_PREFIX, client=client)
