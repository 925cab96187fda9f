"""The wait logic: evaluators, timeouts from AWS settings and the blocking loop.

moto only ever shows targets healthy or gone, so initial, unhealthy, draining and throttling are
driven with botocore's Stubber; the moto tests show the states moto can produce.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from immudeploy.aws import target_health, waits
from immudeploy.core.errors import DeployError, WaitTimeout

REGION = "us-east-1"
TG_WEB = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef"
TG_API = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/api/fedcba9876543210"
I1, I2, I3 = "i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2", "i-0ccccccccccccccc3"


# ---------------------------------------------------------------------------------------------
# Helpers (also imported by test_wait_triggers.py)
# ---------------------------------------------------------------------------------------------


def stub_client(service: str) -> Any:
    """A real boto3 client that never reaches a network: Stubber answers for it."""
    return boto3.client(
        service, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def target(instance_id: str, state: str, reason: str | None = None, description: str | None = None) -> dict:
    health: dict[str, str] = {"State": state}
    if reason:
        health["Reason"] = reason
    if description:
        health["Description"] = description
    return {
        "Target": {"Id": instance_id, "Port": 80},
        "HealthCheckPort": "traffic-port",
        "TargetHealth": health,
    }


def add_target_health(stub: Stubber, arn: str, *targets: dict) -> None:
    stub.add_response(
        "describe_target_health", {"TargetHealthDescriptions": list(targets)}, {"TargetGroupArn": arn}
    )


def add_throttle(stub: Stubber, code: str = "Throttling", message: str = "Rate exceeded") -> None:
    stub.add_client_error(
        "describe_target_health", service_error_code=code, service_message=message, http_status_code=400
    )


def target_group(arn: str, interval: int = 30, healthy: int = 5, timeout: int = 5) -> dict:
    return {
        "TargetGroupArn": arn,
        "TargetGroupName": arn.split("/")[-2],
        "HealthCheckIntervalSeconds": interval,
        "HealthyThresholdCount": healthy,
        "HealthCheckTimeoutSeconds": timeout,
    }


UNHEALTHY = target(
    I2, "unhealthy", "Target.ResponseCodeMismatch", "Health checks failed with these codes: [502]"
)
INITIAL = target(I2, "initial", "Elb.RegistrationInProgress", "Target registration is in progress")


@dataclass
class Sleeps:
    """A stand-in for time.sleep that records the delays instead of sleeping."""

    delays: list[float]

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps([])


@pytest.fixture
def elbv2() -> Iterator[tuple[Any, Stubber]]:
    client = stub_client("elbv2")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


# ---------------------------------------------------------------------------------------------
# Pure evaluators
# ---------------------------------------------------------------------------------------------


def asg(*instances: tuple[str, str, str], name: str = "web-prod-v002") -> dict:
    """A describe_auto_scaling_groups entry, complete enough for Stubber's validation."""
    return {
        "AutoScalingGroupName": name,
        "MinSize": 0,
        "MaxSize": 10,
        "DesiredCapacity": len(instances),
        "DefaultCooldown": 300,
        "AvailabilityZones": ["us-east-1a"],
        "HealthCheckType": "ELB",
        "CreatedTime": datetime(2026, 1, 1, tzinfo=UTC),
        "Instances": [
            {
                "InstanceId": iid,
                "AvailabilityZone": "us-east-1a",
                "LifecycleState": state,
                "HealthStatus": health,
                "ProtectedFromScaleIn": False,
            }
            for iid, state, health in instances
        ],
    }


def test_in_service_counts_and_names_pending_instances() -> None:
    group = asg((I1, "InService", "Healthy"), (I2, "Pending", "Healthy"))
    status = waits.evaluate_in_service(group, expected_count=3)
    assert not status.done and not status.failed
    assert status.pending == [I2]
    assert "1 of 3 instances InService" in status.message
    assert f"{I2} (Pending/Healthy)" in status.message
    assert "1 not launched yet" in status.message
    assert waits.evaluate_in_service(group, expected_count=1).done


def test_in_service_fails_when_the_group_is_gone() -> None:
    status = waits.evaluate_in_service(None, expected_count=2)
    assert status.failed and "does not exist" in status.message


def test_health_gate_initial_and_unregistered_are_pending() -> None:
    unused = target(I3, "unused", "Target.NotRegistered", "Target is not registered")
    status = target_health.evaluate_health_gate(
        {TG_WEB: [target(I1, "healthy"), INITIAL, unused]}, [I1, I2, I3]
    )
    assert not status.done and not status.failed
    assert status.pending == [I2, I3]
    assert "1 of 3 instances healthy" in status.message
    assert f"{I2} in web (initial: Elb.RegistrationInProgress" in status.message


