"""Deleting a group deletes the alarms this tool copied for it, and no one else's, on the moto server.

The live group is made the way an operator's tooling would make it (boto3, not this project): a
step scaling policy driven by two alarms, one watching the group's CPU and one watching a queue
(whose copy carries the group only in its name, its tag and its policy action).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NoReturn

import pytest
from botocore.exceptions import ClientError
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, LIVE_CAPACITY, LIVE_VERSION, FleetClients

from immudeploy.aws.groups.retire import delete_server_group
from immudeploy.core.naming import TAG_DEPLOY_ID, as_aws_tags, identity_tags
from immudeploy.release.deploy import launch_fleet, retire
from immudeploy_dev.demo import DemoEnvironment
from unit.release.test_deploy_steps import group_names, planned, swapped

LIVE = f"{APP}-{ENVIRONMENT}-v001"
NEW = f"{APP}-{ENVIRONMENT}-v002"
NEXT = f"{APP}-{ENVIRONMENT}-v003"
# The operator's alarms on the live group; both drive its step policy, so both are copied.
CPU_HIGH = f"{LIVE}-cpu-high"
QUEUE_DEEP = "orders-queue-deep"
# What the copies of those two on the new group are called.
NEW_CPU_HIGH = f"{NEW}-cpu-high"
NEW_QUEUE_DEEP = f"{QUEUE_DEEP}-{NEW}"


@dataclass
class AlarmClients(FleetClients):
    """The fleet's clients plus CloudWatch: step policies act through alarms."""

    cloudwatch: Any = None


@pytest.fixture
def clients(aws: Any, fleet_clients: FleetClients) -> AlarmClients:
    shared = {f.name: getattr(fleet_clients, f.name) for f in fields(fleet_clients)}
    return AlarmClients(**shared, cloudwatch=aws.client("cloudwatch"))


def policy_arn(clients: AlarmClients, group: str, name: str) -> str:
    found = clients.autoscaling.describe_policies(AutoScalingGroupName=group, PolicyNames=[name])
    return str(found["ScalingPolicies"][0]["PolicyARN"])


def watching(clients: AlarmClients, name: str, group: str, *, actions: list[str] | None = None) -> None:
    """An operator's CPU alarm on the group, untagged; with `actions` it drives them."""
    clients.cloudwatch.put_metric_alarm(
        AlarmName=name,
        Namespace="AWS/EC2",
        MetricName="CPUUtilization",
        Dimensions=[{"Name": "AutoScalingGroupName", "Value": group}],
        Statistic="Average",
        Period=60,
        EvaluationPeriods=2,
        Threshold=80.0,
        ComparisonOperator="GreaterThanThreshold",
        AlarmActions=actions or [],
    )


def alarm_names(clients: AlarmClients) -> set[str]:
    pages = clients.cloudwatch.get_paginator("describe_alarms").paginate(AlarmTypes=["MetricAlarm"])
    return {alarm["AlarmName"] for page in pages for alarm in page["MetricAlarms"]}


@pytest.fixture
def live_group(clients: AlarmClients, demo_network: DemoEnvironment) -> str:
    """shop-prod-v001 serving the live target group, with a step policy and the operator's alarms."""
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
    clients.autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=LIVE,
        LaunchTemplate={"LaunchTemplateName": LIVE, "Version": "1"},
        MinSize=LIVE_CAPACITY.min,
        MaxSize=LIVE_CAPACITY.max,
        DesiredCapacity=LIVE_CAPACITY.desired,
        VPCZoneIdentifier=",".join(demo_network.subnet_ids),
        TargetGroupARNs=[demo_network.target_group_arn],
        HealthCheckType="ELB",
        HealthCheckGracePeriod=120,
        Tags=[
            {
                "ResourceId": LIVE,
                "ResourceType": "auto-scaling-group",
                "Key": k,
                "Value": v,
                "PropagateAtLaunch": True,
            }
            for k, v in ours.items()
        ],
    )
    clients.autoscaling.put_scaling_policy(
        AutoScalingGroupName=LIVE,
        PolicyName="queue-step",
        PolicyType="StepScaling",
        AdjustmentType="ChangeInCapacity",
        MetricAggregationType="Average",
        StepAdjustments=[{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 2}],
    )
    step = policy_arn(clients, LIVE, "queue-step")
    watching(clients, CPU_HIGH, LIVE, actions=[step])
    clients.cloudwatch.put_metric_alarm(
        AlarmName=QUEUE_DEEP,
        Namespace="AWS/SQS",
        MetricName="ApproximateNumberOfMessagesVisible",
        Dimensions=[{"Name": "QueueName", "Value": "orders"}],
        Statistic="Average",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1000.0,
        ComparisonOperator="GreaterThanThreshold",
        AlarmActions=[step],
    )
    return LIVE


