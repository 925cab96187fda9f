"""immutable_janitor: retire expired kept groups and remove what dead runs and killed bakes left behind."""

from __future__ import annotations

import os

from airflow.sdk import DAG, Param

from immudeploy.airflow.janitor_tasks import (
    apply_image_retention,
    janitor_summary,
    remove_abandoned_staging,
    remove_packer_leftovers,
    retire_expired_groups,
    scale_down_zero_kept,
)
from immudeploy.airflow.params import DEFAULT_ARGS

with DAG(
    dag_id="immutable_janitor",
    schedule=os.environ.get("IMMUDEPLOY_JANITOR_SCHEDULE", "*/15 * * * *"),
    default_args=DEFAULT_ARGS,
    catchup=False,
    max_active_runs=1,
    tags=["immutable", "janitor"],
    is_paused_upon_creation=False,
    params={
        "dry_run": Param(
            False, type="boolean", description="List what each phase would remove; delete nothing."
        )
    },
    doc_md=__doc__
    + """

Scheduled by `IMMUDEPLOY_JANITOR_SCHEDULE` (cron, default every 15 minutes) and triggerable by hand
(`dry_run: true` lists what it would remove). Each phase is a task; each per-target phase takes the
app/environment lock of the target it cleans and skips, saying so, a target another live run holds.

- `retire_expired_groups`: kept groups past their `immutable:expires-at` (`keep_for_minutes`), deleted
  like a deploy's retirement; never a group attached to a target group or with a target registered.
- `scale_down_zero_kept`: kept groups of `kept_capacity: zero` environments that have a size, to 0.
- `remove_abandoned_staging`: staging groups and launch templates of runs that are no longer running.
- `remove_packer_leftovers`: build instances, `packer_*` key pairs and security groups older than the
  longest bake timeout.
- `apply_image_retention`: images beyond `keep_images` that no group, template or record needs.
- `janitor_summary`: what was removed per app and environment, and the instance-hours of retired kept groups.
""",
):
    janitor_summary(
        retire_expired_groups(),
        scale_down_zero_kept(),
        remove_abandoned_staging(),
        remove_packer_leftovers(),
        apply_image_retention(),
    )
