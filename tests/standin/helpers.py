"""Helpers for the stand-in's tests: boto3 clients with retries off, and a small VPC + ALB + ASG fleet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

REGION = "us-east-1"
# One of the public AMIs moto ships.
BASE_IMAGE = "ami-785db401"
# Health settings the tests use: a target is healthy 3 x 10 s after registration, unhealthy after 2 x 10 s.
INTERVAL, HEALTHY, UNHEALTHY = 10, 3, 2
# deregistration_delay.timeout_seconds of the tests' target group.
DELAY = 100


@dataclass
class Clients:
    """boto3 clients against one endpoint; retries off, so a test sees every error the stand-in sends."""

    ec2: Any
    elbv2: Any
    autoscaling: Any
    ssm: Any


def make_clients(endpoint_url: str, **config: Any) -> Clients:
    cfg = Config(retries=config.pop("retries", {"total_max_attempts": 1}), **config)

    def client(name: str) -> Any:
        return boto3.client(
            name,
            endpoint_url=endpoint_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=cfg,
        )

    return Clients(client("ec2"), client("elbv2"), client("autoscaling"), client("ssm"))


@dataclass
class Network:
    vpc_id: str
    subnet_ids: list[str]
    load_balancer_arn: str
    target_group_arn: str
    launch_template_id: str


def make_network(
    aws: Clients,
    name: str = "web",
    *,
    image_id: str = BASE_IMAGE,
    interval: int = INTERVAL,
    healthy: int = HEALTHY,
    unhealthy: int = UNHEALTHY,
    delay: int = DELAY,
) -> Network:
    """VPC, two subnets, an ALB with a listener forwarding to one target group, and a launch template."""
    vpc_id = aws.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet_ids = [
        aws.ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")[
            "Subnet"
        ]["SubnetId"]
        for i, az in ((1, "a"), (2, "b"))
    ]
    lb_arn = aws.elbv2.create_load_balancer(Name=f"{name}-alb", Subnets=subnet_ids)["LoadBalancers"][0][
        "LoadBalancerArn"
    ]
    tg_arn = make_target_group(
        aws, f"{name}-tg", vpc_id, interval=interval, healthy=healthy, unhealthy=unhealthy, delay=delay
    )
    aws.elbv2.create_listener(
        LoadBalancerArn=lb_arn,
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arn}],
    )
    lt_id = aws.ec2.create_launch_template(
        LaunchTemplateName=f"{name}-lt", LaunchTemplateData={"ImageId": image_id, "InstanceType": "t3.micro"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    return Network(vpc_id, subnet_ids, lb_arn, tg_arn, lt_id)


def make_target_group(
    aws: Clients, name: str, vpc_id: str, *, interval: int, healthy: int, unhealthy: int, delay: int
) -> str:
    arn = aws.elbv2.create_target_group(
        Name=name,
        Protocol="HTTP",
        Port=80,
        VpcId=vpc_id,
        HealthCheckIntervalSeconds=interval,
        HealthCheckTimeoutSeconds=5,
        HealthyThresholdCount=healthy,
        UnhealthyThresholdCount=unhealthy,
    )["TargetGroups"][0]["TargetGroupArn"]
    aws.elbv2.modify_target_group_attributes(
        TargetGroupArn=arn, Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": str(delay)}]
    )
    return arn


def make_group(
    aws: Clients,
    net: Network,
    name: str = "web-v001",
    *,
    capacity: int = 2,
    target_groups: list[str] | None = None,
    protected: bool = False,
    launch_template_id: str | None = None,
) -> None:
    aws.autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": launch_template_id or net.launch_template_id},
        MinSize=0,
        MaxSize=capacity + 2,
        DesiredCapacity=capacity,
        VPCZoneIdentifier=",".join(net.subnet_ids),
        TargetGroupARNs=[net.target_group_arn] if target_groups is None else target_groups,
        NewInstancesProtectedFromScaleIn=protected,
    )


def target_states(aws: Clients, tg_arn: str, **kwargs: Any) -> dict[str, tuple[str, str | None]]:
    """{instance id: (state, reason)} as DescribeTargetHealth reports it."""
    descriptions = aws.elbv2.describe_target_health(TargetGroupArn=tg_arn, **kwargs)[
        "TargetHealthDescriptions"
    ]
    return {
        d["Target"]["Id"]: (d["TargetHealth"]["State"], d["TargetHealth"].get("Reason")) for d in descriptions
    }


def group(aws: Clients, name: str) -> dict[str, Any] | None:
    groups = aws.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return groups[0] if groups else None


def lifecycle(aws: Clients, name: str) -> dict[str, str]:
    found = group(aws, name)
    return {i["InstanceId"]: i["LifecycleState"] for i in found["Instances"]} if found else {}
