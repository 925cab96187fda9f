"""Shared fixtures: a throwaway AIRFLOW_HOME and a moto server over HTTP on a free loopback port."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# Before anything imports airflow: tests never touch a developer's own metadata database.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="immudeploy-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", os.path.join(os.path.dirname(__file__), "..", "dags"))
# Fast polls and no retries in tests: a failing step fails the run at once.
os.environ.setdefault("IMMUDEPLOY_POLL_SECONDS", "0.2")
os.environ.setdefault("IMMUDEPLOY_RETRIES", "0")
os.environ.setdefault("IMMUDEPLOY_RETRY_DELAY_SECONDS", "1")
os.environ.setdefault("IMMUDEPLOY_LOCK_WAIT_SECONDS", "60")
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import boto3  # noqa: E402

from immudeploy_dev.standin import Settings, StandIn  # noqa: E402

REGION = "us-east-1"
# The connection's secret: tests assert it never shows up in a task log.
SECRET_KEY = "moto-secret-key-never-logged-3f9a"


@dataclass
class MotoAws:
    """A running moto server and the Airflow connection that points at it."""

    endpoint_url: str
    standin: StandIn
    region: str = REGION

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key=SECRET_KEY,
        )

    def connection_json(self) -> str:
        return json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": SECRET_KEY,
                "extra": {"region_name": self.region, "endpoint_url": self.endpoint_url},
            }
        )

    def reset(self, time_scale: float = 0.0) -> None:
        """moto's state and the layer's cleared; the layer back to `time_scale` with default settings."""
        self.standin.reset()
        self.standin.configure(**{**Settings().to_dict(), "time_scale": time_scale})


@pytest.fixture(scope="session")
def standin_server() -> Iterator[StandIn]:
    """moto with AWS's rules (asynchronous attach/detach, draining, force delete) at time scale 0.

    Every duration is 0, so timing does not slow the tests down, but the order of events is AWS's:
    a detach deregisters on the next request, a force delete terminates protected instances.
    Tests about timing use `timed_aws`, which sets a time scale on the same server.
    """
    server = StandIn(time_scale=0.0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server(standin_server: StandIn) -> MotoAws:
    return MotoAws(endpoint_url=standin_server.endpoint_url, standin=standin_server)


@pytest.fixture
def aws(moto_server: MotoAws, monkeypatch: pytest.MonkeyPatch) -> MotoAws:
    """A clean moto state and `aws_default` pointing at it."""
    moto_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_server.connection_json())
    return moto_server


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """The throwaway metadata database (SQLite in the temporary AIRFLOW_HOME), created once."""
    from airflow.utils.db import initdb

    initdb()


# Seeded VPC, load balancer and fleets (tests/fleet_fixtures.py).
pytest_plugins = ["fleet_fixtures"]
