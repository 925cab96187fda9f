"""Server groups: one Auto Scaling group and launch template per release, and the steps of a swap."""

from __future__ import annotations

import base64
import logging
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from botocore.exceptions import ClientError

from immudeploy.errors import DeployError, InvalidInput, TrafficGuardError
from immudeploy.naming import (
    TAG_APP,
    TAG_DEPLOY_ID,
    TAG_ENVIRONMENT,
    TAG_VERSION,
    ServerGroupName,
    as_aws_tags,
    from_aws_tags,
    identity_tags,
    validate_ami_id,
    validate_app,
    validate_environment,
    validate_version,
)

log = logging.getLogger(__name__)

# "disabled" marks a group that was detached on purpose and kept for an instant rollback.
TAG_STATE = "immutable:state"
STATE_DISABLED = "disabled"
# "min,max,desired" to restore after the swap; present only while a group's capacity is pinned,
# so a run that crashed mid-swap can still restore it.
TAG_RESTORE_CAPACITY = "immutable:restore-capacity"

# Processes that would add, remove or move instances behind the deployment's back during a swap.
SWAP_SUSPENDED_PROCESSES = ("AZRebalance", "AlarmNotification", "ScheduledActions")
# A disabled group must not re-register instances it launches (e.g. replacing an unhealthy one).
DISABLED_SUSPENDED_PROCESSES = ("AddToLoadBalancer",)

RELEASE_ENV_PATH = "/etc/immutable/release.env"
DELETE_IN_PROGRESS = "Delete in progress"
# set_instance_protection accepts at most 50 instance ids per call.
_PROTECTION_BATCH = 50

SSM_PATH_PATTERN = r"^/[A-Za-z0-9_.\-/]{1,1000}$"
CACHE_KEY_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/+=\-]{0,255}$"
# Airflow run ids look like "manual__2026-01-01T00:00:00+00:00"; all of it is legal in a tag value.
DEPLOY_ID_PATTERN = r"^[A-Za-z0-9_.:/=+@\-]{1,200}$"
INSTANCE_TYPE_PATTERN = r"^[a-z0-9][a-z0-9-]*\.[a-z0-9]+$"
SUBNET_ID_PATTERN = r"^subnet-[0-9a-f]{8,17}$"
SECURITY_GROUP_ID_PATTERN = r"^sg-[0-9a-f]{8,17}$"
TARGET_GROUP_ARN_PATTERN = (
    r"^arn:[a-z-]+:elasticloadbalancing:[a-z0-9-]+:\d{12}:targetgroup/[A-Za-z0-9-]+/[0-9a-f]+$"
)


class AwsApi(Protocol):
    """What the functions here need: boto3 clients (immudeploy.aws.AwsClients, or test clients)."""

    @property
    def ec2(self) -> Any: ...

    @property
    def autoscaling(self) -> Any: ...

    @property
    def elbv2(self) -> Any: ...


@dataclass(frozen=True)
class Capacity:
    """Auto Scaling group size limits."""

    min: int
    max: int
    desired: int

    def __post_init__(self) -> None:
        if not all(isinstance(value, int) and value >= 0 for value in (self.min, self.max, self.desired)):
            raise InvalidInput("capacity", f"min, max and desired must be integers >= 0, got {self}")
        if not self.min <= self.desired <= self.max:
            raise InvalidInput("capacity", f"needs min <= desired <= max, got {self}")

    def pinned(self) -> Capacity:
        """min = max = desired: nothing scales the group while the swap runs."""
        return Capacity(self.desired, self.desired, self.desired)

    def to_tag(self) -> str:
        return f"{self.min},{self.max},{self.desired}"

    @classmethod
    def from_tag(cls, value: str) -> Capacity:
        try:
            low, high, desired = (int(part) for part in value.split(","))
        except ValueError as error:
            raise InvalidInput(TAG_RESTORE_CAPACITY, f"{value!r} is not 'min,max,desired'") from error
        return cls(low, high, desired)

    def to_xcom(self) -> dict[str, int]:
        return {"min": self.min, "max": self.max, "desired": self.desired}

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> Capacity:
        return cls(int(value["min"]), int(value["max"]), int(value["desired"]))


