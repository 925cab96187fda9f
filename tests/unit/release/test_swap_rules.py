"""Swap rules that hold whatever happened before: names never come back, abandoned staging groups go,
the old group leaves the load balancer only when the new one can carry its load."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fleet_fixtures import BASE_IMAGE, FleetClients

from immudeploy.aws.groups.retire import delete_server_group
from immudeploy.core.errors import TrafficGuardError
from immudeploy.core.plan import ServerGroup
from immudeploy.release.deploy import attach_fleet, detach_old_fleet, launch_fleet, launch_staging
from unit.release.test_deploy_steps import group_names, planned, registered


def instances_running(clients: FleetClients, ids: list[str]) -> set[str]:
    reservations = clients.ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] == "running"}


def test_a_group_number_is_never_used_again_even_after_its_group_and_template_were_deleted(
    fleet_clients: FleetClients, live_fleet: ServerGroup
) -> None:
    first = launch_fleet(fleet_clients, planned(fleet_clients, run_id="run-a"), BASE_IMAGE)
    assert first.name == "shop-prod-v002"
    # Gone without a trace in Auto Scaling and EC2: the group and its launch template.
    assert delete_server_group(fleet_clients, first.name, force=True)
    assert "shop-prod-v002" not in group_names(fleet_clients)
    second = launch_fleet(fleet_clients, planned(fleet_clients, run_id="run-b"), BASE_IMAGE)
    assert second.name == "shop-prod-v003"


def test_a_staging_group_left_by_a_dead_run_is_deleted_with_its_instances_by_the_next_run(
    fleet_clients: FleetClients, live_fleet: ServerGroup, demo_network: Any
) -> None:
    dead = launch_staging(fleet_clients, planned(fleet_clients, run_id="died-mid-staging"), BASE_IMAGE)
    assert dead is not None and dead.instance_ids
    # The next run (it holds the lock, so the first one is not running any more).
    mine = launch_staging(fleet_clients, planned(fleet_clients, run_id="next-run"), BASE_IMAGE)
    assert mine is not None
    staging = [name for name in group_names(fleet_clients) if "stg" in name]
    assert staging == [mine.name]
    assert instances_running(fleet_clients, dead.instance_ids) == set()


def test_the_old_group_is_detached_only_when_the_new_one_has_its_share_healthy(
    fleet_clients: FleetClients, live_fleet: ServerGroup, demo_network: Any
) -> None:
    tg = demo_network.target_group_arn
    plan = planned(fleet_clients)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    attach_fleet(fleet_clients, plan, new.name)
    # Two of the new group's three instances stop: one healthy new target for an old group of 3.
    fleet_clients.ec2.stop_instances(InstanceIds=new.instance_ids[:2])
    with pytest.raises(TrafficGuardError, match=r"would keep 1 healthy targets, needs 3"):
        detach_old_fleet(fleet_clients, plan, new.name)
    assert set(live_fleet.instance_ids) <= registered(fleet_clients, tg)
    # With a configured minimum of 30 % (1 of 3) the same state is enough.
    relaxed = replace(plan, min_healthy_percent=30)
    assert detach_old_fleet(fleet_clients, relaxed, new.name) == sorted(live_fleet.instance_ids)
