"""The steps of a release as plain functions over a plan; the Airflow tasks call these."""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from immudeploy.aws import release_config
from immudeploy.aws.deploy_record import recorded_images_of_app
from immudeploy.aws.groups.capacity import pin_capacity, restore_capacity
from immudeploy.aws.groups.inventory import (
    describe_server_group,
    find_server_groups,
    launch_templates_of,
    live_server_group,
    raw_groups_of,
)
from immudeploy.aws.groups.launch import LaunchSpec, launch_server_group
from immudeploy.aws.groups.retire import delete_launch_template, delete_server_group, retire_server_groups
from immudeploy.aws.groups.setup import GroupSetup, configured_setup, setup_for_new_group
from immudeploy.aws.groups.traffic import attach_server_group, detach_server_group
from immudeploy.aws.images import delete_unused_images, require_image
from immudeploy.aws.network import resolve_environment
from immudeploy.core.config import DeploymentConfig, EnvironmentConfig
from immudeploy.core.errors import DeployError, InvalidInput
from immudeploy.core.naming import (
    staging_environment,
    validate_ami_id,
    validate_app,
    validate_environment,
    validate_git_sha,
    validate_server_group_name,
    validate_version,
)
from immudeploy.core.plan import Capacity, DeployPlan, ServerGroup, StagingPlan
from immudeploy.release.nightly import refuse_if_live_changed
from immudeploy.release.observe import alarms_firing, observe_release
from immudeploy.release.repair import repair_interrupted_swap

log = logging.getLogger(__name__)


def deploy_id_for(dag_id: str, run_id: str) -> str:
    """A short, stable id of one DAG run; tags what the run creates so a retry finds it again."""
    digest = hashlib.sha256(f"{dag_id}/{run_id}".encode()).hexdigest()[:16]
    return f"{dag_id[:40]}-{digest}"


