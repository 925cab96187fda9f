"""A group's size during a swap: pin it, restore it afterwards, scale a kept group back up."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from immudeploy.aws.connection import AwsApi
from immudeploy.aws.groups.inventory import require_group, to_server_group
from immudeploy.core.naming import (
    TAG_RESTORE_CAPACITY,
    from_aws_tags,
)
from immudeploy.core.plan import Capacity, ServerGroup

log = logging.getLogger(__name__)

# Processes that would add, remove or move instances behind the deployment's back during a swap:
# AlarmNotification holds the scaling policies (their alarms), ScheduledActions the schedules, which
# set min, max and desired outright and so would undo a pin. Suspended on both groups while the swap
# runs (pin_capacity, launch_server_group); restore_capacity (finish_swap, undo, repair) resumes them.
SWAP_SUSPENDED_PROCESSES = ("AZRebalance", "AlarmNotification", "ScheduledActions")

# set_instance_protection accepts at most 50 instance ids per call.
_PROTECTION_BATCH = 50


def suspend(clients: AwsApi, group_name: str, processes: Iterable[str]) -> None:
    clients.autoscaling.suspend_processes(AutoScalingGroupName=group_name, ScalingProcesses=list(processes))


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
    """Fix min = max = desired = capacity.desired, remembering the group's size before the first pin.

    Also suspends SWAP_SUSPENDED_PROCESSES: a scheduled action would otherwise set the group's
    min/max/desired over the pin and could shrink the serving fleet in the middle of the swap.
    """
    raw = require_group(clients, group_name)
    if TAG_RESTORE_CAPACITY not in from_aws_tags(raw.get("Tags")):
        # Only the first pin records: a retry must not record the pinned size as the original.
        original = Capacity(raw["MinSize"], raw["MaxSize"], raw["DesiredCapacity"])
        _set_restore_tag(clients, group_name, original)
    # Suspended before the pin: a schedule firing in between would otherwise overwrite it.
    suspended = {p["ProcessName"] for p in raw.get("SuspendedProcesses", [])}
    if not set(SWAP_SUSPENDED_PROCESSES) <= suspended:
        suspend(clients, group_name, SWAP_SUSPENDED_PROCESSES)
    pinned = capacity.pinned()
    clients.autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=group_name,
        MinSize=pinned.min,
        MaxSize=pinned.max,
        DesiredCapacity=pinned.desired,
    )
    log.info(
        "Pinned %s at %d instances, its scaling policies and schedules suspended", group_name, pinned.desired
    )
    return to_server_group(clients, require_group(clients, group_name))


def restore_capacity(clients: AwsApi, group_name: str, capacity: Capacity | None = None) -> ServerGroup:
    """End the swap for a group: min/max back to `capacity` (else its restore tag), desired kept.

    Also resumes the processes the swap suspended and lifts scale-in protection, so the group
    autoscales normally again. Idempotent: with neither argument nor tag, only the resume runs.
    """
    raw = require_group(clients, group_name)
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
    return to_server_group(clients, require_group(clients, group_name))


def scale_server_group(clients: AwsApi, group_name: str, capacity: Capacity) -> ServerGroup:
    """Set min/max/desired exactly (rollback scales a kept group back up with this)."""
    require_group(clients, group_name)
    clients.autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=group_name,
        MinSize=capacity.min,
        MaxSize=capacity.max,
        DesiredCapacity=capacity.desired,
    )
    log.info(
        "Scaled %s to min %d, max %d, desired %d", group_name, capacity.min, capacity.max, capacity.desired
    )
    return to_server_group(clients, require_group(clients, group_name))
