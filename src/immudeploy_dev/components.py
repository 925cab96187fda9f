"""The local stack's components: the AWS stand-in's command line and timing, Airflow's airflow.cfg, each
component's environment, readiness."""

from __future__ import annotations

import configparser
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import requests

from immudeploy.core.config import REPO_ROOT
from immudeploy_ci.api import DEPLOY_DAG_ID, AirflowApi
from immudeploy_dev.demo import DEREGISTRATION_DELAY_SECONDS, HEALTH_CHECK_INTERVAL_SECONDS, HEALTHY_THRESHOLD
from immudeploy_dev.processes import (
    MARKER_VARIABLE,
    StackError,
    StackState,
    _alive,
    log_tail,
    wait_for,
    write_private,
)

REGION = "us-east-1"
DEPLOYER = "deployer"
VIEWER = "viewer"


def write_airflow_config(home: Path, api_url: str, api_port: int, passwords_file: Path) -> Path:
    """airflow.cfg for the stack (0600: it holds the JWT secret and the Fernet key)."""
    from cryptography.fernet import Fernet

    config = configparser.ConfigParser(interpolation=None)
    config["core"] = {
        "executor": "LocalExecutor",
        "parallelism": "4",
        "load_examples": "False",
        "dags_folder": str(REPO_ROOT / "dags"),
        "plugins_folder": str(REPO_ROOT / "plugins"),
        "auth_manager": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "simple_auth_manager_users": f"{DEPLOYER}:admin,{VIEWER}:viewer",
        "simple_auth_manager_passwords_file": str(passwords_file),
        "fernet_key": Fernet.generate_key().decode(),
        "execution_api_server_url": f"{api_url}/execution/",
    }
    config["database"] = {"sql_alchemy_conn": f"sqlite:///{home / 'airflow.db'}"}
    config["api"] = {
        "base_url": api_url,
        "host": "127.0.0.1",
        "port": str(api_port),
        "workers": "1",
        "secret_key": secrets.token_urlsafe(32),
    }
    config["api_auth"] = {"jwt_secret": secrets.token_urlsafe(32)}
    config["logging"] = {"base_log_folder": str(home / "logs")}
    # A task's supervisor notices its process exited only at its next wake-up, up to this many seconds
    # later (default 5); only then does the executor report the try. When a wait defers and its trigger
    # fires first, Airflow 3.3.2 fails the resumed try on that late report (apache/airflow#67287,
    # #72716): with the stand-in's timing the demo's waits defer for a few seconds, so wake up often.
    config["workers"] = {"min_heartbeat_interval": "1"}
    path = home / "airflow.cfg"
    lines: list[str] = []
    for section in config.sections():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in config[section].items())
        lines.append("")
    write_private(path, "\n".join(lines))
    return path


