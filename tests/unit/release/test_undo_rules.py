"""Undo rules (issue 10, point 6) on the stand-in's AWS timing: the new group drains before it is
deleted, every wait ends at the plan's timeout, and a failure before launch touches nothing."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from types import TracebackType
from typing import Any

import pytest
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, LIVE_CAPACITY, FleetClients

from immudeploy.aws import waits
from immudeploy.aws.groups.inventory import find_server_groups
from immudeploy.aws.target_health import healthy_target_ids
from immudeploy.core.errors import WaitTimeout
from immudeploy.core.plan import ServerGroup
from immudeploy.release.deploy import attach_fleet, detach_old_fleet, launch_fleet
from immudeploy.release.undo import undo_failed_run
from immudeploy_dev.demo import DemoEnvironment
from unit.release.test_deploy_steps import planned, raw_group, registered, size

DELETE_IN_PROGRESS = "Delete in progress"


def target_states(elbv2: Any, target_group_arn: str) -> dict[str, str]:
    """{instance id: state} of every target DescribeTargetHealth lists (registered or draining)."""
    found = elbv2.describe_target_health(TargetGroupArn=target_group_arn)["TargetHealthDescriptions"]
    return {d["Target"]["Id"]: d["TargetHealth"]["State"] for d in found}


class TargetSampler(threading.Thread):
    """What someone watching the console sees every 20 ms, from clients of its own.

    Each sample reads the target states first and the group after them, so a target seen
    `draining` in a sample whose group still existed was draining before the group was deleted.
    """

    def __init__(self, aws: Any, target_group_arn: str, group_name: str) -> None:
        super().__init__(daemon=True)
        self.elbv2, self.autoscaling = aws.client("elbv2"), aws.client("autoscaling")
        self.target_group_arn, self.group_name = target_group_arn, group_name
        self.samples: list[tuple[dict[str, str], bool]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            states = target_states(self.elbv2, self.target_group_arn)
            found = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group_name])
            groups = found["AutoScalingGroups"]
            alive = bool(groups) and groups[0].get("Status") != DELETE_IN_PROGRESS
            self.samples.append((states, alive))
            self.stopped.wait(0.02)

    def __enter__(self) -> TargetSampler:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stopped.set()
        self.join()

    def seen_while_group_existed(self, state: str) -> set[str]:
        return {iid for states, alive in self.samples if alive for iid, s in states.items() if s == state}

    def fewest_healthy(self) -> int:
        return min(sum(s == "healthy" for s in states.values()) for states, _ in self.samples)


def existing_groups(clients: FleetClients) -> list[str]:
    """The app's groups not being deleted (AWS lists a deleted group a while as "Delete in progress")."""
    return sorted(group.name for group in find_server_groups(clients, APP, ENVIRONMENT))


def launched_and_attached(clients: FleetClients, plan: Any) -> ServerGroup:
    new = launch_fleet(clients, plan, BASE_IMAGE)
    attach_fleet(clients, plan, new.name)
    return new


