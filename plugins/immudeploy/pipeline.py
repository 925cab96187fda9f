"""The steps of a release and of a rollback as plain functions over a plan; Airflow tasks call these."""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from immudeploy import server_groups as sg
from immudeploy.config import DeploymentConfig, EnvironmentConfig
from immudeploy.errors import DeployError, InvalidInput
from immudeploy.naming import (
    TAG_APP,
    TAG_VERSION,
    from_aws_tags,
    validate_ami_id,
    validate_app,
    validate_environment,
    validate_git_sha,
    validate_version,
)
from immudeploy.resolve import resolve_environment

log = logging.getLogger(__name__)

# Staging groups live beside the environment's own groups under a name of their own.
STAGING_SUFFIX = "stg"


def deploy_id_for(dag_id: str, run_id: str) -> str:
    """A short, stable id of one DAG run; tags what the run creates so a retry finds it again."""
    digest = hashlib.sha256(f"{dag_id}/{run_id}".encode()).hexdigest()[:16]
    return f"{dag_id[:40]}-{digest}"


def staging_environment(environment: str) -> str:
    return f"{environment}{STAGING_SUFFIX}"


@dataclass
class StagingPlan:
    target_group_arn: str
    subnet_ids: list[str]
    endpoint: str
    test_command: list[str]
    test_timeout_seconds: int
    capacity: int


@dataclass
class DeployPlan:
    """Everything the later steps need, decided once at the start of a run (and read under the lock)."""

    dag_id: str
    run_id: str
    deploy_id: str
    app: str
    environment: str
    version: str
    git_sha: str | None
    ami_id: str | None
    instance_type: str
    subnet_ids: list[str]
    security_group_ids: list[str]
    target_group_arns: list[str]
    staging: StagingPlan | None
    # The group serving when the run started (None: first deploy) and the size the new one gets.
    live_group: dict[str, Any] | None
    capacity: dict[str, int]
    keep_old_groups: int
    keep_images: int
    observation_seconds: float
    alarms: list[str]
    health_timeout_seconds: int | None
    drain_timeout_seconds: int | None
    in_service_timeout_seconds: int
    bake_timeout_seconds: int
    ssm_prefix: str
    runtime_config: dict[str, str]
    base_image_id: str | None
    base_image_name_pattern: str | None
    base_image_owners: list[str]
    packer_template: str
    release_url: str
    planned_at: str
    # Rollback only: "swap" to a kept group, or "redeploy" the previous image.
    rollback_mode: str | None = None
    rollback_group: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, value: Mapping[str, Any]) -> DeployPlan:
        known = {f.name for f in fields(cls)}
        # The prepare task adds a few flat keys for operators; they are derived, not part of the plan.
        data = {k: v for k, v in value.items() if k in known}
        staging = data.pop("staging", None)
        return cls(staging=StagingPlan(**staging) if staging else None, **data)

    @property
    def live(self) -> sg.ServerGroup | None:
        return sg.ServerGroup.from_xcom(self.live_group) if self.live_group else None


