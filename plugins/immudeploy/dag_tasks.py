"""The Airflow tasks and task groups the three DAGs are built from; the work itself is in immudeploy.pipeline."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, TaskGroup, TriggerRule, get_current_context, task

from immudeploy.naming import (
    AMI_ID_PATTERN,
    APP_PATTERN,
    ENVIRONMENT_PATTERN,
    GIT_SHA_PATTERN,
    VERSION_PATTERN,
)
from immudeploy.operators.bake import BakeImageOperator
from immudeploy.operators.waits import DrainSensor, HealthGateOperator, WaitForInServiceOperator

log = logging.getLogger(__name__)

AWS_CONN_ID = os.environ.get("IMMUDEPLOY_AWS_CONN_ID", "aws_default")
POLL_SECONDS = float(os.environ.get("IMMUDEPLOY_POLL_SECONDS", "10"))

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "platform",
    "retries": int(os.environ.get("IMMUDEPLOY_RETRIES", "2")),
    "retry_delay": timedelta(seconds=float(os.environ.get("IMMUDEPLOY_RETRY_DELAY_SECONDS", "30"))),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}


def _configured_choices() -> tuple[list[str], list[str]]:
    """Apps and environments of the (small, local) configuration file, for the trigger form's choices."""
    from immudeploy.config import load_config

    targets = load_config().environments
    return sorted({app for app, _ in targets}), sorted({env for _, env in targets})


def deploy_params() -> dict[str, Param]:
    apps, environments = _configured_choices()
    return {
        "app": Param(
            type="string",
            pattern=APP_PATTERN,
            enum=apps,
            description="App to deploy, as named in the configuration file.",
        ),
        "environment": Param(
            type="string",
            pattern=ENVIRONMENT_PATTERN,
            enum=environments,
            description="Environment to deploy to, e.g. prod.",
        ),
        "version": Param(
            type="string",
            pattern=VERSION_PATTERN,
            description="Release version to bake and deploy, e.g. 1.4.2.",
        ),
        "ami_id": Param(
            None,
            type=["null", "string"],
            pattern=AMI_ID_PATTERN,
            description="Deploy this already-baked image instead of baking (Packer does not run).",
        ),
        "git_sha": Param(
            None,
            type=["null", "string"],
            pattern=GIT_SHA_PATTERN,
            description="Commit the release was built from.",
        ),
    }


def rollback_params() -> dict[str, Param]:
    chosen = deploy_params()
    return {
        "app": chosen["app"],
        "environment": chosen["environment"],
        "to_version": Param(
            None,
            type=["null", "string"],
            pattern=VERSION_PATTERN,
            description="Version to roll back to; empty means the newest version before the live one.",
        ),
    }


# The first task of each phase; the summary times phases from their start.
PHASE_FIRST_TASKS = {
    "prepare": "prepare",
    "bake": "bake.bake_image",
    "staging": "staging.staging_configured",
    "publish_config": "publish_config",
    "launch": "launch.launch_fleet",
    "cutover": "cutover.attach_fleet",
    "drain": "drain.detach_old_fleet",
    "observe": "observe.observe_window",
    "teardown": "teardown.finish_swap",
}


def _clients() -> Any:
    from immudeploy.aws import AwsClients

    return AwsClients(AWS_CONN_ID)


def _plan(plan: dict[str, Any]) -> Any:
    from immudeploy.pipeline import DeployPlan

    return DeployPlan.from_xcom(plan)


def _phase_started() -> None:
    get_current_context()["ti"].xcom_push(key="started_at", value=time.time())


def _holder() -> Any:
    from immudeploy.lock import LockHolder

    context = get_current_context()
    return LockHolder(context["dag"].dag_id, context["run_id"])


@contextmanager
def _bad_input_fails_at_once() -> Iterator[None]:
    """Bad conf or configuration is not fixed by a retry: fail the task without retrying."""
    from airflow.sdk.exceptions import AirflowFailException

    from immudeploy.errors import InvalidInput

    try:
        yield
    except InvalidInput as error:
        raise AirflowFailException(f"Invalid input: {error}") from error


def _plan_under_lock(app: str, environment: str, make_plan: Any) -> dict[str, Any]:
    """Take the app/environment lock, then plan; a plan that fails gives the lock back."""
    from immudeploy.lock import acquire_lock, release_lock

    clients = _clients()
    holder = _holder()
    acquire_lock(
        clients.ssm,
        app,
        environment,
        holder,
        # How long a run waits for another run of the same app and environment before it fails.
        wait_seconds=float(os.environ.get("IMMUDEPLOY_LOCK_WAIT_SECONDS", "1800")),
        poll_interval=min(POLL_SECONDS, 5.0),
        # A lock older than this was left by a run that died without releasing it.
        stale_after_seconds=float(os.environ.get("IMMUDEPLOY_LOCK_STALE_SECONDS", str(6 * 3600))),
        log=log,
    )
    try:
        plan = make_plan(clients)
    except BaseException:
        release_lock(clients.ssm, app, environment, holder)
        raise
    for note in plan.notes:
        log.info("%s", note)
    # Flat keys for operators that take one field of the plan.
    return {
        **plan.to_xcom(),
        "staging_target_group_arns": [plan.staging.target_group_arn] if plan.staging else [],
        "live_group_name": plan.live_group["name"] if plan.live_group else None,
    }


