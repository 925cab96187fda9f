"""Repair what an interrupted run left mid-swap, before the next run of the app and environment plans."""

from __future__ import annotations

import logging
from typing import Any

from immudeploy.aws import waits
from immudeploy.aws.groups.capacity import SWAP_SUSPENDED_PROCESSES, restore_capacity
from immudeploy.aws.groups.inventory import find_server_groups
from immudeploy.aws.groups.retire import delete_server_group
from immudeploy.aws.groups.traffic import detach_server_group

log = logging.getLogger(__name__)


def repair_interrupted_swap(
    clients: Any,
    app: str,
    environment: str,
    target_group_arns: list[str],
    deploy_id: str,
    *,
    health_timeout: float = 600.0,
    poll_interval: float = 5.0,
) -> list[str]:
    """Leave exactly one group attached and no group pinned or suspended; returns what was repaired.

    Runs under the app/environment lock, so every group made by another deploy id belongs to a run
    that is no longer running (marked failed, out of retries, its worker lost). When several groups
    are attached, the oldest is the one that served before the interrupted swap: it must be healthy
    before the others leave the load balancer, and the newer ones (never confirmed by a finished
    swap) are deleted, as is a group a dead run launched but never attached. The serving group's
    size goes back to its restore tag (the size before the pin) and its scaling resumes; kept
    (disabled) groups stay as they are.
    """
    wanted = set(target_group_arns)
    groups = [g for g in find_server_groups(clients, app, environment) if g.deploy_id != deploy_id]
    attached = [g for g in groups if wanted & set(g.target_group_arns)]
    actions: list[str] = []
    if len(attached) > 1:
        keep = min(attached, key=lambda group: group.sequence)
        waits.wait_until_healthy(
            clients.elbv2,
            target_group_arns,
            keep.instance_ids,
            timeout=health_timeout,
            poll_interval=poll_interval,
        )
        for group in attached:
            if group.name == keep.name:
                continue
            detach_server_group(clients, group.name, target_group_arns, force=True)
            delete_server_group(clients, group.name, force=True)
            actions.append(
                f"detached and deleted {group.name} (left attached beside {keep.name} by deploy {group.deploy_id})"
            )
    for group in find_server_groups(clients, app, environment):
        if group.deploy_id == deploy_id:
            continue
        serving = bool(wanted & set(group.target_group_arns))
        if not serving and not group.disabled:
            # Launched by a dead run and never put behind the load balancer: nothing refers to it.
            delete_server_group(clients, group.name, force=True)
            actions.append(f"deleted {group.name}, launched by deploy {group.deploy_id} and never attached")
            continue
        suspended = set(SWAP_SUSPENDED_PROCESSES) & set(group.suspended_processes)
        # A kept (disabled) group stays pinned at the size it served with; a serving one must scale.
        if serving and (group.restore_capacity is not None or suspended):
            restore_capacity(clients, group.name)
            size = group.restore_capacity or group.capacity
            actions.append(f"restored {group.name} to min {size.min}, max {size.max} and resumed its scaling")
    for action in actions:
        log.warning("Repaired an interrupted swap: %s", action)
    return actions