def validate_deploy_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Run conf is data: check every field again here, whatever the trigger form already checked."""
    checked: dict[str, Any] = {
        "app": validate_app(params.get("app")),
        "environment": validate_environment(params.get("environment")),
        "version": validate_version(params.get("version")),
        "ami_id": None,
        "git_sha": None,
    }
    if params.get("ami_id"):
        checked["ami_id"] = validate_ami_id(params["ami_id"])
    if params.get("git_sha"):
        checked["git_sha"] = validate_git_sha(params["git_sha"])
    return checked


def _base_plan(
    clients: Any, env: EnvironmentConfig, dag_id: str, run_id: str, version: str
) -> dict[str, Any]:
    resolved = resolve_environment(clients.ec2, clients.elbv2, env)
    live = sg.live_server_group(clients, env.app, env.environment, resolved.target_group_arns)
    if live is not None:
        # A group pinned by an interrupted swap reports its pinned size; its restore tag has the real one.
        size = live.restore_capacity or live.capacity
        capacity = sg.Capacity(size.min, size.max, max(live.capacity.desired, 1))
    else:
        first = env.first_deploy_capacity
        capacity = sg.Capacity(first.min, first.max, first.desired)
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
        "live_group": live.to_xcom() if live else None,
        "capacity": capacity.to_xcom(),
        "keep_old_groups": env.keep_old_groups,
        "keep_images": env.keep_images,
        "observation_seconds": env.observation_minutes * 60,
        "alarms": list(env.alarms),
        "health_timeout_seconds": env.health_timeout_seconds,
        "drain_timeout_seconds": env.drain_timeout_seconds,
        "in_service_timeout_seconds": env.in_service_timeout_seconds,
        "bake_timeout_seconds": env.bake_timeout_seconds,
        "ssm_prefix": env.ssm_prefix,
        "runtime_config": dict(env.runtime_config),
        "base_image_id": env.base_image.image_id,
        "base_image_name_pattern": env.base_image.name_pattern,
        "base_image_owners": list(env.base_image.owners),
        "packer_template": str(env.packer_template),
        "release_url": env.release_url,
        "planned_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def plan_deploy(
    clients: Any, config: DeploymentConfig, params: Mapping[str, Any], dag_id: str, run_id: str
) -> DeployPlan:
    checked = validate_deploy_params(params)
    env = config.get(checked["app"], checked["environment"])
    base = _base_plan(clients, env, dag_id, run_id, checked["version"])
    plan = DeployPlan(git_sha=checked["git_sha"], ami_id=checked["ami_id"], **base)
    if plan.ami_id:
        require_image(clients.ec2, plan.ami_id, plan.app, "ami_id")
    return plan


def require_image(ec2: Any, image_id: str, app: str, field_name: str) -> dict[str, Any]:
    """An image given by id must exist, be available and belong to the app."""
    from botocore.exceptions import ClientError

    try:
        images = ec2.describe_images(ImageIds=[image_id]).get("Images", [])
    except ClientError:
        images = []
    if not images:
        raise InvalidInput(field_name, f"image {image_id} does not exist in this region")
    image = images[0]
    if image.get("State") != "available":
        raise InvalidInput(field_name, f"image {image_id} is {image.get('State')}, not available")
    owner_app = from_aws_tags(image.get("Tags")).get(TAG_APP)
    if owner_app not in (None, app):
        raise InvalidInput(field_name, f"image {image_id} was baked for app {owner_app!r}, not {app!r}")
    return dict(image)


# --- staging -------------------------------------------------------------------------------------


def _launch_spec(
    plan: DeployPlan,
    image_id: str,
    *,
    environment: str,
    subnet_ids: list[str],
    target_group_arns: list[str],
    capacity: sg.Capacity,
) -> sg.LaunchSpec:
    """A group of this run's release; every group a run launches is tagged with its deploy id."""
    return sg.LaunchSpec(
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
    )


def launch_staging(clients: Any, plan: DeployPlan, image_id: str) -> dict[str, Any] | None:
    if plan.staging is None:
        return None
    staging = plan.staging
    spec = _launch_spec(
        plan,
        image_id,
        environment=staging_environment(plan.environment),
        subnet_ids=staging.subnet_ids,
        # Registered in the staging target group only: production traffic never reaches it.
        target_group_arns=[staging.target_group_arn],
        capacity=sg.Capacity(staging.capacity, staging.capacity, staging.capacity),
    )
    return sg.launch_server_group(clients, spec).to_xcom()


def teardown_staging(clients: Any, plan: DeployPlan) -> list[str]:
    """Delete every staging group this run made (whatever happened to the tests)."""
    deleted = []
    for group in sg.find_server_groups(clients, plan.app, staging_environment(plan.environment)):
        if group.deploy_id == plan.deploy_id and sg.delete_server_group(clients, group.name, force=True):
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
    from immudeploy.release_config import release_path as path_for

    return path_for(plan.ssm_prefix, plan.version)


def _cache_prefix(plan: DeployPlan) -> str:
    from immudeploy.release_config import cache_key_prefix

    return cache_key_prefix(plan.app, plan.environment, plan.version)


