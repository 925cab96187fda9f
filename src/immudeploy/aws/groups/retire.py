"""Retiring server groups: delete a group with its launch template and copied alarms, keep the newest disabled ones."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from immudeploy.aws.connection import AwsApi
from immudeploy.aws.errors import error_code
from immudeploy.aws.groups.inventory import (
    DELETE_IN_PROGRESS,
    describe_raw_group,
    find_server_groups,
    launch_template_by_name,
    launch_templates_of,
    parse_group_name,
    raw_groups_of,
)
from immudeploy.aws.groups.setup import GROUP_DIMENSION, TAG_SERVER_GROUP
from immudeploy.aws.groups.traffic import detach_server_group
from immudeploy.aws.target_health import registered_targets
from immudeploy.core.errors import DeployError, InvalidInput
from immudeploy.core.naming import from_aws_tags, listed, target_group_label
from immudeploy.core.plan import Capacity, ServerGroup

log = logging.getLogger(__name__)

# When a kept group may be retired (ISO 8601, UTC): cutover time + keep_for_minutes. A kept group
# without it stays until a later deploy retires it. The janitor DAG retires groups past it.
TAG_EXPIRES_AT = "immutable:expires-at"
KEPT_FULL = "full"
KEPT_ZERO = "zero"

# DeleteAlarms takes at most 100 names per call.
_ALARMS_PER_DELETE = 100


def delete_launch_template(clients: AwsApi, name: str) -> bool:
    template = launch_template_by_name(clients, name)
    if template is None:
        return False
    try:
        # By id: moto answers a missing name with MissingParameter rather than NotFound.
        clients.ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
    except ClientError as error:
        if error_code(error).startswith(
            ("InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFound")
        ):
            return False
        raise
    log.info("Deleted launch template %s", name)
    return True


def delete_server_group(clients: AwsApi, group_name: str, *, force: bool = False) -> bool:
    """Delete a group (terminating its instances), the alarms copied for it and its launch template.

    True if anything was deleted. A group still attached is first detached through the traffic
    guard (skipped with `force`). The alarms go only once the group is gone or going: a group AWS
    refuses to delete keeps scaling. Safe to repeat: a retry deletes whatever the last try left.
    """
    parse_group_name(group_name)
    deleted = False
    raw = describe_raw_group(clients, group_name)
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
    deleted = bool(delete_copied_alarms(clients, group_name)) or deleted
    return delete_launch_template(clients, group_name) or deleted


def delete_copied_alarms(clients: AwsApi, group_name: str) -> list[str]:
    """Delete the alarms this tool copied for the group's step and simple policies; their names.

    Only alarms tagged immutable:server-group with the group's name: an operator's own alarm stays,
    even one watching the group. Clients without CloudWatch (plain test clients) skip the search.
    """
    cloudwatch = getattr(clients, "cloudwatch", None)
    if cloudwatch is None:
        log.debug("No CloudWatch client: not looking for alarms copied for %s", group_name)
        return []
    names = [
        alarm["AlarmName"]
        for alarm in _alarms_naming(cloudwatch, group_name)
        if _alarm_tags(cloudwatch, alarm["AlarmArn"]).get(TAG_SERVER_GROUP) == group_name
    ]
    for start in range(0, len(names), _ALARMS_PER_DELETE):
        _delete_alarms(cloudwatch, names[start : start + _ALARMS_PER_DELETE])
    if names:
        log.info("Deleted the alarms copied for %s: %s", group_name, ", ".join(names))
    return names


def _alarms_naming(cloudwatch: Any, group_name: str) -> Iterator[dict[str, Any]]:
    """Metric alarms that mention the group: the few whose tags are worth a call each.

    Not by dimension alone: a step policy scaling on a queue's depth has an alarm watching the
    queue, which carries the group only in its name (copied_alarm_name) and its policy actions.
    """
    policy_marker = f":autoScalingGroupName/{group_name}:"
    for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmTypes=["MetricAlarm"]):
        for alarm in page.get("MetricAlarms", []):
            actions = [
                action
                for key in ("AlarmActions", "OKActions", "InsufficientDataActions")
                for action in alarm.get(key) or []
            ]
            if (
                group_name in alarm["AlarmName"]
                or any(policy_marker in action for action in actions)
                or _has_group_dimension([alarm.get("Dimensions"), alarm.get("Metrics")], group_name)
            ):
                yield alarm


def _has_group_dimension(value: Any, group_name: str) -> bool:
    """True if an AutoScalingGroupName dimension naming the group is anywhere in `value`."""
    if isinstance(value, list):
        return any(_has_group_dimension(item, group_name) for item in value)
    if isinstance(value, dict):
        if value.get("Name") == GROUP_DIMENSION and value.get("Value") == group_name:
            return True
        return any(_has_group_dimension(item, group_name) for item in value.values())
    return False


def _alarm_tags(cloudwatch: Any, alarm_arn: str) -> dict[str, str]:
    try:
        return from_aws_tags(cloudwatch.list_tags_for_resource(ResourceARN=alarm_arn).get("Tags"))
    except cloudwatch.exceptions.ResourceNotFoundException:
        return {}  # deleted since it was listed


def _delete_alarms(cloudwatch: Any, names: list[str]) -> None:
    """Delete these alarms; one deleted meanwhile makes AWS refuse the whole batch, so retry one by one."""
    try:
        cloudwatch.delete_alarms(AlarmNames=names)
    except cloudwatch.exceptions.ResourceNotFound:
        for name in names:
            with suppress(cloudwatch.exceptions.ResourceNotFound):
                cloudwatch.delete_alarms(AlarmNames=[name])


def retire_server_groups(
    clients: AwsApi,
    app: str,
    environment: str,
    keep: int,
    current_group_name: str,
    target_group_arns: list[str],
    *,
    also_delete: Sequence[str] = (),
    keep_for_minutes: float | None = None,
    kept_capacity: str = KEPT_FULL,
    newly_kept: str | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Delete this app/env's old groups except the current one and the newest `keep` disabled ones.

    Every other group (and each of `also_delete`, whatever the retention) is deleted, or the call
    fails: after deleting all it can, it raises DeployError naming each group it could not delete
    and why. A group still attached to a target group, or with an instance still registered in
    `target_group_arns` (e.g. still draining), is not deleted (that would cut requests) and is such
    a failure, as is a delete AWS refuses. Also deletes launch templates that a crashed launch left
    without a group (older than the current group). Returns the deleted group names.

    The kept groups get their retention (keep_retained_group): an expiry tag `keep_for_minutes`
    after `now` for `newly_kept` (the group this run replaced) and for any kept group without one,
    and with `kept_capacity` "zero" a size of 0 (launch template and image kept).
    """
    if not isinstance(keep, int) or keep < 0:
        raise InvalidInput("keep", f"must be an integer >= 0, got {keep!r}")
    current = parse_group_name(current_group_name)
    registered = registered_targets(clients, target_group_arns)
    old_groups = [g for g in find_server_groups(clients, app, environment) if g.name != current_group_name]
    unretirable = {g.name: reason for g in old_groups if (reason := _still_serving(g, registered))}
    retainable = [g for g in old_groups if g.name not in unretirable and g.name not in also_delete]
    retainable.sort(key=lambda group: group.sequence, reverse=True)
    kept = {group.name for group in retainable[:keep]}
    if kept:
        log.info("Keeping disabled for rollback: %s", ", ".join(sorted(kept)))
    moment = now or datetime.now(UTC)
    for group in retainable[:keep]:
        keep_retained_group(
            clients,
            group,
            keep_for_minutes=keep_for_minutes,
            kept_capacity=kept_capacity,
            fresh=group.name == newly_kept,
            now=moment,
        )
    clear_expiry(clients, current_group_name)
    deleted: list[str] = []
    failures: dict[str, str] = {}
    for group in sorted(old_groups, key=lambda group: group.sequence):
        if group.name in kept:
            continue
        if group.name in unretirable:
            failures[group.name] = unretirable[group.name]
            continue
        try:
            if delete_server_group(clients, group.name):
                deleted.append(group.name)
        except ClientError as error:
            failures[group.name] = f"AWS refused to delete it: {error}"
        except DeployError as error:
            failures[group.name] = str(error)
    group_names = {
        raw["AutoScalingGroupName"] for raw in raw_groups_of(clients, app, environment, include_deleting=True)
    }
    for template in launch_templates_of(clients, app, environment):
        name = template["LaunchTemplateName"]
        parsed = parse_group_name(name)
        if name not in group_names and parsed.sequence < current.sequence:
            log.info("Deleting orphaned launch template %s", name)
            delete_launch_template(clients, name)
    if failures:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in failures.items())
        raise DeployError(
            f"could not retire {len(failures)} old server group(s), left running: {reasons}"
            + (f" (deleted {', '.join(deleted)})" if deleted else "")
        )
    return deleted


