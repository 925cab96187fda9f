"""immutable_rollback: swap back to the kept previous group, or redeploy the previous image."""

from __future__ import annotations

from airflow.sdk import DAG

from immudeploy.dag_tasks import (
    DEFAULT_ARGS,
    bring_up_rollback_fleet,
    prepare_rollback,
    release_lock,
    rollback_params,
    summary,
    swap_phases,
    undo_on_failure,
)

with DAG(
    dag_id="immutable_rollback",
    schedule=None,
    default_args=DEFAULT_ARGS,
    params=rollback_params(),
    tags=["immutable", "rollback"],
    is_paused_upon_creation=False,
    doc_md=__doc__
    + """

Trigger with `app`, `environment` (optionally `to_version`).

- With a kept (disabled) previous group: it is scaled back to the live size if needed, attached,
  health-gated; then the current group is detached, drained and deleted.
- Without one: the previous version's image is deployed through the same phases, without a rebake.

The bad fleet is always retired, whatever the retention setting. A failure undoes the rollback.
""",
):
    plan = prepare_rollback()
    launched, swap_steps, retired = swap_phases(plan, lambda: bring_up_rollback_fleet(plan))
    done = summary(plan, plan["ami_id"], launched, retired)
    undo = undo_on_failure()
    unlock = release_lock()

    swap_steps >> undo
    [done, undo] >> unlock.as_teardown()
