"""The new group inherits the live group's Auto Scaling setup, held during the swap and active after it.

The live group here is made the way an operator's tooling would make it (boto3, not this project),
with a target-tracking, a step and a simple policy, an alarm driving the step policy, a scheduled
action, lifecycle hooks, termination policies, warmup, capacity rebalance, a maintenance policy,
enabled metrics and a custom tag. Everything is checked with describe_* calls, as a user would.

moto (5.2.5) limits what can be checked here, so these are not asserted (tests/unit/aws/
test_group_setup.py covers them on stubbed AWS answers): it neither stores nor returns
DefaultInstanceWarmup or InstanceMaintenancePolicy; it ignores LifecycleHookSpecificationList
(the hooks are checked as put_lifecycle_hook leaves them) and NotificationMetadata; and it keys
scaling policies and scheduled actions by name alone, so putting one on the new group takes it
off the live group (AWS keeps both): nothing is asserted about the live group's own copies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import pytest
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, LIVE_CAPACITY, LIVE_VERSION, FleetClients

from immudeploy.aws.groups.capacity import SWAP_SUSPENDED_PROCESSES
from immudeploy.aws.groups.setup import TAG_SERVER_GROUP
from immudeploy.core.naming import (
    TAG_DEPLOY_ID,
    TAG_VERSION,
    as_aws_tags,
    from_aws_tags,
    identity_tags,
)
from immudeploy.core.plan import Capacity
from immudeploy.release.deploy import attach_fleet, detach_old_fleet, finish_swap, launch_fleet, retire
from immudeploy.release.rollback import bring_up_rollback_fleet, plan_rollback
from immudeploy_dev.demo import DemoEnvironment
from unit.release.test_deploy_steps import deployment_config, group_names, planned, raw_group, size

LIVE = f"{APP}-{ENVIRONMENT}-v001"
NEW = f"{APP}-{ENVIRONMENT}-v002"
HELD = {"AlarmNotification", "ScheduledActions"}
TARGET_TRACKING = {
    "PredefinedMetricSpecification": {"PredefinedMetricType": "ASGAverageCPUUtilization"},
    "TargetValue": 55.0,
}
STEPS = [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 2}]
METRICS = ["GroupDesiredCapacity", "GroupInServiceInstances"]


@dataclass
class SetupClients(FleetClients):
    """The fleet's clients plus CloudWatch: step and simple policies act through alarms."""

    cloudwatch: Any = None


@pytest.fixture
def clients(aws: Any, fleet_clients: FleetClients) -> SetupClients:
    shared = {f.name: getattr(fleet_clients, f.name) for f in fields(fleet_clients)}
    return SetupClients(**shared, cloudwatch=aws.client("cloudwatch"))


def policy_arn(clients: SetupClients, group: str, name: str) -> str:
    found = clients.autoscaling.describe_policies(AutoScalingGroupName=group, PolicyNames=[name])
    return str(found["ScalingPolicies"][0]["PolicyARN"])