def publish_config(clients: Any, plan: DeployPlan) -> dict[str, Any]:
    from immudeploy.release_config import publish_release_config

    extra = {"GIT_SHA": plan.git_sha} if plan.git_sha else {}
    published = publish_release_config(
        clients.ssm, plan.ssm_prefix, plan.app, plan.environment, plan.version, plan.runtime_config, extra
    )
    return {"path": published.path, "cache_key_prefix": published.cache_key_prefix}


# --- the fleet ---------------------------------------------------------------------------------


def launch_fleet(clients: Any, plan: DeployPlan, image_id: str) -> dict[str, Any]:
    """The new group, sized like the live one and pinned; the live group is pinned too."""
    capacity = sg.Capacity.from_xcom(plan.capacity)
    live = plan.live
    if live is not None and sg.describe_server_group(clients, live.name) is not None:
        # Nothing may scale the old fleet in while the new one comes up (no race on its size).
        sg.pin_capacity(clients, live.name, live.capacity)
    # Not in the load balancer yet: the cutover attaches it once it is InService.
    spec = _launch_spec(
        plan,
        image_id,
        environment=plan.environment,
        subnet_ids=plan.subnet_ids,
        target_group_arns=[],
        capacity=capacity.pinned(),
    )
    return sg.launch_server_group(clients, spec).to_xcom()


def attach_fleet(clients: Any, plan: DeployPlan, group_name: str) -> dict[str, Any]:
    return sg.attach_server_group(clients, group_name, plan.target_group_arns).to_xcom()


def detach_old_fleet(clients: Any, plan: DeployPlan, new_group_name: str) -> list[str]:
    """Take the previously live group out of the load balancer; returns the instances now draining."""
    live = plan.live
    if live is None or live.name == new_group_name:
        log.info("No previous group to detach (first deploy)")
        return []
    current = sg.describe_server_group(clients, live.name)
    if current is None:
        return []
    sg.detach_server_group(clients, live.name, plan.target_group_arns)
    return list(current.instance_ids)


def finish_swap(clients: Any, plan: DeployPlan, new_group_name: str) -> dict[str, Any]:
    """The new group gets the old group's min and max back and autoscales normally again."""
    live = plan.live
    target = sg.Capacity.from_xcom(plan.capacity)
    if live is not None:
        original = live.restore_capacity or live.capacity
        target = sg.Capacity(original.min, original.max, target.desired)
    return sg.restore_capacity(clients, new_group_name, target).to_xcom()


def retire(
    clients: Any, plan: DeployPlan, new_group_name: str, also_delete: list[str] | None = None
) -> dict[str, Any]:
    deleted = []
    for name in also_delete or []:
        if sg.delete_server_group(clients, name, force=True):
            deleted.append(name)
    deleted += sg.retire_server_groups(
        clients, plan.app, plan.environment, plan.keep_old_groups, new_group_name, plan.target_group_arns
    )
    images = sg.delete_unused_images(clients, plan.app, plan.keep_images)
    kept = [
        g.name
        for g in sg.find_server_groups(clients, plan.app, plan.environment)
        if g.name != new_group_name and g.name not in deleted
    ]
    return {"deleted_groups": deleted, "deleted_images": images, "kept_groups": kept}


def observe(
    clients: Any, plan: DeployPlan, new_group_name: str, poll_interval: float = 5.0
) -> dict[str, Any]:
    """Watch the new fleet for the configured window; a failure raises and the swap is undone."""
    from immudeploy.observe import observe_release

    group = sg.describe_server_group(clients, new_group_name)
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


# --- failure -----------------------------------------------------------------------------------


def groups_made_by(clients: Any, plan: DeployPlan) -> list[sg.ServerGroup]:
    return [
        g for g in sg.find_server_groups(clients, plan.app, plan.environment) if g.deploy_id == plan.deploy_id
    ]


