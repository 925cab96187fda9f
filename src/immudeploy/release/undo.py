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


def undo_failed_run(clients: Any, plan: DeployPlan, poll_interval: float = 5.0) -> list[str]:
    """Put traffic back where it was and remove what the run made; reads AWS, not XCom, so it is rerunnable.

    Order matters: the old group is attached and healthy again before the new one leaves the
    load balancer, so no target group is ever left without a healthy target; the new group's
    targets have drained before it is deleted, so no in-flight request is cut. Every wait uses the
    plan's timeouts (or, where the plan has none, what the target groups' settings need).
    """
    actions: list[str] = []
    live = plan.live
    old = describe_server_group(clients, live.name) if live else None
    if old is not None:
        # Its own restore tag (written when the swap pinned it), not the plan: the size it had then.
        original = old.restore_capacity or old.capacity
        lost_capacity = False
        if old.capacity.desired < original.desired:
            scale_server_group(clients, old.name, original.pinned())
            actions.append(f"scaled {old.name} back to {original.desired}")
            lost_capacity = True
        if not set(plan.target_group_arns) <= set(old.target_group_arns):
            attach_server_group(clients, old.name, plan.target_group_arns)
            actions.append(f"re-attached {old.name}")
            lost_capacity = True
        if lost_capacity:
            # Only a fleet this run scaled in or detached is waited for: one it never touched (a
            # failure before launch) is serving as it was, whatever its health, and is not ours to judge.
            _wait_until_serving(clients, plan, old.name, poll_interval)
    for group in groups_made_by(clients, plan):
        if live is not None and group.name == live.name:
            continue
        if set(group.target_group_arns) & set(plan.target_group_arns):
            # No traffic guard: the old group (if any) is attached and healthy again by now, and a
            # first deploy's fleet that never turned healthy must still leave the load balancer.
            detach_server_group(clients, group.name, plan.target_group_arns, force=True)
            actions.append(f"detached {group.name}")
        _wait_until_drained(clients, plan, group.name, poll_interval)
        delete_server_group(clients, group.name, force=True)
        actions.append(f"deleted {group.name}")
    if plan.rollback_mode == "swap" and plan.rollback_group:
        kept = describe_server_group(clients, plan.rollback_group)
        if kept is not None and set(kept.target_group_arns) & set(plan.target_group_arns):
            detach_server_group(clients, kept.name, plan.target_group_arns)
            actions.append(f"detached {kept.name} again")
    if old is not None and old.restore_capacity is not None:
        # Pinned by this run: min/max back from its restore tag (what it had before the pin),
        # whatever the plan says. A group the run never pinned keeps its settings untouched.
        restored = restore_capacity(clients, old.name).capacity
        actions.append(f"restored {old.name} to min {restored.min}, max {restored.max}")
    for name in teardown_staging(clients, plan):
        actions.append(f"deleted staging group {name}")
    if not actions:
        actions.append("nothing to undo")
    for action in actions:
        log.info("undo: %s", action)
    return actions


def _wait_until_serving(clients: Any, plan: DeployPlan, group_name: str, poll_interval: float) -> None:
    """The old group InService at its desired size and healthy behind every target group again."""
    group = describe_server_group(clients, group_name)
    if group is None or not group.capacity.desired:
        return
    waits.wait_until_in_service(
        clients.autoscaling,
        group_name,
        group.capacity.desired,
        timeout=plan.in_service_timeout_seconds,
        poll_interval=poll_interval,
    )
    health_timeout = plan.health_timeout_seconds or waits.health_gate_timeout(
        clients.elbv2, plan.target_group_arns
    )
    waits.wait_until_healthy(
        clients.elbv2,
        plan.target_group_arns,
        waits.group_instance_ids(clients.autoscaling, group_name, serving=True),
        timeout=health_timeout,
        poll_interval=poll_interval,
    )


def _wait_until_drained(clients: Any, plan: DeployPlan, group_name: str, poll_interval: float) -> None:
    """None of the group's instances registered in the target groups any more (drained, then gone).

    Returns at once for a group that was never attached; a detach that AWS has not carried out
    yet (targets still `healthy`) is waited for too, as the drain sensor does.
    """
    instance_ids = waits.group_instance_ids(clients.autoscaling, group_name)
    if not instance_ids:
        return
    drain_timeout = plan.drain_timeout_seconds or waits.drain_timeout(clients.elbv2, plan.target_group_arns)
    waits.wait_until_drained(
        clients.elbv2,
        plan.target_group_arns,
        instance_ids,
        timeout=drain_timeout,
        poll_interval=poll_interval,
    )
