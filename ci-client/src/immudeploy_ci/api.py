"""Airflow's REST API as the CI client uses it: credentials, a token, the five calls it makes.

Plain HTTP (`requests`) rather than apache-airflow-client: five REST calls, and the generated client
pins its own dependency versions and lags the server's API. Credentials never come from a flag
(flags end up in CI logs and process lists): from the environment or a file readable by its owner.
"""

from __future__ import annotations

import configparser
import json
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

DEPLOY_DAG_ID = "immutable_deploy"
ROLLBACK_DAG_ID = "immutable_rollback"

EXIT_SUCCESS = 0
EXIT_RUN_FAILED = 1
EXIT_REFUSED = 2
EXIT_TIMEOUT = 3
EXIT_UNREACHABLE = 4

ENV_URL = "IMMUDEPLOY_AIRFLOW_URL"
ENV_USERNAME = "IMMUDEPLOY_AIRFLOW_USERNAME"
ENV_PASSWORD = "IMMUDEPLOY_AIRFLOW_PASSWORD"
ENV_TOKEN = "IMMUDEPLOY_AIRFLOW_TOKEN"
ENV_CREDENTIALS_FILE = "IMMUDEPLOY_AIRFLOW_CREDENTIALS_FILE"

# Seconds for one HTTP request; the overall wait is --timeout.
REQUEST_TIMEOUT = 30.0
# Polling survives this many failed polls in a row (an api-server restart, a proxy blip).
MAX_POLL_ERRORS = 5
LOG_TAIL_LINES = 40
FINISHED_RUN_STATES = {"success", "failed"}


