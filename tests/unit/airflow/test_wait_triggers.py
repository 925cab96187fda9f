"""The wait triggers (one class per kind) and the wait operators: serialisation, events, early return, deferral."""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred
from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore.stub import Stubber

from immudeploy.airflow import triggers as trigger_waits
from immudeploy.airflow.operators.waits import DrainSensor, HealthGateOperator, WaitForInServiceOperator
from immudeploy.airflow.triggers import TRIGGERS, DrainedTrigger, HealthyTrigger, InServiceTrigger
from immudeploy.aws import waits
from immudeploy.core.errors import DeployError, WaitTimeout
from unit.aws.test_waits import (
    I1,
    I2,
    INITIAL,
    TG_WEB,
    UNHEALTHY,
    add_target_health,
    add_throttle,
    registered_targets,
    stub_client,
    target,
    target_group,
)

CLASSPATH = "immudeploy.airflow.triggers.HealthyTrigger"


def run_trigger(trigger: BaseTrigger) -> list[TriggerEvent]:
    async def collect() -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


def public_state(trigger: BaseTrigger) -> dict[str, Any]:
    # `_log` is LoggingMixin's lazily created logger, not trigger state.
    return {key: value for key, value in vars(trigger).items() if not key.startswith("_")}


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Stubber]]:
    """Stubbed clients handed to the trigger and the operators instead of the connection's."""
    clients: dict[str, Any] = {}
    stubs: dict[str, Stubber] = {}

    def stub_for(service: str) -> Stubber:
        if service not in stubs:
            clients[service] = stub_client(service)
            stubs[service] = Stubber(clients[service])
            stubs[service].activate()
        return stubs[service]

    def build_client(service: str, aws_conn_id: str, region_name: str | None) -> Any:
        stub_for(service)
        return clients[service]

    monkeypatch.setattr(trigger_waits, "build_client", build_client)
    yield stub_for
    for stub in stubs.values():
        stub.assert_no_pending_responses()
        stub.deactivate()


# ---------------------------------------------------------------------------------------------
# Trigger
# ---------------------------------------------------------------------------------------------

KWARGS: dict[str, Any] = {
    "aws_conn_id": "aws_prod",
    "region_name": "eu-west-1",
    "group_name": None,
    "target_group_arns": [TG_WEB],
    "instance_ids": [I1, I2],
    "expected_count": 0,
    "fail_fast": True,
    # I1's health check grace period ends then (epoch seconds); I2 has none.
    "grace_ends": {I1: 1767225900.0},
    "poll_interval": 5.0,
    "timeout_seconds": 245.0,
}


def test_serialize_round_trip_and_no_state_beyond_args() -> None:
    trigger = HealthyTrigger(**KWARGS)
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == KWARGS
    json.dumps(kwargs)  # what the triggerer stores
    module_name, _, class_name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module_name), class_name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)

    class Bare(BaseTrigger):
        def serialize(self) -> tuple[str, dict[str, Any]]:
            return "bare", {}

        async def run(self):  # type: ignore[override]
            yield TriggerEvent({})

    assert set(vars(trigger)) - set(vars(Bare())) == set(KWARGS)


def test_one_trigger_class_per_kind_of_wait() -> None:
    assert set(TRIGGERS) == set(waits.WAIT_SERVICES)
    assert [TRIGGERS[kind] for kind in ("in_service", "healthy", "drained")] == [
        InServiceTrigger,
        HealthyTrigger,
        DrainedTrigger,
    ]


def test_trigger_success_against_moto(aws: Any) -> None:
    fleet = registered_targets(aws)
    trigger = HealthyTrigger(
        target_group_arns=[fleet.target_group_arn],
        instance_ids=fleet.instance_ids,
        poll_interval=0,
    )
    before = trigger.serialize(), public_state(trigger)
    events = run_trigger(trigger)
    assert [event.payload["status"] for event in events] == ["success"]
    assert events[0].payload["failed_ids"] == []
    assert "2 of 2 instances healthy" in events[0].payload["message"]
    assert (trigger.serialize(), public_state(trigger)) == before  # nothing left behind: safe to rerun


