"""The observation window against moto (alarms, target health) and a stubbed ELB for states moto never reports."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import Stubber

from immudeploy.core.errors import InvalidInput
from immudeploy.release.observe import observe_release

ALARM = "shop-prod-5xx"


class FakeTime:
    """clock/sleep pair: a 10-minute window runs in milliseconds; `on_sleep` changes the world mid-window."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Any = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


@pytest.fixture
def fleet(aws: Any) -> dict[str, Any]:
    ec2, elbv2, cloudwatch = aws.client("ec2"), aws.client("elbv2"), aws.client("cloudwatch")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    groups = [
        elbv2.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc)["TargetGroups"][0][
            "TargetGroupArn"
        ]
        for name in ("shop-prod-web", "shop-prod-api")
    ]
    reservation = ec2.run_instances(ImageId="ami-785db401", MinCount=2, MaxCount=2, SubnetId=subnet)
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    for arn in groups:
        elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": i} for i in ids])
    cloudwatch.put_metric_alarm(
        AlarmName=ALARM,
        Namespace="AWS/ApplicationELB",
        MetricName="HTTPCode_Target_5XX_Count",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=10,
        ComparisonOperator="GreaterThanThreshold",
    )
    return {
        "ec2": ec2,
        "elbv2": elbv2,
        "cloudwatch": cloudwatch,
        "groups": groups,
        "ids": ids,
        "subnet": subnet,
    }


def _observe(fleet: dict[str, Any], fake: FakeTime, elbv2: Any = None, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "target_group_arns": fleet["groups"],
        "instance_ids": fleet["ids"],
        "alarm_names": [ALARM],
        "duration_seconds": 600.0,
        "poll_interval": 60.0,
        **overrides,
    }
    return observe_release(
        elbv2 or fleet["elbv2"], fleet["cloudwatch"], clock=fake.clock, sleep=fake.sleep, **settings
    )


def test_healthy_targets_and_quiet_alarm_pass(fleet: dict[str, Any]) -> None:
    fake = FakeTime()
    result = _observe(fleet, fake, duration_seconds=300.0, poll_interval=60.0)
    assert result.ok, result.reason
    assert result.checks == 6  # t = 0, 60, ..., 300
    assert fake.sleeps == [60.0] * 5
    assert "2 instance(s) healthy in 2 target group(s)" in result.reason


def test_window_shorter_than_a_poll_ends_on_time(fleet: dict[str, Any]) -> None:
    fake = FakeTime()
    result = _observe(fleet, fake, duration_seconds=90.0, poll_interval=60.0)
    assert result.ok and result.checks == 3
    assert fake.sleeps == [60.0, 30.0]


def test_zero_duration_checks_once(fleet: dict[str, Any]) -> None:
    fake = FakeTime()
    result = _observe(fleet, fake, duration_seconds=0.0)
    assert result.ok and result.checks == 1
    assert fake.sleeps == []


def test_alarm_in_alarm_state_fails_naming_it(fleet: dict[str, Any]) -> None:
    fleet["cloudwatch"].set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="5xx above 10")
    result = _observe(fleet, FakeTime())
    assert not result.ok
    assert result.checks == 1
    assert ALARM in result.reason and "5xx above 10" in result.reason


def test_alarm_firing_mid_window_stops_at_that_check(fleet: dict[str, Any]) -> None:
    fake = FakeTime()

    def fire(sleeps: int) -> None:
        if sleeps == 2:
            fleet["cloudwatch"].set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="spike")

    fake.on_sleep = fire
    result = _observe(fleet, fake)
    assert not result.ok and result.checks == 3
    assert f"alarm(s) in ALARM: {ALARM} (spike)" in result.reason


def test_insufficient_data_is_not_a_failure(fleet: dict[str, Any]) -> None:
    fleet["cloudwatch"].set_alarm_state(AlarmName=ALARM, StateValue="INSUFFICIENT_DATA", StateReason="new")
    assert _observe(fleet, FakeTime(), duration_seconds=0.0).ok


def test_missing_alarm_is_an_error_on_the_first_check(fleet: dict[str, Any]) -> None:
    fake = FakeTime()
    with pytest.raises(InvalidInput) as raised:
        _observe(fleet, fake, alarm_names=[ALARM, "shop-prod-5xxx"])
    assert raised.value.field == "alarm_names"
    assert "shop-prod-5xxx" in str(raised.value)
    assert fake.sleeps == []


def test_unregistered_instance_fails(fleet: dict[str, Any]) -> None:
    stranger = fleet["ec2"].run_instances(
        ImageId="ami-785db401", MinCount=1, MaxCount=1, SubnetId=fleet["subnet"]
    )["Instances"][0]["InstanceId"]
    result = _observe(fleet, FakeTime(), instance_ids=[*fleet["ids"], stranger])
    assert not result.ok and result.checks == 1
    assert f"{stranger} in shop-prod-web: not registered" in result.reason
    assert f"{stranger} in shop-prod-api: not registered" in result.reason


def test_target_going_unhealthy_mid_window_fails_naming_it(fleet: dict[str, Any], aws: Any) -> None:
    """moto never reports `unhealthy`: stub describe_target_health for the web group, keep api in moto."""
    web, api = fleet["groups"]
    first, second = fleet["ids"]
    elbv2 = aws.client("elbv2")
    real = fleet["elbv2"]

    def health(states: dict[str, dict[str, str]]) -> dict[str, Any]:
        return {
            "TargetHealthDescriptions": [
                {"Target": {"Id": i, "Port": 80}, "TargetHealth": state} for i, state in states.items()
            ]
        }

    healthy = {"State": "healthy"}
    failing = {"State": "unhealthy", "Reason": "Target.ResponseCodeMismatch", "Description": "502"}
    stubber = Stubber(elbv2)
    for states in (
        {first: healthy, second: healthy},
        {first: healthy, second: healthy},
        {first: healthy, second: failing},
    ):
        stubber.add_response("describe_target_health", health(states), {"TargetGroupArn": web})
        stubber.add_response(
            "describe_target_health", real.describe_target_health(TargetGroupArn=api), {"TargetGroupArn": api}
        )
    fake = FakeTime()
    with stubber:
        result = _observe(fleet, fake, elbv2=elbv2)
    assert not result.ok
    assert result.checks == 3
    assert (
        result.reason
        == f"target(s) not healthy: {second} in shop-prod-web: unhealthy (Target.ResponseCodeMismatch)"
    )
    assert first not in result.reason
    stubber.assert_no_pending_responses()


def test_inputs_validated(fleet: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        _observe(fleet, FakeTime(), instance_ids=[])
    with pytest.raises(InvalidInput):
        _observe(fleet, FakeTime(), poll_interval=0.0)