def validate_deploy_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Run conf is data: check every field again here, whatever the trigger form already checked."""
    checked: dict[str, Any] = {
        "app": validate_app(params.get("app")),
        "environment": validate_environment(params.get("environment")),
        "version": validate_version(params.get("version")),
        "ami_id": None,
        "git_sha": None,
        "expect_live_version": None,
        "expect_live_group": None,
    }
    if params.get("ami_id"):
        checked["ami_id"] = validate_ami_id(params["ami_id"])
    if params.get("git_sha"):
        checked["git_sha"] = validate_git_sha(params["git_sha"])
    if params.get("expect_live_version"):
        checked["expect_live_version"] = validate_version(
            params["expect_live_version"], "expect_live_version"
        )
    if params.get("expect_live_group"):
        checked["expect_live_group"] = validate_server_group_name(
            params["expect_live_group"], "expect_live_group"
        )
    return checked


def base_plan(clients: Any, env: EnvironmentConfig, dag_id: str, run_id: str, version: str) -> dict[str, Any]:
    resolved = resolve_environment(clients.ec2, clients.elbv2, env)
    # Under the lock, before the live group is read: what an interrupted run left is put right first.
    repair_interrupted_swap(
        clients,
        env.app,
        env.environment,
        resolved.target_group_arns,
        deploy_id_for(dag_id, run_id),
        health_timeout=float(env.health_timeout_seconds or 600),
    )
    live = live_server_group(clients, env.app, env.environment, resolved.target_group_arns)
    if live is not None:
        # A group pinned by an interrupted swap reports its pinned size; its restore tag has the real one.
        size = live.restore_capacity or live.capacity
        capacity = Capacity(size.min, size.max, max(live.capacity.desired, 1))
    else:
        first = env.first_deploy_capacity
        capacity = Capacity(first.min, first.max, first.desired)
    staging = None
    if env.staging is not None and resolved.staging_target_group_arn:
        staging = StagingPlan(
            target_group_arn=resolved.staging_target_group_arn,
            subnet_ids=resolved.staging_subnet_ids,
            endpoint=resolved.staging_endpoint,
            test_command=list(env.staging.test_command),
            test_timeout_seconds=env.staging.test_timeout_seconds,
            capacity=env.staging.capacity,
        )
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "deploy_id": deploy_id_for(dag_id, run_id),
        "app": env.app,
        "environment": env.environment,
        "version": version,
        "instance_type": env.instance_type,
        "subnet_ids": resolved.subnet_ids,
        "security_group_ids": resolved.security_group_ids,
        "target_group_arns": resolved.target_group_arns,
        "staging": staging,
        "live": live,
        "capacity": capacity,
        "keep_old_groups": env.keep_old_groups,
        "keep_images": env.keep_images,
        "keep_for_minutes": env.keep_for_minutes,
        "kept_capacity": env.kept_capacity,
        "observation_seconds": env.observation_minutes * 60,
        "min_healthy_percent": env.min_healthy_percent,
        "alarms": list(env.alarms),
        "health_timeout_seconds": env.health_timeout_seconds,
        "drain_timeout_seconds": env.drain_timeout_seconds,
        "in_service_timeout_seconds": env.in_service_timeout_seconds,
        "bake_timeout_seconds": env.bake_timeout_seconds,
        "ssm_prefix": env.ssm_prefix,
        "runtime_config": dict(env.runtime_config),
        # References only: the secret values are read when publishing, never kept in the plan (XCom).
        "secret_runtime_config": dict(env.secret_runtime_config),
        "iam_instance_profile": env.iam_instance_profile,
        "key_name": env.key_name,
        "base_image_id": env.base_image.image_id,
        "base_image_name_pattern": env.base_image.name_pattern,
        "base_image_owners": list(env.base_image.owners),
        "packer_template": str(env.packer_template),
        "release_url": env.release_url,
        "health_check_type": env.health_check_type,
        "health_check_grace_period_seconds": env.health_check_grace_period_seconds,
        "planned_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def plan_deploy(
    clients: Any, config: DeploymentConfig, params: Mapping[str, Any], dag_id: str, run_id: str
) -> DeployPlan:
    """The run's plan, read under the lock; refuses before any change what the run cannot finish.

    A configured alarm that does not exist fails here, not in the observation window after the
    swap. A run that expects a live group or version (a nightly rebuild) raises LiveChanged when
    another has been deployed since it was triggered.
    """
    checked = validate_deploy_params(params)
    env = config.get(checked["app"], checked["environment"])
    if env.alarms:
        try:
            alarms_firing(clients.cloudwatch, env.alarms)
        except InvalidInput as error:
            raise InvalidInput(
                f"apps.{env.app}.environments.{env.environment}.alarms", error.reason
            ) from None
    base = base_plan(clients, env, dag_id, run_id, checked["version"])
    plan = DeployPlan(git_sha=checked["git_sha"], ami_id=checked["ami_id"], **base)
    # After the repair of an interrupted swap (another run's leftovers): the live group is known only now.
    refuse_if_live_changed(plan.live, checked["expect_live_version"], checked["expect_live_group"])
    if plan.ami_id:
        require_image(clients.ec2, plan.ami_id, plan.app, "ami_id")
    return plan


# --- staging -------------------------------------------------------------------------------------


def _launch_spec(
    plan: DeployPlan,
    image_id: str,
    *,
    environment: str,
    subnet_ids: list[str],
    target_group_arns: list[str],
    capacity: Capacity,
    setup: GroupSetup,
) -> LaunchSpec:
    """A group of this run's release; every group a run launches is tagged with its deploy id."""
    return LaunchSpec(
        app=plan.app,
        environment=environment,
        version=plan.version,
        image_id=image_id,
        deploy_id=plan.deploy_id,
        instance_type=plan.instance_type,
        subnet_ids=subnet_ids,
        security_group_ids=plan.security_group_ids,
        target_group_arns=target_group_arns,
        capacity=capacity,
        ssm_config_path=release_path(plan),
        cache_key_prefix=_cache_prefix(plan),
        iam_instance_profile=plan.iam_instance_profile,
        key_name=plan.key_name,
        setup=setup,
    )


