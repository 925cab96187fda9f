"""Retiring server groups: delete a group with its launch template, keep the newest disabled ones."""

from __future__ import annotations

import logging

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
from immudeploy.aws.groups.traffic import detach_server_group
from immudeploy.aws.target_health import registered_target_ids
from immudeploy.core.errors import InvalidInput
from immudeploy.core.plan import ServerGroup

log = logging.getLogger(__name__)


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
    """Delete a group (terminating its instances) and its launch template; True if anything was deleted.

    A group still attached is first detached through the traffic guard (skipped with `force`).
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
    return delete_launch_template(clients, group_name) or deleted


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
    current = parse_group_name(current_group_name)
    registered = registered_target_ids(clients, target_group_arns)
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
        raw["AutoScalingGroupName"] for raw in raw_groups_of(clients, app, environment, include_deleting=True)
    }
    for template in launch_templates_of(clients, app, environment):
        name = template["LaunchTemplateName"]
        parsed = parse_group_name(name)
        if name not in group_names and parsed.sequence < current.sequence:
            log.info("Deleting orphaned launch template %s", name)
            delete_launch_template(clients, name)
    return deleted
