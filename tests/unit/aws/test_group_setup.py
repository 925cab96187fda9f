"""Reading and applying a group's Auto Scaling setup: what moto cannot show, on stubbed AWS answers.

moto 5.2.5 neither stores nor returns DefaultInstanceWarmup or InstanceMaintenancePolicy, ignores
LifecycleHookSpecificationList and keys scaling policies by name alone; the reading side is
checked here against AWS's documented answers (botocore's Stubber validates them against the API
model), the creating side by the request a real launch sends to moto.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, LIVE_CAPACITY, FleetClients

from immudeploy.aws.groups.launch import LaunchSpec, launch_server_group
from immudeploy.aws.groups.setup import (
    GroupSetup,
    InheritedTag,
    apply_group_setup,
    copied_alarm_name,
    read_group_setup,
    setup_for_new_group,
)
from immudeploy.core.errors import InvalidInput
from immudeploy_dev.demo import DemoEnvironment

LIVE = f"{APP}-{ENVIRONMENT}-v001"
NEW = f"{APP}-{ENVIRONMENT}-v002"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
STEP_ARN = (
    "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:1b2c:autoScalingGroupName/"
    f"{LIVE}:policyName/queue-step"
)
HOOK = {
    "LifecycleHookName": "warm-cache",
    "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
    "NotificationTargetARN": "arn:aws:sqs:us-east-1:123456789012:warm-cache",
    "RoleARN": "arn:aws:iam::123456789012:role/asg-hooks",
    "NotificationMetadata": '{"cache": "products"}',
    "HeartbeatTimeout": 300,
    "DefaultResult": "CONTINUE",
}


@dataclass
class StubbedClients:
    autoscaling: Any
    cloudwatch: Any
    ec2: Any = None
    elbv2: Any = None
    ssm: Any = None


def _client(service: str) -> Any:
    return boto3.client(
        service, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def _raw_group(**overrides: Any) -> dict[str, Any]:
    return {
        "AutoScalingGroupName": LIVE,
        "MinSize": 2,
        "MaxSize": 6,
        "DesiredCapacity": 3,
        "DefaultCooldown": 300,
        "AvailabilityZones": ["us-east-1a"],
        "HealthCheckType": "ELB",
        "HealthCheckGracePeriod": 120,
        "CreatedTime": NOW,
        "TerminationPolicies": ["OldestLaunchTemplate"],
        "CapacityRebalance": True,
        "DefaultInstanceWarmup": 90,
        "InstanceMaintenancePolicy": {"MinHealthyPercentage": 90, "MaxHealthyPercentage": 120},
        "EnabledMetrics": [{"Metric": "GroupInServiceInstances", "Granularity": "1Minute"}],
        "Tags": [
            {"Key": "team", "Value": "payments", "PropagateAtLaunch": True},
            {"Key": "immutable:version", "Value": "1.0.0", "PropagateAtLaunch": True},
            {"Key": "aws:cloudformation:stack-name", "Value": "shop", "PropagateAtLaunch": True},
        ],
        **overrides,
    }


def _stub_read(
    raw: dict[str, Any],
    *,
    policies: list[dict[str, Any]] | None = None,
    actions: list[dict[str, Any]] | None = None,
    alarms: list[dict[str, Any]] | None = None,
) -> tuple[StubbedClients, list[Stubber]]:
    """A client pair answering read_group_setup's calls, in its order, as AWS documents them."""
    clients = StubbedClients(autoscaling=_client("autoscaling"), cloudwatch=_client("cloudwatch"))
    autoscaling, cloudwatch = Stubber(clients.autoscaling), Stubber(clients.cloudwatch)
    group = {"AutoScalingGroupName": raw["AutoScalingGroupName"]}
    autoscaling.add_response(
        "describe_auto_scaling_groups",
        {"AutoScalingGroups": [raw]},
        {"AutoScalingGroupNames": [raw["AutoScalingGroupName"]]},
    )
    autoscaling.add_response("describe_policies", {"ScalingPolicies": policies or []}, group)
    autoscaling.add_response(
        "describe_scheduled_actions", {"ScheduledUpdateGroupActions": actions or []}, group
    )
    autoscaling.add_response(
        "describe_lifecycle_hooks",
        {"LifecycleHooks": [{**HOOK, "AutoScalingGroupName": raw["AutoScalingGroupName"]}]},
        group,
    )
    if alarms is not None:
        cloudwatch.add_response(
            "describe_alarms",
            {"MetricAlarms": alarms},
            {"ActionPrefix": STEP_ARN, "AlarmTypes": ["MetricAlarm"]},
        )
    autoscaling.activate()
    cloudwatch.activate()
    return clients, [autoscaling, cloudwatch]


