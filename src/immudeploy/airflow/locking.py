"""The app/environment lock as the DAGs use it: taken by `prepare`, checked by every mutating task.

A task cleared in the UI ("clear task and downstream") runs again after its run released the lock;
`holding_lock` takes it back when it is free, and fails naming the holder when another live run
has it, before the task touches AWS. Liveness comes from Airflow itself: a run of this Airflow that
has finished and has no task left to run is dead, whatever its heartbeat says; a run that is still
running (a task deferred on a long drain included) is alive. Runs this Airflow does not know (another
installation) are judged by their heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from airflow.sdk import get_current_context

from immudeploy.aws.lock import LockHolder, LockKeeper, acquire_lock, hold_lock, release_lock

log = logging.getLogger(__name__)

# How long a run waits for another run of the same app and environment before it fails.
LOCK_WAIT_SECONDS = float(os.environ.get("IMMUDEPLOY_LOCK_WAIT_SECONDS", "1800"))
# A lock whose holder cannot be asked (another Airflow) is broken after this long without a heartbeat.
LOCK_STALE_SECONDS = float(os.environ.get("IMMUDEPLOY_LOCK_STALE_SECONDS", "300"))
# How often a running task refreshes the heartbeat (well under the stale time).
LOCK_HEARTBEAT_SECONDS = float(os.environ.get("IMMUDEPLOY_LOCK_HEARTBEAT_SECONDS", "30"))

# Task instance states in which a run still has work in progress or to come.
ACTIVE_TASK_STATES = frozenset(
    {"running", "queued", "scheduled", "deferred", "up_for_retry", "up_for_reschedule", "restarting"}
)


def this_run() -> LockHolder:
    context = get_current_context()
    return LockHolder(context["dag"].dag_id, context["run_id"])


def run_is_alive(holder: LockHolder) -> bool | None:
    """Whether the holder's Airflow run may still change AWS; None for a run this Airflow does not know."""
    ti = get_current_context()["ti"]
    try:
        if ti.get_dr_count(dag_id=holder.dag_id, run_ids=[holder.run_id]) == 0:
            return None
        if ti.get_dr_count(dag_id=holder.dag_id, run_ids=[holder.run_id], states=["queued", "running"]):
            return True
        # Finished (or marked failed), but its teardown tasks (undo) may still be running.
        states = ti.get_task_states(dag_id=holder.dag_id, run_ids=[holder.run_id]).get(holder.run_id, {})
    except Exception as error:  # the API server unreachable: fall back to the heartbeat
        log.warning("Could not ask Airflow about run %s of %s: %s", holder.run_id, holder.dag_id, error)
        return None
    return any(str(state) in ACTIVE_TASK_STATES for state in states.values())


def take_lock(clients: Any, app: str, environment: str) -> LockHolder:
    """`prepare`: wait for the lock of this app and environment, then hold it for the run."""
    return acquire_lock(
        clients.dynamodb,
        app,
        environment,
        this_run(),
        wait_seconds=LOCK_WAIT_SECONDS,
        poll_interval=5.0,
        stale_after_seconds=LOCK_STALE_SECONDS,
        is_alive=run_is_alive,
        log=log,
    )


@contextlib.contextmanager
def holding_lock(clients: Any, app: str, environment: str) -> Iterator[LockHolder]:
    """Around a mutating step: this run holds the lock (or the step fails), with a heartbeat meanwhile."""
    holder = hold_lock(
        clients.dynamodb,
        app,
        environment,
        this_run(),
        stale_after_seconds=LOCK_STALE_SECONDS,
        is_alive=run_is_alive,
        log=log,
    )
    with LockKeeper(
        clients.dynamodb, app, environment, holder, interval_seconds=LOCK_HEARTBEAT_SECONDS, log=log
    ):
        yield holder


def give_back_lock(clients: Any, app: str, environment: str) -> bool:
    return release_lock(clients.dynamodb, app, environment, this_run())
