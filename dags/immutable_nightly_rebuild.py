"""immutable_nightly_rebuild: rebake each opted-in app's live version on the newest base image, deploy it."""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param

from immudeploy.airflow.params import DEFAULT_ARGS, POLL_SECONDS
from immudeploy.airflow.tasks import nightly_timetable, plan_nightly
from immudeploy.core.naming import TARGET_PATTERN

with DAG(
    dag_id="immutable_nightly_rebuild",
    schedule=nightly_timetable(),
    default_args=DEFAULT_ARGS,
    catchup=False,
    tags=["immutable", "nightly"],
    is_paused_upon_creation=False,
    max_active_runs=1,
    params={
        "targets": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "pattern": TARGET_PATTERN},
            description='Manual runs only: rebuild just these "app/environment" targets.',
        )
    },
    doc_md=__doc__
    + """

Scheduled from each opted-in environment's `nightly.schedule` (configuration file). For every target
that is due, it reads the live server group's version and triggers `immutable_deploy` for that same
version: the bake resolves the newest base image, so a new base means a new image; the release goes
through the same staging, cutover, drain and teardown phases, under the same per-target lock.
Each triggered run carries the live group and version seen here (`expect_live_group`,
`expect_live_version`); its `prepare`, under the lock, skips the run without changing anything if
another deploy has replaced them since.
""",
):
    TriggerDagRunOperator.partial(
        task_id="deploy",
        trigger_dag_id="immutable_deploy",
        wait_for_completion=True,
        poke_interval=max(int(POLL_SECONDS * 3), 5),
        deferrable=True,
        failed_states=["failed"],
    ).expand(conf=plan_nightly())