@dataclass
class ServerGroup:
    """One release's Auto Scaling group as read from AWS (image and network from its launch template)."""

    name: str
    app: str
    environment: str
    sequence: int
    version: str | None
    image_id: str | None
    launch_template_name: str | None
    capacity: Capacity
    instance_type: str | None
    subnet_ids: list[str]
    security_group_ids: list[str]
    target_group_arns: list[str]
    # InService or Pending instances: the ones that serve, or are about to serve, this release.
    instance_ids: list[str]
    suspended_processes: list[str]
    deploy_id: str | None
    created_time: str
    disabled: bool = False
    restore_capacity: Capacity | None = None

    def to_xcom(self) -> dict[str, Any]:
        """A small JSON-serialisable dict (no boto3 response objects, no datetimes)."""
        return {
            "name": self.name,
            "app": self.app,
            "environment": self.environment,
            "sequence": self.sequence,
            "version": self.version,
            "image_id": self.image_id,
            "launch_template_name": self.launch_template_name,
            "capacity": self.capacity.to_xcom(),
            "instance_type": self.instance_type,
            "subnet_ids": list(self.subnet_ids),
            "security_group_ids": list(self.security_group_ids),
            "target_group_arns": list(self.target_group_arns),
            "instance_ids": list(self.instance_ids),
            "suspended_processes": list(self.suspended_processes),
            "deploy_id": self.deploy_id,
            "created_time": self.created_time,
            "disabled": self.disabled,
            "restore_capacity": self.restore_capacity.to_xcom() if self.restore_capacity else None,
        }

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> ServerGroup:
        restore = value.get("restore_capacity")
        return cls(
            name=value["name"],
            app=value["app"],
            environment=value["environment"],
            sequence=int(value["sequence"]),
            version=value.get("version"),
            image_id=value.get("image_id"),
            launch_template_name=value.get("launch_template_name"),
            capacity=Capacity.from_xcom(value["capacity"]),
            instance_type=value.get("instance_type"),
            subnet_ids=list(value.get("subnet_ids", [])),
            security_group_ids=list(value.get("security_group_ids", [])),
            target_group_arns=list(value.get("target_group_arns", [])),
            instance_ids=list(value.get("instance_ids", [])),
            suspended_processes=list(value.get("suspended_processes", [])),
            deploy_id=value.get("deploy_id"),
            created_time=value.get("created_time", ""),
            disabled=bool(value.get("disabled", False)),
            restore_capacity=Capacity.from_xcom(restore) if restore else None,
        )


