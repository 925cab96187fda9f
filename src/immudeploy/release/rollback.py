"""Rollback: choose a kept group to swap back to, or the previous image to redeploy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from immudeploy.aws.groups.capacity import SWAP_SUSPENDED_PROCESSES, pin_capacity, scale_server_group, suspend
from immudeploy.aws.groups.inventory import describe_server_group, find_server_groups
from immudeploy.aws.groups.setup import apply_group_setup
from immudeploy.aws.images import previous_version_image
from immudeploy.core.config import DeploymentConfig
from immudeploy.core.errors import DeployError
from immudeploy.core.naming import (
    TAG_VERSION,
    from_aws_tags,
    validate_app,
    validate_environment,
    validate_version,
)
from immudeploy.core.plan import DeployPlan, ServerGroup
from immudeploy.release.deploy import base_plan, inherited_setup, launch_fleet, live_group_now

log = logging.getLogger(__name__)


def plan_rollback(
    clients: Any, config: DeploymentConfig, params: Mapping[str, Any], dag_id: str, run_id: str
) -> DeployPlan:
    app = validate_app(params.get("app"))
    environment = validate_environment(params.get("environment"))
    to_version = validate_version(params["to_version"], "to_version") if params.get("to_version") else None
    env = config.get(app, environment)
    resolved_live = base_plan(clients, env, dag_id, run_id, "rollback")
    live: ServerGroup | None = resolved_live["live"]
    if live is None:
        raise DeployError(f"{app}/{environment} has no live server group: nothing to roll back")
    current_version = live.version
    kept = [
        g
        for g in find_server_groups(clients, app, environment)
        if g.name != live.name
        and g.sequence < live.sequence
        and not set(g.target_group_arns) & set(resolved_live["target_group_arns"])
        and (g.version == to_version if to_version else g.version != current_version)
    ]
    notes = []
    if kept:
        group = kept[-1]
        mode, rollback_group, version, ami_id = "swap", group.name, group.version or "unknown", group.image_id
        notes.append(f"swapping back to kept group {group.name} ({group.version})")
    else:
        image = previous_version_image(clients.ec2, app, current_version, to_version)
        version = from_aws_tags(image.get("Tags"))[TAG_VERSION]
        mode, rollback_group, ami_id = "redeploy", None, image["ImageId"]
        notes.append(f"no kept group: redeploying image {ami_id} of version {version} (no rebake)")
    resolved_live["version"] = validate_version(version)
    resolved_live["staging"] = None
    plan = DeployPlan(
        git_sha=None,
        ami_id=ami_id,
        rollback_mode=mode,
        rollback_group=rollback_group,
        notes=notes,
        **resolved_live,
    )
    return plan


def bring_up_rollback_fleet(clients: Any, plan: DeployPlan) -> ServerGroup:
    """Scale the kept group back to the live size, or launch a group from the previous image.

    Either way the group that takes over gets the live group's Auto Scaling setup as it is now
    (launch_fleet does it for a redeploy), held suspended like the live group until finish_swap.
    """
    if plan.rollback_mode == "swap":
        assert plan.rollback_group
        group = describe_server_group(clients, plan.rollback_group)
        if group is None:
            raise DeployError(f"kept group {plan.rollback_group} disappeared; rerun the rollback to redeploy")
        # As launch_fleet: the live group's size and setup now, not as planned; both groups pinned.
        live, capacity = live_group_now(clients, plan)
        setup = inherited_setup(clients, plan, live)
        if live is not None:
            pin_capacity(clients, live.name, capacity)
        # Before the setup: its schedules and policies must not act on the kept group mid-swap.
        suspend(clients, group.name, SWAP_SUSPENDED_PROCESSES)
        if group.capacity.desired < capacity.desired or group.capacity.min != capacity.desired:
            scale_server_group(clients, group.name, capacity.pinned())
        apply_group_setup(clients, group.name, setup)
        current = describe_server_group(clients, group.name)
        if current is None:
            raise DeployError(f"kept group {group.name} disappeared while it was scaled up")
        return current
    assert plan.ami_id
    return launch_fleet(clients, plan, plan.ami_id)
