"""The Airflow tasks the three DAGs are built from; the work itself is in immudeploy.release."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from airflow.sdk import TriggerRule, get_current_context, task

from immudeploy.airflow.params import AWS_CONN_ID, DEFAULT_ARGS, POLL_SECONDS
from immudeploy.airflow.xcom import plan_to_xcom

log = logging.getLogger(__name__)

# The phases of a run in the order the grid shows them; the summary times each from its tasks.
PHASES = (
    "prepare",
    "bake",
    "staging",
    "publish_config",
    "launch",
    "cutover",
    "drain",
    "observe",
    "teardown",
)

F = TypeVar("F", bound=Callable[..., Any])

# Entries of the deploy record a record_release task returns (and `immudeploy-ci rollback --list` shows).
RECORD_SHOWN = 20


def fails_at_once_on_bad_input(function: F) -> F:
    """Bad conf or configuration is not fixed by a retry: fail the task without retrying."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from immudeploy.core.errors import InvalidInput

        try:
            return function(*args, **kwargs)
        except InvalidInput as error:
            raise AirflowFailException(f"Invalid input: {error}") from error

    return wrapper  # type: ignore[return-value]


def _clients() -> Any:
    from immudeploy.aws.connection import AwsClients

    return AwsClients(AWS_CONN_ID)


def _plan(plan: dict[str, Any]) -> Any:
    from immudeploy.airflow.xcom import plan_from_xcom

    return plan_from_xcom(plan)


@contextlib.contextmanager
def _locked(plan: dict[str, Any]) -> Iterator[Any]:
    """The clients for a mutating step, run only while this run holds the app/environment lock."""
    from immudeploy.airflow.locking import holding_lock

    clients = _clients()
    with holding_lock(clients, plan["app"], plan["environment"]):
        yield clients


def _plan_under_lock(app: str, environment: str, make_plan: Any) -> dict[str, Any]:
    """Take the app/environment lock, then plan; a plan that fails gives the lock back."""
    from immudeploy.airflow.locking import give_back_lock, take_lock

    clients = _clients()
    take_lock(clients, app, environment)
    try:
        plan = make_plan(clients)
    except BaseException:
        give_back_lock(clients, app, environment)
        raise
    for note in plan.notes:
        log.info("%s", note)
    return plan_to_xcom(plan)


@task(multiple_outputs=False)
@fails_at_once_on_bad_input
def prepare() -> dict[str, Any]:
    """Check the run's conf, take the app/environment lock, read the live group and plan the run.

    A nightly rebuild whose target was deployed since it looked is skipped, and so is the rest of
    the run: nothing changed, and the lock is already given back.
    """
    from airflow.sdk.exceptions import AirflowSkipException

    from immudeploy.core.config import load_config
    from immudeploy.release.deploy import plan_deploy, validate_deploy_params
    from immudeploy.release.nightly import LiveChanged

    context = get_current_context()
    checked = validate_deploy_params(dict(context["params"]))
    try:
        return _plan_under_lock(
            checked["app"],
            checked["environment"],
            lambda clients: plan_deploy(
                clients, load_config(), checked, context["dag"].dag_id, context["run_id"]
            ),
        )
    except LiveChanged as changed:
        raise AirflowSkipException(f"{checked['app']}/{checked['environment']}: {changed}") from changed


@task(task_id="prepare", multiple_outputs=False)
@fails_at_once_on_bad_input
def prepare_rollback() -> dict[str, Any]:
    """Check the conf, take the lock, choose: swap back to a kept group, or redeploy the previous image."""
    from immudeploy.core.config import load_config
    from immudeploy.core.naming import validate_app, validate_environment
    from immudeploy.release.rollback import plan_rollback

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
    from immudeploy.airflow.locking import give_back_lock
    from immudeploy.core.errors import InvalidInput
    from immudeploy.core.naming import validate_app, validate_environment

    context = get_current_context()
    plan = context["ti"].xcom_pull(task_ids="prepare") or {}
    try:
        # prepare may have died after taking the lock and before it returned the plan.
        app = validate_app(plan.get("app") or context["params"].get("app"))
        environment = validate_environment(plan.get("environment") or context["params"].get("environment"))
    except InvalidInput:
        return False  # the conf was invalid: prepare took no lock
    return give_back_lock(_clients(), app, environment)


# --- bake ----------------------------------------------------------------------------------------


# --- staging -------------------------------------------------------------------------------------


@task.short_circuit(ignore_downstream_trigger_rules=False)
def staging_configured(plan: dict[str, Any], image_id: str) -> bool:
    """Skips the staging tasks for an environment without a staging section (after the bake)."""
    return _plan(plan).staging is not None


@task
@fails_at_once_on_bad_input
def launch_staging(plan: dict[str, Any], image_id: str) -> str | None:
    """A staging group of the image, registered only in the staging target group."""
    from immudeploy.release.deploy import launch_staging as launch

    with _locked(plan) as clients:
        group = launch(clients, _plan(plan), image_id)
    return group.name if group else None


