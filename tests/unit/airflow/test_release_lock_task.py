"""The `release_lock` teardown frees the target even when `prepare` died after taking the lock."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from immudeploy.airflow import locking, tasks
from immudeploy.aws.lock import LockHolder, acquire_lock, current_holder

RUN = LockHolder("immutable_deploy", "manual__prepare-was-killed")


def _context(plan: dict[str, Any] | None, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "ti": SimpleNamespace(xcom_pull=lambda task_ids: plan),
        "params": params,
        "dag": SimpleNamespace(dag_id=RUN.dag_id),
        "run_id": RUN.run_id,
    }


@pytest.fixture
def in_task(monkeypatch: pytest.MonkeyPatch) -> Any:
    def enter(context: dict[str, Any]) -> None:
        monkeypatch.setattr(tasks, "get_current_context", lambda: context)
        monkeypatch.setattr(locking, "get_current_context", lambda: context)

    return enter


def test_a_lock_taken_by_a_prepare_that_died_before_returning_its_plan_is_released(
    aws: Any, in_task: Any
) -> None:
    dynamodb = aws.client("dynamodb")
    acquire_lock(dynamodb, "shop", "prod", RUN, wait_seconds=0, poll_interval=1, stale_after_seconds=300)
    # No plan in XCom (prepare was SIGKILLed after the lock): the target comes from the run's conf.
    in_task(_context(None, {"app": "shop", "environment": "prod", "version": "1.0.0"}))
    assert tasks.release_lock.function() is True
    assert current_holder(dynamodb, "shop", "prod") is None


def test_it_never_releases_another_runs_lock_and_ignores_an_invalid_conf(aws: Any, in_task: Any) -> None:
    dynamodb = aws.client("dynamodb")
    other = LockHolder("immutable_rollback", "manual__other")
    acquire_lock(dynamodb, "shop", "prod", other, wait_seconds=0, poll_interval=1, stale_after_seconds=300)
    in_task(_context(None, {"app": "shop", "environment": "prod"}))
    assert tasks.release_lock.function() is False
    in_task(_context(None, {"app": "Shop; rm -rf /", "environment": "prod"}))
    assert tasks.release_lock.function() is False
    holder = current_holder(dynamodb, "shop", "prod")
    assert holder is not None and holder.same_run(other)