def component_environment(home: Path, aws_url: str, stack_id: str) -> dict[str, str]:
    """The components' environment: the caller's, minus any Airflow or AWS settings of its own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AWS_", "IMMUDEPLOY_"))
        and k not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")
    }
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"region_name": REGION, "endpoint_url": aws_url},
                }
            ),
            "IMMUDEPLOY_CONFIG": str(REPO_ROOT / "config" / "deployments.yaml"),
            # The stand-in's steps take a few seconds each: short polls and retry delays keep a
            # demo deploy around a minute.
            "IMMUDEPLOY_POLL_SECONDS": "2",
            "IMMUDEPLOY_RETRY_DELAY_SECONDS": "3",
            "IMMUDEPLOY_LOCK_WAIT_SECONDS": "600",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
            "PYTHONUNBUFFERED": "1",
            MARKER_VARIABLE: stack_id,
        }
    )
    return env


# --- waiting for the components -------------------------------------------------------------------------


def _check_alive(state: StackState) -> None:
    for process in state.processes:
        if not _alive(process):
            raise StackError(f"{process.name} exited; the end of {process.log}:\n{log_tail(process.log)}")


def api_health(api_url: str) -> dict[str, Any]:
    response = requests.get(f"{api_url}/api/v2/monitor/health", timeout=5)
    response.raise_for_status()
    return dict(response.json())


def wait_until_ready(state: StackState, api: AirflowApi, timeout: float) -> None:
    def api_answers() -> bool | None:
        _check_alive(state)
        return True if api_health(state.api_url)["metadatabase"]["status"] == "healthy" else None

    def components_heartbeat() -> bool | None:
        _check_alive(state)
        health = api_health(state.api_url)
        parts = [health.get(name) or {} for name in ("scheduler", "triggerer", "dag_processor")]
        return True if all(part.get("status") == "healthy" for part in parts) else None

    def dag_parsed() -> bool | None:
        _check_alive(state)
        errors = api.get_json("/api/v2/importErrors")["import_errors"]
        if errors:
            first = errors[0]
            raise StackError(
                f"the DAG folder has an import error in {first['filename']}:\n{first['stack_trace']}"
            )
        response = api.request("GET", f"/api/v2/dags/{DEPLOY_DAG_ID}")
        return True if response.status_code == 200 else None

    wait_for(f"the API at {state.api_url}", api_answers, timeout)
    wait_for("scheduler, triggerer and dag-processor heartbeats", components_heartbeat, timeout)
    wait_for(f"DAG {DEPLOY_DAG_ID} to be parsed", dag_parsed, timeout)


# --- AWS: the stand-in ---------------------------------------------------------------------------------

# The demo's AWS durations in AWS seconds; the stand-in multiplies each by the time scale. The demo target
# groups need 2 health checks 5 s apart (10 s) and have a 30 s deregistration delay (demo.py). AWS boots
# and deletes a group in about 60 s; the demo shortens both to 10 s so that at the default scale every
# step of a swap takes about 3 s: long enough to see both fleets serve and the old one drain, short
# enough for a demo of two deploys.
DEFAULT_TIME_SCALE = 0.3
# The stand-in's control API (immudeploy_dev.standin.control; not imported here: the package loads moto).
STANDIN_HEALTH_PATH = "/_standin/health"
STANDIN_BOOT_SECONDS = 10.0
STANDIN_GROUP_DELETE_SECONDS = 10.0
# A drain ends once the old targets' in-flight requests are done: after 40 % of the delay (12 s of 30 s).
STANDIN_DRAIN_FRACTION = 0.4


def standin_command(port: int, time_scale: float) -> list[str]:
    """`python -m immudeploy_dev.standin` with the demo's durations (lb sync: the stand-in's 2 s)."""
    return [
        sys.executable,
        "-m",
        "immudeploy_dev.standin",
        "--port",
        str(port),
        "--time-scale",
        repr(time_scale),
        "--boot-seconds",
        str(STANDIN_BOOT_SECONDS),
        "--group-delete-seconds",
        str(STANDIN_GROUP_DELETE_SECONDS),
        "--drain-fraction",
        str(STANDIN_DRAIN_FRACTION),
    ]


def describe_timing(time_scale: float | None) -> str:
    """Which AWS stand-in runs and at what pace, in wall-clock seconds for the demo."""
    if time_scale is None:
        return "plain moto: every change at once"
    if time_scale == 0:
        return "the stand-in at time scale 0: AWS's order of events, no waiting"
    health = HEALTH_CHECK_INTERVAL_SECONDS * HEALTHY_THRESHOLD * time_scale
    boot = STANDIN_BOOT_SECONDS * time_scale
    drain = DEREGISTRATION_DELAY_SECONDS * STANDIN_DRAIN_FRACTION * time_scale
    delay = DEREGISTRATION_DELAY_SECONDS * time_scale
    return (
        f"the stand-in at time scale {time_scale:g}: health checks {health:.1f} s, boot {boot:.1f} s, "
        f"drains {drain:.1f} s of a {delay:.1f} s deregistration delay"
    )


def standin_answers(aws_url: str) -> bool | None:
    response = requests.get(f"{aws_url}{STANDIN_HEALTH_PATH}", timeout=5)
    return True if response.ok else None