@task(multiple_outputs=False)
@fails_at_once_on_bad_input
def run_staging_tests(plan: dict[str, Any], instance_ids: list[str]) -> dict[str, Any]:
    """Runs the configured test command (no shell); endpoint and instance ids are in its environment."""
    from immudeploy.aws.connection import packer_aws_settings
    from immudeploy.release.deploy import staging_test_command
    from immudeploy.release.staging import run_staging_tests as run
    from immudeploy.release.staging import staging_test_environment

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
    from immudeploy.release.deploy import teardown_staging as teardown

    if not plan:  # the run failed before it planned anything
        return []
    with _locked(plan) as clients:
        return teardown(clients, _plan(plan))


# --- publish, launch, cut over, drain, observe, tear down ---------------------------------------


@task(trigger_rule=TriggerRule.NONE_FAILED, multiple_outputs=False)
@fails_at_once_on_bad_input
def publish_config(plan: dict[str, Any]) -> dict[str, Any]:
    """The release's runtime configuration in SSM under its own path, with a per-release cache key prefix."""
    from immudeploy.release.deploy import publish_config as publish

    with _locked(plan) as clients:
        return publish(clients, _plan(plan))


@task
@fails_at_once_on_bad_input
def launch_fleet(plan: dict[str, Any], image_id: str) -> str:
    """The new server group, sized like the live one, capacity pinned for the swap (not yet in the LB)."""
    from immudeploy.release.deploy import launch_fleet as launch

    with _locked(plan) as clients:
        return launch(clients, _plan(plan), image_id).name


@task(task_id="launch_fleet")
@fails_at_once_on_bad_input
def bring_up_rollback_fleet(plan: dict[str, Any]) -> str:
    """Scale the kept group back up, or launch a group from the previous version's image."""
    from immudeploy.release.rollback import bring_up_rollback_fleet as bring_up

    with _locked(plan) as clients:
        return bring_up(clients, _plan(plan)).name


@task
@fails_at_once_on_bad_input
def attach_fleet(plan: dict[str, Any], group_name: str) -> list[str]:
    """Registers the new group in the target groups beside the old one: both serve from here on."""
    from immudeploy.release.deploy import attach_fleet as attach

    with _locked(plan) as clients:
        return attach(clients, _plan(plan), group_name).target_group_arns


@task
@fails_at_once_on_bad_input
def detach_old_fleet(plan: dict[str, Any], group_name: str) -> list[str]:
    """Takes the old group out of the target groups (refused if that leaves no healthy target)."""
    from immudeploy.release.deploy import detach_old_fleet as detach

    with _locked(plan) as clients:
        return detach(clients, _plan(plan), group_name)


@task(multiple_outputs=False)
@fails_at_once_on_bad_input
def observe_window(plan: dict[str, Any], group_name: str) -> dict[str, Any]:
    """Watches target health and the configured alarms; the old group stays alive, detached, meanwhile."""
    from immudeploy.release.deploy import observe

    return observe(_clients(), _plan(plan), group_name, poll_interval=POLL_SECONDS)


@task(multiple_outputs=False)
@fails_at_once_on_bad_input
def finish_swap(plan: dict[str, Any], group_name: str) -> dict[str, int]:
    """The new group gets the old group's min and max back and autoscales normally again."""
    from immudeploy.airflow.xcom import capacity_to_xcom
    from immudeploy.release.deploy import finish_swap as finish

    with _locked(plan) as clients:
        return capacity_to_xcom(finish(clients, _plan(plan), group_name).capacity)


@task(multiple_outputs=False)
@fails_at_once_on_bad_input
def record_release(plan: dict[str, Any], group_name: str) -> dict[str, Any]:
    """Writes the release that now serves (or the rollback and what it left) into the deploy record.

    Returns the entry and the target's recent record (what `immudeploy-ci rollback --list` prints).
    """
    from immudeploy.aws.deploy_record import record_served_release, release_history

    deploy = _plan(plan)
    with _locked(plan) as clients:
        entry = record_served_release(clients, deploy, group_name)
        history = release_history(clients.dynamodb, deploy.app, deploy.environment, limit=RECORD_SHOWN)
    return {"recorded": entry.to_json(), "history": [release.to_json() for release in history]}


@task(multiple_outputs=False)
@fails_at_once_on_bad_input
def retire_old_fleets(plan: dict[str, Any], group_name: str) -> dict[str, Any]:
    """Deletes old groups and their launch templates beyond the kept ones, and unused old images."""
    from immudeploy.release.deploy import retire

    deploy = _plan(plan)
    # A rollback retires the bad fleet itself, whatever the retention.
    bad = [deploy.live.name] if deploy.rollback_mode and deploy.live else []
    with _locked(plan) as clients:
        return retire(clients, deploy, group_name, also_delete=bad)


# --- end of run ----------------------------------------------------------------------------------


