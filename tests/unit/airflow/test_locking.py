"""Whether a lock holder's run is alive, as `holding_lock` asks Airflow about it."""

from __future__ import annotations

from typing import Any

import pytest

from immudeploy.airflow import locking
from immudeploy.aws.lock import LockHolder

HOLDER = LockHolder("immutable_deploy", "manual__holder")


class RunsInAirflow:
    """Answers the two Task SDK calls the way Airflow's API server does for the given runs."""

    def __init__(self, runs: dict[str, tuple[str, dict[str, str]]]) -> None:
        self.runs = runs  # run_id -> (run state, task states)

    def get_dr_count(self, dag_id: str, run_ids: list[str], states: list[str] | None = None) -> int:
        return sum(
            1
            for run_id in run_ids
            if run_id in self.runs and (states is None or self.runs[run_id][0] in states)
        )

    def get_task_states(self, dag_id: str, run_ids: list[str]) -> dict[str, Any]:
        return {run_id: self.runs[run_id][1] for run_id in run_ids if run_id in self.runs}


def _alive(monkeypatch: pytest.MonkeyPatch, runs: dict[str, tuple[str, dict[str, str]]]) -> bool | None:
    monkeypatch.setattr(locking, "get_current_context", lambda: {"ti": RunsInAirflow(runs)})
    return locking.run_is_alive(HOLDER)


@pytest.mark.parametrize(
    ("run_state", "task_states", "expected"),
    [
        ("running", {"launch.launch_fleet": "success"}, True),
        ("queued", {}, True),
        # Marked failed by an operator while its undo (a teardown) still runs: alive.
        ("failed", {"cutover.health_gate": "skipped", "undo_on_failure": "running"}, True),
        ("failed", {"undo_on_failure": "up_for_retry"}, True),
        # Finished, nothing left to run (its worker died, its undo gave up): dead.
        ("failed", {"undo_on_failure": "failed", "release_lock": "failed"}, False),
        ("success", {"summary": "success", "release_lock": "upstream_failed"}, False),
    ],
)
def test_a_run_is_alive_while_it_or_one_of_its_tasks_still_runs(
    monkeypatch: pytest.MonkeyPatch, run_state: str, task_states: dict[str, str], expected: bool
) -> None:
    assert _alive(monkeypatch, {HOLDER.run_id: (run_state, task_states)}) is expected


def test_a_run_this_airflow_does_not_know_is_judged_by_its_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _alive(monkeypatch, {"manual__other": ("running", {})}) is None


def test_an_unreachable_api_server_falls_back_to_the_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    class Down:
        def get_dr_count(self, **_: Any) -> int:
            raise ConnectionError("api server down")

    monkeypatch.setattr(locking, "get_current_context", lambda: {"ti": Down()})
    assert locking.run_is_alive(HOLDER) is None