def test_health_gate_needs_every_target_group() -> None:
    status = target_health.evaluate_health_gate({TG_WEB: [target(I1, "healthy")], TG_API: []}, [I1])
    assert not status.done and status.pending == [I1]
    assert f"{I1} in api (not registered)" in status.message
    both = {TG_WEB: [target(I1, "healthy")], TG_API: [target(I1, "healthy")]}
    assert target_health.evaluate_health_gate(both, [I1]).done


def test_health_gate_fails_fast_naming_instance_and_reason() -> None:
    status = target_health.evaluate_health_gate({TG_WEB: [target(I1, "healthy"), UNHEALTHY]}, [I1, I2])
    assert status.failed and status.failed_ids == [I2]
    assert I2 in status.message and "ResponseCodeMismatch" in status.message and "[502]" in status.message
    patient = target_health.evaluate_health_gate(
        {TG_WEB: [target(I1, "healthy"), UNHEALTHY]}, [I1, I2], fail_fast=False
    )
    assert not patient.failed and patient.pending == [I2] and "ResponseCodeMismatch" in patient.message


def test_health_gate_refuses_to_pass_vacuously() -> None:
    assert target_health.evaluate_health_gate({TG_WEB: [target(I1, "healthy")]}, []).failed
    assert target_health.evaluate_health_gate({}, [I1]).failed


def test_drain_counts_draining_targets_and_ignores_others() -> None:
    descriptions = {TG_WEB: [target(I1, "draining"), target(I2, "draining"), target("i-0other", "draining")]}
    status = target_health.evaluate_drain(descriptions, [I1, I2, I3])
    assert not status.done and status.pending == [I1, I2]
    assert status.message == f"2 of 3 targets still draining: {I1} in web, {I2} in web"
    assert target_health.evaluate_drain({TG_WEB: []}, [I1]).done
    everything = target_health.evaluate_drain(descriptions, None)
    assert not everything.done and len(everything.pending) == 3


def test_drain_is_not_done_while_an_instance_is_still_registered_healthy() -> None:
    # On AWS a detach deregisters asynchronously: right after it the targets are still healthy.
    status = target_health.evaluate_drain({TG_WEB: [target(I1, "healthy")]}, [I1])
    assert not status.done and status.pending == [I1]
    assert "not deregistered yet" in status.message and I1 in status.message


# ---------------------------------------------------------------------------------------------
# Blocking waits against stubbed responses
# ---------------------------------------------------------------------------------------------