@dataclass
class LaunchSpec:
    """Everything a new server group is made from; `capacity` is the live group's (or the first deploy's)."""

    app: str
    environment: str
    version: str
    image_id: str
    deploy_id: str
    instance_type: str
    subnet_ids: list[str]
    security_group_ids: list[str]
    target_group_arns: list[str]
    capacity: Capacity
    ssm_config_path: str
    cache_key_prefix: str
    health_check_grace_period: int = 0
    iam_instance_profile: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise InvalidInput before anything in AWS changes; these values end up in user data and tags."""
        validate_app(self.app)
        validate_environment(self.environment)
        validate_version(self.version)
        validate_ami_id(self.image_id, "image_id")
        _match("deploy_id", self.deploy_id, DEPLOY_ID_PATTERN)
        _match("instance_type", self.instance_type, INSTANCE_TYPE_PATTERN)
        _match("ssm_config_path", self.ssm_config_path, SSM_PATH_PATTERN)
        _match("cache_key_prefix", self.cache_key_prefix, CACHE_KEY_PREFIX_PATTERN)
        if not self.subnet_ids:
            raise InvalidInput("subnet_ids", "at least one subnet is needed")
        for subnet_id in self.subnet_ids:
            _match("subnet_ids", subnet_id, SUBNET_ID_PATTERN)
        for group_id in self.security_group_ids:
            _match("security_group_ids", group_id, SECURITY_GROUP_ID_PATTERN)
        for arn in self.target_group_arns:
            _match("target_group_arns", arn, TARGET_GROUP_ARN_PATTERN)
        if not isinstance(self.capacity, Capacity):
            raise InvalidInput("capacity", f"must be a Capacity, got {type(self.capacity).__name__}")
        if self.capacity.desired < 1:
            raise InvalidInput("capacity", "a new server group needs at least one instance")
        if not isinstance(self.health_check_grace_period, int) or self.health_check_grace_period < 0:
            raise InvalidInput("health_check_grace_period", "must be an integer >= 0 (seconds)")
        for key in self.tags:
            if key.startswith(("immutable:", "aws:")):
                raise InvalidInput("tags", f"{key!r}: the immutable: and aws: prefixes are reserved")


def _match(field_name: str, value: object, pattern: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise InvalidInput(field_name, f"{value!r} does not match {pattern}")
    return value


def _parse_group_name(group_name: str) -> ServerGroupName:
    parsed = ServerGroupName.parse(group_name) if isinstance(group_name, str) else None
    if parsed is None:
        raise InvalidInput("group_name", f"{group_name!r} is not a server group name like app-env-v001")
    return parsed


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


# --- reading ----------------------------------------------------------------------------------------


def _describe_groups(clients: AwsApi, **kwargs: Any) -> Iterator[dict[str, Any]]:
    paginator = clients.autoscaling.get_paginator("describe_auto_scaling_groups")
    for page in paginator.paginate(**kwargs):
        yield from page["AutoScalingGroups"]


def _describe_raw_group(clients: AwsApi, group_name: str) -> dict[str, Any] | None:
    groups = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])
    found = groups["AutoScalingGroups"]
    return found[0] if found else None


def _app_env_filters(app: str, environment: str) -> list[dict[str, Any]]:
    return [
        {"Name": f"tag:{TAG_APP}", "Values": [app]},
        {"Name": f"tag:{TAG_ENVIRONMENT}", "Values": [environment]},
    ]


def _launch_template_specs(raw_group: dict[str, Any]) -> list[dict[str, Any]]:
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


def _template_selector(spec: dict[str, Any]) -> dict[str, str]:
    if spec.get("LaunchTemplateId"):
        return {"LaunchTemplateId": spec["LaunchTemplateId"]}
    return {"LaunchTemplateName": spec["LaunchTemplateName"]}


def _launch_template_versions(
    clients: AwsApi, spec: dict[str, Any], versions: list[str] | None = None
) -> list[dict[str, Any]]:
    """Versions of one launch template; empty when it was deleted."""
    kwargs: dict[str, Any] = _template_selector(spec)
    if versions:
        kwargs["Versions"] = versions
    try:
        paginator = clients.ec2.get_paginator("describe_launch_template_versions")
        return [v for page in paginator.paginate(**kwargs) for v in page["LaunchTemplateVersions"]]
    except ClientError as error:
        if _error_code(error).startswith(("InvalidLaunchTemplateName.NotFound", "InvalidLaunchTemplateId.")):
            return []
        raise


def _to_server_group(clients: AwsApi, raw: dict[str, Any]) -> ServerGroup:
    name = raw["AutoScalingGroupName"]
    parsed = _parse_group_name(name)
    tags = from_aws_tags(raw.get("Tags"))
    template_data: dict[str, Any] = {}
    template_name: str | None = None
    specs = _launch_template_specs(raw)
    if specs:
        template_name = specs[0].get("LaunchTemplateName")
        found = _launch_template_versions(clients, specs[0], [specs[0].get("Version") or "$Default"])
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


def _is_ours(raw: dict[str, Any], app: str, environment: str) -> bool:
    parsed = ServerGroupName.parse(raw["AutoScalingGroupName"])
    tags = from_aws_tags(raw.get("Tags"))
    return (
        parsed is not None
        and (parsed.app, parsed.environment) == (app, environment)
        and tags.get(TAG_APP) == app
        and tags.get(TAG_ENVIRONMENT) == environment
    )


def _raw_groups_of(
    clients: AwsApi, app: str, environment: str, *, include_deleting: bool
) -> list[dict[str, Any]]:
    return [
        raw
        for raw in _describe_groups(clients, Filters=_app_env_filters(app, environment))
        if _is_ours(raw, app, environment) and (include_deleting or raw.get("Status") != DELETE_IN_PROGRESS)
    ]


def describe_server_group(clients: AwsApi, group_name: str) -> ServerGroup | None:
    """One group by name; None when it does not exist (or is being deleted)."""
    _parse_group_name(group_name)
    raw = _describe_raw_group(clients, group_name)
    if raw is None or raw.get("Status") == DELETE_IN_PROGRESS:
        return None
    return _to_server_group(clients, raw)


def find_server_groups(clients: AwsApi, app: str, environment: str) -> list[ServerGroup]:
    """This app and environment's groups, oldest first: `{app}-{environment}-vNNN` with matching tags."""
    validate_app(app)
    validate_environment(environment)
    groups = [
        _to_server_group(clients, raw)
        for raw in _raw_groups_of(clients, app, environment, include_deleting=False)
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


# --- launching ----------------------------------------------------------------------------------


def release_user_data(spec: LaunchSpec, group_name: str) -> str:
    """A shell script writing RELEASE_ENV_PATH; values are validated and shell-quoted, so it is sourceable."""
    values = {
        "IMMUTABLE_APP": spec.app,
        "IMMUTABLE_ENVIRONMENT": spec.environment,
        "IMMUTABLE_VERSION": spec.version,
        "IMMUTABLE_SERVER_GROUP": group_name,
        "IMMUTABLE_SSM_PATH": spec.ssm_config_path,
        "IMMUTABLE_CACHE_PREFIX": spec.cache_key_prefix,
    }
    lines = "\n".join(f"{key}={shlex.quote(value)}" for key, value in values.items())
    directory = shlex.quote(RELEASE_ENV_PATH.rsplit("/", 1)[0])
    target = shlex.quote(RELEASE_ENV_PATH)
    # Quoted heredoc delimiter: the shell expands nothing inside; the file is written then renamed
    # so a service starting early never reads half of it.
    return (
        "#!/bin/bash\n"
        "# Written by immudeploy: which release this instance serves and where its runtime config lives.\n"
        "set -euo pipefail\n"
        "umask 022\n"
        f"mkdir -p {directory}\n"
        f"cat > {target}.tmp <<'IMMUTABLE_RELEASE_ENV'\n"
        f"{lines}\n"
        "IMMUTABLE_RELEASE_ENV\n"
        f"mv {target}.tmp {target}\n"
    )


def _launch_template_by_name(clients: AwsApi, name: str) -> dict[str, Any] | None:
    try:
        found = clients.ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
    except ClientError as error:
        if _error_code(error).startswith("InvalidLaunchTemplateName.NotFound"):
            return None
        raise
    return found[0] if found else None


def _launch_templates_of(clients: AwsApi, app: str, environment: str) -> list[dict[str, Any]]:
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


def _claim_name(clients: AwsApi, spec: LaunchSpec) -> ServerGroupName:
    """The name for a new group: a launch template our own earlier attempt left behind, else max + 1.

    A launch that crashed between creating the launch template and the group leaves a template
    tagged with its deploy id: the retry reuses that number. A template left by any other run is
    never reused (its image and user data belong to another release), so its number is skipped;
    retire_server_groups deletes such orphans later. Groups being deleted count too: AWS keeps
    their name taken until the deletion ends.
    """
    raw_groups = _raw_groups_of(clients, spec.app, spec.environment, include_deleting=True)
    templates = _launch_templates_of(clients, spec.app, spec.environment)
    group_names = {raw["AutoScalingGroupName"] for raw in raw_groups}
    for template in sorted(templates, key=lambda t: t["LaunchTemplateName"], reverse=True):
        tags = from_aws_tags(template.get("Tags"))
        if tags.get(TAG_DEPLOY_ID) == spec.deploy_id and template["LaunchTemplateName"] not in group_names:
            log.info("Reusing launch template %s left by an earlier attempt", template["LaunchTemplateName"])
            return _parse_group_name(template["LaunchTemplateName"])
    names = [ServerGroupName.parse(raw["AutoScalingGroupName"]) for raw in raw_groups]
    names += [ServerGroupName.parse(t["LaunchTemplateName"]) for t in templates]
    highest = max((n.sequence for n in names if n is not None), default=0)
    return ServerGroupName(spec.app, spec.environment, highest + 1)


def _resource_tags(spec: LaunchSpec) -> dict[str, str]:
    return {
        **spec.tags,
        **identity_tags(spec.app, spec.environment, spec.version),
        TAG_DEPLOY_ID: spec.deploy_id,
    }


def _ensure_launch_template(clients: AwsApi, name: str, spec: LaunchSpec) -> str:
    """Create the group's launch template unless it exists; returns the version number to launch."""
    existing = _launch_template_by_name(clients, name)
    if existing is None:
        tags = as_aws_tags(_resource_tags(spec))
        data: dict[str, Any] = {
            "ImageId": spec.image_id,
            "InstanceType": spec.instance_type,
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "UserData": base64.b64encode(release_user_data(spec, name).encode()).decode(),
            # Volumes do not get the group's propagated tags; instances get them from both.
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if spec.security_group_ids:
            data["SecurityGroupIds"] = list(spec.security_group_ids)
        if spec.iam_instance_profile:
            data["IamInstanceProfile"] = {"Name": spec.iam_instance_profile}
        try:
            created = clients.ec2.create_launch_template(
                LaunchTemplateName=name,
                LaunchTemplateData=data,
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
            )
            log.info("Created launch template %s (image %s)", name, spec.image_id)
            return str(created["LaunchTemplate"]["DefaultVersionNumber"])
        except ClientError as error:
            if not _error_code(error).startswith("InvalidLaunchTemplateName.AlreadyExists"):
                raise
            existing = _launch_template_by_name(clients, name)
            if existing is None:
                raise
    owner = from_aws_tags(existing.get("Tags")).get(TAG_DEPLOY_ID)
    if owner != spec.deploy_id:
        raise DeployError(f"launch template {name} belongs to deploy {owner!r}, not {spec.deploy_id!r}")
    return str(existing["DefaultVersionNumber"])


def _group_tags(name: str, spec: LaunchSpec) -> list[dict[str, Any]]:
    propagated = [
        {"Key": key, "Value": value, "PropagateAtLaunch": True}
        for key, value in sorted(_resource_tags(spec).items())
    ]
    pinned = [{"Key": TAG_RESTORE_CAPACITY, "Value": spec.capacity.to_tag(), "PropagateAtLaunch": False}]
    return [{"ResourceId": name, "ResourceType": "auto-scaling-group", **tag} for tag in propagated + pinned]


def _group_for_deploy(clients: AwsApi, spec: LaunchSpec) -> dict[str, Any] | None:
    filters = [
        *_app_env_filters(spec.app, spec.environment),
        {"Name": f"tag:{TAG_DEPLOY_ID}", "Values": [spec.deploy_id]},
    ]
    found = [
        raw
        for raw in _describe_groups(clients, Filters=filters)
        if _is_ours(raw, spec.app, spec.environment) and raw.get("Status") != DELETE_IN_PROGRESS
    ]
    found.sort(key=lambda raw: _parse_group_name(raw["AutoScalingGroupName"]).sequence)
    return found[-1] if found else None


def _suspend(clients: AwsApi, group_name: str, processes: Iterable[str]) -> None:
    clients.autoscaling.suspend_processes(AutoScalingGroupName=group_name, ScalingProcesses=list(processes))


def launch_server_group(clients: AwsApi, spec: LaunchSpec) -> ServerGroup:
    """Create the next `{app}-{env}-vNNN` group, pinned at spec.capacity.desired; safe to retry.

    A retry (same spec.deploy_id) returns the group its first attempt made: moto and the
    instance APIs ignore client tokens, so the deploy-id tag is the idempotency key.
    """
    spec.validate()
    existing = _group_for_deploy(clients, spec)
    if existing is not None:
        name = existing["AutoScalingGroupName"]
        log.info("Server group %s was already launched by deploy %s", name, spec.deploy_id)
        # Still pinned means the swap has not finished: an attempt that died right after creating
        # the group may not have suspended its processes yet.
        if TAG_RESTORE_CAPACITY in from_aws_tags(existing.get("Tags")):
            _suspend(clients, name, SWAP_SUSPENDED_PROCESSES)
        return _to_server_group(clients, _describe_raw_group(clients, name) or existing)

    name = str(_claim_name(clients, spec))
    version = _ensure_launch_template(clients, name, spec)
    raw = _describe_raw_group(clients, name)
    if raw is not None:
        # Moto silently replaces a group created twice under one name; AWS refuses. Never do either.
        owner = from_aws_tags(raw.get("Tags")).get(TAG_DEPLOY_ID)
        raise DeployError(f"server group {name} already exists and belongs to deploy {owner!r}")
    pinned = spec.capacity.pinned()
    kwargs: dict[str, Any] = {
        "AutoScalingGroupName": name,
        # A fixed version, not $Latest: editing the template later must not change a running release.
        "LaunchTemplate": {"LaunchTemplateName": name, "Version": version},
        "MinSize": pinned.min,
        "MaxSize": pinned.max,
        "DesiredCapacity": pinned.desired,
        "VPCZoneIdentifier": ",".join(spec.subnet_ids),
        "HealthCheckType": "ELB" if spec.target_group_arns else "EC2",
        "HealthCheckGracePeriod": spec.health_check_grace_period,
        # Belt and braces with the pinned size: no scale-in may pick a new instance mid-swap.
        "NewInstancesProtectedFromScaleIn": True,
        "Tags": _group_tags(name, spec),
    }
    if spec.target_group_arns:
        kwargs["TargetGroupARNs"] = list(spec.target_group_arns)
    try:
        clients.autoscaling.create_auto_scaling_group(**kwargs)
    except ClientError as error:
        if _error_code(error) != "AlreadyExists":
            raise
        raw = _describe_raw_group(clients, name)
        if raw is None or from_aws_tags(raw.get("Tags")).get(TAG_DEPLOY_ID) != spec.deploy_id:
            raise
    log.info(
        "Created server group %s: image %s, %d instances pinned, deploy %s",
        name,
        spec.image_id,
        pinned.desired,
        spec.deploy_id,
    )
    _suspend(clients, name, SWAP_SUSPENDED_PROCESSES)
    described = describe_server_group(clients, name)
    if described is None:
        raise DeployError(f"server group {name} vanished right after it was created")
    return described


# --- traffic ------------------------------------------------------------------------------------


def _require_group(clients: AwsApi, group_name: str) -> dict[str, Any]:
    _parse_group_name(group_name)
    raw = _describe_raw_group(clients, group_name)
    if raw is None or raw.get("Status") == DELETE_IN_PROGRESS:
        raise DeployError(f"server group {group_name} does not exist")
    return raw


def _target_group_label(arn: str) -> str:
    # arn:...:targetgroup/NAME/ID -> NAME: what a person recognises in the console.
    resource = arn.rsplit(":", 1)[-1]
    parts = resource.split("/")
    return parts[1] if len(parts) == 3 else arn


def attach_server_group(
    clients: AwsApi, group_name: str, target_group_arns: list[str], *, elb_health_check: bool = True
) -> ServerGroup:
    """Put a group behind the target groups (and re-enable it if it was disabled); idempotent."""
    raw = _require_group(clients, group_name)
    tags = from_aws_tags(raw.get("Tags"))
    suspended = {p["ProcessName"] for p in raw.get("SuspendedProcesses", [])}
    re_enable = [p for p in DISABLED_SUSPENDED_PROCESSES if p in suspended]
    if re_enable:
        clients.autoscaling.resume_processes(AutoScalingGroupName=group_name, ScalingProcesses=re_enable)
    missing = [arn for arn in target_group_arns if arn not in raw.get("TargetGroupARNs", [])]
    if missing:
        clients.autoscaling.attach_load_balancer_target_groups(
            AutoScalingGroupName=group_name, TargetGroupARNs=missing
        )
        log.info("Attached %s to %s", group_name, ", ".join(map(_target_group_label, missing)))
    else:
        log.info("%s is already attached to every target group", group_name)
    if elb_health_check and raw.get("HealthCheckType") != "ELB":
        # Once it serves traffic, the load balancer's view of health is the one that should replace instances.
        clients.autoscaling.update_auto_scaling_group(AutoScalingGroupName=group_name, HealthCheckType="ELB")
    if TAG_STATE in tags:
        clients.autoscaling.delete_tags(
            Tags=[{"ResourceId": group_name, "ResourceType": "auto-scaling-group", "Key": TAG_STATE}]
        )
    return _to_server_group(clients, _require_group(clients, group_name))


def healthy_target_ids(clients: AwsApi, target_group_arn: str) -> set[str]:
    """Ids of targets whose state is `healthy` in one target group."""
    descriptions = clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)[
        "TargetHealthDescriptions"
    ]
    return {d["Target"]["Id"] for d in descriptions if d.get("TargetHealth", {}).get("State") == "healthy"}


def check_traffic_guard(
    clients: AwsApi, target_group_arns: list[str], leaving_instance_ids: list[str]
) -> None:
    """Raise TrafficGuardError if removing these instances would leave a target group with no healthy target."""
    leaving = set(leaving_instance_ids)
    for arn in target_group_arns:
        healthy = healthy_target_ids(clients, arn)
        remaining = healthy - leaving
        if not remaining:
            raise TrafficGuardError(
                f"refusing: target group {_target_group_label(arn)} would have no healthy target "
                f"({len(healthy)} healthy now, {len(healthy & leaving)} of them among the "
                f"{len(leaving)} instances leaving)"
            )
        log.info(
            "Traffic guard: %s keeps %d of %d healthy targets",
            _target_group_label(arn),
            len(remaining),
            len(healthy),
        )


def detach_server_group(
    clients: AwsApi, group_name: str, target_group_arns: list[str], *, force: bool = False
) -> ServerGroup | None:
    """Take a group out of the target groups and mark it disabled; guarded by check_traffic_guard.

    Idempotent: a group already detached is only (re)marked disabled; a missing group is nothing
    to detach (None). `force` skips the traffic guard, for tearing down a fleet that never served.
    """
    _parse_group_name(group_name)
    raw = _describe_raw_group(clients, group_name)
    if raw is None:
        log.warning("Server group %s does not exist: nothing to detach", group_name)
        return None
    attached = [arn for arn in target_group_arns if arn in raw.get("TargetGroupARNs", [])]
    if attached:
        leaving = [i["InstanceId"] for i in raw.get("Instances", [])]
        if not force:
            check_traffic_guard(clients, attached, leaving)
        clients.autoscaling.detach_load_balancer_target_groups(
            AutoScalingGroupName=group_name, TargetGroupARNs=attached
        )
        log.info("Detached %s from %s", group_name, ", ".join(map(_target_group_label, attached)))
    else:
        log.info("%s is not attached to any of the target groups", group_name)
    suspended = {p["ProcessName"] for p in raw.get("SuspendedProcesses", [])}
    if not set(DISABLED_SUSPENDED_PROCESSES) <= suspended:
        _suspend(clients, group_name, DISABLED_SUSPENDED_PROCESSES)
    if from_aws_tags(raw.get("Tags")).get(TAG_STATE) != STATE_DISABLED:
        clients.autoscaling.create_or_update_tags(Tags=[_state_tag(group_name)])
    return describe_server_group(clients, group_name)


def _state_tag(group_name: str) -> dict[str, Any]:
    return {
        "ResourceId": group_name,
        "ResourceType": "auto-scaling-group",
        "Key": TAG_STATE,
        "Value": STATE_DISABLED,
        "PropagateAtLaunch": False,
    }


# --- capacity -----------------------------------------------------------------------------------


def _set_restore_tag(clients: AwsApi, group_name: str, capacity: Capacity) -> None:
    clients.autoscaling.create_or_update_tags(
        Tags=[
            {
                "ResourceId": group_name,
                "ResourceType": "auto-scaling-group",
                "Key": TAG_RESTORE_CAPACITY,
                "Value": capacity.to_tag(),
                "PropagateAtLaunch": False,
            }
        ]
    )


def pin_capacity(clients: AwsApi, group_name: str, capacity: Capacity) -> ServerGroup:
    """Fix min = max = desired = capacity.desired, remembering the group's size before the first pin."""
    raw = _require_group(clients, group_name)
    if TAG_RESTORE_CAPACITY not in from_aws_tags(raw.get("Tags")):
        # Only the first pin records: a retry must not record the pinned size as the original.
        original = Capacity(raw["MinSize"], raw["MaxSize"], raw["DesiredCapacity"])
        _set_restore_tag(clients, group_name, original)
    pinned = capacity.pinned()
    clients.autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=group_name,
        MinSize=pinned.min,
        MaxSize=pinned.max,
        DesiredCapacity=pinned.desired,
    )
    log.info("Pinned %s at %d instances", group_name, pinned.desired)
    return _to_server_group(clients, _require_group(clients, group_name))


