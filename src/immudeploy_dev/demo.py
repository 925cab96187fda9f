"""A demo network, load balancer and live fleet for the tests and the local demo stack (on the AWS
stand-in), and a look at which server groups stand behind a target group, in which target states."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from immudeploy.aws.connection import AwsApi
from immudeploy.aws.groups.capacity import restore_capacity
from immudeploy.aws.groups.launch import LaunchSpec, launch_server_group
from immudeploy.aws.groups.traffic import attach_server_group
from immudeploy.core.naming import (
    TAG_APP,
    TAG_ENVIRONMENT,
    as_aws_tags,
    validate_app,
    validate_environment,
)
from immudeploy.core.plan import Capacity, ServerGroup

log = logging.getLogger(__name__)

VPC_CIDR = "10.42.0.0/16"
SUBNET_CIDRS = ("10.42.1.0/24", "10.42.2.0/24")
LIVE_PORT = 80
# Staging traffic reaches the new fleet through its own listener before the real swap.
STAGING_PORT = 8080
HEALTH_CHECK_PATH = "/health"
# A new target turns healthy after HEALTHY_THRESHOLD checks this far apart: 10 s (AWS's defaults: 30 s x 5).
HEALTH_CHECK_INTERVAL_SECONDS = 5
HEALTHY_THRESHOLD = 2
# Short demo drains; the AWS default is 300 s.
DEREGISTRATION_DELAY_SECONDS = 30
# Load balancer and target group names: at most 32 letters, digits and hyphens.
_ELB_NAME_LIMIT = 32


@dataclass
class DemoEnvironment:
    """What seed_demo_network made: enough to launch fleets and route traffic to them."""

    vpc_id: str
    subnet_ids: list[str]
    security_group_id: str
    load_balancer_arn: str
    load_balancer_dns_name: str
    target_group_arn: str
    staging_target_group_arn: str
    listener_arn: str
    staging_listener_arn: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _elb_name(app: str, environment: str, suffix: str) -> str:
    name = f"{app}-{environment}-{suffix}"
    if len(name) <= _ELB_NAME_LIMIT:
        return name
    # Truncating alone could make two long names collide: keep a short hash of the full name.
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _ELB_NAME_LIMIT - 9].rstrip('-')}-{digest}"


def _tags(app: str, environment: str, name: str) -> list[dict[str, str]]:
    return as_aws_tags({"Name": name, TAG_APP: app, TAG_ENVIRONMENT: environment})


def _ensure_vpc(ec2: Any, app: str, environment: str, name: str) -> str:
    found = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [name]}])["Vpcs"]
    if found:
        return str(found[0]["VpcId"])
    vpc_id = ec2.create_vpc(
        CidrBlock=VPC_CIDR, TagSpecifications=[{"ResourceType": "vpc", "Tags": _tags(app, environment, name)}]
    )["Vpc"]["VpcId"]
    log.info("Created VPC %s (%s)", vpc_id, name)
    return str(vpc_id)


def _ensure_subnets(ec2: Any, vpc_id: str, app: str, environment: str, name: str) -> list[str]:
    zones = sorted(
        z["ZoneName"]
        for z in ec2.describe_availability_zones(Filters=[{"Name": "state", "Values": ["available"]}])[
            "AvailabilityZones"
        ]
    )[: len(SUBNET_CIDRS)]
    subnet_ids = []
    for zone, cidr in zip(zones, SUBNET_CIDRS, strict=True):
        subnet_name = f"{name}-{zone}"
        found = ec2.describe_subnets(
            Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "tag:Name", "Values": [subnet_name]}]
        )["Subnets"]
        if found:
            subnet_ids.append(found[0]["SubnetId"])
            continue
        subnet = ec2.create_subnet(
            VpcId=vpc_id,
            CidrBlock=cidr,
            AvailabilityZone=zone,
            TagSpecifications=[{"ResourceType": "subnet", "Tags": _tags(app, environment, subnet_name)}],
        )["Subnet"]
        subnet_ids.append(subnet["SubnetId"])
    return subnet_ids


def _ensure_security_group(ec2: Any, vpc_id: str, app: str, environment: str, name: str) -> str:
    found = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [name]}]
    )["SecurityGroups"]
    if found:
        return str(found[0]["GroupId"])
    group_id = ec2.create_security_group(
        GroupName=name,
        Description=f"{app} {environment} demo: HTTP from anywhere",
        VpcId=vpc_id,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(app, environment, name)}],
    )["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
            for port in (LIVE_PORT, STAGING_PORT)
        ],
    )
    return str(group_id)


def _ensure_load_balancer(
    elbv2: Any, name: str, subnet_ids: list[str], security_group_id: str, tags: list[dict[str, str]]
) -> dict[str, Any]:
    try:
        return dict(elbv2.describe_load_balancers(Names=[name])["LoadBalancers"][0])
    except ClientError as error:
        if error.response["Error"]["Code"] != "LoadBalancerNotFound":
            raise
    created = elbv2.create_load_balancer(
        Name=name,
        Subnets=subnet_ids,
        SecurityGroups=[security_group_id],
        Scheme="internet-facing",
        Type="application",
        Tags=tags,
    )["LoadBalancers"][0]
    log.info("Created load balancer %s", name)
    return dict(created)


def _ensure_target_group(elbv2: Any, name: str, vpc_id: str, tags: list[dict[str, str]]) -> str:
    try:
        return str(elbv2.describe_target_groups(Names=[name])["TargetGroups"][0]["TargetGroupArn"])
    except ClientError as error:
        if error.response["Error"]["Code"] != "TargetGroupNotFound":
            raise
    arn = elbv2.create_target_group(
        Name=name,
        Protocol="HTTP",
        Port=LIVE_PORT,
        VpcId=vpc_id,
        TargetType="instance",
        HealthCheckProtocol="HTTP",
        HealthCheckPath=HEALTH_CHECK_PATH,
        HealthCheckIntervalSeconds=HEALTH_CHECK_INTERVAL_SECONDS,
        HealthCheckTimeoutSeconds=4,
        HealthyThresholdCount=HEALTHY_THRESHOLD,
        UnhealthyThresholdCount=2,
        Matcher={"HttpCode": "200"},
        Tags=tags,
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.modify_target_group_attributes(
        TargetGroupArn=arn,
        Attributes=[
            {"Key": "deregistration_delay.timeout_seconds", "Value": str(DEREGISTRATION_DELAY_SECONDS)}
        ],
    )
    log.info("Created target group %s", name)
    return str(arn)


def live_target_group_name(app: str, environment: str) -> str:
    return _elb_name(app, environment, "live")


def _ensure_listener(elbv2: Any, load_balancer_arn: str, port: int, target_group_arn: str) -> str:
    for listener in elbv2.describe_listeners(LoadBalancerArn=load_balancer_arn)["Listeners"]:
        if listener["Port"] == port:
            return str(listener["ListenerArn"])
    created = elbv2.create_listener(
        LoadBalancerArn=load_balancer_arn,
        Protocol="HTTP",
        Port=port,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": target_group_arn}],
    )
    return str(created["Listeners"][0]["ListenerArn"])


def seed_demo_network(clients: AwsApi, app: str, environment: str) -> DemoEnvironment:
    """VPC, two subnets in two zones, a security group, an ALB with live and staging target groups.

    Idempotent: every resource is looked up by name or tag first. Meant for moto and sandboxes:
    there is no internet gateway or routing, so it is not a network to serve real traffic from.
    """
    validate_app(app)
    validate_environment(environment)
    name = f"{app}-{environment}-demo"
    vpc_id = _ensure_vpc(clients.ec2, app, environment, name)
    subnet_ids = _ensure_subnets(clients.ec2, vpc_id, app, environment, name)
    security_group_id = _ensure_security_group(clients.ec2, vpc_id, app, environment, name)
    tags = _tags(app, environment, name)
    load_balancer = _ensure_load_balancer(
        clients.elbv2, _elb_name(app, environment, "demo"), subnet_ids, security_group_id, tags
    )
    target_group_arn = _ensure_target_group(
        clients.elbv2, live_target_group_name(app, environment), vpc_id, tags
    )
    staging_arn = _ensure_target_group(clients.elbv2, _elb_name(app, environment, "staging"), vpc_id, tags)
    load_balancer_arn = str(load_balancer["LoadBalancerArn"])
    return DemoEnvironment(
        vpc_id=vpc_id,
        subnet_ids=subnet_ids,
        security_group_id=security_group_id,
        load_balancer_arn=load_balancer_arn,
        load_balancer_dns_name=str(load_balancer.get("DNSName", "")),
        target_group_arn=target_group_arn,
        staging_target_group_arn=staging_arn,
        listener_arn=_ensure_listener(clients.elbv2, load_balancer_arn, LIVE_PORT, target_group_arn),
        staging_listener_arn=_ensure_listener(clients.elbv2, load_balancer_arn, STAGING_PORT, staging_arn),
    )


def seed_live_fleet(
    clients: AwsApi,
    env: DemoEnvironment,
    app: str,
    environment: str,
    version: str,
    image_id: str,
    capacity: Capacity,
    *,
    instance_type: str = "t3.micro",
) -> ServerGroup:
    """A live group of this release attached to the live target group, as a finished deploy leaves it."""
    spec = LaunchSpec(
        app=app,
        environment=environment,
        version=version,
        image_id=image_id,
        # One seed per release: seeding again returns the same group.
        deploy_id=f"demo-seed-{version}",
        instance_type=instance_type,
        subnet_ids=list(env.subnet_ids),
        security_group_ids=[env.security_group_id],
        target_group_arns=[],
        capacity=capacity,
        ssm_config_path=f"/immutable/{app}/{environment}/{version}",
        cache_key_prefix=f"{app}/{environment}/{version}",
    )
    group = launch_server_group(clients, spec)
    attach_server_group(clients, group.name, [env.target_group_arn])
    return restore_capacity(clients, group.name, capacity)


# --- behind the load balancer ---------------------------------------------------------------------------

# The order a target goes through: registered, serving, (failing), deregistered.
TARGET_STATE_ORDER = ("initial", "healthy", "unhealthy", "draining", "unused", "unavailable")
# A target whose instance no Auto Scaling group lists (e.g. registered by hand).
NO_GROUP = "(no group)"


def target_group_composition(clients: AwsApi, target_group_arn: str) -> dict[str, Counter[str]]:
    """The target group's targets counted by Auto Scaling group and target state."""
    # Groups first: an instance is in its group before it is registered as a target, so a target
    # seen here always finds its group.
    owners = {
        instance["InstanceId"]: group["AutoScalingGroupName"]
        for page in clients.autoscaling.get_paginator("describe_auto_scaling_groups").paginate()
        for group in page["AutoScalingGroups"]
        for instance in group.get("Instances", [])
    }
    found = clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)["TargetHealthDescriptions"]
    composition: dict[str, Counter[str]] = {}
    for description in found:
        group = owners.get(description["Target"]["Id"], NO_GROUP)
        composition.setdefault(group, Counter())[description["TargetHealth"]["State"]] += 1
    return composition


def describe_composition(composition: dict[str, Counter[str]]) -> str:
    """E.g. `shop-prod-v001 2 healthy | shop-prod-v002 1 initial, 1 healthy`; `no targets` when empty."""

    def rank(state: str) -> tuple[int, str]:
        known = TARGET_STATE_ORDER.index(state) if state in TARGET_STATE_ORDER else len(TARGET_STATE_ORDER)
        return known, state

    return (
        " | ".join(
            f"{group} " + ", ".join(f"{counts[state]} {state}" for state in sorted(counts, key=rank))
            for group, counts in sorted(composition.items())
        )
        or "no targets"
    )