def undo_failed_run(
    clients: Any, plan: DeployPlan, health_timeout: float = 600, poll_interval: float = 5.0
) -> list[str]:
    """Put traffic back where it was and remove what the run made; reads AWS, not XCom, so it is rerunnable.

    Order matters: the old group is attached and healthy again before the new one leaves the
    load balancer, so no target group is ever left without a healthy target.
    """
    from immudeploy import waits

    actions: list[str] = []
    live = plan.live
    old = sg.describe_server_group(clients, live.name) if live else None
    if old is not None:
        original = live.restore_capacity or live.capacity  # type: ignore[union-attr]
        if old.capacity.desired < original.desired:
            sg.scale_server_group(clients, old.name, original.pinned())
            actions.append(f"scaled {old.name} back to {original.desired}")
        if not set(plan.target_group_arns) <= set(old.target_group_arns):
            sg.attach_server_group(clients, old.name, plan.target_group_arns)
            actions.append(f"re-attached {old.name}")
        old = sg.describe_server_group(clients, old.name)
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
            sg.detach_server_group(clients, group.name, plan.target_group_arns)
            actions.append(f"detached {group.name}")
        sg.delete_server_group(clients, group.name, force=True)
        actions.append(f"deleted {group.name}")
    if plan.rollback_mode == "swap" and plan.rollback_group:
        kept = sg.describe_server_group(clients, plan.rollback_group)
        if kept is not None and set(kept.target_group_arns) & set(plan.target_group_arns):
            sg.detach_server_group(clients, kept.name, plan.target_group_arns)
            actions.append(f"detached {kept.name} again")
    if old is not None:
        sg.restore_capacity(clients, old.name, live.restore_capacity or live.capacity)  # type: ignore[union-attr]
    for name in teardown_staging(clients, plan):
        actions.append(f"deleted staging group {name}")
    if not actions:
        actions.append("nothing to undo")
    for action in actions:
        log.info("undo: %s", action)
    return actions


# --- rollback ----------------------------------------------------------------------------------


def _previous_version_image(
    ec2: Any, app: str, current_version: str | None, to_version: str | None
) -> dict[str, Any]:
    images = ec2.describe_images(
        Owners=["self"],
        Filters=[{"Name": f"tag:{TAG_APP}", "Values": [app]}, {"Name": "state", "Values": ["available"]}],
    ).get("Images", [])
    candidates = []
    for image in images:
        version = from_aws_tags(image.get("Tags")).get(TAG_VERSION)
        if (to_version is not None and version == to_version) or (
            to_version is None and version and version != current_version
        ):
            candidates.append(image)
    if not candidates:
        wanted = f"version {to_version}" if to_version else f"a version other than {current_version}"
        raise DeployError(f"no image of {app} with {wanted} to roll back to")
    return max(candidates, key=lambda image: image.get("CreationDate", ""))


def plan_rollback(
    clients: Any, config: DeploymentConfig, params: Mapping[str, Any], dag_id: str, run_id: str
) -> DeployPlan:
    app = validate_app(params.get("app"))
    environment = validate_environment(params.get("environment"))
    to_version = validate_version(params["to_version"], "to_version") if params.get("to_version") else None
    env = config.get(app, environment)
    resolved_live = _base_plan(clients, env, dag_id, run_id, "rollback")
    live = resolved_live["live_group"]
    if live is None:
        raise DeployError(f"{app}/{environment} has no live server group: nothing to roll back")
    current_version = live.get("version")
    kept = [
        g
        for g in sg.find_server_groups(clients, app, environment)
        if g.name != live["name"]
        and g.sequence < live["sequence"]
        and not set(g.target_group_arns) & set(resolved_live["target_group_arns"])
        and (g.version == to_version if to_version else g.version != current_version)
    ]
    notes = []
    if kept:
        group = kept[-1]
        mode, rollback_group, version, ami_id = "swap", group.name, group.version or "unknown", group.image_id
        notes.append(f"swapping back to kept group {group.name} ({group.version})")
    else:
        image = _previous_version_image(clients.ec2, app, current_version, to_version)
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