def restore_capacity(clients: AwsApi, group_name: str, capacity: Capacity | None = None) -> ServerGroup:
    """End the swap for a group: min/max back to `capacity` (else its restore tag), desired kept.

    Also resumes the processes the swap suspended and lifts scale-in protection, so the group
    autoscales normally again. Idempotent: with neither argument nor tag, only the resume runs.
    """
    raw = _require_group(clients, group_name)
    tags = from_aws_tags(raw.get("Tags"))
    target = capacity or (
        Capacity.from_tag(tags[TAG_RESTORE_CAPACITY]) if TAG_RESTORE_CAPACITY in tags else None
    )
    update: dict[str, Any] = {}
    if raw.get("NewInstancesProtectedFromScaleIn"):
        update["NewInstancesProtectedFromScaleIn"] = False
    if target is not None:
        desired = min(max(raw["DesiredCapacity"], target.min), target.max)
        update.update(MinSize=target.min, MaxSize=target.max, DesiredCapacity=desired)
        log.info("Restoring %s to min %d, max %d (desired %d)", group_name, target.min, target.max, desired)
    else:
        log.info("%s has no recorded capacity to restore", group_name)
    if update:
        clients.autoscaling.update_auto_scaling_group(AutoScalingGroupName=group_name, **update)
    protected = [i["InstanceId"] for i in raw.get("Instances", []) if i.get("ProtectedFromScaleIn")]
    for start in range(0, len(protected), _PROTECTION_BATCH):
        clients.autoscaling.set_instance_protection(
            AutoScalingGroupName=group_name,
            InstanceIds=protected[start : start + _PROTECTION_BATCH],
            ProtectedFromScaleIn=False,
        )
    suspended = {p["ProcessName"] for p in raw.get("SuspendedProcesses", [])}
    to_resume = [p for p in SWAP_SUSPENDED_PROCESSES if p in suspended]
    if to_resume:
        clients.autoscaling.resume_processes(AutoScalingGroupName=group_name, ScalingProcesses=to_resume)
    if TAG_RESTORE_CAPACITY in tags:
        clients.autoscaling.delete_tags(
            Tags=[
                {"ResourceId": group_name, "ResourceType": "auto-scaling-group", "Key": TAG_RESTORE_CAPACITY}
            ]
        )
    return _to_server_group(clients, _require_group(clients, group_name))