def expiry_of(raw_tags: Mapping[str, str]) -> datetime | None:
    """The expiry a kept group carries, or None (kept until a later deploy, or an unreadable tag)."""
    value = raw_tags.get(TAG_EXPIRES_AT)
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        log.warning("Ignoring unreadable %s tag %r", TAG_EXPIRES_AT, value)
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _group_tags(clients: AwsApi, group_name: str) -> dict[str, str]:
    raw = describe_raw_group(clients, group_name)
    return from_aws_tags(raw.get("Tags")) if raw else {}


def set_expiry(clients: AwsApi, group_name: str, expires_at: datetime) -> str:
    value = expires_at.astimezone(UTC).isoformat(timespec="seconds")
    clients.autoscaling.create_or_update_tags(
        Tags=[
            {
                "ResourceId": group_name,
                "ResourceType": "auto-scaling-group",
                "Key": TAG_EXPIRES_AT,
                "Value": value,
                "PropagateAtLaunch": False,
            }
        ]
    )
    return value


def clear_expiry(clients: AwsApi, group_name: str) -> None:
    """A serving group has no expiry (one a rollback swapped back to carried its kept expiry)."""
    if TAG_EXPIRES_AT in _group_tags(clients, group_name):
        clients.autoscaling.delete_tags(
            Tags=[{"ResourceId": group_name, "ResourceType": "auto-scaling-group", "Key": TAG_EXPIRES_AT}]
        )