def test_initial_then_healthy_passes_and_logs_progress(
    elbv2: tuple[Any, Stubber], sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    client, stub = elbv2
    add_target_health(stub, TG_WEB, target(I1, "healthy"), INITIAL)
    add_target_health(stub, TG_WEB, target(I1, "healthy"), target(I2, "healthy"))
    with caplog.at_level(logging.INFO, logger="immudeploy.aws.waits"):
        status = waits.wait_until_healthy(
            client, [TG_WEB], [I1, I2], timeout=60, poll_interval=0, sleep=sleeps
        )
    assert status.done and sleeps.delays == [0]
    assert "1 of 2 instances healthy" in caplog.text and I2 in caplog.text


def test_initial_then_unhealthy_fails_naming_the_instance(elbv2: tuple[Any, Stubber], sleeps: Sleeps) -> None:
    client, stub = elbv2
    add_target_health(stub, TG_WEB, target(I1, "healthy"), INITIAL)
    add_target_health(stub, TG_WEB, target(I1, "healthy"), UNHEALTHY)
    with pytest.raises(DeployError) as raised:
        waits.wait_until_healthy(client, [TG_WEB], [I1, I2], timeout=60, poll_interval=0, sleep=sleeps)
    assert not isinstance(raised.value, WaitTimeout)
    assert I2 in str(raised.value) and "ResponseCodeMismatch" in str(raised.value)
    assert I1 not in str(raised.value).split("unhealthy:")[1]


def test_draining_then_gone_passes(elbv2: tuple[Any, Stubber], sleeps: Sleeps) -> None:
    client, stub = elbv2
    add_target_health(stub, TG_WEB, target(I1, "draining"), target(I2, "draining"), target(I3, "healthy"))
    add_target_health(stub, TG_WEB, target(I2, "draining"), target(I3, "healthy"))
    add_target_health(stub, TG_WEB, target(I3, "healthy"))
    status = waits.wait_until_drained(
        client, [TG_WEB], [I1, I2], timeout=60, poll_interval=0.001, sleep=sleeps
    )
    assert status.done and sleeps.delays == [0.001, 0.001]


def test_draining_past_the_timeout_names_what_and_the_draining_targets(elbv2: tuple[Any, Stubber]) -> None:
    client, stub = elbv2
    add_target_health(stub, TG_WEB, target(I1, "draining"), target(I2, "draining"))
    with pytest.raises(WaitTimeout) as raised:
        waits.wait_until_drained(client, [TG_WEB], [I1, I2], timeout=0, poll_interval=0)
    message = str(raised.value)
    assert message.startswith("Timed out after 0s waiting for 2 targets drained from target groups web")
    assert f"2 of 2 targets still draining: {I1} in web, {I2} in web" in message


def test_timeout_counts_polls_against_the_clock(elbv2: tuple[Any, Stubber], sleeps: Sleeps) -> None:
    client, stub = elbv2
    for _ in range(3):
        add_target_health(stub, TG_WEB, target(I1, "draining"))
    ticks = iter(range(100))
    with pytest.raises(WaitTimeout, match=I1):
        waits.wait_until_drained(
            client, [TG_WEB], [I1], timeout=3, poll_interval=1, sleep=sleeps, clock=lambda: next(ticks)
        )
    assert len(sleeps.delays) == 2


def test_throttling_backs_off_then_passes(
    elbv2: tuple[Any, Stubber], sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    client, stub = elbv2
    add_throttle(stub)
    add_throttle(stub, code="RequestLimitExceeded", message="Request limit exceeded.")
    add_throttle(stub)
    add_target_health(stub, TG_WEB, target(I1, "healthy"))
    with caplog.at_level(logging.WARNING, logger="immudeploy.aws.waits"):
        status = waits.wait_until_healthy(client, [TG_WEB], [I1], timeout=600, poll_interval=5, sleep=sleeps)
    assert status.done
    assert sleeps.delays == [1.0, 2.0, 4.0]
    assert "throttled" in caplog.text


def test_throttling_until_the_timeout_is_a_timeout(elbv2: tuple[Any, Stubber], sleeps: Sleeps) -> None:
    client, stub = elbv2
    for _ in range(3):
        add_throttle(stub)
    ticks = iter([0, 0, 5, 11])
    with pytest.raises(WaitTimeout, match="AWS throttling"):
        waits.wait_until_healthy(
            client, [TG_WEB], [I1], timeout=10, poll_interval=5, sleep=sleeps, clock=lambda: next(ticks)
        )
    assert sleeps.delays == [1.0, 2.0]


def test_other_aws_errors_are_raised_at_once(elbv2: tuple[Any, Stubber], sleeps: Sleeps) -> None:
    client, stub = elbv2
    stub.add_client_error("describe_target_health", service_error_code="TargetGroupNotFound")
    with pytest.raises(ClientError, match="TargetGroupNotFound"):
        waits.wait_until_healthy(client, [TG_WEB], [I1], timeout=60, poll_interval=0, sleep=sleeps)
    assert sleeps.delays == []


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("Throttling", "x", True),
        ("ThrottlingException", "x", True),
        ("RequestLimitExceeded", "x", True),
        ("TooManyRequestsException", "x", True),
        ("SomethingElse", "Rate exceeded", True),
        ("ValidationError", "bad input", False),
    ],
)
def test_is_throttling(code: str, message: str, expected: bool) -> None:
    error = ClientError({"Error": {"Code": code, "Message": message}}, "DescribeTargetHealth")
    assert waits.is_throttling(error) is expected
    assert waits.throttle_backoff(10) == waits.THROTTLE_BACKOFF_CAP


def test_wait_until_in_service_with_stubbed_group(sleeps: Sleeps) -> None:
    client = stub_client("autoscaling")
    pending = asg((I1, "InService", "Healthy"), (I2, "Pending", "Healthy"))
    ready = asg((I1, "InService", "Healthy"), (I2, "InService", "Healthy"))
    with Stubber(client) as stub:
        for group in (pending, ready):
            stub.add_response(
                "describe_auto_scaling_groups",
                {"AutoScalingGroups": [group]},
                {"AutoScalingGroupNames": ["web-prod-v002"]},
            )
        status = waits.wait_until_in_service(
            client, "web-prod-v002", 2, timeout=60, poll_interval=0, sleep=sleeps
        )
        stub.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": []})
        with pytest.raises(DeployError, match="does not exist"):
            waits.wait_until_in_service(client, "web-prod-v002", 2, timeout=60, poll_interval=0, sleep=sleeps)
    assert status.done and "2 of 2 instances InService" in status.message