@pytest.fixture
def live_group(clients: SetupClients, demo_network: DemoEnvironment) -> str:
    """shop-prod-v001 serving the live target group, with a full Auto Scaling setup of its own."""
    ours = {**identity_tags(APP, ENVIRONMENT, LIVE_VERSION), TAG_DEPLOY_ID: "made-by-terraform"}
    clients.ec2.create_launch_template(
        LaunchTemplateName=LIVE,
        LaunchTemplateData={
            "ImageId": BASE_IMAGE,
            "InstanceType": "t3.micro",
            "SecurityGroupIds": [demo_network.security_group_id],
        },
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": as_aws_tags(ours)}],
    )
    tags = [{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in ours.items()]
    tags += [
        {"Key": "team", "Value": "payments", "PropagateAtLaunch": True},
        {"Key": "cost-center", "Value": "4711", "PropagateAtLaunch": False},
    ]
    autoscaling = clients.autoscaling
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=LIVE,
        LaunchTemplate={"LaunchTemplateName": LIVE, "Version": "1"},
        MinSize=LIVE_CAPACITY.min,
        MaxSize=LIVE_CAPACITY.max,
        DesiredCapacity=LIVE_CAPACITY.desired,
        VPCZoneIdentifier=",".join(demo_network.subnet_ids),
        TargetGroupARNs=[demo_network.target_group_arn],
        HealthCheckType="ELB",
        HealthCheckGracePeriod=120,
        TerminationPolicies=["OldestLaunchTemplate", "OldestInstance"],
        CapacityRebalance=True,
        DefaultInstanceWarmup=90,
        InstanceMaintenancePolicy={"MinHealthyPercentage": 90, "MaxHealthyPercentage": 120},
        Tags=[{"ResourceId": LIVE, "ResourceType": "auto-scaling-group", **tag} for tag in tags],
    )
    autoscaling.put_lifecycle_hook(
        AutoScalingGroupName=LIVE,
        LifecycleHookName="warm-cache",
        LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
        HeartbeatTimeout=300,
        DefaultResult="CONTINUE",
    )
    autoscaling.put_lifecycle_hook(
        AutoScalingGroupName=LIVE,
        LifecycleHookName="drain-connections",
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
        HeartbeatTimeout=120,
        DefaultResult="ABANDON",
    )
    autoscaling.put_scaling_policy(
        AutoScalingGroupName=LIVE,
        PolicyName="cpu-target",
        PolicyType="TargetTrackingScaling",
        EstimatedInstanceWarmup=60,
        TargetTrackingConfiguration=TARGET_TRACKING,
    )
    autoscaling.put_scaling_policy(
        AutoScalingGroupName=LIVE,
        PolicyName="queue-step",
        PolicyType="StepScaling",
        AdjustmentType="ChangeInCapacity",
        MetricAggregationType="Average",
        StepAdjustments=STEPS,
    )
    autoscaling.put_scaling_policy(
        AutoScalingGroupName=LIVE,
        PolicyName="night-simple",
        PolicyType="SimpleScaling",
        AdjustmentType="ChangeInCapacity",
        ScalingAdjustment=-1,
        Cooldown=240,
    )
    clients.cloudwatch.put_metric_alarm(
        AlarmName=f"{LIVE}-cpu-high",
        Namespace="AWS/EC2",
        MetricName="CPUUtilization",
        Dimensions=[{"Name": "AutoScalingGroupName", "Value": LIVE}],
        Statistic="Average",
        Period=60,
        EvaluationPeriods=2,
        Threshold=80.0,
        ComparisonOperator="GreaterThanThreshold",
        AlarmActions=[policy_arn(clients, LIVE, "queue-step")],
    )
    autoscaling.put_scheduled_update_group_action(
        AutoScalingGroupName=LIVE,
        ScheduledActionName="business-hours",
        Recurrence="0 7 * * MON-FRI",
        MinSize=3,
        MaxSize=6,
        DesiredCapacity=4,
        TimeZone="Europe/Berlin",
    )
    autoscaling.enable_metrics_collection(AutoScalingGroupName=LIVE, Granularity="1Minute", Metrics=METRICS)
    return LIVE


def setup_seen(clients: SetupClients, group: str) -> dict[str, Any]:
    """What a user sees of a group's setup with describe_* calls (names, kinds, values; no ARNs)."""
    autoscaling = clients.autoscaling
    raw = raw_group(clients, group)
    assert raw is not None, f"{group} does not exist"
    policies = autoscaling.describe_policies(AutoScalingGroupName=group)["ScalingPolicies"]
    actions = autoscaling.describe_scheduled_actions(AutoScalingGroupName=group)[
        "ScheduledUpdateGroupActions"
    ]
    hooks = autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=group)["LifecycleHooks"]
    alarms = [
        alarm
        for alarm in clients.cloudwatch.describe_alarms()["MetricAlarms"]
        if {"Name": "AutoScalingGroupName", "Value": group} in alarm.get("Dimensions", [])
    ]
    return {
        "policies": sorted(
            (
                p["PolicyName"],
                p["PolicyType"],
                p.get("ScalingAdjustment"),
                p.get("Cooldown"),
                _json(p.get("StepAdjustments")),
                _json(p.get("TargetTrackingConfiguration")),
            )
            for p in policies
        ),
        "scheduled_actions": sorted(
            (
                a["ScheduledActionName"],
                a.get("Recurrence"),
                a.get("MinSize"),
                a.get("MaxSize"),
                a.get("DesiredCapacity"),
            )
            for a in actions
        ),
        "lifecycle_hooks": sorted(
            (h["LifecycleHookName"], h["LifecycleTransition"], h["HeartbeatTimeout"], h["DefaultResult"])
            for h in hooks
        ),
        "alarms": sorted((a["AlarmName"], tuple(a.get("AlarmActions", []))) for a in alarms),
        "termination_policies": raw["TerminationPolicies"],
        "capacity_rebalance": raw.get("CapacityRebalance"),
        "health_check": (raw["HealthCheckType"], raw["HealthCheckGracePeriod"]),
        "metrics": sorted(m["Metric"] for m in raw.get("EnabledMetrics", [])),
        "tags": sorted((t["Key"], t["Value"], t["PropagateAtLaunch"]) for t in raw["Tags"]),
    }


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if value else ""