def test_trigger_failed_event_names_unhealthy_instance(stubbed: Callable[[str], Stubber]) -> None:
    stub = stubbed("elbv2")
    add_target_health(stub, TG_WEB, target(I1, "healthy"), INITIAL)
    add_target_health(stub, TG_WEB, target(I1, "healthy"), UNHEALTHY)
    trigger = HealthyTrigger(target_group_arns=[TG_WEB], instance_ids=[I1, I2], poll_interval=0)
    (event,) = run_trigger(trigger)
    assert event.payload["status"] == "failed"
    assert event.payload["failed_ids"] == [I2]
    assert I2 in event.payload["message"] and "ResponseCodeMismatch" in event.payload["message"]


def test_trigger_timeout_event_names_still_draining(stubbed: Callable[[str], Stubber]) -> None:
    stub = stubbed("elbv2")
    add_target_health(stub, TG_WEB, target(I1, "draining"), target(I2, "draining"))
    trigger = DrainedTrigger(
        target_group_arns=[TG_WEB], instance_ids=[I1, I2], poll_interval=0, timeout_seconds=0
    )
    (event,) = run_trigger(trigger)
    assert event.payload["status"] == "timeout"
    assert event.payload["failed_ids"] == [I1, I2]
    assert event.payload["message"].startswith("Timed out after 0s waiting for 2 targets drained")
    assert f"still draining: {I1} in web, {I2} in web" in event.payload["message"]


def test_trigger_rides_out_throttling(
    stubbed: Callable[[str], Stubber], monkeypatch: pytest.MonkeyPatch
) -> None:
    backoffs: list[int] = []

    def fast_backoff(attempt: int) -> float:
        backoffs.append(attempt)
        return 0.001

    monkeypatch.setattr(waits, "throttle_backoff", fast_backoff)
    stub = stubbed("elbv2")
    add_throttle(stub)
    add_throttle(stub, code="ThrottlingException")
    add_target_health(stub, TG_WEB, target(I1, "draining"))
    add_target_health(stub, TG_WEB)
    trigger = DrainedTrigger(target_group_arns=[TG_WEB], instance_ids=[I1], poll_interval=0)
    (event,) = run_trigger(trigger)
    assert event.payload["status"] == "success"
    assert backoffs == [0, 1]


def test_trigger_turns_aws_errors_into_a_failed_event(stubbed: Callable[[str], Stubber]) -> None:
    stubbed("elbv2").add_client_error("describe_target_health", service_error_code="TargetGroupNotFound")
    trigger = HealthyTrigger(target_group_arns=[TG_WEB], instance_ids=[I1], poll_interval=0)
    (event,) = run_trigger(trigger)
    assert event.payload["status"] == "failed"
    assert "TargetGroupNotFound" in event.payload["message"]


# ---------------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------------


def moto_group(aws: Any, target_group_arn: str, name: str = "web-prod-v001", size: int = 2) -> str:
    """An Auto Scaling group registered with the target group (moto: InService and healthy at once)."""
    ec2, autoscaling = aws.client("ec2"), aws.client("autoscaling")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": "ami-785db401", "InstanceType": "t3.micro"}
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
        MinSize=size,
        MaxSize=size,
        DesiredCapacity=size,
        VPCZoneIdentifier=subnet,
        TargetGroupARNs=[target_group_arn],
    )
    return name


def test_operators_return_early_when_already_done(aws: Any) -> None:
    fleet = registered_targets(aws, count=1)
    group = moto_group(aws, fleet.target_group_arn)
    in_service = WaitForInServiceOperator(task_id="in_service", group_name=group).execute({})
    assert len(in_service) == 2
    gate = HealthGateOperator(task_id="gate", group_name=group, target_group_arns=[fleet.target_group_arn])
    assert sorted(gate.execute({})) == sorted(in_service)

    fleet.elbv2.deregister_targets(
        TargetGroupArn=fleet.target_group_arn, Targets=[{"Id": iid} for iid in in_service]
    )
    drain = DrainSensor(task_id="drain", group_name=group, target_group_arns=[fleet.target_group_arn])
    assert sorted(drain.execute({})) == sorted(in_service)