def test_everything_aws_returns_of_a_groups_setup_reaches_the_create_call() -> None:
    step = {
        "AutoScalingGroupName": LIVE,
        "PolicyName": "queue-step",
        "PolicyARN": STEP_ARN,
        "PolicyType": "StepScaling",
        "AdjustmentType": "ChangeInCapacity",
        "MetricAggregationType": "Average",
        "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 2}],
        "Alarms": [{"AlarmName": "queue-deep", "AlarmARN": "arn:aws:cloudwatch:::alarm:queue-deep"}],
        "Enabled": True,
    }
    alarm = {
        "AlarmName": "queue-deep",
        "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:queue-deep",
        "AlarmActions": [STEP_ARN, "arn:aws:sns:us-east-1:123456789012:oncall"],
        "MetricName": "ApproximateNumberOfMessagesVisible",
        "Namespace": "AWS/SQS",
        "Statistic": "Average",
        "Dimensions": [{"Name": "QueueName", "Value": "orders"}],
        "Period": 60,
        "EvaluationPeriods": 3,
        "Threshold": 100.0,
        "ComparisonOperator": "GreaterThanThreshold",
        "StateUpdatedTimestamp": NOW,
    }
    clients, stubs = _stub_read(_raw_group(), policies=[step], alarms=[alarm])

    setup = read_group_setup(clients, LIVE, now=NOW)

    for stub in stubs:
        stub.assert_no_pending_responses()
    created = setup.creation_arguments()
    assert created["DefaultInstanceWarmup"] == 90
    assert created["InstanceMaintenancePolicy"] == {"MinHealthyPercentage": 90, "MaxHealthyPercentage": 120}
    assert created["TerminationPolicies"] == ["OldestLaunchTemplate"]
    assert created["CapacityRebalance"] is True
    assert (created["HealthCheckType"], created["HealthCheckGracePeriod"]) == ("ELB", 120)
    # Every field a hook has, metadata and notification target included, before the first launch.
    assert created["LifecycleHookSpecificationList"] == [HOOK]
    assert setup.tags == (InheritedTag("team", "payments", True),)
    assert setup.enabled_metrics == ("GroupInServiceInstances",)
    # describe-only fields (ARN, group name, alarms) are not put back.
    assert setup.scaling_policies == (
        {k: v for k, v in step.items() if k not in ("AutoScalingGroupName", "PolicyARN", "Alarms")},
    )
    assert [a["AlarmName"] for a in setup.alarms] == ["queue-deep"]
    assert "StateUpdatedTimestamp" not in setup.alarms[0]


def test_schedules_that_have_run_out_are_not_copied_and_started_recurrences_start_now() -> None:
    hour = timedelta(hours=1)
    actions = [
        {
            "AutoScalingGroupName": LIVE,
            "ScheduledActionName": "once-done",
            "StartTime": NOW - hour,
            "MinSize": 1,
        },
        {
            "AutoScalingGroupName": LIVE,
            "ScheduledActionName": "once-later",
            "StartTime": NOW + hour,
            "MinSize": 1,
        },
        {
            "AutoScalingGroupName": LIVE,
            "ScheduledActionName": "daily",
            "StartTime": NOW - hour,
            "Recurrence": "0 7 * * *",
            "MinSize": 3,
        },
        {
            "AutoScalingGroupName": LIVE,
            "ScheduledActionName": "campaign-over",
            "Recurrence": "0 7 * * *",
            "EndTime": NOW - hour,
            "MinSize": 5,
        },
    ]
    clients, _ = _stub_read(_raw_group(), actions=actions)

    setup = read_group_setup(clients, LIVE, now=NOW)

    assert list(setup.scheduled_actions) == [
        {"ScheduledActionName": "once-later", "StartTime": NOW + hour, "MinSize": 1},
        # AWS refuses a start time in the past; a recurrence that has started just keeps going.
        {"ScheduledActionName": "daily", "Recurrence": "0 7 * * *", "MinSize": 3},
    ]


@pytest.mark.parametrize(
    ("live", "configured", "expected"),
    [
        # Nothing configured: the live group's values.
        (("ELB,EBS", 120), (None, None), ("ELB,EBS", 120, "live group")),
        # Configured: the operator's intent wins.
        (("ELB", 120), ("EC2", 600), ("EC2", 600, "configured")),
        (("ELB", 120), (None, 0), ("ELB", 0, "type live group, grace period configured")),
        # A live grace period of 0 is what the API and this tool's earlier versions left: the default.
        (("ELB", 0), (None, None), ("ELB", 300, "type live group, grace period default")),
    ],
)
def test_configured_health_checks_win_then_the_live_groups_then_the_defaults(
    live: tuple[str, int], configured: tuple[str | None, int | None], expected: tuple[str, int, str]
) -> None:
    raw = _raw_group(HealthCheckType=live[0], HealthCheckGracePeriod=live[1])
    clients, _ = _stub_read(raw)
    setup = setup_for_new_group(
        clients, LIVE, health_check_type=configured[0], health_check_grace_period=configured[1], now=NOW
    )
    assert (setup.health_check_type, setup.health_check_grace_period, setup.health_check_origin) == expected


