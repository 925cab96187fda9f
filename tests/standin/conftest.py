"""Fixtures for the stand-in's tests: a StandIn on a hand-moved clock, boto3 clients, a small ALB fleet."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from immudeploy_dev.standin import ManualClock, StandIn

from .helpers import Clients, Network, make_clients, make_network

# The layer's own log is what a failing test should show, not werkzeug's access log.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def standin(clock: ManualClock) -> Iterator[StandIn]:
    """A stand-in at time scale 1 on a hand-moved clock: the tests read in real AWS seconds and never sleep."""
    with StandIn(1.0, clock=clock) as s:
        s.reset()
        try:
            yield s
        finally:
            s.reset()


@pytest.fixture
def aws(standin: StandIn) -> Clients:
    return make_clients(standin.endpoint_url)


@pytest.fixture
def net(aws: Clients) -> Network:
    return make_network(aws)
