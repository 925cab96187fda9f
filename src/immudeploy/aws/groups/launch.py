"""Launching a server group: its launch template, user data and the pinned Auto Scaling group."""

from __future__ import annotations

import base64
import logging
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml
from botocore.exceptions import ClientError

from immudeploy.aws.connection import AwsApi
from immudeploy.aws.errors import error_code
from immudeploy.aws.groups.capacity import SWAP_SUSPENDED_PROCESSES, suspend
from immudeploy.aws.groups.inventory import (
    DELETE_IN_PROGRESS,
    app_env_filters,
    describe_groups,
    describe_raw_group,
    describe_server_group,
    is_ours,
    launch_template_by_name,
    launch_templates_of,
    parse_group_name,
    raw_groups_of,
    to_server_group,
)
from immudeploy.aws.groups.setup import GroupSetup, apply_group_setup
from immudeploy.aws.release_config import MAX_PATH_LENGTH, TAG_CONFIG_PATH
from immudeploy.core.config import KEY_NAME_PATTERN, validate_instance_profile
from immudeploy.core.errors import DeployError, InvalidInput
from immudeploy.core.naming import (
    TAG_DEPLOY_ID,
    TAG_RESTORE_CAPACITY,
    ServerGroupName,
    as_aws_tags,
    from_aws_tags,
    identity_tags,
    validate_ami_id,
    validate_app,
    validate_environment,
    validate_version,
)
from immudeploy.core.plan import Capacity, ServerGroup

log = logging.getLogger(__name__)

RELEASE_ENV_PATH = "/etc/immutable/release.env"

SSM_PATH_PATTERN = rf"^/[A-Za-z0-9_.\-/]{{1,{MAX_PATH_LENGTH - 1}}}$"
CACHE_KEY_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/+=\-]{0,255}$"
# Airflow run ids look like "manual__2026-01-01T00:00:00+00:00"; all of it is legal in a tag value.
DEPLOY_ID_PATTERN = r"^[A-Za-z0-9_.:/=+@\-]{1,200}$"
INSTANCE_TYPE_PATTERN = r"^[a-z0-9][a-z0-9-]*\.[a-z0-9]+$"
SUBNET_ID_PATTERN = r"^subnet-[0-9a-f]{8,17}$"
SECURITY_GROUP_ID_PATTERN = r"^sg-[0-9a-f]{8,17}$"
TARGET_GROUP_ARN_PATTERN = (
    r"^arn:[a-z-]+:elasticloadbalancing:[a-z0-9-]+:\d{12}:targetgroup/[A-Za-z0-9-]+/[0-9a-f]+$"
)


@dataclass
class LaunchSpec:
    """Everything a new server group is made from; `capacity` is the live group's (or the first deploy's).

    `setup` is how it scales, is scheduled, hooked, health-checked and tagged: the live group's
    (immudeploy.aws.groups.setup.setup_for_new_group), or the configured defaults.
    """

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
    # Name or ARN; the instances need it to read their configuration (README: on real AWS).
    iam_instance_profile: str | None = None
    # An EC2 key pair for SSH; None (the default) means no key: immutable servers are not logged into.
    key_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    setup: GroupSetup = field(default_factory=GroupSetup)

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
        if self.iam_instance_profile is not None:
            validate_instance_profile(self.iam_instance_profile, "iam_instance_profile")
        if self.key_name is not None:
            _match("key_name", self.key_name, KEY_NAME_PATTERN)
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
        if not isinstance(self.setup, GroupSetup):
            raise InvalidInput("setup", f"must be a GroupSetup, got {type(self.setup).__name__}")
        self.setup.validate()
        for key in self.tags:
            if key.startswith(("immutable:", "aws:")):
                raise InvalidInput("tags", f"{key!r}: the immutable: and aws: prefixes are reserved")


