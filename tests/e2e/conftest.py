"""Fixtures of the end-to-end tests on the AWS behaviour layer."""

from __future__ import annotations

from typing import Any

import pytest
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT

from e2e.test_aws_timing import TIME_SCALE, healthy_ids, wait_healthy
from immudeploy.core.plan import Capacity
from immudeploy_dev.demo import seed_live_fleet


@pytest.fixture
def live_of(aws: Any, fleet_clients: Any, demo_network: Any):
    """Seed a live group of `size` (instantly), wait until it serves, then turn AWS's timing on."""

    def seed(size: int) -> set[str]:
        capacity = Capacity(min=max(size - 1, 1), max=2 * size, desired=size)
        seed_live_fleet(fleet_clients, demo_network, APP, ENVIRONMENT, "1.0.0", BASE_IMAGE, capacity)
        wait_healthy(fleet_clients, demo_network.target_group_arn, size)
        aws.standin.configure(time_scale=TIME_SCALE)
        return healthy_ids(fleet_clients, demo_network.target_group_arn)

    return seed