def bring_up_rollback_fleet(clients: Any, plan: DeployPlan) -> dict[str, Any]:
    """Scale the kept group back to the live size, or launch a group from the previous image."""
    capacity = sg.Capacity.from_xcom(plan.capacity)
    if plan.rollback_mode == "swap":
        assert plan.rollback_group
        group = sg.describe_server_group(clients, plan.rollback_group)
        if group is None:
            raise DeployError(f"kept group {plan.rollback_group} disappeared; rerun the rollback to redeploy")
        if group.capacity.desired < capacity.desired or group.capacity.min != capacity.desired:
            sg.scale_server_group(clients, group.name, capacity.pinned())
        return sg.describe_server_group(clients, group.name).to_xcom()  # type: ignore[union-attr]
    assert plan.ami_id
    return launch_fleet(clients, plan, plan.ami_id)


# --- summary -----------------------------------------------------------------------------------


def summarize(
    plan: DeployPlan,
    image_id: str,
    new_group: Mapping[str, Any],
    timings: Mapping[str, float],
    retired: Mapping[str, Any],
) -> dict[str, Any]:
    replaced = plan.live_group["name"] if plan.live_group else None
    lines = [
        f"### {plan.app}/{plan.environment} now runs {plan.version}",
        "",
        f"- image: `{image_id}`",
        f"- server group: `{new_group['name']}` ({new_group['capacity']['desired']} instances)"
        + (f", replacing `{replaced}`" if replaced else " (first deploy)"),
        f"- deleted groups: {', '.join(retired.get('deleted_groups', [])) or 'none'}; "
        f"kept for rollback: {', '.join(retired.get('kept_groups', [])) or 'none'}",
        f"- deleted images: {', '.join(retired.get('deleted_images', [])) or 'none'}",
        "",
        "| phase | seconds |",
        "| --- | ---: |",
        *[f"| {phase} | {seconds:.1f} |" for phase, seconds in timings.items()],
    ]
    lines += [f"- {note}" for note in plan.notes]
    return {
        "app": plan.app,
        "environment": plan.environment,
        "version": plan.version,
        "image_id": image_id,
        "server_group": new_group["name"],
        "replaced": replaced,
        "deleted_groups": list(retired.get("deleted_groups", [])),
        "phase_seconds": dict(timings),
        "markdown": "\n".join(lines),
    }


def phase_durations(starts: Mapping[str, float | None], finished_at: float | None = None) -> dict[str, float]:
    """Seconds per phase, from the moment each phase's first task started to the next phase's start."""
    ordered = [(phase, t) for phase, t in starts.items() if t is not None]
    ordered.sort(key=lambda item: item[1])
    end = finished_at if finished_at is not None else time.time()
    result = {}
    for index, (phase, start) in enumerate(ordered):
        stop = ordered[index + 1][1] if index + 1 < len(ordered) else end
        result[phase] = round(max(stop - start, 0.0), 1)
    return result


# --- nightly -----------------------------------------------------------------------------------


def nightly_targets(
    clients: Any, config: DeploymentConfig, due_at: datetime | None, only: list[str] | None = None
) -> list[dict[str, str]]:
    """The deploy confs of tonight's rebuilds: opted-in targets whose schedule is due, at their live version.

    `due_at` None (a manual run) takes every opted-in target; `only` narrows to "app/environment" names.
    A target with no live group has nothing to rebuild and is left out with a log line.
    """
    from croniter import croniter

    confs = []
    for env in config.nightly_targets():
        if only is not None and env.target not in only:
            continue
        if due_at is not None and not croniter.match(env.nightly_schedule, due_at):
            continue
        resolved = resolve_environment(clients.ec2, clients.elbv2, env)
        live = sg.live_server_group(clients, env.app, env.environment, resolved.target_group_arns)
        if live is None or not live.version:
            log.info("%s has no live group: nothing to rebuild", env.target)
            continue
        confs.append({"app": env.app, "environment": env.environment, "version": live.version})
    return confs


def nightly_schedules(config: DeploymentConfig) -> list[str]:
    return sorted({env.nightly_schedule for env in config.nightly_targets()})