def launch_staging(clients: Any, plan: DeployPlan, image_id: str) -> ServerGroup | None:
    if plan.staging is None:
        return None
    remove_abandoned_staging(clients, plan.app, plan.environment, own_deploy_id=plan.deploy_id)
    staging = plan.staging
    spec = _launch_spec(
        plan,
        image_id,
        environment=staging_environment(plan.environment),
        subnet_ids=staging.subnet_ids,
        # Registered in the staging target group only: production traffic never reaches it.
        target_group_arns=[staging.target_group_arn],
        capacity=Capacity(staging.capacity, staging.capacity, staging.capacity),
        # Configured health checks only: a throwaway test fleet must not scale, run schedules or
        # lifecycle hooks (which may notify other systems) like the production one.
        setup=configured_setup(plan.health_check_type, plan.health_check_grace_period_seconds),
    )
    return launch_server_group(clients, spec)


def remove_abandoned_staging(
    clients: Any, app: str, environment: str, own_deploy_id: str | None = None, *, dry_run: bool = False
) -> list[str]:
    """Delete staging groups that other runs of this app and environment left (with their instances).

    The caller holds the app/environment lock (a deploy, or the janitor), so no other run of it is
    alive: a staging group with another deploy id belongs to a run that died before its teardown.
    Launch templates of staging groups that no longer exist go too (a launch that died between
    the template and the group). With `dry_run`, nothing is deleted: the names it would delete.
    """
    deleted = []
    staging = staging_environment(environment)
    for group in find_server_groups(clients, app, staging):
        if group.deploy_id == own_deploy_id:
            continue
        if dry_run:
            deleted.append(group.name)
        elif delete_server_group(clients, group.name, force=True):
            log.info(
                "Deleted staging group %s left by deploy %s, which is no longer running",
                group.name,
                group.deploy_id,
            )
            deleted.append(group.name)
    if own_deploy_id is None:
        groups = {
            raw["AutoScalingGroupName"] for raw in raw_groups_of(clients, app, staging, include_deleting=True)
        }
        for template in launch_templates_of(clients, app, staging):
            name = template["LaunchTemplateName"]
            if name in groups or name in deleted:
                continue
            if dry_run or delete_launch_template(clients, name):
                log.info("Deleted launch template %s of a staging group that no longer exists", name)
                deleted.append(name)
    return deleted


def teardown_staging(clients: Any, plan: DeployPlan) -> list[str]:
    """Delete every staging group this run made (whatever happened to the tests)."""
    deleted = []
    for group in find_server_groups(clients, plan.app, staging_environment(plan.environment)):
        if group.deploy_id == plan.deploy_id and delete_server_group(clients, group.name, force=True):
            deleted.append(group.name)
    return deleted


def staging_test_command(plan: DeployPlan) -> list[str]:
    """The configured argv; a bare `python` means the interpreter Airflow runs on."""
    assert plan.staging is not None
    command = list(plan.staging.test_command)
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable
    return command


# --- release configuration ---------------------------------------------------------------------


def release_path(plan: DeployPlan) -> str:
    """This run's own configuration path: every group it launches (staging too) reads this one."""
    return release_config.release_path(
        plan.ssm_prefix, plan.version, release_config.deploy_key(plan.deploy_id)
    )


def _cache_prefix(plan: DeployPlan) -> str:
    return release_config.cache_key_prefix(plan.app, plan.environment, plan.version)


