"""Reading server groups: describe one, find an app and environment's groups, the live one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from immudeploy.aws.connection import AwsApi
from immudeploy.aws.errors import error_code
from immudeploy.core.errors import DeployError, InvalidInput
from immudeploy.core.naming import (
    STATE_DISABLED,
    TAG_APP,
    TAG_DEPLOY_ID,
    TAG_ENVIRONMENT,
    TAG_RESTORE_CAPACITY,
    TAG_STATE,
    TAG_VERSION,
    ServerGroupName,
    from_aws_tags,
    validate_app,
    validate_environment,
)
from immudeploy.core.plan import Capacity, ServerGroup

log = logging.getLogger(__name__)

DELETE_IN_PROGRESS = "Delete in progress"


def parse_group_name(group_name: str) -> ServerGroupName:
    parsed = ServerGroupName.parse(group_name) if isinstance(group_name, str) else None
    if parsed is None:
        raise InvalidInput("group_name", f"{group_name!r} is not a server group name like app-env-v001")
    return parsed


def describe_groups(clients: AwsApi, **kwargs: Any) -> Iterator[dict[str, Any]]:
    paginator = clients.autoscaling.get_paginator("describe_auto_scaling_groups")
    for page in paginator.paginate(**kwargs):
        yield from page["AutoScalingGroups"]


def describe_asg(autoscaling: Any, group_name: str) -> dict[str, Any] | None:
    """The group's describe_auto_scaling_groups entry, or None when it does not exist."""
    found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])["AutoScalingGroups"]
    return found[0] if found else None


def describe_raw_group(clients: AwsApi, group_name: str) -> dict[str, Any] | None:
    return describe_asg(clients.autoscaling, group_name)


def app_env_filters(app: str, environment: str) -> list[dict[str, Any]]:
    return [
        {"Name": f"tag:{TAG_APP}", "Values": [app]},
        {"Name": f"tag:{TAG_ENVIRONMENT}", "Values": [environment]},
    ]


def launch_template_specs(raw_group: dict[str, Any]) -> list[dict[str, Any]]:
    """Every launch template a group refers to, including a mixed instances policy's overrides."""
    specs: list[dict[str, Any]] = []
    if raw_group.get("LaunchTemplate"):
        specs.append(raw_group["LaunchTemplate"])
    policy_template = raw_group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {})
    if policy_template.get("LaunchTemplateSpecification"):
        specs.append(policy_template["LaunchTemplateSpecification"])
    for override in policy_template.get("Overrides", []):
        if override.get("LaunchTemplateSpecification"):
            specs.append(override["LaunchTemplateSpecification"])
    return specs


def template_selector(spec: dict[str, Any]) -> dict[str, str]:
    if spec.get("LaunchTemplateId"):
        return {"LaunchTemplateId": spec["LaunchTemplateId"]}
    return {"LaunchTemplateName": spec["LaunchTemplateName"]}


def launch_template_versions(
    clients: AwsApi, spec: dict[str, Any], versions: list[str] | None = None
) -> list[dict[str, Any]]:
    """Versions of one launch template; empty when it was deleted."""
    kwargs: dict[str, Any] = template_selector(spec)
    if versions:
        kwargs["Versions"] = versions
    try:
        paginator = clients.ec2.get_paginator("describe_launch_template_versions")
        return [v for page in paginator.paginate(**kwargs) for v in page["LaunchTemplateVersions"]]
    except ClientError as error:
        if error_code(error).startswith(("InvalidLaunchTemplateName.NotFound", "InvalidLaunchTemplateId.")):
            return []
        raise


