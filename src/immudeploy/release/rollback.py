"""Rollback: choose from the deploy record a kept group to swap back to, or an image to redeploy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from immudeploy.aws.deploy_record import Release, previous_release, release_history, release_of_version
from immudeploy.aws.groups.capacity import SWAP_SUSPENDED_PROCESSES, pin_capacity, scale_server_group, suspend
from immudeploy.aws.groups.inventory import describe_server_group, find_server_groups
from immudeploy.aws.groups.setup import apply_group_setup
from immudeploy.aws.images import find_image, previous_version_image
from immudeploy.core.config import DeploymentConfig
from immudeploy.core.errors import DeployError, InvalidInput
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
    """Choose what to go back to: from the deploy record, or (a target it knows nothing of) by tags.

    From the record: without `to_version` the entry before the current one (previous_release),
    with it that version's latest entry; its kept group when it still exists (swap), else its image
    (redeploy, no rebake). Never an image of another environment or of a release that did not serve.
    """
    app = validate_app(params.get("app"))
    environment = validate_environment(params.get("environment"))
    to_version = validate_version(params["to_version"], "to_version") if params.get("to_version") else None
    env = config.get(app, environment)
    # Read first: a to_version the record does not know fails here, before the repair changes anything.
    history = release_history(clients.dynamodb, app, environment)
    notes = [_record_note(app, environment, history)]
    chosen = release_of_version(history, to_version) if history and to_version else None
    if history and to_version and chosen is None:
        raise InvalidInput(
            "to_version",
            f"{to_version} never served in {app}/{environment} (not in its deploy record; recorded: "
            f"{', '.join(_unique_versions(history))})",
        )
    resolved_live = base_plan(clients, env, dag_id, run_id, "rollback")
    live: ServerGroup | None = resolved_live["live"]
    if live is None:
        raise DeployError(f"{app}/{environment} has no live server group: nothing to roll back")
    current_version = live.version
    chosen = chosen or previous_release(history, current_version)
    older = None if chosen else _kept_group(clients, app, environment, live, to_version, resolved_live)
    if history and chosen is None and older is not None:
        # The record started after this group was kept (it served before the record existed).
        mode, rollback_group, version, ami_id = "swap", older.name, older.version or "unknown", older.image_id
        notes.append(
            f"nothing before {current_version} in the record: swapping back to kept group {older.name}"
        )
    elif history:
        if chosen is None:
            raise DeployError(
                f"the deploy record of {app}/{environment} holds no release before {current_version} "
                "and no older group is kept: nothing to roll back to"
            )
        mode, rollback_group, version, ami_id = _from_record(clients, chosen, live, resolved_live)
        notes.append(
            f"rolling back to {chosen.version} as recorded at {chosen.recorded_at} by run {chosen.run_id}: "
            + (
                f"swapping back to kept group {rollback_group}"
                if rollback_group
                else f"redeploying image {ami_id} (no rebake)"
            )
        )
    else:
        mode, rollback_group, version, ami_id = _by_tags(
            clients, app, environment, live, to_version, resolved_live
        )
        notes.append(
            "no deploy record for this target yet (deployed before it existed): "
            + (
                f"swapping back to kept group {rollback_group} ({version})"
                if rollback_group
                else f"no kept group: redeploying image {ami_id} of version {version} (no rebake)"
            )
        )
    resolved_live["version"] = validate_version(version)
    resolved_live["staging"] = None
    return DeployPlan(
        git_sha=chosen.git_sha if chosen else None,
        ami_id=ami_id,
        rollback_mode=mode,
        rollback_group=rollback_group,
        notes=notes,
        **resolved_live,
    )


def _from_record(
    clients: Any, chosen: Release, live: ServerGroup, resolved_live: Mapping[str, Any]
) -> tuple[str, str | None, str, str]:
    """Swap to the entry's group when it is still kept (detached, not the live one), else its image."""
    if chosen.group == live.name:
        raise DeployError(f"{chosen.version} is what {live.name} serves now: nothing to roll back to")
    group = describe_server_group(clients, chosen.group)
    if (
        group is not None
        and group.image_id == chosen.image_id
        and not set(group.target_group_arns) & set(resolved_live["target_group_arns"])
    ):
        return "swap", group.name, chosen.version, chosen.image_id
    image = find_image(clients.ec2, chosen.image_id)
    if image is None or image.get("State") != "available":
        raise DeployError(
            f"image {chosen.image_id} of {chosen.version} (recorded for {chosen.app}/{chosen.environment}) "
            "no longer exists and its group is gone: roll forward with a deploy of that version"
        )
    return "redeploy", None, chosen.version, chosen.image_id


def _by_tags(
    clients: Any,
    app: str,
    environment: str,
    live: ServerGroup,
    to_version: str | None,
    resolved_live: Mapping[str, Any],
) -> tuple[str, str | None, str, str | None]:
    """The behaviour before the record: a kept group of this environment, else its newest other image."""
    group = _kept_group(clients, app, environment, live, to_version, resolved_live)
    if group is not None:
        return "swap", group.name, group.version or "unknown", group.image_id
    image = previous_version_image(clients.ec2, app, environment, live.version, to_version)
    return "redeploy", None, from_aws_tags(image.get("Tags"))[TAG_VERSION], image["ImageId"]


def _kept_group(
    clients: Any,
    app: str,
    environment: str,
    live: ServerGroup,
    to_version: str | None,
    resolved_live: Mapping[str, Any],
) -> ServerGroup | None:
    """The newest detached group of this environment older than the live one (of `to_version`)."""
    kept = [
        g
        for g in find_server_groups(clients, app, environment)
        if g.name != live.name
        and g.sequence < live.sequence
        and not set(g.target_group_arns) & set(resolved_live["target_group_arns"])
        and (g.version == to_version if to_version else g.version != live.version)
    ]
    return kept[-1] if kept else None


def _unique_versions(history: list[Release]) -> list[str]:
    return list(dict.fromkeys(release.version for release in history))


def _record_note(app: str, environment: str, history: list[Release], shown: int = 10) -> str:
    """The record as the prepare log shows it: the versions a rollback can name, newest first."""
    if not history:
        return f"deploy record of {app}/{environment}: empty"
    lines = [
        f"deploy record of {app}/{environment} (newest first, {min(shown, len(history))} of {len(history)}):"
    ]
    lines += [f"  {release.describe()}" for release in history[:shown]]
    return "\n".join(lines)


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
