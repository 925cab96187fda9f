"""immutable_rollback: swap back to the kept previous group, or redeploy the previous image."""

from __future__ import annotations

from airflow.sdk import DAG

from immudeploy.airflow.params import DEFAULT_ARGS, rollback_params
from immudeploy.airflow.phases import swap_phases
from immudeploy.airflow.tasks import (
    bring_up_rollback_fleet,
    prepare_rollback,
    release_lock,
    summary,
    undo_phase,
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

Trigger with `app`, `environment` (optionally `to_version`). The target comes from the deploy
record of this app and environment (the releases that reached serving): without `to_version`, the
release before the live one; with it, that version's latest entry (the recorded versions are in the
`prepare` log and `immudeploy-ci rollback --list`). Never an image of another environment.

- Its group still kept (disabled): scaled back to the live size if needed, attached, health-gated;
  then the current group is detached, drained and deleted.
- Otherwise: that release's image is deployed through the same phases, without a rebake.

The bad fleet is always retired, whatever the retention setting. A failure undoes the rollback.
""",
):
    plan = prepare_rollback()
    launched, swap_steps, retired, finished = swap_phases(plan, lambda: bring_up_rollback_fleet(plan))
    done = summary(plan, None, launched, finished, retired)
    unlock = release_lock()

    undo = undo_phase(swap_steps)
    [done, undo] >> unlock.as_teardown()
