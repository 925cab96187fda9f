"""immudeploy-ci rollback --list: the deploy record read from the newest successful run's XCom."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from immudeploy_ci.api import EXIT_SUCCESS
from immudeploy_ci.client import RECORD_TASK_ID, main
from unit.ci.test_ci_client import FakeAirflow, _Handler, env_for

ENTRY = {
    "version": "1.4.0",
    "image_id": "ami-0123456789abcdef0",
    "group": "shop-prod-v004",
    "kind": "rollback",
    "rolled_back_from_version": "1.5.0",
    "rolled_back_from_group": "shop-prod-v003",
    "git_sha": "abc1234",
    "recorded_at": "2026-01-02T00:00:00+00:00",
    "run_id": "manual__rb",
}
OLDER = {**ENTRY, "version": "1.5.0", "kind": "deploy", "group": "shop-prod-v003", "run_id": "manual__d"}


class RecordAirflow(FakeAirflow):
    """Successful runs of both DAGs, of two apps; the rollback of shop/prod finished last."""

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        runs = {
            "immutable_deploy": [
                {
                    "dag_run_id": "manual__other",
                    "conf": {"app": "blog", "environment": "prod"},
                    "end_date": "2026-01-03",
                },
                {
                    "dag_run_id": "manual__d",
                    "conf": {"app": "shop", "environment": "prod"},
                    "end_date": "2026-01-01",
                },
            ],
            "immutable_rollback": [
                {
                    "dag_run_id": "manual__rb",
                    "conf": {"app": "shop", "environment": "prod"},
                    "end_date": "2026-01-02",
                },
            ],
        }
        for dag_id, dag_runs in runs.items():
            if path == f"/api/v2/dags/{dag_id}/dagRuns" and method == "GET":
                assert query["state"] == ["success"] and query["order_by"] == ["-end_date"]
                return 200, {"dag_runs": dag_runs, "total_entries": len(dag_runs)}
        if (
            path
            == f"/api/v2/dags/immutable_rollback/dagRuns/manual__rb/taskInstances/{RECORD_TASK_ID}/xcomEntries/return_value"
        ):
            return 200, {"key": "return_value", "value": {"recorded": ENTRY, "history": [ENTRY, OLDER]}}
        return super().handle(method, path, query, body)  # the login


@pytest.fixture
def record_airflow() -> Iterator[tuple[RecordAirflow, str]]:
    fake = RecordAirflow()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"fake": fake}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_list_prints_the_newest_record_of_the_target_and_triggers_nothing(
    record_airflow: Any, capsys: Any
) -> None:
    fake, url = record_airflow

    code = main(["rollback", "--app", "shop", "--environment", "prod", "--list"], environ=env_for(url))

    out = capsys.readouterr().out
    assert code == EXIT_SUCCESS
    lines = out.splitlines()
    assert "deploy record of shop/prod" in lines[0]
    assert (
        "1.4.0" in lines[1]
        and "rollback from 1.5.0 (shop-prod-v003)" in lines[1]
        and "git abc1234" in lines[1]
    )
    assert "1.5.0" in lines[2] and "deploy" in lines[2]
    assert not [r for r in fake.requests if r[0] == "POST" and "dagRuns" in r[1]]


def test_list_without_a_recorded_run_says_so(record_airflow: Any, capsys: Any) -> None:
    _, url = record_airflow

    code = main(["rollback", "--app", "shop", "--environment", "qa", "--list"], environ=env_for(url))

    assert code == EXIT_SUCCESS
    assert "no deploy record of shop/qa" in capsys.readouterr().out