def keep_retained_group(
    clients: AwsApi,
    group: ServerGroup,
    *,
    keep_for_minutes: float | None,
    kept_capacity: str,
    fresh: bool,
    now: datetime,
) -> None:
    """Give a kept group its retention: its expiry tag, and size 0 when kept at "zero" capacity.

    The expiry of a group kept through several deploys is the one set when it was replaced
    (`fresh`); it is not pushed back by each later deploy. Without keep_for_minutes a group has
    no expiry. A zero-kept group keeps its launch template (with the image), so a rollback scales
    it back up without a rebake.
    """
    if kept_capacity not in (KEPT_FULL, KEPT_ZERO):
        raise InvalidInput("kept_capacity", f"must be {KEPT_FULL!r} or {KEPT_ZERO!r}, got {kept_capacity!r}")
    tags = _group_tags(clients, group.name)
    if keep_for_minutes is None:
        clear_expiry(clients, group.name)
    elif fresh or expiry_of(tags) is None:
        value = set_expiry(clients, group.name, now + timedelta(minutes=keep_for_minutes))
        log.info("Kept group %s expires at %s", group.name, value)
    if kept_capacity == KEPT_ZERO:
        scale_to_zero(clients, group)


def scale_to_zero(clients: AwsApi, group: ServerGroup) -> bool:
    """min = max = desired = 0 (its instances terminate; group and launch template stay); True if changed."""
    if group.capacity == Capacity(0, 0, 0):
        return False
    clients.autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=group.name, MinSize=0, MaxSize=0, DesiredCapacity=0
    )
    log.info("Scaled kept group %s to 0 (was %s); its launch template stays", group.name, group.capacity)
    return True


def still_serving(group: ServerGroup, registered: Mapping[str, list[str]]) -> str | None:
    """Why deleting (or scaling in) the group now would cut requests, or None."""
    return _still_serving(group, registered)


def _still_serving(group: ServerGroup, registered: Mapping[str, list[str]]) -> str | None:
    """Why deleting the group now would cut requests, or None."""
    if group.target_group_arns:
        labels = ", ".join(target_group_label(arn) for arn in group.target_group_arns)
        return f"still attached to target group(s) {labels}"
    serving = [f"{iid} ({', '.join(registered[iid])})" for iid in group.instance_ids if iid in registered]
    if serving:
        return f"{len(serving)} instance(s) still registered as targets: {listed(serving)}"
    return None
