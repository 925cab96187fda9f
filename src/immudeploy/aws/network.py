"""Turn the configuration's names of subnets, security groups and target groups into AWS ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from immudeploy.core.config import EnvironmentConfig
from immudeploy.core.errors import InvalidInput


@dataclass(frozen=True)
class ResolvedEnvironment:
    subnet_ids: list[str]
    security_group_ids: list[str]
    target_group_arns: list[str]
    staging_subnet_ids: list[str]
    staging_target_group_arn: str | None
    # Where staging tests send requests: the staging target group's load balancer and port.
    staging_endpoint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_subnets(ec2: Any, names: Sequence[str], field: str) -> list[str]:
    ids = []
    for name in names:
        if name.startswith("subnet-"):
            found = ec2.describe_subnets(Filters=[{"Name": "subnet-id", "Values": [name]}])["Subnets"]
        else:
            found = ec2.describe_subnets(Filters=[{"Name": "tag:Name", "Values": [name]}])["Subnets"]
        if len(found) != 1:
            raise InvalidInput(field, f"subnet {name!r} matches {len(found)} subnets, expected exactly one")
        ids.append(found[0]["SubnetId"])
    return ids


def resolve_security_groups(ec2: Any, names: Sequence[str], field: str) -> list[str]:
    ids = []
    for name in names:
        key = "group-id" if name.startswith("sg-") else "group-name"
        found = ec2.describe_security_groups(Filters=[{"Name": key, "Values": [name]}])["SecurityGroups"]
        if len(found) != 1:
            raise InvalidInput(field, f"security group {name!r} matches {len(found)} groups, expected one")
        ids.append(found[0]["GroupId"])
    return ids


def describe_target_group(elbv2: Any, name: str, field: str) -> dict[str, Any]:
    try:
        if name.startswith("arn:"):
            groups = elbv2.describe_target_groups(TargetGroupArns=[name])["TargetGroups"]
        else:
            groups = elbv2.describe_target_groups(Names=[name])["TargetGroups"]
    except elbv2.exceptions.TargetGroupNotFoundException:
        raise InvalidInput(field, f"target group {name!r} does not exist") from None
    if len(groups) != 1:
        raise InvalidInput(field, f"target group {name!r} matches {len(groups)} groups")
    return dict(groups[0])


def _endpoint(elbv2: Any, target_group: dict[str, Any]) -> str:
    arns = target_group.get("LoadBalancerArns") or []
    if not arns:
        return ""
    balancer = elbv2.describe_load_balancers(LoadBalancerArns=arns[:1])["LoadBalancers"][0]
    for listener in elbv2.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]:
        for action in listener.get("DefaultActions", []):
            if action.get("TargetGroupArn") == target_group["TargetGroupArn"]:
                scheme = "https" if listener.get("Protocol") == "HTTPS" else "http"
                return f"{scheme}://{balancer['DNSName']}:{listener['Port']}"
    return f"http://{balancer['DNSName']}"


def resolve_environment(ec2: Any, elbv2: Any, config: EnvironmentConfig) -> ResolvedEnvironment:
    where = f"apps.{config.app}.environments.{config.environment}"
    target_groups = [describe_target_group(elbv2, n, f"{where}.target_groups") for n in config.target_groups]
    staging_arn, staging_subnets, staging_endpoint = None, [], ""
    if config.staging is not None:
        staging = describe_target_group(elbv2, config.staging.target_group, f"{where}.staging.target_group")
        staging_arn = staging["TargetGroupArn"]
        staging_subnets = resolve_subnets(ec2, config.staging.subnets, f"{where}.staging.subnets")
        staging_endpoint = _endpoint(elbv2, staging)
    return ResolvedEnvironment(
        subnet_ids=resolve_subnets(ec2, config.subnets, f"{where}.subnets"),
        security_group_ids=resolve_security_groups(ec2, config.security_groups, f"{where}.security_groups"),
        target_group_arns=[g["TargetGroupArn"] for g in target_groups],
        staging_subnet_ids=staging_subnets,
        staging_target_group_arn=staging_arn,
        staging_endpoint=staging_endpoint,
    )
