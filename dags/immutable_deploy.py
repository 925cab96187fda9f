"""immutable_deploy: bake, stage, launch beside the live fleet, cut over, drain, tear down."""

from __future__ import annotations

from airflow.sdk import DAG, TriggerRule

from immudeploy.airflow.params import DEFAULT_ARGS, deploy_params
from immudeploy.airflow.phases import bake_phase, staging_phase, swap_phases
from immudeploy.airflow.tasks import (
    launch_fleet,
    prepare,
    publish_config,
    release_lock,
    summary,
    undo_phase,
)

with DAG(
    dag_id="immutable_deploy",
    schedule=None,
    default_args=DEFAULT_ARGS,
    params=deploy_params(),
    tags=["immutable", "deploy"],
    is_paused_upon_creation=False,
    max_active_runs=8,
    doc_md=__doc__
    + """

Trigger with `app`, `environment`, `version` (optionally `ami_id` to skip the bake, `git_sha`).
One run at a time per app and environment, across all immutable_* DAGs.

1. **bake**: one image per app, version and template content (reused when it exists).
2. **publish_config**: runtime configuration to SSM Parameter Store under this deploy's own path
   (`{ssm_prefix}/releases/{version}/{deploy key}`), before anything boots from the image; paths
   no group uses any more are deleted.
3. **staging**: a staging group from the image; the configured test command runs against it; the
   staging group is always deleted.
4. **launch**: a new server group `{app}-{environment}-vNNN`, sized like the live one.
5. **cutover**: attached beside the old group; the health gate waits until every new target is healthy.
6. **drain**: the old group is detached; the drain sensor waits until its connections drained.
7. **observe**: optional window watching health and alarms; a failure swaps back.
8. **teardown**: autoscaling restored; old groups beyond the kept ones and unused images deleted.

A failure at any step runs **undo_on_failure**: traffic goes back to the old group before the new
one is removed, so no target group is left without a healthy target.
""",
):
    plan = prepare()
    bake = bake_phase(plan)
    # Before staging: a staging instance reads its configuration at boot like any other. Nothing
    # before it is skipped legitimately, so it needs all of them done (not the task's NONE_FAILED).
    published = publish_config.override(trigger_rule=TriggerRule.ALL_SUCCESS)(plan)
    staging_steps, staging_tests = staging_phase(plan, bake.output)
    launched, swap_steps, retired, finished = swap_phases(
        # Staging may be skipped (not configured); a failed staging or publish stops the launch.
        plan,
        lambda: launch_fleet.override(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)(
            plan, bake.output
        ),
    )
    done = summary(plan, bake.output, launched, finished, retired)
    unlock = release_lock()

    bake >> published >> staging_steps[0]
    [published, staging_tests] >> launched
    undo = undo_phase([bake, *staging_steps, published, *swap_steps])
    [done, undo] >> unlock.as_teardown()