def suspended(clients: SetupClients, group: str) -> set[str]:
    raw = raw_group(clients, group)
    assert raw is not None
    return {p["ProcessName"] for p in raw.get("SuspendedProcesses", [])}


# --- launch ----------------------------------------------------------------------------------------


def test_the_new_group_inherits_the_live_groups_auto_scaling_setup(
    clients: SetupClients, live_group: str
) -> None:
    plan = planned(clients)
    new = launch_fleet(clients, plan, BASE_IMAGE)

    assert new.name == NEW
    seen = setup_seen(clients, NEW)
    assert seen["policies"] == [
        ("cpu-target", "TargetTrackingScaling", None, None, "", _json(TARGET_TRACKING)),
        ("night-simple", "SimpleScaling", -1, 240, "", ""),
        ("queue-step", "StepScaling", None, None, _json(STEPS), ""),
    ]
    assert seen["scheduled_actions"] == [("business-hours", "0 7 * * MON-FRI", 3, 6, 4)]
    assert seen["lifecycle_hooks"] == [
        ("drain-connections", "autoscaling:EC2_INSTANCE_TERMINATING", 120, "ABANDON"),
        ("warm-cache", "autoscaling:EC2_INSTANCE_LAUNCHING", 300, "CONTINUE"),
    ]
    assert seen["termination_policies"] == ["OldestLaunchTemplate", "OldestInstance"]
    assert seen["capacity_rebalance"] is True
    # No health check in the configuration: the live group's ELB check and 120 s grace period.
    assert seen["health_check"] == ("ELB", 120)
    assert seen["metrics"] == METRICS
    tags = from_aws_tags(raw_group(clients, NEW)["Tags"])  # type: ignore[index]
    assert ("team", "payments", True) in seen["tags"]
    assert ("cost-center", "4711", False) in seen["tags"]
    # The live group's own immutable: tags are not copied over the new group's.
    assert tags[TAG_DEPLOY_ID] == plan.deploy_id and tags[TAG_VERSION] == plan.version


def test_the_step_policys_alarm_is_copied_to_watch_the_new_group_and_drive_its_policy(
    clients: SetupClients, live_group: str
) -> None:
    launch_fleet(clients, planned(clients), BASE_IMAGE)

    copied = clients.cloudwatch.describe_alarms(AlarmNames=[f"{NEW}-cpu-high"])["MetricAlarms"]
    assert len(copied) == 1
    alarm = copied[0]
    assert alarm["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": NEW}]
    assert alarm["AlarmActions"] == [policy_arn(clients, NEW, "queue-step")]
    assert (alarm["MetricName"], alarm["Threshold"], alarm["EvaluationPeriods"]) == (
        "CPUUtilization",
        80.0,
        2,
    )
    tags = clients.cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
    assert from_aws_tags(tags).get(TAG_SERVER_GROUP) == NEW


def test_policies_and_schedules_are_held_during_the_swap_and_active_after_it(
    clients: SetupClients, live_group: str
) -> None:
    plan = planned(clients)
    new = launch_fleet(clients, plan, BASE_IMAGE)

    # Both fleets are pinned, and neither an alarm nor a schedule can resize them mid-swap.
    assert set(SWAP_SUSPENDED_PROCESSES) >= HELD
    assert suspended(clients, NEW) >= HELD
    assert suspended(clients, LIVE) >= HELD
    assert size(clients, NEW) == Capacity(3, 3, 3) and size(clients, LIVE) == Capacity(3, 3, 3)

    attach_fleet(clients, plan, new.name)
    detach_old_fleet(clients, plan, new.name)
    finish_swap(clients, plan, new.name)

    # "Autoscales normally again": nothing of the swap is suspended, the live group's min and max
    # are back, and the inherited policies and schedules are still there to act.
    assert not suspended(clients, NEW) & set(SWAP_SUSPENDED_PROCESSES)
    assert size(clients, NEW) == LIVE_CAPACITY
    seen = setup_seen(clients, NEW)
    assert [p[0] for p in seen["policies"]] == ["cpu-target", "night-simple", "queue-step"]
    assert [a[0] for a in seen["scheduled_actions"]] == ["business-hours"]