def _match(field_name: str, value: object, pattern: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise InvalidInput(field_name, f"{value!r} does not match {pattern}")
    return value


class _CloudConfigDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks: the user data reads like the file it writes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CloudConfigDumper.add_representer(str, _represent_str)


def release_env(spec: LaunchSpec, group_name: str) -> str:
    """RELEASE_ENV_PATH's content: validated values, single-quoted (a systemd EnvironmentFile and sourceable)."""
    values = {
        "IMMUTABLE_APP": spec.app,
        "IMMUTABLE_ENVIRONMENT": spec.environment,
        "IMMUTABLE_VERSION": spec.version,
        "IMMUTABLE_SERVER_GROUP": group_name,
        "IMMUTABLE_SSM_PATH": spec.ssm_config_path,
        "IMMUTABLE_CACHE_PREFIX": spec.cache_key_prefix,
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def release_user_data(spec: LaunchSpec, group_name: str) -> str:
    """cloud-config whose `write_files` writes RELEASE_ENV_PATH before the app's units start.

    The contract with the image (packer/files/*.service): cloud-init's `write_files` module runs
    in cloud-init.service (the init stage, before network-online.target), and `<app>-config.service`
    is ordered after cloud-init.service, `<app>.service` after that. A shell-script user data would
    run in cloud-final, after multi-user.target, too late for units started at boot.
    """
    document = {
        "write_files": [
            {
                "path": RELEASE_ENV_PATH,
                "owner": "root:root",
                "permissions": "0644",
                "content": release_env(spec, group_name),
            }
        ]
    }
    body = yaml.dump(
        document, Dumper=_CloudConfigDumper, default_flow_style=False, sort_keys=False, width=1000
    )
    return (
        "#cloud-config\n# Written by immudeploy: which release this instance serves and where its configuration lives.\n"
        + body
    )


def _claim_name(clients: AwsApi, spec: LaunchSpec) -> ServerGroupName:
    """The name for a new group: a launch template our own earlier attempt left behind, else max + 1.

    A launch that crashed between creating the launch template and the group leaves a template
    tagged with its deploy id: the retry reuses that number. A template left by any other run is
    never reused (its image and user data belong to another release), so its number is skipped;
    retire_server_groups deletes such orphans later. Groups being deleted count too: AWS keeps
    their name taken until the deletion ends; and so do deleted ones (the SSM high-water mark).
    """
    raw_groups = raw_groups_of(clients, spec.app, spec.environment, include_deleting=True)
    templates = launch_templates_of(clients, spec.app, spec.environment)
    group_names = {raw["AutoScalingGroupName"] for raw in raw_groups}
    for template in sorted(templates, key=lambda t: t["LaunchTemplateName"], reverse=True):
        tags = from_aws_tags(template.get("Tags"))
        if tags.get(TAG_DEPLOY_ID) == spec.deploy_id and template["LaunchTemplateName"] not in group_names:
            log.info("Reusing launch template %s left by an earlier attempt", template["LaunchTemplateName"])
            return parse_group_name(template["LaunchTemplateName"])
    names = [ServerGroupName.parse(raw["AutoScalingGroupName"]) for raw in raw_groups]
    names += [ServerGroupName.parse(t["LaunchTemplateName"]) for t in templates]
    highest = max((n.sequence for n in names if n is not None), default=0)
    # Groups and templates get deleted; the number they had must still never come back (logs,
    # metrics and a rollback's record name groups by it): the highest number used is kept in SSM.
    claimed = ServerGroupName(spec.app, spec.environment, max(highest, _last_sequence(clients, spec)) + 1)
    clients.ssm.put_parameter(
        Name=last_sequence_parameter(spec.app, spec.environment),
        Value=str(claimed.sequence),
        Type="String",
        Overwrite=True,
        Description=f"immudeploy: the highest server group number used by {spec.app}/{spec.environment}",
    )
    return claimed


def last_sequence_parameter(app: str, environment: str) -> str:
    return f"/immutable/{app}/{environment}/last-group-sequence"


def _last_sequence(clients: AwsApi, spec: LaunchSpec) -> int:
    try:
        value = clients.ssm.get_parameter(Name=last_sequence_parameter(spec.app, spec.environment))
    except clients.ssm.exceptions.ParameterNotFound:
        return 0
    text = value["Parameter"]["Value"]
    return int(text) if text.isdigit() else 0


def _resource_tags(spec: LaunchSpec) -> dict[str, str]:
    return {
        **spec.tags,
        **identity_tags(spec.app, spec.environment, spec.version),
        TAG_DEPLOY_ID: spec.deploy_id,
        # What the instances read at boot: a path no group names any more is deleted as superseded.
        TAG_CONFIG_PATH: spec.ssm_config_path,
    }


def _ensure_launch_template(clients: AwsApi, name: str, spec: LaunchSpec) -> str:
    """Create the group's launch template unless it exists; returns the version number to launch."""
    existing = launch_template_by_name(clients, name)
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
            by = "Arn" if spec.iam_instance_profile.startswith("arn:") else "Name"
            data["IamInstanceProfile"] = {by: spec.iam_instance_profile}
        if spec.key_name:
            data["KeyName"] = spec.key_name
        try:
            created = clients.ec2.create_launch_template(
                LaunchTemplateName=name,
                LaunchTemplateData=data,
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
            )
            log.info("Created launch template %s (image %s)", name, spec.image_id)
            return str(created["LaunchTemplate"]["DefaultVersionNumber"])
        except ClientError as error:
            if not error_code(error).startswith("InvalidLaunchTemplateName.AlreadyExists"):
                raise
            existing = launch_template_by_name(clients, name)
            if existing is None:
                raise
    owner = from_aws_tags(existing.get("Tags")).get(TAG_DEPLOY_ID)
    if owner != spec.deploy_id:
        raise DeployError(f"launch template {name} belongs to deploy {owner!r}, not {spec.deploy_id!r}")
    return str(existing["DefaultVersionNumber"])


def _group_tags(name: str, spec: LaunchSpec) -> list[dict[str, Any]]:
    """This tool's tags over the inherited ones; on the group from the start, so they reach every instance."""
    tags = {tag.key: (tag.value, tag.propagate_at_launch) for tag in spec.setup.tags}
    tags.update((key, (value, True)) for key, value in _resource_tags(spec).items())
    tags[TAG_RESTORE_CAPACITY] = (spec.capacity.to_tag(), False)
    return [
        {
            "ResourceId": name,
            "ResourceType": "auto-scaling-group",
            "Key": key,
            "Value": value,
            "PropagateAtLaunch": propagate,
        }
        for key, (value, propagate) in sorted(tags.items())
    ]


def _group_for_deploy(clients: AwsApi, spec: LaunchSpec) -> dict[str, Any] | None:
    filters = [
        *app_env_filters(spec.app, spec.environment),
        {"Name": f"tag:{TAG_DEPLOY_ID}", "Values": [spec.deploy_id]},
    ]
    found = [
        raw
        for raw in describe_groups(clients, Filters=filters)
        if is_ours(raw, spec.app, spec.environment) and raw.get("Status") != DELETE_IN_PROGRESS
    ]
    found.sort(key=lambda raw: parse_group_name(raw["AutoScalingGroupName"]).sequence)
    return found[-1] if found else None


def launch_server_group(clients: AwsApi, spec: LaunchSpec) -> ServerGroup:
    """Create the next `{app}-{env}-vNNN` group, pinned at spec.capacity.desired; safe to retry.

    A retry (same spec.deploy_id) returns the group its first attempt made: moto and the
    instance APIs ignore client tokens, so the deploy-id tag is the idempotency key.
    The group is created with spec.setup's attributes, lifecycle hooks and tags; its scaling
    policies, alarms, scheduled actions and metrics follow once its swap processes are suspended.
    """
    spec.validate()
    existing = _group_for_deploy(clients, spec)
    if existing is not None:
        name = existing["AutoScalingGroupName"]
        log.info("Server group %s was already launched by deploy %s", name, spec.deploy_id)
        # Still pinned means the swap has not finished: an attempt that died right after creating
        # the group may not have suspended its processes yet.
        if TAG_RESTORE_CAPACITY in from_aws_tags(existing.get("Tags")):
            suspend(clients, name, SWAP_SUSPENDED_PROCESSES)
            # ... nor have given it its setup; every part of that is put by name, so again is harmless.
            # Not once the swap finished (no restore tag): the setup was applied before that.
            apply_group_setup(clients, name, spec.setup)
        return to_server_group(clients, describe_raw_group(clients, name) or existing)

    name = str(_claim_name(clients, spec))
    version = _ensure_launch_template(clients, name, spec)
    raw = describe_raw_group(clients, name)
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
        # Health checks, termination policies, warmup, rebalance, maintenance policy, lifecycle hooks.
        **spec.setup.creation_arguments(),
        # Belt and braces with the pinned size: no scale-in may pick a new instance mid-swap.
        "NewInstancesProtectedFromScaleIn": True,
        "Tags": _group_tags(name, spec),
    }
    if spec.target_group_arns:
        kwargs["TargetGroupARNs"] = list(spec.target_group_arns)
    try:
        clients.autoscaling.create_auto_scaling_group(**kwargs)
    except clients.autoscaling.exceptions.AlreadyExistsFault:
        raw = describe_raw_group(clients, name)
        if raw is None or from_aws_tags(raw.get("Tags")).get(TAG_DEPLOY_ID) != spec.deploy_id:
            raise
    log.info(
        "Created server group %s: image %s, %d instances pinned, deploy %s",
        name,
        spec.image_id,
        pinned.desired,
        spec.deploy_id,
    )
    suspend(clients, name, SWAP_SUSPENDED_PROCESSES)
    # Only now: with ScheduledActions and AlarmNotification suspended, no schedule or alarm can
    # resize the group before the swap ends (finish_swap resumes them).
    apply_group_setup(clients, name, spec.setup)
    described = describe_server_group(clients, name)
    if described is None:
        raise DeployError(f"server group {name} vanished right after it was created")
    return described
