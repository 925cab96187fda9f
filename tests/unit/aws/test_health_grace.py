"""The health gate and the health check grace period (issue 10, point 8): `unhealthy` is tolerated
while the instance's grace period lasts and fails fast after it, the same way blocking and deferred."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred
from fleet_fixtures import BASE_IMAGE, FleetClients

from immudeploy.airflow.operators.waits import HealthGateOperator
from immudeploy.aws.groups.inventory import describe_server_group
from immudeploy.aws.target_health import evaluate_health_gate
from immudeploy.core.errors import DeployError, WaitTimeout
from immudeploy.core.plan import ServerGroup
from immudeploy_dev.demo import DemoEnvironment
from unit.airflow.test_wait_triggers import run_trigger
from unit.aws.test_waits import I1, I2, TG_WEB, UNHEALTHY, target

GATE_TIMEOUT = 120.0


def launch_attached(clients: FleetClients, network: DemoEnvironment, grace_seconds: int) -> ServerGroup:
    """Two instances behind the live target group, in a group with this health check grace period.

    Made with boto3 as a console user would: the gate reads whatever group AWS describes.
    """
    name = "shop-prod-v002"
    clients.ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": BASE_IMAGE, "InstanceType": "t3.micro"}
    )
    clients.autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
        MinSize=2,
        MaxSize=2,
        DesiredCapacity=2,
        VPCZoneIdentifier=",".join(network.subnet_ids),
        TargetGroupARNs=[network.target_group_arn],
        HealthCheckType="ELB",
        HealthCheckGracePeriod=grace_seconds,
    )
    group = describe_server_group(clients, name)
    assert group is not None and len(group.instance_ids) == 2
    return group


def state_of(clients: FleetClients, target_group_arn: str, instance_id: str) -> str | None:
    found = clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)["TargetHealthDescriptions"]
    return next((d["TargetHealth"]["State"] for d in found if d["Target"]["Id"] == instance_id), None)


def launch_time(clients: FleetClients, instance_id: str) -> float:
    reservations = clients.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]["LaunchTime"].timestamp()


def health_gate(group: ServerGroup, network: DemoEnvironment, path: str) -> HealthGateOperator:
    return HealthGateOperator(
        task_id="health_gate",
        group_name=group.name,
        target_group_arns=[network.target_group_arn],
        timeout_seconds=GATE_TIMEOUT,
        poll_interval=0.1,
        deferrable=path == "deferred",
    )


def run_gate(gate: HealthGateOperator) -> Any:
    """As Airflow runs it: execute, and when it defers, the trigger's event into execute_complete."""
    try:
        return gate.execute({})
    except TaskDeferred as deferred:
        (event,) = run_trigger(deferred.trigger)
        return gate.execute_complete({}, event=event.payload, **(deferred.kwargs or {}))


@pytest.mark.parametrize("path", ["blocking", "deferred"])
def test_unhealthy_within_the_grace_period_is_tolerated_and_the_gate_passes_once_healthy(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, path: str
) -> None:
    group = launch_attached(fleet_clients, demo_network, grace_seconds=60)
    slow = group.instance_ids[0]
    # Its first health checks fail (a slow first boot): `unhealthy`, Target.FailedHealthChecks.
    aws.standin.mark_instance_broken(slow)
    assert state_of(fleet_clients, demo_network.target_group_arn, slow) == "unhealthy"

    with ThreadPoolExecutor(1) as pool:
        gate = pool.submit(run_gate, health_gate(group, demo_network, path))
        # About ten looks at the target, every one of them `unhealthy`.
        time.sleep(1.0)
        assert not gate.done(), f"the gate gave up within the grace period: {gate.exception()}"
        assert state_of(fleet_clients, demo_network.target_group_arn, slow) == "unhealthy"
        aws.standin.mark_instance_broken(slow, broken=False)
        passed = gate.result(timeout=30)

    assert sorted(passed) == sorted(group.instance_ids)


@pytest.mark.parametrize("path", ["blocking", "deferred"])
def test_unhealthy_after_the_grace_period_fails_fast_naming_the_instance_and_the_reason(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, path: str
) -> None:
    grace = 4
    group = launch_attached(fleet_clients, demo_network, grace_seconds=grace)
    broken = group.instance_ids[0]
    aws.standin.mark_instance_broken(broken)
    assert state_of(fleet_clients, demo_network.target_group_arn, broken) == "unhealthy"
    grace_end = launch_time(fleet_clients, broken) + grace

    started = time.monotonic()
    with pytest.raises(DeployError) as raised:
        run_gate(health_gate(group, demo_network, path))
    waited = time.monotonic() - started

    # Tolerated while the grace period lasted, failed as soon as it was over, long before the timeout.
    assert time.time() >= grace_end
    assert waited < grace + 3 < GATE_TIMEOUT
    assert not isinstance(raised.value, WaitTimeout)
    message = str(raised.value)
    assert f"{broken} in shop-prod-live (unhealthy: Target.FailedHealthChecks" in message
    assert "grace period is over" in message
    assert group.instance_ids[1] not in message


def test_without_a_grace_period_unhealthy_fails_at_once(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    # An SDK create with HealthCheckGracePeriod 0 has no grace period on AWS (moto alone makes it 300).
    group = launch_attached(fleet_clients, demo_network, grace_seconds=0)
    described = fleet_clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group.name])
    assert described["AutoScalingGroups"][0]["HealthCheckGracePeriod"] == 0
    broken = group.instance_ids[0]
    aws.standin.mark_instance_broken(broken)

    started = time.monotonic()
    with pytest.raises(
        DeployError, match=rf"{broken} in shop-prod-live \(unhealthy: Target.FailedHealthChecks"
    ):
        run_gate(health_gate(group, demo_network, "blocking"))
    # At once: within a few polls (launch times have one-second resolution), not the 120 s timeout.
    assert time.monotonic() - started < 10


def test_the_evaluator_judges_unhealthy_against_each_instances_grace_end() -> None:
    unhealthy_i1 = target(I1, "unhealthy", "Target.Timeout", "Request timed out")
    descriptions = {TG_WEB: [unhealthy_i1, UNHEALTHY]}
    # I1 within its grace period, I2 without one: only I2 fails, I1 is still waited for.
    status = evaluate_health_gate(descriptions, [I1, I2], grace_ends={I1: 1000.0}, now=990.0)
    assert status.failed and status.failed_ids == [I2] and status.pending == [I1]
    # Both past their grace period: both fail, each with AWS's reason.
    status = evaluate_health_gate(descriptions, [I1, I2], grace_ends={I1: 1000.0, I2: 1000.0}, now=1000.0)
    assert status.failed and status.failed_ids == [I1, I2]
    assert "Target.Timeout" in status.message and "Target.ResponseCodeMismatch" in status.message
    # Both within it: pending, and the message says why the gate keeps waiting.
    status = evaluate_health_gate(descriptions, [I1, I2], grace_ends={I1: 1000.0, I2: 1200.0}, now=900.0)
    assert not status.failed and not status.done and status.pending == [I1, I2]
    assert f"{I2} in web (unhealthy: Target.ResponseCodeMismatch" in status.message
    assert "tolerated during its health check grace period, 300s left" in status.message
