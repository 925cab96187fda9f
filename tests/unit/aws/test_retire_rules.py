"""Retirement rules (issue 10, point 7): every old group retention does not keep is deleted, or
retire fails naming each one it could not delete and why; never an old fleet left with a warning."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, FleetClients

from immudeploy.aws import waits
from immudeploy.aws.groups.inventory import find_server_groups
from immudeploy.aws.groups.retire import retire_server_groups
from immudeploy.core.errors import DeployError
from immudeploy.core.plan import ServerGroup
from immudeploy.release.deploy import attach_fleet, detach_old_fleet, launch_fleet, retire
from immudeploy_dev.demo import DemoEnvironment
from unit.release.test_deploy_steps import planned, swapped


def existing_groups(clients: FleetClients) -> list[str]:
    """The app's groups not being deleted (AWS lists a deleted group a while as "Delete in progress")."""
    return sorted(group.name for group in find_server_groups(clients, APP, ENVIRONMENT))


def without_retries(aws: Any) -> FleetClients:
    """Clients that show the first error AWS answers with, as the task sees it once retries are spent."""
    config = Config(retries={"total_max_attempts": 1})

    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=aws.endpoint_url,
            region_name=aws.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=config,
        )

    return FleetClients(client("ec2"), client("autoscaling"), client("elbv2"), client("ssm"))


def test_retire_deletes_what_it_can_then_fails_naming_an_old_group_still_attached(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    tg = demo_network.target_group_arn
    # Run A swapped v001 for v002; run B attached v003 beside v002, and v002 was never detached.
    swapped(fleet_clients, planned(fleet_clients, run_id="run-a"))
    plan_b = planned(fleet_clients, run_id="run-b")
    current = launch_fleet(fleet_clients, plan_b, BASE_IMAGE)
    attach_fleet(fleet_clients, plan_b, current.name)
    assert existing_groups(fleet_clients) == ["shop-prod-v001", "shop-prod-v002", "shop-prod-v003"]

    with pytest.raises(DeployError) as raised:
        retire_server_groups(fleet_clients, APP, ENVIRONMENT, 0, current.name, [tg])

    message = str(raised.value)
    assert "shop-prod-v002: still attached to target group(s) shop-prod-live" in message
    assert "deleted shop-prod-v001" in message
    # The detached one went anyway; the attached one still serves beside the current group.
    assert existing_groups(fleet_clients) == ["shop-prod-v002", "shop-prod-v003"]


def test_retire_fails_naming_an_old_group_whose_targets_are_still_registered(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    tg = demo_network.target_group_arn
    plan = planned(fleet_clients, keep_old_groups=0)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    attach_fleet(fleet_clients, plan, new.name)
    # AWS deregisters 0.1 s after the detach and drains for the whole 30 s x 0.05 = 1.5 s delay.
    aws.standin.configure(time_scale=0.05)
    aws.standin.set_target_group(tg, drain_fraction=1.0)
    detach_old_fleet(fleet_clients, plan, new.name)

    with pytest.raises(
        DeployError, match=r"shop-prod-v001: 3 instance\(s\) still registered as targets"
    ) as raised:
        retire(fleet_clients, plan, new.name)

    assert all(iid in str(raised.value) for iid in live_fleet.instance_ids)
    assert existing_groups(fleet_clients) == ["shop-prod-v001", "shop-prod-v002"]
    # Once its targets have left, the task's retry deletes it.
    waits.wait_until_drained(
        fleet_clients.elbv2, [tg], live_fleet.instance_ids, timeout=10, poll_interval=0.05
    )
    assert retire(fleet_clients, plan, new.name)["deleted_groups"] == ["shop-prod-v001"]
    assert existing_groups(fleet_clients) == ["shop-prod-v002"]


def test_retire_fails_naming_a_group_whose_delete_aws_refused_and_still_deletes_the_others(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    tg = demo_network.target_group_arn
    swapped(fleet_clients, planned(fleet_clients, run_id="run-a"))
    current, _ = swapped(fleet_clients, planned(fleet_clients, run_id="run-b"))
    assert existing_groups(fleet_clients) == ["shop-prod-v001", "shop-prod-v002", "shop-prod-v003"]
    clients = without_retries(aws)

    # AWS refuses the first delete (v001's, the oldest goes first) and accepts the next one.
    refused = aws.standin.inject("autoscaling", "DeleteAutoScalingGroup", "error", status=503, count=1)
    with refused, pytest.raises(DeployError) as raised:
        retire_server_groups(clients, APP, ENVIRONMENT, 0, current.name, [tg])

    message = str(raised.value)
    assert "shop-prod-v001: AWS refused to delete it" in message and "ServiceUnavailable" in message
    assert "deleted shop-prod-v002" in message
    assert existing_groups(fleet_clients) == ["shop-prod-v001", "shop-prod-v003"]