def test_a_retried_launch_duplicates_nothing(clients: SetupClients, live_group: str) -> None:
    plan = planned(clients)
    launch_fleet(clients, plan, BASE_IMAGE)
    first = setup_seen(clients, NEW)
    assert [p[0] for p in first["policies"]] == ["cpu-target", "night-simple", "queue-step"]
    assert len(first["alarms"]) == len(first["scheduled_actions"]) == 1
    assert len(first["lifecycle_hooks"]) == 2
    alarms = len(clients.cloudwatch.describe_alarms()["MetricAlarms"])

    again = launch_fleet(clients, plan, BASE_IMAGE)

    assert again.name == NEW
    assert group_names(clients) == [LIVE, NEW]
    assert setup_seen(clients, NEW) == first
    assert len(clients.cloudwatch.describe_alarms()["MetricAlarms"]) == alarms
    raw = raw_group(clients, NEW)
    assert raw is not None
    keys = [t["Key"] for t in raw["Tags"]]
    assert len(keys) == len(set(keys))


# --- health checks: configured, inherited, default -------------------------------------------------


def test_configured_health_checks_win_over_the_live_groups(clients: SetupClients, live_group: str) -> None:
    plan = planned(clients, health_check_type="ELB,EBS", health_check_grace_period_seconds=600)
    launch_fleet(clients, plan, BASE_IMAGE)
    assert setup_seen(clients, NEW)["health_check"] == ("ELB,EBS", 600)


def test_a_first_deploy_gets_the_default_health_checks_and_no_one_elses_setup(
    clients: SetupClients, demo_network: DemoEnvironment
) -> None:
    plan = planned(clients)
    assert plan.live is None
    first = launch_fleet(clients, plan, BASE_IMAGE)

    seen = setup_seen(clients, first.name)
    # ELB health checks after 300 s, not EC2 checks with no grace period at all.
    assert seen["health_check"] == ("ELB", 300)
    assert seen["policies"] == [] and seen["scheduled_actions"] == [] and seen["lifecycle_hooks"] == []
    assert suspended(clients, first.name) >= HELD


# --- rollback --------------------------------------------------------------------------------------


def test_a_rollback_to_a_kept_group_gives_it_the_live_groups_setup_held_for_the_swap(
    clients: SetupClients, live_group: str
) -> None:
    plan = planned(clients, keep_old_groups=1)
    new = launch_fleet(clients, plan, BASE_IMAGE)
    attach_fleet(clients, plan, new.name)
    detach_old_fleet(clients, plan, new.name)
    finish_swap(clients, plan, new.name)
    retire(clients, plan, new.name)
    # While v002 serves, an operator adds a schedule to it: the rollback target must get it too.
    clients.autoscaling.put_scheduled_update_group_action(
        AutoScalingGroupName=NEW, ScheduledActionName="black-friday", Recurrence="0 6 * 11 FRI", MinSize=4
    )

    params = {"app": APP, "environment": ENVIRONMENT}
    rollback = plan_rollback(clients, deployment_config(), params, "immutable_rollback", "manual__rb")
    assert (rollback.rollback_mode, rollback.rollback_group) == ("swap", LIVE)
    back = bring_up_rollback_fleet(clients, rollback)

    assert back.name == LIVE
    # Held on both groups while the rollback swaps.
    assert suspended(clients, LIVE) >= HELD
    assert suspended(clients, NEW) >= HELD
    seen = setup_seen(clients, LIVE)
    assert [a[0] for a in seen["scheduled_actions"]] == ["black-friday", "business-hours"]
    assert [p[0] for p in seen["policies"]] == ["cpu-target", "night-simple", "queue-step"]
    assert (f"{LIVE}-cpu-high", (policy_arn(clients, LIVE, "queue-step"),)) in seen["alarms"]

    finish_swap(clients, rollback, back.name)
    assert not suspended(clients, LIVE) & set(SWAP_SUSPENDED_PROCESSES)
