"""Moving traffic: attach a group to the target groups, detach it behind the traffic guard."""

from __future__ import annotations

import logging
from typing import Any

from immudeploy.aws.connection import AwsApi
from immudeploy.aws.groups.capacity import suspend
from immudeploy.aws.groups.inventory import (
    describe_raw_group,
    describe_server_group,
    parse_group_name,
    require_group,
    to_server_group,
)
from immudeploy.aws.target_health import healthy_target_ids
from immudeploy.core.errors import TrafficGuardError
from immudeploy.core.naming import (
    STATE_DISABLED,
    TAG_STATE,
    from_aws_tags,
    target_group_label,
)
from immudeploy.core.plan import ServerGroup

log = logging.getLogger(__name__)

# A disabled group must not re-register instances it launches (e.g. replacing an unhealthy one).
DISABLED_SUSPENDED_PROCESSES = ("AddToLoadBalancer",)


def attach_server_group(clients: AwsApi, group_name: str, target_group_arns: list[str]) -> ServerGroup:
    """Put a group behind the target groups (and re-enable it if it was disabled); idempotent.

    Its health check type stays what the launch gave it (configured, inherited, or ELB by default).
    """
    raw = require_group(clients, group_name)
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
        log.info("Attached %s to %s", group_name, ", ".join(map(target_group_label, missing)))
    else:
        log.info("%s is already attached to every target group", group_name)
    if TAG_STATE in tags:
        clients.autoscaling.delete_tags(
            Tags=[{"ResourceId": group_name, "ResourceType": "auto-scaling-group", "Key": TAG_STATE}]
        )
    return to_server_group(clients, require_group(clients, group_name))


def check_traffic_guard(
    clients: AwsApi, target_group_arns: list[str], leaving_instance_ids: list[str], min_healthy: int = 1
) -> None:
    """Raise TrafficGuardError unless every target group keeps `min_healthy` healthy targets without these."""
    leaving = set(leaving_instance_ids)
    for arn in target_group_arns:
        healthy = healthy_target_ids(clients, arn)
        remaining = healthy - leaving
        if len(remaining) < max(min_healthy, 1):
            raise TrafficGuardError(
                f"refusing: target group {target_group_label(arn)} would keep {len(remaining)} healthy "
                f"targets, needs {max(min_healthy, 1)} ({len(healthy)} healthy now, "
                f"{len(healthy & leaving)} of them among the {len(leaving)} instances leaving)"
            )
        log.info(
            "Traffic guard: %s keeps %d of %d healthy targets (needs %d)",
            target_group_label(arn),
            len(remaining),
            len(healthy),
            max(min_healthy, 1),
        )


def detach_server_group(
    clients: AwsApi,
    group_name: str,
    target_group_arns: list[str],
    *,
    force: bool = False,
    min_healthy: int = 1,
) -> ServerGroup | None:
    """Take a group out of the target groups and mark it disabled; guarded by check_traffic_guard.

    Idempotent: a group already detached is only (re)marked disabled; a missing group is nothing
    to detach (None). `force` skips the traffic guard, for tearing down a fleet that never served.
    """
    parse_group_name(group_name)
    raw = describe_raw_group(clients, group_name)
    if raw is None:
        log.warning("Server group %s does not exist: nothing to detach", group_name)
        return None
    attached = [arn for arn in target_group_arns if arn in raw.get("TargetGroupARNs", [])]
    if attached:
        leaving = [i["InstanceId"] for i in raw.get("Instances", [])]
        if not force:
            check_traffic_guard(clients, attached, leaving, min_healthy)
        clients.autoscaling.detach_load_balancer_target_groups(
            AutoScalingGroupName=group_name, TargetGroupARNs=attached
        )
        log.info("Detached %s from %s", group_name, ", ".join(map(target_group_label, attached)))
    else:
        log.info("%s is not attached to any of the target groups", group_name)
    suspended = {p["ProcessName"] for p in raw.get("SuspendedProcesses", [])}
    if not set(DISABLED_SUSPENDED_PROCESSES) <= suspended:
        suspend(clients, group_name, DISABLED_SUSPENDED_PROCESSES)
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