def scale_server_group(clients: AwsApi, group_name: str, capacity: Capacity) -> ServerGroup:
    """Set min/max/desired exactly (rollback scales a kept group back up with this)."""
    _require_group(clients, group_name)
    clients.autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=group_name,
        MinSize=capacity.min,
        MaxSize=capacity.max,
        DesiredCapacity=capacity.desired,
    )
    log.info(
        "Scaled %s to min %d, max %d, desired %d", group_name, capacity.min, capacity.max, capacity.desired
    )
    return _to_server_group(clients, _require_group(clients, group_name))


# --- teardown -----------------------------------------------------------------------------------


def _delete_launch_template(clients: AwsApi, name: str) -> bool:
    template = _launch_template_by_name(clients, name)
    if template is None:
        return False
    try:
        # By id: moto answers a missing name with MissingParameter rather than NotFound.
        clients.ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
    except ClientError as error:
        if _error_code(error).startswith(
            ("InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFound")
        ):
            return False
        raise
    log.info("Deleted launch template %s", name)
    return True


def delete_server_group(clients: AwsApi, group_name: str, *, force: bool = False) -> bool:
    """Delete a group (terminating its instances) and its launch template; True if anything was deleted.

    A group still attached is first detached through the traffic guard (skipped with `force`).
    """
    _parse_group_name(group_name)
    deleted = False
    raw = _describe_raw_group(clients, group_name)
    if raw is not None and raw.get("Status") != DELETE_IN_PROGRESS:
        if raw.get("TargetGroupARNs"):
            detach_server_group(clients, group_name, list(raw["TargetGroupARNs"]), force=force)
        try:
            clients.autoscaling.delete_auto_scaling_group(AutoScalingGroupName=group_name, ForceDelete=True)
            deleted = True
            log.info("Deleting server group %s", group_name)
        except ClientError as error:
            if "not found" not in str(error):
                raise
    return _delete_launch_template(clients, group_name) or deleted


