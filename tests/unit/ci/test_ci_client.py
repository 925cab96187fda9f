"""immudeploy-ci: credentials handling, and its output against a tiny fake Airflow over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from immudeploy_ci import client as ci_client
from immudeploy_ci.api import (
    EXIT_REFUSED,
    EXIT_RUN_FAILED,
    EXIT_SUCCESS,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    CiError,
    format_log_content,
    read_credentials_file,
    resolve_credentials,
)
from immudeploy_ci.client import build_parser, main, state_change_line

RUN_ID = "manual__2026-01-01T00:00:00+00:00"
PASSWORD = "s3cret-pass"
TOKEN = "token-123"


@dataclass
class FakeAirflow:
    """Airflow's REST API as far as the client uses it; each GET of the run advances one snapshot."""

    snapshots: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    paused: bool = False
    reject_conf: str | None = None
    logs: dict[str, list[Any]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    step: int = 0

    def snapshot(self) -> tuple[str, dict[str, str]]:
        return self.snapshots[min(self.step, len(self.snapshots) - 1)]

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if path == "/auth/token" and method == "POST":
            if body == {"username": "ci", "password": PASSWORD}:
                return 201, {"access_token": TOKEN}
            return 401, {"detail": "Invalid credentials"}
        dag = "/api/v2/dags/immutable_deploy"
        if path == dag:
            return 200, {"dag_id": "immutable_deploy", "is_paused": self.paused}
        if path == f"{dag}/dagRuns" and method == "POST":
            if self.reject_conf:
                return 400, {"detail": self.reject_conf}
            return 200, {"dag_run_id": RUN_ID, "state": "queued"}
        run = f"{dag}/dagRuns/{RUN_ID}"
        if path == run:
            state, _ = self.snapshot()
            self.step += 1
            return 200, {"dag_run_id": RUN_ID, "state": state}
        if path == f"{run}/taskInstances":
            _, tasks = self.snapshot()
            tis = [
                {"task_id": task, "state": state, "try_number": 1, "map_index": -1, "start_date": None}
                for task, state in tasks.items()
            ]
            return 200, {"task_instances": tis, "total_entries": len(tis)}
        if path.startswith(f"{run}/taskInstances/") and "/logs/" in path:
            task = path.split("/taskInstances/")[1].split("/logs/")[0]
            return 200, {"content": self.logs.get(task, []), "continuation_token": None}
        if path == f"{run}/taskInstances/summary/xcomEntries/return_value" and self.summary:
            return 200, {"key": "return_value", "value": self.summary}
        return 404, {"detail": "Not Found"}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAirflow

    def _serve(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        path = unquote(url.path)
        self.fake.requests.append((method, path, dict(self.headers), body))
        if path != "/auth/token" and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            status, payload = 401, {"detail": "Not authenticated"}
        else:
            status, payload = self.fake.handle(method, path, parse_qs(url.query), body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_airflow() -> Iterator[tuple[FakeAirflow, str]]:
    fake = FakeAirflow()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def env_for(url: str) -> dict[str, str]:
    return {
        "IMMUDEPLOY_AIRFLOW_URL": url,
        "IMMUDEPLOY_AIRFLOW_USERNAME": "ci",
        "IMMUDEPLOY_AIRFLOW_PASSWORD": PASSWORD,
    }


DEPLOY = ["deploy", "--app", "shop", "--environment", "prod", "--version", "2.0.0", "--poll-interval", "0.01"]


# --- arguments and credentials --------------------------------------------------------------------


def test_no_flag_takes_a_password_or_token() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    options = [
        option
        for sub in subparsers.choices.values()
        for action in sub._actions
        for option in action.option_strings
    ]
    assert "--credentials-file" in options
    assert not [o for o in options if "password" in o or "token" in o or "secret" in o]
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*DEPLOY, "--password", "x"])
    assert exit_info.value.code == 2


def write_file(tmp_path: Path, name: str, text: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_credentials_file_readable_by_others_is_refused(tmp_path: Path, capsys: Any) -> None:
    path = write_file(
        tmp_path, "creds.json", json.dumps({"url": "http://x", "username": "ci", "password": PASSWORD}), 0o644
    )
    with pytest.raises(CiError) as error:
        read_credentials_file(path)
    assert error.value.exit_code == EXIT_REFUSED
    assert "0644" in str(error.value) and f"chmod 600 {path}" in str(error.value)
    assert main([*DEPLOY, "--credentials-file", str(path)], environ={}) == EXIT_REFUSED
    assert "chmod 600" in capsys.readouterr().err


def test_credentials_file_json_and_ini(tmp_path: Path) -> None:
    json_file = write_file(
        tmp_path, "c.json", json.dumps({"url": "http://a:1/", "username": "ci", "password": PASSWORD}), 0o600
    )
    ini_file = write_file(tmp_path, "c.ini", "[airflow]\nurl = https://b\ntoken = abc\n", 0o400)
    from_json = resolve_credentials(None, str(json_file), {})
    assert (from_json.url, from_json.username, from_json.password) == ("http://a:1", "ci", PASSWORD)
    from_ini = resolve_credentials(None, str(ini_file), {})
    assert (from_ini.url, from_ini.token, from_ini.password) == ("https://b", "abc", None)
    # --url wins over the file's address; the secret never shows in a repr.
    assert resolve_credentials("http://c", str(ini_file), {}).url == "http://c"
    assert "abc" not in repr(from_ini) and PASSWORD not in repr(from_json)
    # An address-only file may be world-readable.
    assert read_credentials_file(write_file(tmp_path, "u.json", '{"url": "http://d"}', 0o644)) == {
        "url": "http://d"
    }


def test_credentials_file_with_unknown_key_is_refused(tmp_path: Path) -> None:
    path = write_file(tmp_path, "c.json", json.dumps({"url": "http://a", "passwd": "x"}), 0o600)
    with pytest.raises(CiError, match="unknown key 'passwd'"):
        read_credentials_file(path)


def test_credentials_from_environment() -> None:
    token_env = {"IMMUDEPLOY_AIRFLOW_URL": "http://a", "IMMUDEPLOY_AIRFLOW_TOKEN": "t", **env_for("http://a")}
    assert resolve_credentials(None, None, token_env).token == "t"
    assert resolve_credentials(None, None, env_for("http://a")).password == PASSWORD
    with pytest.raises(CiError, match="IMMUDEPLOY_AIRFLOW_TOKEN") as error:
        resolve_credentials(None, None, {"IMMUDEPLOY_AIRFLOW_URL": "http://a"})
    assert error.value.exit_code == EXIT_REFUSED
    with pytest.raises(CiError, match="no Airflow address"):
        resolve_credentials(None, None, {"IMMUDEPLOY_AIRFLOW_TOKEN": "t"})
    with pytest.raises(CiError, match="http:// or https://"):
        resolve_credentials("ftp://a", None, {"IMMUDEPLOY_AIRFLOW_TOKEN": "t"})


# --- output formatting ----------------------------------------------------------------------------------


def test_state_change_line() -> None:
    line = state_change_line(12.34, "bake.bake_image", "queued", "running", 1)
    assert line.split() == ["12.3s", "bake.bake_image", "queued", "->", "running"]
    assert state_change_line(1, "prepare", None, "running", 2).endswith("- -> running (try 2)")


def test_format_log_content_drops_sources_and_shows_the_exception() -> None:
    content = [
        {"event": "::group::Log message source details"},
        {"event": "/airflow/logs/dag_id=x/attempt=1.log"},
        {"event": "::endgroup::"},
        {"timestamp": "2026-01-01T10:11:12.5Z", "event": "Baking", "level": "info"},
        {
            "timestamp": "2026-01-01T10:11:13Z",
            "event": "Task failed with exception",
            "level": "error",
            "error_detail": [
                {
                    "exc_type": "BakeError",
                    "exc_value": "packer exited 1",
                    "frames": [{"filename": "/p/bake.py", "lineno": 7, "name": "execute"}],
                }
            ],
        },
        "plain line one\nplain line two",
    ]
    assert format_log_content(content) == [
        "10:11:12 INFO Baking",
        "10:11:13 ERROR Task failed with exception",
        "    BakeError: packer exited 1",
        "      at /p/bake.py:7 in execute",
        "plain line one",
        "plain line two",
    ]


# --- against the fake Airflow ----------------------------------------------------------------------------


def test_deploy_success_prints_each_change_once_and_the_summary(fake_airflow: Any, capsys: Any) -> None:
    fake, url = fake_airflow
    fake.snapshots = [
        ("queued", {"prepare": None}),
        ("running", {"prepare": "running"}),
        ("running", {"prepare": "running"}),
        ("running", {"prepare": "success", "bake.bake_image": "queued"}),
        ("running", {"prepare": "success", "bake.bake_image": "running"}),
        ("success", {"prepare": "success", "bake.bake_image": "success"}),
    ]
    fake.summary = {"markdown": "### shop/prod now runs 2.0.0", "server_group": "shop-prod-v002"}
    code = main(DEPLOY, environ=env_for(url))
    out = capsys.readouterr().out
    assert code == EXIT_SUCCESS, out
    changes = [line.split()[1:] for line in out.splitlines() if "->" in line]
    assert changes == [
        ["prepare", "-", "->", "running"],
        # Changes seen in one poll come in start order, then by name.
        ["bake.bake_image", "-", "->", "queued"],
        ["prepare", "running", "->", "success"],
        ["bake.bake_image", "queued", "->", "running"],
        ["bake.bake_image", "running", "->", "success"],
    ]
    assert f"run {RUN_ID}: success" in out
    assert "### shop/prod now runs 2.0.0" in out
    assert f"{url}/dags/immutable_deploy/runs/" in out
    trigger = next(body for method, path, _, body in fake.requests if method == "POST" and "dagRuns" in path)
    assert trigger["logical_date"] is None and "logical_date" in trigger
    assert trigger["conf"] == {"app": "shop", "environment": "prod", "version": "2.0.0"}
    assert PASSWORD not in out


def test_failed_run_names_the_task_and_shows_its_log_tail(fake_airflow: Any, capsys: Any) -> None:
    fake, url = fake_airflow
    fake.snapshots = [
        ("running", {"prepare": "success", "bake.bake_image": "running"}),
        ("failed", {"prepare": "success", "bake.bake_image": "failed", "summary": "upstream_failed"}),
    ]
    fake.logs["bake.bake_image"] = [
        {"event": "::group::Log message source details"},
        {"event": "/logs/attempt=1.log"},
        {"event": "::endgroup::"},
        *({"event": f"packer line {n}", "level": "info"} for n in range(100)),
        {"event": "Task failed with exception", "level": "error"},
    ]
    code = main([*DEPLOY, "--ami-id", "ami-0123456789abcdef0"], environ=env_for(url))
    out = capsys.readouterr().out
    assert code == EXIT_RUN_FAILED
    assert "FAILED: bake.bake_image (try 1)" in out
    assert "packer line 99" in out and "ERROR Task failed with exception" in out
    assert "packer line 10\n" not in out  # only the tail
    assert "/logs/attempt=1.log" not in out
    assert "failed: bake.bake_image" in out.splitlines()[-1]
    trigger = next(body for method, path, _, body in fake.requests if method == "POST" and "dagRuns" in path)
    assert trigger["conf"]["ami_id"] == "ami-0123456789abcdef0"


def test_rejected_conf_prints_airflows_reason_and_exits_2(fake_airflow: Any, capsys: Any) -> None:
    fake, url = fake_airflow
    fake.reject_conf = "Invalid input for param version: '1.0; rm' does not match"
    code = main(
        ["deploy", "--app", "shop", "--environment", "prod", "--version", "1.0; rm"], environ=env_for(url)
    )
    assert code == EXIT_REFUSED
    assert "Invalid input for param version" in capsys.readouterr().err


def test_timeout_exits_3_and_says_what_it_waits_on(fake_airflow: Any, capsys: Any) -> None:
    fake, url = fake_airflow
    fake.snapshots = [("running", {"prepare": "success", "drain.wait_drained": "deferred"})]
    code = main([*DEPLOY, "--timeout", "0.2"], environ=env_for(url))
    err = capsys.readouterr().err
    assert code == EXIT_TIMEOUT
    assert "timed out after 0 s" in err and "drain.wait_drained" in err and "goes on in Airflow" in err


def test_paused_dag_is_refused_before_triggering(fake_airflow: Any, capsys: Any) -> None:
    fake, url = fake_airflow
    fake.paused = True
    assert main(DEPLOY, environ=env_for(url)) == EXIT_REFUSED
    assert "is paused" in capsys.readouterr().err
    assert not [r for r in fake.requests if r[0] == "POST" and "dagRuns" in r[1]]


def test_wrong_password_exits_4(fake_airflow: Any, capsys: Any) -> None:
    _, url = fake_airflow
    code = main(DEPLOY, environ={**env_for(url), "IMMUDEPLOY_AIRFLOW_PASSWORD": "wrong"})
    assert code == EXIT_UNREACHABLE
    assert "refused the login of 'ci'" in capsys.readouterr().err


def test_unreachable_airflow_exits_4(capsys: Any) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(DEPLOY, environ=env_for(f"http://127.0.0.1:{port}")) == EXIT_UNREACHABLE
    assert "cannot reach Airflow" in capsys.readouterr().err


def test_rollback_triggers_the_rollback_dag() -> None:
    args = build_parser().parse_args(
        ["rollback", "--app", "shop", "--environment", "prod", "--to-version", "1.0.0"]
    )
    assert ci_client.conf_from_args(args) == (
        "immutable_rollback",
        {"app": "shop", "environment": "prod", "to_version": "1.0.0"},
    )
