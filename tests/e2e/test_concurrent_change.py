"""Swaps that stay right when the fleet changes under them: changes made with boto3 while a run goes on."""

from __future__ import annotations

import threading
import time
from typing import Any

from fleet_fixtures import APP, ENVIRONMENT

from e2e.test_aws_timing import HealthySampler, healthy_ids, orphan_instances, write_config
from e2e.test_deploy_dag import load_dag, task_states


def _once_the_plan_is_made(clients: Any, then: Any) -> threading.Thread:
    """Run `then()` after the run planned (its staging group exists), before it launches the fleet."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            groups = clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
            if any(g["AutoScalingGroupName"].startswith(f"{APP}-{ENVIRONMENT}stg-") for g in groups):
                then()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_live_group_that_scaled_after_planning_keeps_its_instances_and_the_new_group_gets_its_size(
    airflow_db, aws, fleet_clients, demo_network, live_of, tmp_path, monkeypatch
) -> None:
    write_config(tmp_path, monkeypatch)
    old = live_of(3)  # min 2, max 6, desired 3
    scaled_at: list[float] = []

    def autoscale_to_five() -> None:
        fleet_clients.autoscaling.set_desired_capacity(
            AutoScalingGroupName="shop-prod-v001", DesiredCapacity=5
        )
        scaled_at.append(time.monotonic())

    with HealthySampler(fleet_clients.elbv2, demo_network.target_group_arn) as sampler:
        watcher = _once_the_plan_is_made(fleet_clients, autoscale_to_five)
        run = load_dag("immutable_deploy").test(
            run_conf={"app": APP, "environment": ENVIRONMENT, "version": "2.0.0"}
        )
        watcher.join(timeout=5)
    assert str(run.state) == "success", task_states(run)
    assert scaled_at, "the live group was scaled after the run planned with 3"
    # Once the live group served with 5, the target group never had fewer: no serving instance was
    # terminated by a pin to the planned 3.
    reached = next(i for i, sample in enumerate(sampler.timeline) if sample[1] >= 5)
    lowest_after = min(sample[1] for sample in sampler.timeline[reached:])
    assert lowest_after >= 5, [s for s in sampler.timeline[reached:] if s[1] < 5][:3]
    new = fleet_clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["shop-prod-v002"])[
        "AutoScalingGroups"
    ][0]
    # The new group got the live group's size at the swap and its min/max back afterwards.
    assert (new["MinSize"], new["MaxSize"], new["DesiredCapacity"]) == (2, 6, 5)
    serving = healthy_ids(fleet_clients, demo_network.target_group_arn)
    assert len(serving) == 5 and not serving & old
    assert orphan_instances(fleet_clients) == set()


def test_the_next_deploy_repairs_a_swap_that_a_dead_run_left_with_two_groups_attached_and_pinned(
    airflow_db, aws, fleet_clients, demo_network, live_of, tmp_path, monkeypatch, caplog
) -> None:
    from immudeploy.core.config import load_config
    from immudeploy.release.deploy import attach_fleet, launch_fleet, plan_deploy

    write_config(tmp_path, monkeypatch)
    live_of(3)
    # A run that died mid-swap (marked failed, its worker lost): v002 launched, attached beside
    # v001, both pinned; nothing after that ran, its lock was broken.
    dead = plan_deploy(
        fleet_clients,
        load_config(),
        {"app": APP, "environment": ENVIRONMENT, "version": "1.5.0"},
        "immutable_deploy",
        "manual__died-mid-swap",
    )
    abandoned = launch_fleet(fleet_clients, dead, "ami-785db401")
    attach_fleet(fleet_clients, dead, abandoned.name)
    deadline = time.monotonic() + 30
    while len(healthy_ids(fleet_clients, demo_network.target_group_arn)) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    with HealthySampler(fleet_clients.elbv2, demo_network.target_group_arn) as sampler:
        run = load_dag("immutable_deploy").test(
            run_conf={"app": APP, "environment": ENVIRONMENT, "version": "2.0.0"}
        )
    assert str(run.state) == "success", task_states(run)
    repaired = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("Repaired an interrupted swap")
    ]
    assert any("detached and deleted shop-prod-v002" in line for line in repaired), repaired
    groups = {
        g["AutoScalingGroupName"]: g
        for g in fleet_clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    }
    # Exactly one group attached: the new release; v001 kept for rollback, the abandoned v002 gone.
    assert sorted(groups) == ["shop-prod-v001", "shop-prod-v003"]
    attached = [name for name, g in groups.items() if g["TargetGroupARNs"]]
    assert attached == ["shop-prod-v003"]
    serving = groups["shop-prod-v003"]
    assert (serving["MinSize"], serving["MaxSize"], serving["DesiredCapacity"]) == (2, 6, 3)
    assert not {p["ProcessName"] for p in serving["SuspendedProcesses"]} & {
        "AZRebalance",
        "AlarmNotification",
        "ScheduledActions",
    }
    assert sampler.lowest is not None and sampler.lowest >= 3
    assert orphan_instances(fleet_clients) == set()