def _registered_target_ids(clients: AwsApi, target_group_arns: list[str]) -> set[str]:
    """Every target still registered (healthy, draining, ...): deleting its instance would cut requests."""
    registered: set[str] = set()
    for arn in target_group_arns:
        descriptions = clients.elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        registered |= {d["Target"]["Id"] for d in descriptions}
    return registered


def retire_server_groups(
    clients: AwsApi,
    app: str,
    environment: str,
    keep: int,
    current_group_name: str,
    target_group_arns: list[str],
) -> list[str]:
    """Delete this app/env's old groups except the current one and the newest `keep` disabled ones.

    Never deletes a group attached to any target group, nor one with an instance still registered
    in `target_group_arns` (e.g. still draining): those wait for the next retire. Also deletes
    launch templates that a crashed launch left without a group (older than the current group).
    Returns the deleted group names.
    """
    if not isinstance(keep, int) or keep < 0:
        raise InvalidInput("keep", f"must be an integer >= 0, got {keep!r}")
    current = _parse_group_name(current_group_name)
    registered = _registered_target_ids(clients, target_group_arns)
    candidates: list[ServerGroup] = []
    for group in find_server_groups(clients, app, environment):
        if group.name == current_group_name:
            continue
        if group.target_group_arns:
            log.warning(
                "Not retiring %s: still attached to %s", group.name, ", ".join(group.target_group_arns)
            )
            continue
        serving = registered & set(group.instance_ids)
        if serving:
            log.warning("Not retiring %s: %d instances still registered as targets", group.name, len(serving))
            continue
        candidates.append(group)
    candidates.sort(key=lambda group: group.sequence, reverse=True)
    kept, doomed = candidates[:keep], candidates[keep:]
    if kept:
        log.info("Keeping disabled for rollback: %s", ", ".join(group.name for group in kept))
    deleted = []
    for group in doomed:
        if delete_server_group(clients, group.name):
            deleted.append(group.name)
    group_names = {
        raw["AutoScalingGroupName"]
        for raw in _raw_groups_of(clients, app, environment, include_deleting=True)
    }
    for template in _launch_templates_of(clients, app, environment):
        name = template["LaunchTemplateName"]
        parsed = _parse_group_name(name)
        if name not in group_names and parsed.sequence < current.sequence:
            log.info("Deleting orphaned launch template %s", name)
            _delete_launch_template(clients, name)
    return deleted


