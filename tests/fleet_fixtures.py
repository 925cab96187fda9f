"""Fixtures that seed a VPC, load balancer, target group and live fleet in moto."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from immudeploy.core.plan import Capacity, ServerGroup
from immudeploy_dev.demo import DemoEnvironment, seed_demo_network, seed_live_fleet

APP = "shop"
ENVIRONMENT = "prod"
LIVE_VERSION = "1.0.0"
# One of the public AMIs moto ships.
BASE_IMAGE = "ami-785db401"
# min < desired < max, so tests can tell a restored capacity from a pinned one.
LIVE_CAPACITY = Capacity(min=2, max=6, desired=3)


@dataclass
class FleetClients:
    """Plain boto3 clients against the moto server, shaped like immudeploy.aws.AwsClients."""

    ec2: Any
    autoscaling: Any
    elbv2: Any
    ssm: Any
    dynamodb: Any = None


@pytest.fixture
def fleet_clients(aws: Any) -> FleetClients:
    return FleetClients(
        ec2=aws.client("ec2"),
        autoscaling=aws.client("autoscaling"),
        elbv2=aws.client("elbv2"),
        ssm=aws.client("ssm"),
        dynamodb=aws.client("dynamodb"),
    )


@pytest.fixture
def demo_network(fleet_clients: FleetClients) -> DemoEnvironment:
    return seed_demo_network(fleet_clients, APP, ENVIRONMENT)


@pytest.fixture
def live_fleet(fleet_clients: FleetClients, demo_network: DemoEnvironment) -> ServerGroup:
    """shop-prod-v001: 3 instances attached to the live target group, healthy at once (moto)."""
    return seed_live_fleet(
        fleet_clients, demo_network, APP, ENVIRONMENT, LIVE_VERSION, BASE_IMAGE, LIVE_CAPACITY
    )
