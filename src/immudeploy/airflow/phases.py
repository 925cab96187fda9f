"""The task groups a DAG reads as: bake, staging, launch, cutover, drain, observe, teardown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.sdk import TaskGroup

from immudeploy.airflow.operators.bake import BakeImageOperator
from immudeploy.airflow.operators.waits import DrainSensor, HealthGateOperator, WaitForInServiceOperator
from immudeploy.airflow.params import AWS_CONN_ID, POLL_SECONDS
from immudeploy.airflow.tasks import (
    attach_fleet,
    detach_old_fleet,
    finish_swap,
    launch_staging,
    observe_window,
    record_release,
    retire_old_fleets,
    run_staging_tests,
    staging_configured,
    teardown_staging,
)


def bake_phase(plan: Any) -> Any:
    with TaskGroup("bake", tooltip="Bake the release image with Packer, or reuse the identical one"):
        bake = BakeImageOperator(
            task_id="bake_image",
            plan=plan,
            aws_conn_id=AWS_CONN_ID,
            doc_md="Runs Packer (its output streams into this log) unless an image of this app, "
            "version and template content exists already, or the run names an `ami_id`.",
        )
    return bake


def staging_phase(plan: Any, image_id: Any) -> tuple[list[Any], Any]:
    with TaskGroup("staging", tooltip="A staging group from the image and the test suite against it"):
        configured = staging_configured(plan, image_id)
        launched = launch_staging(plan, image_id)
        in_service = WaitForInServiceOperator(
            task_id="wait_in_service",
            group_name=launched,
            plan=plan,
            aws_conn_id=AWS_CONN_ID,
            poll_interval=POLL_SECONDS,
        )
        healthy = HealthGateOperator(
            task_id="health_gate",
            group_name=launched,
            plan=plan,
            staging=True,
            aws_conn_id=AWS_CONN_ID,
            poll_interval=POLL_SECONDS,
        )
        tests = run_staging_tests(plan, healthy.output)
        cleanup = teardown_staging(plan)
        # A teardown: the staging group goes however the run ends, also when it is marked failed.
        configured >> launched >> in_service >> healthy >> tests >> cleanup.as_teardown()
    return [launched, in_service, healthy, tests], tests


def swap_phases(plan: Any, make_launch: Callable[[], Any]) -> tuple[Any, list[Any], Any, Any]:
    """Launch, cut over, drain, observe, tear down: shared by deploy and rollback.

    `make_launch()` creates the task that brings the new fleet up (its output is the group's name).
    Returns the launch task, the steps a failure undoes, the retire task and the finish task.
    """
    with TaskGroup("launch", tooltip="The new fleet, the same size as the live one"):
        group_name = make_launch()
        in_service = WaitForInServiceOperator(
            task_id="wait_in_service",
            group_name=group_name,
            plan=plan,
            aws_conn_id=AWS_CONN_ID,
            poll_interval=POLL_SECONDS,
        )
    with TaskGroup("cutover", tooltip="Attach beside the old fleet, then the health gate"):
        attached = attach_fleet(plan, group_name)
        healthy = HealthGateOperator(
            task_id="health_gate",
            group_name=group_name,
            plan=plan,
            aws_conn_id=AWS_CONN_ID,
            poll_interval=POLL_SECONDS,
        )
        attached >> healthy
    with TaskGroup("drain", tooltip="Detach the old fleet and wait until its connections drained"):
        detached = detach_old_fleet(plan, group_name)
        drained = DrainSensor(
            task_id="wait_drained",
            instance_ids=detached,
            plan=plan,
            aws_conn_id=AWS_CONN_ID,
            poll_interval=POLL_SECONDS,
        )
    with TaskGroup("observe", tooltip="Optional window: watch health and alarms before destroying"):
        observed = observe_window(plan, group_name)
    with TaskGroup(
        "teardown", tooltip="Record the release, restore autoscaling, delete old groups and images"
    ):
        # Recorded once the release stands, after the observation window rather than right after the
        # drain: a release the window rejects is undone, and an entry is what a later rollback goes
        # back to and what image retention keeps. Beside finish_swap, not before it: a record that
        # cannot be written must not leave the new group pinned. Before retire: retention reads it.
        recorded = record_release(plan, group_name)
        finished = finish_swap(plan, group_name)
        retired = retire_old_fleets(plan, group_name)
        [recorded, finished] >> retired
    group_name >> in_service >> attached
    healthy >> detached
    drained >> observed >> [recorded, finished]
    # Failures up to the end of the observation window are undone; after it the release stands.
    steps = [group_name, in_service, attached, healthy, detached, drained, observed]
    return group_name, steps, retired, finished