def publish_config(clients: Any, plan: DeployPlan) -> dict[str, Any]:
    """This run's configuration under its own path, before anything boots from the image.

    Also deletes the paths of earlier deploys that no group uses any more: this runs under the
    lock at the start of every deploy, after the last run's retirement deleted its old groups, so
    a path goes with the group that used it (one deploy later) and never before. Deleting them
    in retirement itself would need every caller of it (deploy, rollback, undo) to know the paths.
    """
    own_path = release_path(plan)
    superseded = release_config.delete_superseded_release_configs(
        clients, plan.app, plan.environment, plan.ssm_prefix, keep=[own_path]
    )
    extra = {"GIT_SHA": plan.git_sha} if plan.git_sha else {}
    published = release_config.publish_release_config(
        clients.ssm,
        plan.ssm_prefix,
        plan.app,
        plan.environment,
        plan.version,
        plan.runtime_config,
        extra,
        key=release_config.deploy_key(plan.deploy_id),
        secrets=release_config.resolve_secrets(clients.ssm, plan.secret_runtime_config),
    )
    # Names and paths only: the XCom of this task never holds a value.
    return {
        "path": published.path,
        "cache_key_prefix": published.cache_key_prefix,
        "secret_names": sorted(plan.secret_runtime_config),
        "superseded_paths": superseded,
    }


# --- the fleet ---------------------------------------------------------------------------------


def live_group_now(clients: Any, plan: DeployPlan) -> tuple[ServerGroup | None, Capacity]:
    """The live group as it is now, and the size a new group needs: read when used, not planned.

    The plan was made before the bake; meanwhile the live group may have autoscaled or an operator
    may have changed it. The new group gets its current desired count (never fewer) and the live
    group's own min/max (from its restore tag when a swap pinned it), widened to fit that count.
    """
    live = describe_server_group(clients, plan.live.name) if plan.live else None
    if live is None:
        return None, plan.capacity
    original = live.restore_capacity or live.capacity
    desired = max(live.capacity.desired, 1)
    return live, Capacity(min(original.min, desired), max(original.max, desired), desired)


def inherited_setup(clients: Any, plan: DeployPlan, live: ServerGroup | None) -> GroupSetup:
    """The live group's Auto Scaling setup as it is now (the configured health checks win), else the defaults."""
    return setup_for_new_group(
        clients,
        live.name if live is not None else None,
        health_check_type=plan.health_check_type,
        health_check_grace_period=plan.health_check_grace_period_seconds,
    )


def launch_fleet(clients: Any, plan: DeployPlan, image_id: str) -> ServerGroup:
    """The new group, sized and set up like the live one at this moment and pinned; the live group is pinned too.

    It inherits the live group's scaling policies (with their alarms), scheduled actions, lifecycle
    hooks, termination policies, health checks, warmup, capacity rebalance, maintenance policy,
    metrics and tags. Its policies and schedules stay suspended until finish_swap, the live
    group's while it stays pinned (undo and repair resume them; a kept group keeps them off).
    """
    if plan.rollback_mode is not None:
        # A rollback redeploy has no publish task: its groups read this run's own path too, written
        # here before the group exists (idempotent, so a retried launch rewrites nothing).
        publish_config(clients, plan)
    live, capacity = live_group_now(clients, plan)
    # Read now, like the size: an operator may have changed a policy or a schedule during the bake.
    setup = inherited_setup(clients, plan, live)
    if live is not None:
        # Nothing may scale the old fleet in while the new one comes up; pinned at its size now, so
        # no serving instance is terminated (the first pin records its min/max for the restore).
        pin_capacity(clients, live.name, capacity)
    # Not in the load balancer yet: the cutover attaches it once it is InService.
    spec = _launch_spec(
        plan,
        image_id,
        environment=plan.environment,
        subnet_ids=plan.subnet_ids,
        target_group_arns=[],
        # launch_server_group pins the group at capacity.desired and records this size in its
        # restore tag: min and max are the live group's, for finish_swap (or a repair) to restore.
        capacity=capacity,
        setup=setup,
    )
    return launch_server_group(clients, spec)


def attach_fleet(clients: Any, plan: DeployPlan, group_name: str) -> ServerGroup:
    return attach_server_group(clients, group_name, plan.target_group_arns)