def test_deleting_a_group_deletes_its_copied_alarms_and_leaves_the_operators(
    clients: AlarmClients, live_group: str
) -> None:
    launch_fleet(clients, planned(clients), BASE_IMAGE)
    assert {NEW_CPU_HIGH, NEW_QUEUE_DEEP} <= alarm_names(clients)
    # An operator's own alarm on the new group: it watches the group, but the tool did not make it.
    watching(clients, f"{NEW}-ops-dashboard", NEW)

    assert delete_server_group(clients, NEW, force=True)

    assert group_names(clients) == [LIVE]
    assert alarm_names(clients) == {CPU_HIGH, QUEUE_DEEP, f"{NEW}-ops-dashboard"}


def test_a_retry_deletes_the_alarms_a_delete_that_stopped_after_the_group_left(
    clients: AlarmClients, live_group: str
) -> None:
    launch_fleet(clients, planned(clients), BASE_IMAGE)
    # The last try deleted the group and its launch template, then died before the alarms.
    clients.autoscaling.delete_auto_scaling_group(AutoScalingGroupName=NEW, ForceDelete=True)
    clients.ec2.delete_launch_template(LaunchTemplateName=NEW)

    assert delete_server_group(clients, NEW, force=True)
    assert alarm_names(clients) == {CPU_HIGH, QUEUE_DEEP}
    assert not delete_server_group(clients, NEW, force=True)
    assert alarm_names(clients) == {CPU_HIGH, QUEUE_DEEP}


def test_a_group_aws_refuses_to_delete_keeps_its_alarms(
    clients: AlarmClients, live_group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    launch_fleet(clients, planned(clients), BASE_IMAGE)

    def refuse(**_: Any) -> NoReturn:
        raise ClientError(
            {"Error": {"Code": "ScalingActivityInProgress", "Message": "a scaling activity is in progress"}},
            "DeleteAutoScalingGroup",
        )

    monkeypatch.setattr(clients.autoscaling, "delete_auto_scaling_group", refuse)
    with pytest.raises(ClientError):
        delete_server_group(clients, NEW, force=True)

    # It may still scale: its policy's alarms stay with it.
    assert {NEW_CPU_HIGH, NEW_QUEUE_DEEP} <= alarm_names(clients)


def test_retiring_a_group_deletes_its_copied_alarms_but_not_the_next_groups_copies(
    clients: AlarmClients, live_group: str
) -> None:
    first = planned(clients, keep_old_groups=0)
    swapped(clients, first)
    # The operator's alarms on the retired v001 stay: the tool did not make them.
    assert retire(clients, first, NEW)["deleted_groups"] == [LIVE]
    assert {CPU_HIGH, QUEUE_DEEP, NEW_CPU_HIGH, NEW_QUEUE_DEEP} <= alarm_names(clients)

    second = planned(clients, version="3.0.0", run_id="manual__second", keep_old_groups=0)
    swapped(clients, second)
    assert retire(clients, second, NEXT)["deleted_groups"] == [NEW]

    assert alarm_names(clients) == {CPU_HIGH, QUEUE_DEEP, f"{NEXT}-cpu-high", f"{QUEUE_DEEP}-{NEXT}"}