# ---------------------------------------------------------------------------------------------
# Timeouts from the target groups' settings
# ---------------------------------------------------------------------------------------------


def test_health_gate_timeout_from_health_check_settings(elbv2: tuple[Any, Stubber]) -> None:
    client, stub = elbv2
    stub.add_response(
        "describe_target_groups",
        {"TargetGroups": [target_group(TG_WEB, 10, 3, 5), target_group(TG_API, 30, 5, 5)]},
        {"TargetGroupArns": [TG_WEB, TG_API]},
    )
    # max(10 * 4 + 5, 30 * 6 + 5) + 60
    assert waits.health_gate_timeout(client, [TG_WEB, TG_API], margin=60) == 245
    stub.add_response("describe_target_groups", {"TargetGroups": [target_group(TG_WEB, 5, 2, 2)]})
    assert waits.health_gate_timeout(client, [TG_WEB], margin=10, floor=120) == 120


def test_drain_timeout_is_the_longest_deregistration_delay(elbv2: tuple[Any, Stubber]) -> None:
    client, stub = elbv2
    for arn, delay in ((TG_WEB, "300"), (TG_API, "30")):
        stub.add_response(
            "describe_target_group_attributes",
            {
                "Attributes": [
                    {"Key": "stickiness.enabled", "Value": "false"},
                    {"Key": waits.DEREGISTRATION_DELAY_KEY, "Value": delay},
                ]
            },
            {"TargetGroupArn": arn},
        )
    assert waits.drain_timeout(client, [TG_WEB, TG_API], margin=45) == 345


# ---------------------------------------------------------------------------------------------
# Against the moto server: the states it can show (healthy, gone)
# ---------------------------------------------------------------------------------------------


@dataclass
class MotoTargets:
    elbv2: Any
    target_group_arn: str
    instance_ids: list[str]


def registered_targets(aws: Any, count: int = 2) -> MotoTargets:
    """A VPC, a target group and `count` instances registered in it."""
    ec2, elbv2 = aws.client("ec2"), aws.client("elbv2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    arn = elbv2.create_target_group(Name="web", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="instance")[
        "TargetGroups"
    ][0]["TargetGroupArn"]
    instances = ec2.run_instances(ImageId="ami-785db401", MinCount=count, MaxCount=count, SubnetId=subnet)
    ids = [instance["InstanceId"] for instance in instances["Instances"]]
    elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": iid} for iid in ids])
    return MotoTargets(elbv2, arn, ids)


def test_moto_registered_targets_pass_the_gate(aws: Any) -> None:
    fleet = registered_targets(aws)
    status = waits.wait_until_healthy(fleet.elbv2, [fleet.target_group_arn], fleet.instance_ids, 5, 0.01)
    assert status.done and "2 of 2 instances healthy" in status.message
    # moto's defaults: interval 30, threshold 5, timeout 5; deregistration delay 300.
    assert waits.health_gate_timeout(fleet.elbv2, [fleet.target_group_arn], margin=60) == 245
    assert waits.drain_timeout(fleet.elbv2, [fleet.target_group_arn], margin=60) == 360


def test_moto_unregistered_instance_is_pending_then_times_out(aws: Any) -> None:
    fleet = registered_targets(aws)
    with pytest.raises(WaitTimeout, match="i-0123456789abcdef0 in web \\(not registered\\)"):
        waits.wait_until_healthy(
            fleet.elbv2, [fleet.target_group_arn], [*fleet.instance_ids, "i-0123456789abcdef0"], 0, 0
        )


def test_moto_deregistered_targets_drain_at_once(aws: Any, sleeps: Sleeps) -> None:
    fleet = registered_targets(aws)
    fleet.elbv2.deregister_targets(
        TargetGroupArn=fleet.target_group_arn, Targets=[{"Id": iid} for iid in fleet.instance_ids]
    )
    status = waits.wait_until_drained(
        fleet.elbv2, [fleet.target_group_arn], fleet.instance_ids, 5, 0.01, sleep=sleeps
    )
    assert status.done and sleeps.delays == []
    assert status.message == "0 of 2 targets still draining"