@task(multiple_outputs=True)
def prepare() -> dict[str, Any]:
    """Check the run's conf, take the app/environment lock, read the live group and plan the run."""
    from immudeploy.config import load_config
    from immudeploy.pipeline import plan_deploy, validate_deploy_params

    _phase_started()
    context = get_current_context()
    checked = validate_deploy_params(dict(context["params"]))
    return _plan_under_lock(
        checked["app"],
        checked["environment"],
        lambda clients: plan_deploy(
            clients, load_config(), checked, context["dag"].dag_id, context["run_id"]
        ),
    )


@task(task_id="prepare", multiple_outputs=True)
def prepare_rollback() -> dict[str, Any]:
    """Check the conf, take the lock, choose: swap back to a kept group, or redeploy the previous image."""
    from immudeploy.config import load_config
    from immudeploy.naming import validate_app, validate_environment
    from immudeploy.pipeline import plan_rollback

    _phase_started()
    context = get_current_context()
    params = dict(context["params"])
    return _plan_under_lock(
        validate_app(params.get("app")),
        validate_environment(params.get("environment")),
        lambda clients: plan_rollback(
            clients, load_config(), params, context["dag"].dag_id, context["run_id"]
        ),
    )


@task(trigger_rule=TriggerRule.ALL_DONE)
def release_lock() -> bool:
    """Frees the app/environment for the next run; runs however the run ended."""
    from immudeploy.lock import release_lock as release

    context = get_current_context()
    plan = context["ti"].xcom_pull(task_ids="prepare")
    if not plan:
        return False
    return release(_clients().ssm, plan["app"], plan["environment"], _holder())


# --- bake ----------------------------------------------------------------------------------------


def bake_phase(plan: Any) -> Any:
    with TaskGroup("bake", tooltip="Bake the release image with Packer, or reuse the identical one"):
        bake = BakeImageOperator(
            task_id="bake_image",
            app=plan["app"],
            version=plan["version"],
            environment=plan["environment"],
            image_id=plan["ami_id"],
            base_image_id=plan["base_image_id"],
            base_image_name_pattern=plan["base_image_name_pattern"],
            base_image_owners=plan["base_image_owners"],
            template_dir=plan["packer_template"],
            instance_type=plan["instance_type"],
            git_sha=plan["git_sha"],
            release_url=plan["release_url"],
            bake_timeout=plan["bake_timeout_seconds"],
            aws_conn_id=AWS_CONN_ID,
            doc_md="Runs Packer (its output streams into this log) unless an image of this app, "
            "version and template content exists already, or the run names an `ami_id`.",
        )
    return bake


# --- staging -------------------------------------------------------------------------------------


@task.short_circuit(ignore_downstream_trigger_rules=False)
def staging_configured(plan: dict[str, Any], image_id: str) -> bool:
    """Skips the staging tasks for an environment without a staging section (after the bake)."""
    _phase_started()
    return plan["staging"] is not None


@task(multiple_outputs=True)
def launch_staging(plan: dict[str, Any], image_id: str) -> dict[str, Any]:
    """A staging group of the image, registered only in the staging target group."""
    from immudeploy.pipeline import launch_staging as launch

    return launch(_clients(), _plan(plan), image_id) or {}


@task
def run_staging_tests(plan: dict[str, Any], instance_ids: list[str]) -> dict[str, Any]:
    """Runs the configured test command (no shell); endpoint and instance ids are in its environment."""
    from immudeploy.aws import packer_aws_settings
    from immudeploy.pipeline import staging_test_command
    from immudeploy.staging import run_staging_tests as run
    from immudeploy.staging import staging_test_environment

    deploy = _plan(plan)
    settings = packer_aws_settings(AWS_CONN_ID)
    aws_env = dict(settings.environment)
    if settings.ec2_endpoint:
        aws_env["AWS_ENDPOINT_URL"] = settings.ec2_endpoint
    env = staging_test_environment(
        endpoint=deploy.staging.endpoint,
        instance_ids=instance_ids,
        target_group_arn=deploy.staging.target_group_arn,
        app=deploy.app,
        environment=deploy.environment,
        version=deploy.version,
        aws=aws_env,
    )
    result = run(
        staging_test_command(deploy),
        environment=env,
        timeout_seconds=deploy.staging.test_timeout_seconds,
        log_line=lambda line: log.info("test: %s", line),
    )
    return {"returncode": result.returncode, "seconds": round(result.duration_seconds, 1)}