def test_without_a_live_group_the_defaults_apply_and_nothing_is_read() -> None:
    setup = setup_for_new_group(None, None, health_check_type=None, health_check_grace_period=None)  # type: ignore[arg-type]
    assert (setup.health_check_type, setup.health_check_grace_period) == ("ELB", 300)
    assert setup.scaling_policies == () and setup.source_group is None


def test_a_bad_health_check_type_is_refused_before_anything_changes() -> None:
    with pytest.raises(InvalidInput, match="HTTP"):
        setup_for_new_group(None, None, health_check_type="HTTP", health_check_grace_period=None)  # type: ignore[arg-type]


def test_copied_alarm_names_follow_the_group() -> None:
    assert copied_alarm_name(f"{LIVE}-cpu-high", LIVE, NEW) == f"{NEW}-cpu-high"
    assert copied_alarm_name("queue-deep", LIVE, NEW) == f"queue-deep-{NEW}"
    # The next deploy renames the copy instead of growing the name.
    assert copied_alarm_name(f"queue-deep-{NEW}", NEW, "shop-prod-v003") == "queue-deep-shop-prod-v003"
    assert len(copied_alarm_name("x" * 255, LIVE, NEW)) == 255


# --- against moto ----------------------------------------------------------------------------------


@dataclass
class MotoClients(FleetClients):
    cloudwatch: Any = None


def _spec(net: DemoEnvironment, setup: GroupSetup) -> LaunchSpec:
    return LaunchSpec(
        app=APP,
        environment=ENVIRONMENT,
        version="2.0.0",
        image_id=BASE_IMAGE,
        deploy_id="deploy-setup-test",
        instance_type="t3.micro",
        subnet_ids=list(net.subnet_ids),
        security_group_ids=[net.security_group_id],
        target_group_arns=[],
        capacity=LIVE_CAPACITY,
        ssm_config_path=f"/immutable/{APP}/{ENVIRONMENT}/2.0.0",
        cache_key_prefix=f"{APP}/{ENVIRONMENT}/2.0.0",
        setup=setup,
    )


def test_the_create_call_carries_hooks_warmup_and_maintenance_policy(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    sent: list[dict[str, Any]] = []
    fleet_clients.autoscaling.meta.events.register(
        "provide-client-params.autoscaling.CreateAutoScalingGroup",
        lambda params, **_: sent.append(dict(params)),
    )
    setup = GroupSetup(
        default_instance_warmup=90,
        instance_maintenance_policy={"MinHealthyPercentage": 90, "MaxHealthyPercentage": 120},
        lifecycle_hooks=(HOOK,),
        tags=(InheritedTag("team", "payments", True),),
    )

    group = launch_server_group(fleet_clients, _spec(demo_network, setup))

    assert len(sent) == 1
    assert sent[0]["LifecycleHookSpecificationList"] == [HOOK]
    assert sent[0]["DefaultInstanceWarmup"] == 90
    assert sent[0]["InstanceMaintenancePolicy"] == {"MinHealthyPercentage": 90, "MaxHealthyPercentage": 120}
    assert (sent[0]["HealthCheckType"], sent[0]["HealthCheckGracePeriod"]) == ("ELB", 300)
    # The inherited tag is on the group from the start, so the first instances carry it.
    team = [(t["Value"], t["PropagateAtLaunch"]) for t in sent[0]["Tags"] if t["Key"] == "team"]
    assert team == [("payments", True)]
    hooks = fleet_clients.autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=group.name)
    assert [h["LifecycleHookName"] for h in hooks["LifecycleHooks"]] == ["warm-cache"]


def test_applying_a_setup_twice_adds_nothing(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    clients = MotoClients(**vars(fleet_clients), cloudwatch=aws.client("cloudwatch"))
    group = launch_server_group(clients, _spec(demo_network, GroupSetup()))
    setup = GroupSetup(
        termination_policies=("OldestInstance",),
        enabled_metrics=("GroupDesiredCapacity",),
        tags=(InheritedTag("team", "payments", True),),
        scaling_policies=(
            {"PolicyName": "simple", "PolicyType": "SimpleScaling", "AdjustmentType": "ChangeInCapacity"}
            | {"ScalingAdjustment": 1},
        ),
        scheduled_actions=({"ScheduledActionName": "daily", "Recurrence": "0 7 * * *", "MinSize": 3},),
        lifecycle_hooks=(HOOK,),
    )

    def counts() -> tuple[int, ...]:
        autoscaling = clients.autoscaling
        raw = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group.name])[
            "AutoScalingGroups"
        ][0]
        return (
            len(autoscaling.describe_policies(AutoScalingGroupName=group.name)["ScalingPolicies"]),
            len(
                autoscaling.describe_scheduled_actions(AutoScalingGroupName=group.name)[
                    "ScheduledUpdateGroupActions"
                ]
            ),
            len(autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=group.name)["LifecycleHooks"]),
            len(raw["EnabledMetrics"]),
            len(raw["Tags"]),
        )

    apply_group_setup(clients, group.name, setup)
    once = counts()
    apply_group_setup(clients, group.name, setup)
    assert counts() == once
    assert once[:4] == (1, 1, 1, 1)