def detach_old_fleet(clients: Any, plan: DeployPlan, new_group_name: str) -> list[str]:
    """Take the previously live group out of the load balancer; returns the instances now draining."""
    live = plan.live
    if live is None or live.name == new_group_name:
        log.info("No previous group to detach (first deploy)")
        return []
    current = describe_server_group(clients, live.name)
    if current is None:
        return []
    # The new group must carry the old one's load: min_healthy_percent of its desired count, not one target.
    required = max(1, math.ceil(current.capacity.desired * plan.min_healthy_percent / 100))
    detach_server_group(clients, live.name, plan.target_group_arns, min_healthy=required)
    return list(current.instance_ids)


def finish_swap(clients: Any, plan: DeployPlan, new_group_name: str) -> ServerGroup:
    """The new group gets the old group's min and max back and autoscales normally again.

    restore_capacity resumes the processes the swap suspended (SWAP_SUSPENDED_PROCESSES): from
    here on the inherited scaling policies and scheduled actions act on the new group.

    Read from AWS now: what the live group was set to during the run (a higher desired or max) is
    what the new group keeps, and its desired count is never lowered.
    """
    _, target = live_group_now(clients, plan)
    new = describe_server_group(clients, new_group_name)
    if new is not None and new.capacity.desired > target.desired:
        desired = new.capacity.desired
        target = Capacity(min(target.min, desired), max(target.max, desired), desired)
    return restore_capacity(clients, new_group_name, target)


def retire(
    clients: Any, plan: DeployPlan, new_group_name: str, also_delete: list[str] | None = None
) -> dict[str, Any]:
    """Delete the old groups retention does not keep (and `also_delete`), or fail naming what is left.

    Raises DeployError (after deleting what it could) when a group could not be deleted, e.g. one
    still attached or draining: an old fleet is never left running with only a warning.
    """
    deleted = retire_server_groups(
        clients,
        plan.app,
        plan.environment,
        plan.keep_old_groups,
        new_group_name,
        plan.target_group_arns,
        also_delete=also_delete or [],
        keep_for_minutes=plan.keep_for_minutes,
        kept_capacity=plan.kept_capacity,
        # The group this run replaced: its retention counts from now (the cutover is behind us).
        newly_kept=plan.live.name if plan.live else None,
    )
    images = apply_image_retention(clients, plan.app, plan.keep_images)
    kept = [
        g.name
        for g in find_server_groups(clients, plan.app, plan.environment)
        if g.name != new_group_name and g.name not in deleted
    ]
    return {"deleted_groups": deleted, "deleted_images": images, "kept_groups": kept}


def apply_image_retention(clients: Any, app: str, keep_images: int, *, dry_run: bool = False) -> list[str]:
    """Deregister the app's images beyond retention; what a rollback of any environment would go to stays."""
    recorded = recorded_images_of_app(clients.dynamodb, app, keep_images)
    return delete_unused_images(
        clients, app, keep_images, {image for ids in recorded.values() for image in ids}, dry_run=dry_run
    )


def observe(
    clients: Any, plan: DeployPlan, new_group_name: str, poll_interval: float = 5.0
) -> dict[str, Any]:
    """Watch the new fleet for the configured window; a failure raises and the swap is undone."""
    group = describe_server_group(clients, new_group_name)
    if group is None:
        raise DeployError(f"server group {new_group_name} disappeared during the observation window")
    result = observe_release(
        clients.elbv2,
        clients.cloudwatch,
        target_group_arns=plan.target_group_arns,
        instance_ids=group.instance_ids,
        alarm_names=plan.alarms,
        duration_seconds=plan.observation_seconds,
        poll_interval=min(poll_interval, max(plan.observation_seconds, 0.1)),
        log=log,
    )
    if not result.ok:
        raise DeployError(f"observation window failed after {result.checks} checks: {result.reason}")
    return {"checks": result.checks, "seconds": plan.observation_seconds}