@task(trigger_rule=TriggerRule.ALL_DONE)
def teardown_staging(plan: dict[str, Any] | None) -> list[str]:
    """Always deletes the staging group this run made, whether the tests passed or not."""
    from immudeploy.pipeline import teardown_staging as teardown

    if not plan:  # the run failed before it planned anything
        return []
    return teardown(_clients(), _plan(plan))


def staging_phase(plan: Any, image_id: Any) -> tuple[list[Any], Any]:
    with TaskGroup("staging", tooltip="A staging group from the image and the test suite against it"):
        configured = staging_configured(plan, image_id)
        launched = launch_staging(plan, image_id)
        in_service = WaitForInServiceOperator(
            task_id="wait_in_service",
            group_name=launched["name"],
            aws_conn_id=AWS_CONN_ID,
            timeout_seconds=plan["in_service_timeout_seconds"],
            poll_interval=POLL_SECONDS,
        )
        healthy = HealthGateOperator(
            task_id="health_gate",
            target_group_arns=plan["staging_target_group_arns"],
            group_name=launched["name"],
            aws_conn_id=AWS_CONN_ID,
            timeout_seconds=plan["health_timeout_seconds"],
            poll_interval=POLL_SECONDS,
        )
        tests = run_staging_tests(plan, healthy.output)
        cleanup = teardown_staging(plan)
        configured >> launched >> in_service >> healthy >> tests >> cleanup
    return [launched, in_service, healthy, tests], tests


# --- publish, launch, cut over, drain, observe, tear down ---------------------------------------


@task(trigger_rule=TriggerRule.NONE_FAILED)
def publish_config(plan: dict[str, Any]) -> dict[str, Any]:
    """The release's runtime configuration in SSM under its own path, with a per-release cache key prefix."""
    from immudeploy.pipeline import publish_config as publish

    _phase_started()
    return publish(_clients(), _plan(plan))


@task(multiple_outputs=True)
def launch_fleet(plan: dict[str, Any], image_id: str) -> dict[str, Any]:
    """The new server group, sized like the live one, capacity pinned for the swap (not yet in the LB)."""
    from immudeploy.pipeline import launch_fleet as launch

    _phase_started()
    return launch(_clients(), _plan(plan), image_id)


@task(task_id="launch_fleet", multiple_outputs=True)
def bring_up_rollback_fleet(plan: dict[str, Any]) -> dict[str, Any]:
    """Scale the kept group back up, or launch a group from the previous version's image."""
    from immudeploy.pipeline import bring_up_rollback_fleet as bring_up

    _phase_started()
    return bring_up(_clients(), _plan(plan))


@task
def attach_fleet(plan: dict[str, Any], group_name: str) -> list[str]:
    """Registers the new group in the target groups beside the old one: both serve from here on."""
    from immudeploy.pipeline import attach_fleet as attach

    _phase_started()
    return attach(_clients(), _plan(plan), group_name)["target_group_arns"]


@task
def detach_old_fleet(plan: dict[str, Any], group_name: str) -> list[str]:
    """Takes the old group out of the target groups (refused if that leaves no healthy target)."""
    from immudeploy.pipeline import detach_old_fleet as detach

    _phase_started()
    return detach(_clients(), _plan(plan), group_name)


@task
def observe_window(plan: dict[str, Any], group_name: str) -> dict[str, Any]:
    """Watches target health and the configured alarms; the old group stays alive, detached, meanwhile."""
    from immudeploy.pipeline import observe

    _phase_started()
    return observe(_clients(), _plan(plan), group_name, poll_interval=POLL_SECONDS)


@task
def finish_swap(plan: dict[str, Any], group_name: str) -> dict[str, Any]:
    """The new group gets the old group's min and max back and autoscales normally again."""
    from immudeploy.pipeline import finish_swap as finish

    _phase_started()
    return finish(_clients(), _plan(plan), group_name)


@task
def retire_old_fleets(plan: dict[str, Any], group_name: str) -> dict[str, Any]:
    """Deletes old groups and their launch templates beyond the kept ones, and unused old images."""
    from immudeploy.pipeline import retire

    deploy = _plan(plan)
    # A rollback retires the bad fleet itself, whatever the retention.
    bad = [deploy.live_group["name"]] if deploy.rollback_mode and deploy.live_group else []
    return retire(_clients(), deploy, group_name, also_delete=bad)


