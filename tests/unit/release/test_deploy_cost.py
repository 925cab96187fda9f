"""What a deploy cost: instance-minutes from the instances' launch and termination times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fleet_fixtures import FleetClients

from immudeploy.core.plan import ServerGroup
from immudeploy.release.deploy import retire
from immudeploy.release.summary import (
    InstanceSpan,
    deploy_cost,
    ended_at,
    group_filter,
    instance_spans,
    measure_deploy_cost,
)
from immudeploy_dev.demo import DemoEnvironment
from unit.release.test_deploy_steps import planned, swapped

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def span(group: str, start_minute: float, end_minute: float | None) -> InstanceSpan:
    end = T0 + timedelta(minutes=end_minute) if end_minute is not None else None
    return InstanceSpan(
        f"i-{group}-{start_minute}", group, "t3.micro", T0 + timedelta(minutes=start_minute), end
    )


def test_instance_minutes_count_staging_overlap_and_the_kept_group_so_far() -> None:
    new = [span("new", 10, None), span("new", 11, None)]
    old_ended = [span("old", -600, 25)]  # terminated 15 minutes after the new fleet's first launch
    old_running = [span("old", -600, None)]  # kept at full size
    staging = [span("stg", 0, 8)]

    cost = deploy_cost(new, old_ended + old_running, staging, now=T0 + timedelta(minutes=40))

    assert cost["staging"]["instance_minutes"] == 8.0
    assert cost["overlap"]["instance_minutes"] == 15.0
    assert cost["kept_so_far"]["instance_minutes"] == 30.0
    assert cost["total_instance_minutes"] == 53.0
    assert cost["overlap"]["instances"] == 1 and cost["overlap"]["instance_types"] == ["t3.micro"]


def test_the_end_time_comes_from_the_state_transition_reason() -> None:
    base: dict[str, Any] = {"LaunchTime": T0}
    assert ended_at({**base, "State": {"Name": "running"}}) is None
    assert ended_at(
        {
            **base,
            "State": {"Name": "terminated"},
            "StateTransitionReason": "User initiated (2026-01-01 12:30:05 GMT)",
        }
    ) == T0 + timedelta(minutes=30, seconds=5)
    # No time in the reason: counted as ended at launch, never invented.
    assert ended_at({**base, "State": {"Name": "terminated"}, "StateTransitionReason": ""}) == T0


def test_a_deploys_instance_minutes_match_the_launch_and_termination_times_ec2_reports(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients, keep_old_groups=0)
    new, _ = swapped(fleet_clients, plan)
    retire(fleet_clients, plan, new.name)
    now = datetime.now(UTC) + timedelta(minutes=5)

    cost = measure_deploy_cost(fleet_clients, plan, new.name, now=now)

    reservations = fleet_clients.ec2.describe_instances(Filters=group_filter([live_fleet.name]))[
        "Reservations"
    ]
    old = [i for r in reservations for i in r["Instances"]]
    assert len(old) == 3 and all(i["State"]["Name"] in ("shutting-down", "terminated") for i in old)
    new_start = min(s.launched_at for s in instance_spans(fleet_clients.ec2, group_filter([new.name])))
    expected = 0.0
    for instance in old:
        end = ended_at(instance)
        assert end is not None and end >= instance["LaunchTime"].replace(microsecond=0)
        expected += max(0.0, (end - max(instance["LaunchTime"], new_start)).total_seconds() / 60)
    assert cost["overlap"]["instances"] == 3
    assert cost["overlap"]["instance_minutes"] == round(expected, 1)
    assert cost["kept_so_far"]["instances"] == 0
    assert cost["staging"]["instances"] == 0