class CiError(Exception):
    """Ends the command with `exit_code`; the message says what went wrong and what to do."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Credentials:
    url: str
    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Credentials(url={self.url!r}, username={self.username!r}, secret=***)"


def _refused(message: str) -> CiError:
    return CiError(message, EXIT_REFUSED)


def read_credentials_file(path: Path) -> dict[str, str]:
    """url/username/password/token from a JSON object or an INI file's [airflow] section.

    A file holding a password or token must not be readable or writable by group or others.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise _refused(f"cannot read the credentials file {path}: {error.strerror}") from None
    values: dict[str, str]
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise _refused(f"credentials file {path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise _refused(f"credentials file {path} must hold a JSON object")
        values = {k: v for k, v in data.items() if isinstance(v, str)}
    else:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text, source=str(path))
        except configparser.Error as error:
            raise _refused(f"credentials file {path} is neither JSON nor INI: {error}") from None
        if not parser.has_section("airflow"):
            raise _refused(f"credentials file {path} has no [airflow] section")
        values = dict(parser["airflow"])
    known = {"url", "username", "password", "token"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise _refused(
            f"credentials file {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    if (values.get("password") or values.get("token")) and stat.S_IMODE(mode) & 0o077:
        raise _refused(
            f"credentials file {path} holds a secret but its mode is {stat.S_IMODE(mode):04o}: "
            f"allow only its owner (chmod 600 {path})"
        )
    return values


def resolve_credentials(
    url_flag: str | None, credentials_file: str | None, environ: Mapping[str, str]
) -> Credentials:
    """The API address and secret: --url, then the file, then the environment for the address;
    the file (when given) or else the environment for the secret. A token wins over a password."""
    file_name = credentials_file or environ.get(ENV_CREDENTIALS_FILE)
    if file_name:
        source = read_credentials_file(Path(file_name))
        where = f"credentials file {file_name}"
    else:
        source = {
            "username": environ.get(ENV_USERNAME, ""),
            "password": environ.get(ENV_PASSWORD, ""),
            "token": environ.get(ENV_TOKEN, ""),
        }
        where = f"the environment ({ENV_TOKEN}, or {ENV_USERNAME} and {ENV_PASSWORD})"
    url = (url_flag or source.get("url") or environ.get(ENV_URL) or "").strip().rstrip("/")
    if not url:
        raise _refused(f"no Airflow address: set {ENV_URL}, --url, or `url` in the credentials file")
    if not url.startswith(("http://", "https://")):
        raise _refused(f"the Airflow address must start with http:// or https://, got {url!r}")
    token = (source.get("token") or "").strip() or None
    username = (source.get("username") or "").strip() or None
    password = source.get("password") or None
    if token:
        return Credentials(url=url, token=token)
    if username and password:
        return Credentials(url=url, username=username, password=password)
    raise _refused(f"no Airflow credentials in {where}")


def _detail(response: requests.Response) -> str:
    """Airflow's own reason from an error response (FastAPI `detail`), else the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # 422: pydantic errors
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    if isinstance(detail, dict):
        return json.dumps(detail)
    return str(detail)


class AirflowApi:
    """The few REST v2 calls this client needs, with a bearer token from /auth/token."""

    def __init__(self, credentials: Credentials, request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.credentials = credentials
        self.base = credentials.url
        self.request_timeout = request_timeout
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        self._token = credentials.token

    def login(self) -> None:
        if self.credentials.token:
            self._token = self.credentials.token
            return
        try:
            response = self.session.post(
                f"{self.base}/auth/token",
                json={"username": self.credentials.username, "password": self.credentials.password},
                timeout=self.request_timeout,
            )
        except requests.RequestException as error:
            raise CiError(f"cannot reach Airflow at {self.base}: {error}", EXIT_UNREACHABLE) from None
        if response.status_code not in (200, 201):
            raise CiError(
                f"Airflow refused the login of {self.credentials.username!r} "
                f"(HTTP {response.status_code}: {_detail(response)})",
                EXIT_UNREACHABLE,
            )
        self._token = response.json()["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One call; a 401 with a password at hand logs in again once (the token may have expired)."""
        if self._token is None:
            self.login()
        for attempt in (1, 2):
            try:
                response = self.session.request(
                    method,
                    f"{self.base}{path}",
                    headers={"Authorization": f"Bearer {self._token}"},
                    timeout=self.request_timeout,
                    **kwargs,
                )
            except requests.RequestException as error:
                raise CiError(f"cannot reach Airflow at {self.base}: {error}", EXIT_UNREACHABLE) from None
            if response.status_code == 401 and attempt == 1 and self.credentials.password:
                self.login()
                continue
            break
        if response.status_code == 401:
            raise CiError(
                f"Airflow refused the credentials (HTTP 401: {_detail(response)})", EXIT_UNREACHABLE
            )
        if response.status_code == 403:
            raise CiError(
                f"Airflow refused {method} {path}: the user may not do this (HTTP 403: {_detail(response)})",
                EXIT_REFUSED,
            )
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        response = self.request("GET", path, params=params or None)
        if response.status_code != 200:
            raise CiError(
                f"GET {path} answered HTTP {response.status_code}: {_detail(response)}", EXIT_UNREACHABLE
            )
        return response.json()

    # --- the calls -------------------------------------------------------------------------------

    @staticmethod
    def run_path(dag_id: str, run_id: str | None = None) -> str:
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
        return path if run_id is None else f"{path}/{quote(run_id, safe='')}"

    def check_dag(self, dag_id: str) -> None:
        """Refuses a DAG that does not exist or is paused: a run of it would never start."""
        response = self.request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}")
        if response.status_code == 404:
            raise _refused(
                f"DAG {dag_id} does not exist in Airflow at {self.base} "
                "(not parsed yet, or an import error: see Browse > Import errors in the UI)"
            )
        if response.status_code != 200:
            raise CiError(
                f"GET DAG {dag_id}: HTTP {response.status_code}: {_detail(response)}", EXIT_UNREACHABLE
            )
        if response.json().get("is_paused"):
            raise _refused(f"DAG {dag_id} is paused: a run would wait forever (unpause it in the UI first)")

    def trigger(self, dag_id: str, conf: Mapping[str, Any], note: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf)}
        if note:
            body["note"] = note
        response = self.request("POST", self.run_path(dag_id), json=body)
        if response.status_code in (400, 409, 422):
            raise _refused(f"Airflow refused the run of {dag_id}: {_detail(response)}")
        if response.status_code not in (200, 201):
            raise CiError(
                f"triggering {dag_id} answered HTTP {response.status_code}: {_detail(response)}",
                EXIT_UNREACHABLE,
            )
        return dict(response.json())

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.get_json(self.run_path(dag_id, run_id)))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.get_json(
                f"{self.run_path(dag_id, run_id)}/taskInstances", limit=100, offset=len(found)
            )
            found.extend(page["task_instances"])
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> list[str]:
        """The lines of one try's log (GET .../taskInstances/{task_id}/logs/{try_number})."""
        path = f"{self.run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}/logs/{try_number}"
        body = self.get_json(path, full_content="true", map_index=map_index)
        return format_log_content(body.get("content") or [])

    def successful_runs(self, dag_id: str, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """The DAG's successful runs, the most recently finished first, page by page."""
        offset = 0
        while True:
            page = self.get_json(
                self.run_path(dag_id), state="success", order_by="-end_date", limit=page_size, offset=offset
            )
            runs = page.get("dag_runs") or []
            yield from runs
            offset += len(runs)
            if not runs or offset >= page.get("total_entries", 0):
                return

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"{self.run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}/xcomEntries/{key}"
        response = self.request("GET", path, params={"deserialize": "true"})
        if response.status_code != 200:
            return None
        return response.json().get("value")


def format_log_content(content: list[Any]) -> list[str]:
    """Log lines from the API's content: structured messages (3.x task logs) or plain strings.

    Drops the "Log message source details" group (which file the log was read from) and the UI's
    folding markers; an exception is shown with its type, message and innermost frame.
    """
    lines: list[str] = []
    in_sources = False
    for item in content:
        if isinstance(item, str):
            lines.extend(item.splitlines())
            continue
        if not isinstance(item, dict):
            continue
        event = str(item.get("event", ""))
        if event == "::group::Log message source details":
            in_sources = True
            continue
        if event.startswith("::"):
            in_sources = False
            continue
        if in_sources or item.get("sources") is not None:
            continue
        stamp = str(item.get("timestamp") or "")[11:19]
        level = str(item.get("level") or "").upper()
        text = " ".join(part for part in (stamp, level, event) if part)
        lines.extend(text.splitlines() or [""])
        for error in item.get("error_detail") or []:
            if not isinstance(error, dict):
                continue
            lines.append(f"    {error.get('exc_type', '')}: {error.get('exc_value', '')}")
            frames = error.get("frames") or []
            if frames and isinstance(frames[-1], dict):
                frame = frames[-1]
                lines.append(f"      at {frame.get('filename')}:{frame.get('lineno')} in {frame.get('name')}")
    return lines


# --- following a run ---------------------------------------------------------------------------------