def to_server_group(clients: AwsApi, raw: dict[str, Any]) -> ServerGroup:
    name = raw["AutoScalingGroupName"]
    parsed = parse_group_name(name)
    tags = from_aws_tags(raw.get("Tags"))
    template_data: dict[str, Any] = {}
    template_name: str | None = None
    specs = launch_template_specs(raw)
    if specs:
        template_name = specs[0].get("LaunchTemplateName")
        found = launch_template_versions(clients, specs[0], [specs[0].get("Version") or "$Default"])
        if found:
            template_data = found[0].get("LaunchTemplateData", {})
            template_name = found[0].get("LaunchTemplateName", template_name)
    restore_tag = tags.get(TAG_RESTORE_CAPACITY)
    created = raw.get("CreatedTime")
    return ServerGroup(
        name=name,
        app=tags.get(TAG_APP, parsed.app),
        environment=tags.get(TAG_ENVIRONMENT, parsed.environment),
        sequence=parsed.sequence,
        version=tags.get(TAG_VERSION),
        image_id=template_data.get("ImageId"),
        launch_template_name=template_name,
        capacity=Capacity(raw["MinSize"], raw["MaxSize"], raw["DesiredCapacity"]),
        instance_type=template_data.get("InstanceType"),
        subnet_ids=[s for s in raw.get("VPCZoneIdentifier", "").split(",") if s],
        security_group_ids=list(template_data.get("SecurityGroupIds", [])),
        target_group_arns=list(raw.get("TargetGroupARNs", [])),
        instance_ids=sorted(
            i["InstanceId"]
            for i in raw.get("Instances", [])
            if i["LifecycleState"] == "InService" or i["LifecycleState"].startswith("Pending")
        ),
        suspended_processes=sorted(p["ProcessName"] for p in raw.get("SuspendedProcesses", [])),
        deploy_id=tags.get(TAG_DEPLOY_ID),
        created_time=created.isoformat() if isinstance(created, datetime) else str(created or ""),
        disabled=tags.get(TAG_STATE) == STATE_DISABLED,
        restore_capacity=Capacity.from_tag(restore_tag) if restore_tag else None,
    )


def is_ours(raw: dict[str, Any], app: str, environment: str) -> bool:
    parsed = ServerGroupName.parse(raw["AutoScalingGroupName"])
    tags = from_aws_tags(raw.get("Tags"))
    return (
        parsed is not None
        and (parsed.app, parsed.environment) == (app, environment)
        and tags.get(TAG_APP) == app
        and tags.get(TAG_ENVIRONMENT) == environment
    )


def raw_groups_of(
    clients: AwsApi, app: str, environment: str, *, include_deleting: bool
) -> list[dict[str, Any]]:
    return [
        raw
        for raw in describe_groups(clients, Filters=app_env_filters(app, environment))
        if is_ours(raw, app, environment) and (include_deleting or raw.get("Status") != DELETE_IN_PROGRESS)
    ]


def describe_server_group(clients: AwsApi, group_name: str) -> ServerGroup | None:
    """One group by name; None when it does not exist (or is being deleted)."""
    parse_group_name(group_name)
    raw = describe_raw_group(clients, group_name)
    if raw is None or raw.get("Status") == DELETE_IN_PROGRESS:
        return None
    return to_server_group(clients, raw)


def find_server_groups(clients: AwsApi, app: str, environment: str) -> list[ServerGroup]:
    """This app and environment's groups, oldest first: `{app}-{environment}-vNNN` with matching tags."""
    validate_app(app)
    validate_environment(environment)
    groups = [
        to_server_group(clients, raw)
        for raw in raw_groups_of(clients, app, environment, include_deleting=False)
    ]
    return sorted(groups, key=lambda group: group.sequence)


def live_server_group(
    clients: AwsApi, app: str, environment: str, target_group_arns: list[str]
) -> ServerGroup | None:
    """The newest group serving any of the target groups with desired > 0; None on a first deploy."""
    if not target_group_arns:
        raise InvalidInput("target_group_arns", "at least one target group is needed to find the live group")
    wanted = set(target_group_arns)
    serving = [
        group
        for group in find_server_groups(clients, app, environment)
        if wanted & set(group.target_group_arns) and group.capacity.desired > 0
    ]
    return serving[-1] if serving else None


def launch_template_by_name(clients: AwsApi, name: str) -> dict[str, Any] | None:
    try:
        found = clients.ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
    except ClientError as error:
        if error_code(error).startswith("InvalidLaunchTemplateName.NotFound"):
            return None
        raise
    return found[0] if found else None


def launch_templates_of(clients: AwsApi, app: str, environment: str) -> list[dict[str, Any]]:
    """Launch templates named like this app/env's server groups, tagged or not (names are what collide)."""
    # No page size: moto truncates describe_launch_templates at MaxResults without a NextToken.
    paginator = clients.ec2.get_paginator("describe_launch_templates")
    pages = paginator.paginate(
        Filters=[{"Name": "launch-template-name", "Values": [f"{app}-{environment}-v*"]}]
    )
    templates = [t for page in pages for t in page["LaunchTemplates"]]
    return [
        t
        for t in templates
        if (parsed := ServerGroupName.parse(t["LaunchTemplateName"])) is not None
        and (parsed.app, parsed.environment) == (app, environment)
    ]


def require_group(clients: AwsApi, group_name: str) -> dict[str, Any]:
    parse_group_name(group_name)
    raw = describe_raw_group(clients, group_name)
    if raw is None or raw.get("Status") == DELETE_IN_PROGRESS:
        raise DeployError(f"server group {group_name} does not exist")
    return raw