def test_undo_lets_the_new_groups_targets_drain_before_it_deletes_the_group(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    tg = demo_network.target_group_arn
    plan = planned(fleet_clients)
    new = launched_and_attached(fleet_clients, plan)
    # Both fleets serve requests (time scale 0 so far: a target is healthy once registered).
    assert healthy_target_ids(fleet_clients, tg) == set(live_fleet.instance_ids) | set(new.instance_ids)
    # AWS's timing from here: a detach takes effect 0.1 s after the call, and a drain lasts the
    # whole deregistration delay (30 s x 0.05 = 1.5 s), as with clients holding connections open.
    aws.standin.configure(time_scale=0.05)
    aws.standin.set_target_group(tg, drain_fraction=1.0)
    # What the target group lists at the moment the delete of the new group goes out.
    observer = aws.client("elbv2")
    at_delete: dict[str, str] = {}

    def before_delete(params: dict[str, Any], **_: Any) -> None:
        if params.get("AutoScalingGroupName") == new.name:
            at_delete.update(target_states(observer, tg))

    fleet_clients.autoscaling.meta.events.register(
        "before-parameter-build.auto-scaling.DeleteAutoScalingGroup", before_delete
    )

    with TargetSampler(aws, tg, new.name) as sampler:
        actions = undo_failed_run(fleet_clients, plan, poll_interval=0.05)

    assert f"detached {new.name}" in actions and f"deleted {new.name}" in actions
    # Every serving target of the new group went through `draining` while its group still existed...
    assert set(new.instance_ids) <= sampler.seen_while_group_existed("draining")
    # ...and had left the target group when the delete was sent: no in-flight request was cut.
    assert at_delete, "the new group was never deleted"
    assert not set(new.instance_ids) & set(at_delete), at_delete
    # The old fleet served all along, and is all that serves now.
    assert sampler.fewest_healthy() >= LIVE_CAPACITY.desired
    assert existing_groups(fleet_clients) == [live_fleet.name]
    assert registered(fleet_clients, tg) == set(live_fleet.instance_ids)


def test_undo_waits_for_the_drain_no_longer_than_the_plans_drain_timeout(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    tg = demo_network.target_group_arn
    plan = replace(planned(fleet_clients), drain_timeout_seconds=1)
    new = launched_and_attached(fleet_clients, plan)
    # Drains last 30 s x 0.2 = 6 s here: longer than the plan allows.
    aws.standin.configure(time_scale=0.2)
    aws.standin.set_target_group(tg, drain_fraction=1.0)

    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"Timed out after 1s waiting for 3 targets drained") as raised:
        undo_failed_run(fleet_clients, plan, poll_interval=0.05)

    assert time.monotonic() - started < 4
    assert all(iid in str(raised.value) for iid in new.instance_ids)
    # Not deleted while its targets drain; the undo task's retry finishes the job once they left.
    assert new.name in existing_groups(fleet_clients)
    for iid in new.instance_ids:
        aws.standin.set_connections_closed(iid)
    assert f"deleted {new.name}" in undo_failed_run(fleet_clients, plan, poll_interval=0.05)
    assert existing_groups(fleet_clients) == [live_fleet.name]


def test_undo_waits_for_the_old_group_no_longer_than_the_plans_health_timeout(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    tg = demo_network.target_group_arn
    plan = replace(planned(fleet_clients), health_timeout_seconds=1)
    new = launched_and_attached(fleet_clients, plan)
    detach_old_fleet(fleet_clients, plan, new.name)
    assert registered(fleet_clients, tg) == set(new.instance_ids)
    # Re-registered old targets stay `initial` for 2 checks x 5 s x 0.5 = 5 s: longer than the plan allows.
    aws.standin.configure(time_scale=0.5)

    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"Timed out after 1s waiting for 3 instances healthy"):
        undo_failed_run(fleet_clients, plan, poll_interval=0.05)

    assert time.monotonic() - started < 4
    # The new group keeps serving until the old one is healthy again.
    assert set(new.instance_ids) <= healthy_target_ids(fleet_clients, tg)
    assert new.name in existing_groups(fleet_clients)


def test_undo_of_a_failure_before_launch_changes_nothing_and_does_not_wait_on_the_live_fleet(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    tg = demo_network.target_group_arn
    plan = planned(fleet_clients)
    # Mid-incident: every live target fails its health checks, and an operator has suspended
    # AZRebalance on the live group. Neither is the failed run's business.
    for iid in live_fleet.instance_ids:
        aws.standin.mark_instance_broken(iid)
    fleet_clients.autoscaling.suspend_processes(
        AutoScalingGroupName=live_fleet.name, ScalingProcesses=["AZRebalance"]
    )
    assert healthy_target_ids(fleet_clients, tg) == set()
    calls: list[str] = []
    for client in (fleet_clients.ec2, fleet_clients.autoscaling, fleet_clients.elbv2, fleet_clients.ssm):
        client.meta.events.register("before-call", lambda model, **_: calls.append(model.name))

    started = time.monotonic()
    actions = undo_failed_run(fleet_clients, plan, poll_interval=0.05)
    elapsed = time.monotonic() - started

    assert actions == ["nothing to undo"]
    assert elapsed < 2
    assert calls and [c for c in calls if not c.startswith(("Describe", "List", "Get"))] == []
    live = raw_group(fleet_clients, live_fleet.name)
    assert live is not None and "AZRebalance" in {p["ProcessName"] for p in live["SuspendedProcesses"]}
    assert size(fleet_clients, live_fleet.name) == LIVE_CAPACITY
    assert registered(fleet_clients, tg) == set(live_fleet.instance_ids)
    assert sorted(waits.group_instance_ids(fleet_clients.autoscaling, live_fleet.name)) == sorted(
        live_fleet.instance_ids
    )