# --- images -------------------------------------------------------------------------------------


def images_in_use(clients: AwsApi, app: str | None = None) -> dict[str, list[str]]:
    """{image id: [group names]} over every version of every group's launch template(s).

    With `app`, only groups tagged immutable:app=app; without, every group in the region.
    """
    kwargs: dict[str, Any] = {}
    if app is not None:
        validate_app(app)
        kwargs["Filters"] = [{"Name": f"tag:{TAG_APP}", "Values": [app]}]
    used: dict[str, set[str]] = {}
    versions_cache: dict[tuple[str, str], list[dict[str, Any]]] = {}
    configurations: dict[str, list[str]] = {}
    for raw in _describe_groups(clients, **kwargs):
        name = raw["AutoScalingGroupName"]
        for spec in _launch_template_specs(raw):
            key = next(iter(_template_selector(spec).items()))
            if key not in versions_cache:
                versions_cache[key] = _launch_template_versions(clients, spec)
            for version in versions_cache[key]:
                image_id = version.get("LaunchTemplateData", {}).get("ImageId")
                if image_id:
                    used.setdefault(image_id, set()).add(name)
        if raw.get("LaunchConfigurationName"):
            configurations.setdefault(raw["LaunchConfigurationName"], []).append(name)
    names = list(configurations)
    for start in range(0, len(names), 50):
        response = clients.autoscaling.describe_launch_configurations(
            LaunchConfigurationNames=names[start : start + 50]
        )
        for configuration in response["LaunchConfigurations"]:
            for group_name in configurations[configuration["LaunchConfigurationName"]]:
                used.setdefault(configuration["ImageId"], set()).add(group_name)
    return {image_id: sorted(groups) for image_id, groups in sorted(used.items())}


