"""The DAG files: import cleanly and fast, have the documented shape, and every DAG has docs and retries."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DAG_IDS = {"immutable_deploy", "immutable_rollback", "immutable_nightly_rebuild", "immutable_janitor"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(REPO / "dags"))
    elapsed = time.perf_counter() - started
    print(f"\nDagBag parse of {len(bag.dag_ids)} DAGs: {elapsed:.2f} s")
    for path, seconds in sorted(
        (s.file, s.duration.total_seconds()) for s in getattr(bag, "dagbag_stats", [])
    ):
        print(f"  {Path(path).name}: {seconds:.2f} s")
    return bag


def test_no_import_errors_and_exactly_the_four_dags(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == DAG_IDS


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_every_dag_has_docs_tags_owner_and_retries(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.doc_md and len(dag.doc_md) > 200
    assert "immutable" in dag.tags
    for task in dag.tasks:
        assert task.owner == "platform", task.task_id
        # Every step retries, except the ones whose retry would repeat an outcome, not fix it.
        assert task.retries >= 0
    assert dag.default_args["retry_exponential_backoff"] is True


def test_deploy_dag_reads_like_the_release(dagbag) -> None:
    dag = dagbag.dags["immutable_deploy"]
    groups = {task.task_id.split(".")[0] for task in dag.tasks if "." in task.task_id}
    assert groups == {"bake", "staging", "launch", "cutover", "drain", "observe", "teardown"}
    order = [
        "prepare",
        "bake.bake_image",
        # The configuration is published before anything boots from the image, staging included.
        "publish_config",
        "staging.launch_staging",
        "staging.run_staging_tests",
        "launch.launch_fleet",
        "launch.wait_in_service",
        "cutover.attach_fleet",
        "cutover.health_gate",
        "drain.detach_old_fleet",
        "drain.wait_drained",
        "observe.observe_window",
        "teardown.finish_swap",
        "teardown.retire_old_fleets",
        "summary",
    ]
    for earlier, later in itertools.pairwise(order):
        assert later in dag.get_task(earlier).get_flat_relative_ids(upstream=False), (earlier, later)
    assert set(dag.params.keys()) == {
        "app",
        "environment",
        "version",
        "ami_id",
        "git_sha",
        "expect_live_version",
        "expect_live_group",
    }
    for name, param in dag.params.items():
        assert param.description, name
    # The trigger form offers the configured apps and environments as choices.
    assert dag.params.get_param("app").schema["enum"] == ["shop"]
    assert dag.params.get_param("environment").schema["enum"] == ["prod"]
    # Undo, the staging cleanup and the lock release run however the run ends (teardowns), and undo
    # is downstream of every step whose failure it undoes.
    undo = dag.get_task("undo_on_failure")
    assert undo.is_teardown and dag.get_task("staging.teardown_staging").is_teardown
    assert dag.get_task("release_lock").is_teardown
    for step in (
        "bake.bake_image",
        "staging.run_staging_tests",
        "publish_config",
        "cutover.health_gate",
        "observe.observe_window",
    ):
        assert step in undo.upstream_task_ids, step
    assert "teardown.retire_old_fleets" not in undo.upstream_task_ids


def test_rollback_dag_reuses_the_swap_phases(dagbag) -> None:
    dag = dagbag.dags["immutable_rollback"]
    assert "bake.bake_image" not in dag.task_ids  # never rebakes
    for task_id in (
        "launch.launch_fleet",
        "cutover.health_gate",
        "drain.wait_drained",
        "teardown.retire_old_fleets",
    ):
        assert task_id in dag.task_ids
    assert set(dag.params.keys()) == {"app", "environment", "to_version"}


def test_nightly_dag_is_scheduled_from_the_configuration_and_triggers_deploys(dagbag) -> None:
    dag = dagbag.dags["immutable_nightly_rebuild"]
    assert [t.expression for t in dag.timetable.timetables] == ["0 3 * * *"]
    deploy = dag.get_task("deploy")
    assert (
        deploy.partial_kwargs.get("trigger_dag_id", getattr(deploy, "trigger_dag_id", None))
        == "immutable_deploy"
    )
