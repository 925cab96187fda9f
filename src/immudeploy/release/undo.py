"""Undo a failed run: traffic back to the group that served before, then remove what the run made."""

from __future__ import annotations

import logging
from typing import Any

from immudeploy.aws import waits
from immudeploy.aws.groups.capacity import restore_capacity, scale_server_group
from immudeploy.aws.groups.inventory import describe_server_group, find_server_groups
from immudeploy.aws.groups.retire import delete_server_group
from immudeploy.aws.groups.traffic import attach_server_group, detach_server_group
from immudeploy.core.plan import DeployPlan, ServerGroup
from immudeploy.release.deploy import teardown_staging

log = logging.getLogger(__name__)


def groups_made_by(clients: Any, plan: DeployPlan) -> list[ServerGroup]:
    return [
        g for g in find_server_groups(clients, plan.app, plan.environment) if g.deploy_id == plan.deploy_id
    ]


def undo_failed_run(
    clients: Any, plan: DeployPlan, health_timeout: float = 600, poll_interval: float = 5.0
) -> list[str]:
    """Put traffic back where it was and remove what the run made; reads AWS, not XCom, so it is rerunnable.

    Order matters: the old group is attached and healthy again before the new one leaves the
    load balancer, so no target group is ever left without a healthy target.
    """
    actions: list[str] = []
    live = plan.live
    old = describe_server_group(clients, live.name) if live else None
    if old is not None:
        # Its own restore tag (written when the swap pinned it), not the plan: the size it had then.
        original = old.restore_capacity or old.capacity
        if old.capacity.desired < original.desired:
            scale_server_group(clients, old.name, original.pinned())
            actions.append(f"scaled {old.name} back to {original.desired}")
        if not set(plan.target_group_arns) <= set(old.target_group_arns):
            attach_server_group(clients, old.name, plan.target_group_arns)
            actions.append(f"re-attached {old.name}")
        old = describe_server_group(clients, old.name)
        assert old is not None
        if old.capacity.desired:
            waits.wait_for(
                waits.wait_check(
                    "in_service",
                    clients.autoscaling,
                    group_name=old.name,
                    expected_count=old.capacity.desired,
                )[1],
                what=f"{old.name} to be InService again",
                timeout=health_timeout,
                poll_interval=poll_interval,
            )
            instance_ids = waits.group_instance_ids(clients.autoscaling, old.name, serving=True)
            waits.wait_until_healthy(
                clients.elbv2,
                plan.target_group_arns,
                instance_ids,
                timeout=health_timeout,
                poll_interval=poll_interval,
            )
    for group in groups_made_by(clients, plan):
        if live is not None and group.name == live.name:
            continue
        if set(group.target_group_arns) & set(plan.target_group_arns):
            # No traffic guard: the old group (if any) is attached and healthy again by now, and a
            # first deploy's fleet that never turned healthy must still leave the load balancer.
            detach_server_group(clients, group.name, plan.target_group_arns, force=True)
            actions.append(f"detached {group.name}")
        delete_server_group(clients, group.name, force=True)
        actions.append(f"deleted {group.name}")
    if plan.rollback_mode == "swap" and plan.rollback_group:
        kept = describe_server_group(clients, plan.rollback_group)
        if kept is not None and set(kept.target_group_arns) & set(plan.target_group_arns):
            detach_server_group(clients, kept.name, plan.target_group_arns)
            actions.append(f"detached {kept.name} again")
    if old is not None:
        # min/max back from its restore tag (what it had before the pin), whatever the plan says.
        restore_capacity(clients, old.name)
    for name in teardown_staging(clients, plan):
        actions.append(f"deleted staging group {name}")
    if not actions:
        actions.append("nothing to undo")
    for action in actions:
        log.info("undo: %s", action)
    return actions