def _images_of_live_instances(clients: AwsApi, image_ids: list[str]) -> set[str]:
    if not image_ids:
        return set()
    paginator = clients.ec2.get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[
            {"Name": "image-id", "Values": image_ids},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ]
    )
    return {i["ImageId"] for page in pages for r in page["Reservations"] for i in r["Instances"]}


def delete_unused_images(clients: AwsApi, app: str, keep: int) -> list[str]:
    """Deregister this app's images (and their snapshots) beyond the newest `keep` that nothing uses.

    "Used" means named by any version of any group's launch template in the region, or running
    an instance. `keep` is at least 1: the newest image may be baked but not launched yet.
    """
    validate_app(app)
    if not isinstance(keep, int) or keep < 1:
        raise InvalidInput("keep", f"must be an integer >= 1, got {keep!r}")
    paginator = clients.ec2.get_paginator("describe_images")
    pages = paginator.paginate(Owners=["self"], Filters=[{"Name": f"tag:{TAG_APP}", "Values": [app]}])
    images = [image for page in pages for image in page["Images"]]
    # CreationDate has one-second resolution: the name (which a bake makes unique) breaks ties.
    images.sort(key=lambda image: (image.get("CreationDate", ""), image.get("Name", "")), reverse=True)
    beyond = images[keep:]
    in_use = set(images_in_use(clients)) | _images_of_live_instances(clients, [i["ImageId"] for i in beyond])
    deleted: list[str] = []
    for image in beyond:
        image_id = image["ImageId"]
        if image_id in in_use:
            log.info("Keeping image %s: still in use", image_id)
            continue
        snapshots = [
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        ]
        clients.ec2.deregister_image(ImageId=image_id)
        for snapshot_id in snapshots:
            try:
                clients.ec2.delete_snapshot(SnapshotId=snapshot_id)
            except ClientError as error:
                if _error_code(error) != "InvalidSnapshot.NotFound":
                    raise
        log.info("Deregistered image %s (%s) and %d snapshots", image_id, image.get("Name"), len(snapshots))
        deleted.append(image_id)
    return deleted