# Retried more than the steps: undo is what puts traffic back where it was.
@task(retries=3, retry_delay=DEFAULT_ARGS["retry_delay"])
def undo_on_failure(step_task_ids: list[str]) -> list[str]:
    """Puts traffic back on the old group and removes what the run made, when one of the steps failed.

    A teardown (see `undo_phase`): it runs however the run ended, also when an operator marked the
    run failed in the UI (which fails a running step, skips a deferred or scheduled one and skips
    ordinary downstream tasks), and acts when a step failed or the run was marked failed.
    """
    from immudeploy.release.undo import undo_failed_run

    context = get_current_context()
    ti = context["ti"]
    run_id = context["run_id"]
    dag_id = context["dag"].dag_id
    states = ti.get_task_states(dag_id=dag_id, run_ids=[run_id]).get(run_id, {})
    failed = sorted(
        task_id for task_id in step_task_ids if states.get(task_id) in ("failed", "upstream_failed")
    )
    # Marked failed by an operator: a step that was deferred or scheduled then is skipped, not failed,
    # but the run is failed already (a run that failed on its own is still running while undo runs).
    marked_failed = ti.get_dr_count(dag_id=dag_id, run_ids=[run_id], states=["failed"]) > 0
    if not failed and not marked_failed:
        return ["no step failed: nothing to undo"]
    log.info("Undoing the run: %s", f"failed steps {', '.join(failed)}" if failed else "it was marked failed")
    plan = ti.xcom_pull(task_ids="prepare")
    if not plan:
        return ["the run failed before it changed anything"]
    with _locked(plan) as clients:
        return undo_failed_run(clients, _plan(plan), poll_interval=min(POLL_SECONDS, 5.0))


def undo_phase(steps: list[Any]) -> Any:
    """undo_on_failure downstream of every step a failure of which it undoes, as a teardown task."""
    ids = [step.operator.task_id if hasattr(step, "operator") else step.task_id for step in steps]
    undo = undo_on_failure(ids)
    steps >> undo
    return undo.as_teardown()


@task(multiple_outputs=False)
def summary(
    plan: dict[str, Any],
    image_id: str | None,
    group_name: str,
    capacity: dict[str, int],
    retired: dict[str, Any],
) -> dict[str, Any]:
    """What was deployed, which group replaced which, and the time per phase (also in this log)."""
    from immudeploy.release.summary import phase_seconds, summarize

    context = get_current_context()
    # The task instances' own durations, as Airflow recorded them (finished tasks of this run).
    crumbs = context["ti"].get_task_breadcrumbs(context["dag"].dag_id, context["run_id"])
    durations = {crumb["task_id"]: crumb.get("duration") for crumb in crumbs}
    timings = phase_seconds(durations, PHASES)
    deploy = _plan(plan)
    # A rollback bakes nothing: its image is the one the plan chose.
    image = image_id or deploy.ami_id or ""
    result = summarize(
        deploy,
        image,
        group_name,
        int(capacity["desired"]),
        timings,
        retired,
        _deploy_cost(deploy, group_name),
    )
    for line in result["markdown"].splitlines():
        log.info("%s", line)
    return result


def _deploy_cost(deploy: Any, group_name: str) -> dict[str, Any]:
    """Instance-minutes the run added, read from EC2; a read that fails is reported, not fatal."""
    from immudeploy.release.summary import measure_deploy_cost

    try:
        return measure_deploy_cost(_clients(), deploy, group_name)
    except Exception as error:
        log.warning("Could not measure what the deploy cost: %s", error)
        return {"error": str(error)}


# --- nightly -------------------------------------------------------------------------------------


def nightly_timetable() -> Any:
    """Every opted-in target's cron schedule (read from the small config file; no AWS at parse time)."""
    from airflow.sdk import MultipleCronTriggerTimetable

    from immudeploy.core.config import load_config
    from immudeploy.release.nightly import nightly_schedules

    schedules = nightly_schedules(load_config())
    if not schedules:
        return None
    return MultipleCronTriggerTimetable(*schedules, timezone="UTC")


@task
@fails_at_once_on_bad_input
def plan_nightly() -> list[dict[str, str]]:
    """Tonight's rebuilds: opted-in targets whose schedule is due, each at its live version."""
    from immudeploy.core.config import load_config
    from immudeploy.release.nightly import nightly_targets

    context = get_current_context()
    dag_run = context["dag_run"]
    scheduled = str(getattr(dag_run, "run_type", "")).endswith("scheduled")
    due_at = context.get("logical_date") if scheduled else None
    only = context["params"].get("targets") or None
    confs = nightly_targets(_clients(), load_config(), due_at, only)
    for conf in confs:
        log.info(
            "Rebuilding %s/%s at %s on the newest base image, if %s still serves it when the deploy starts",
            conf["app"],
            conf["environment"],
            conf["version"],
            conf["expect_live_group"],
        )
    if not confs:
        log.info("No target is due for a nightly rebuild")
    return confs