def test_health_gate_defers_with_timeout_from_health_check_settings(
    stubbed: Callable[[str], Stubber],
) -> None:
    stub = stubbed("elbv2")
    # Neither instance belongs to an Auto Scaling group: no health check grace period to read.
    stubbed("autoscaling").add_response("describe_auto_scaling_instances", {"AutoScalingInstances": []})
    add_target_health(stub, TG_WEB, target(I1, "healthy"), INITIAL)
    stub.add_response("describe_target_groups", {"TargetGroups": [target_group(TG_WEB, 10, 3, 5)]})
    gate = HealthGateOperator(
        task_id="gate", instance_ids=[I1, I2], target_group_arns=[TG_WEB], poll_interval=5
    )
    with pytest.raises(TaskDeferred) as deferred:
        gate.execute({})
    timeout = 10 * 4 + 5 + 60  # interval * (threshold + 1) + check timeout + margin, floor 120
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(seconds=max(120, timeout) + 300)
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs["instance_ids"] == [I1, I2]
    assert kwargs["timeout_seconds"] == 120 and kwargs["poll_interval"] == 5
    assert kwargs["grace_ends"] == {}
    assert deferred.value.kwargs == {
        "trigger_args": {
            "target_group_arns": [TG_WEB],
            "instance_ids": [I1, I2],
            "fail_fast": True,
            "grace_ends": {},
        }
    }


def test_drain_sensor_defers_for_the_deregistration_delay(stubbed: Callable[[str], Stubber]) -> None:
    stub = stubbed("elbv2")
    add_target_health(stub, TG_WEB, target(I1, "draining"))
    stub.add_response(
        "describe_target_group_attributes",
        {"Attributes": [{"Key": "deregistration_delay.timeout_seconds", "Value": "120"}]},
    )
    drain = DrainSensor(task_id="drain", instance_ids=[I1], target_group_arns=[TG_WEB])
    with pytest.raises(TaskDeferred) as deferred:
        drain.execute({})
    assert deferred.value.trigger.serialize()[1]["timeout_seconds"] == 180
    assert isinstance(deferred.value.trigger, DrainedTrigger)


def test_health_gate_raises_at_once_on_unhealthy(stubbed: Callable[[str], Stubber]) -> None:
    # Outside any Auto Scaling group, so without a health check grace period (see test_health_grace).
    stubbed("autoscaling").add_response("describe_auto_scaling_instances", {"AutoScalingInstances": []})
    add_target_health(stubbed("elbv2"), TG_WEB, target(I1, "healthy"), UNHEALTHY)
    gate = HealthGateOperator(task_id="gate", instance_ids=[I1, I2], target_group_arns=[TG_WEB])
    with pytest.raises(DeployError, match=I2):
        gate.execute({})


def test_not_deferrable_blocks_in_wait_for(stubbed: Callable[[str], Stubber]) -> None:
    stub = stubbed("elbv2")
    add_target_health(stub, TG_WEB, target(I1, "draining"))
    add_target_health(stub, TG_WEB)
    drain = DrainSensor(
        task_id="drain",
        instance_ids=[I1],
        target_group_arns=[TG_WEB],
        deferrable=False,
        poll_interval=0,
        timeout_seconds=30,
    )
    assert drain.execute({}) == [I1]


def test_execute_complete_raises_on_anything_but_success() -> None:
    gate = HealthGateOperator(task_id="gate", instance_ids=[I1, I2], target_group_arns=[TG_WEB])
    args = {"target_group_arns": [TG_WEB], "instance_ids": [I1, I2], "fail_fast": True}
    failed = {"status": "failed", "message": f"1 of 2 instances unhealthy: {I2} in web", "failed_ids": [I2]}
    with pytest.raises(DeployError, match=I2):
        gate.execute_complete({}, event=failed, trigger_args=args)
    timed_out = {"status": "timeout", "message": f"Timed out ...: {I1} in web (initial)", "failed_ids": [I1]}
    with pytest.raises(WaitTimeout, match=I1):
        gate.execute_complete({}, event=timed_out, trigger_args=args)
    with pytest.raises(DeployError, match="without a status"):
        gate.execute_complete({}, event=None, trigger_args=args)
    success = {"status": "success", "message": "2 of 2 instances healthy", "failed_ids": []}
    assert gate.execute_complete({}, event=success, trigger_args=args) == [I1, I2]


def test_operators_template_their_inputs() -> None:
    for operator in (
        WaitForInServiceOperator(task_id="a", group_name="g"),
        HealthGateOperator(task_id="b", instance_ids=[I1], target_group_arns=[TG_WEB]),
        DrainSensor(task_id="c", target_group_arns=[TG_WEB]),
    ):
        assert {"group_name", "instance_ids", "target_group_arns", "timeout_seconds"} <= set(
            operator.template_fields
        )
        assert operator.deferrable is True