def swap_phases(plan: Any, make_launch: Any) -> tuple[Any, list[Any], Any]:
    """Launch, cut over, drain, observe, tear down: shared by deploy and rollback.

    `make_launch()` creates the task that brings the new fleet up (its output has the group's name).
    """
    with TaskGroup("launch", tooltip="The new fleet, the same size as the live one"):
        launched = make_launch()
        group_name = launched["name"]
        in_service = WaitForInServiceOperator(
            task_id="wait_in_service",
            group_name=group_name,
            aws_conn_id=AWS_CONN_ID,
            timeout_seconds=plan["in_service_timeout_seconds"],
            poll_interval=POLL_SECONDS,
        )
    with TaskGroup("cutover", tooltip="Attach beside the old fleet, then the health gate"):
        attached = attach_fleet(plan, group_name)
        healthy = HealthGateOperator(
            task_id="health_gate",
            target_group_arns=plan["target_group_arns"],
            group_name=group_name,
            aws_conn_id=AWS_CONN_ID,
            timeout_seconds=plan["health_timeout_seconds"],
            poll_interval=POLL_SECONDS,
        )
        attached >> healthy
    with TaskGroup("drain", tooltip="Detach the old fleet and wait until its connections drained"):
        detached = detach_old_fleet(plan, group_name)
        drained = DrainSensor(
            task_id="wait_drained",
            target_group_arns=plan["target_group_arns"],
            instance_ids=detached,
            aws_conn_id=AWS_CONN_ID,
            timeout_seconds=plan["drain_timeout_seconds"],
            poll_interval=POLL_SECONDS,
        )
    with TaskGroup("observe", tooltip="Optional window: watch health and alarms before destroying"):
        observed = observe_window(plan, group_name)
    with TaskGroup("teardown", tooltip="Restore autoscaling, delete old groups and unused images"):
        finished = finish_swap(plan, group_name)
        retired = retire_old_fleets(plan, group_name)
        finished >> retired
    launched >> in_service >> attached
    healthy >> detached
    drained >> observed >> finished
    # Failures up to the end of the observation window are undone; after it the release stands.
    steps = [launched, in_service, attached, healthy, detached, drained, observed]
    return launched, steps, retired


# --- end of run ----------------------------------------------------------------------------------


@task(trigger_rule=TriggerRule.ONE_FAILED, retries=3, retry_delay=DEFAULT_ARGS["retry_delay"])
def undo_on_failure() -> list[str]:
    """Runs only when a step failed: traffic back to the old group, then what the run made is removed."""
    from immudeploy.pipeline import undo_failed_run

    context = get_current_context()
    plan = context["ti"].xcom_pull(task_ids="prepare")
    if not plan:
        return ["the run failed before it changed anything"]
    return undo_failed_run(_clients(), _plan(plan), poll_interval=min(POLL_SECONDS, 5.0))


@task
def summary(
    plan: dict[str, Any], image_id: str, launched: dict[str, Any], retired: dict[str, Any]
) -> dict[str, Any]:
    """What was deployed, which group replaced which, and the time per phase (also in this log)."""
    from immudeploy.pipeline import phase_durations, summarize

    ti = get_current_context()["ti"]
    starts = {
        phase: ti.xcom_pull(task_ids=task_id, key="started_at")
        for phase, task_id in PHASE_FIRST_TASKS.items()
    }
    result = summarize(_plan(plan), image_id, launched, phase_durations(starts), retired)
    for line in result["markdown"].splitlines():
        log.info("%s", line)
    return result


# --- nightly -------------------------------------------------------------------------------------


def nightly_timetable() -> Any:
    """Every opted-in target's cron schedule (read from the small config file; no AWS at parse time)."""
    from airflow.sdk import MultipleCronTriggerTimetable

    from immudeploy.config import load_config
    from immudeploy.pipeline import nightly_schedules

    schedules = nightly_schedules(load_config())
    if not schedules:
        return None
    return MultipleCronTriggerTimetable(*schedules, timezone="UTC")


@task
def plan_nightly() -> list[dict[str, str]]:
    """Tonight's rebuilds: opted-in targets whose schedule is due, each at its live version."""
    from immudeploy.config import load_config
    from immudeploy.pipeline import nightly_targets

    context = get_current_context()
    dag_run = context["dag_run"]
    scheduled = str(getattr(dag_run, "run_type", "")).endswith("scheduled")
    due_at = context.get("logical_date") if scheduled else None
    only = context["params"].get("targets") or None
    confs = nightly_targets(_clients(), load_config(), due_at, only)
    for conf in confs:
        log.info(
            "Rebuilding %s/%s at %s on the newest base image",
            conf["app"],
            conf["environment"],
            conf["version"],
        )
    if not confs:
        log.info("No target is due for a nightly rebuild")
    return confs
