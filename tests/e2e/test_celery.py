"""immutable_deploy on the CeleryExecutor: real PostgreSQL and Redis, every component its own process.

Two Celery workers, each with its own AIRFLOW_HOME, HOME, TMPDIR and working directory and its own
reported hostname, stand in for two machines: a run that succeeds with tasks on both shows that no task
relies on a file an earlier task left on a worker's disk. AWS is the stand-in (tests/conftest.py) with
AWS's timing at a small scale: instances boot for a few seconds and targets turn healthy only after
their health checks, so the waits find AWS's work in progress and defer to the triggerer.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY_DAG_ID = "immutable_deploy"
APP = "shop"
ENVIRONMENT = "prod"
VERSION = "1.0.0"
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
DEPLOYER = "deployer"
WORKERS = ("celery-worker-a", "celery-worker-b")

MIGRATE_TIMEOUT = 300.0
START_TIMEOUT = 180.0
RUN_TIMEOUT = 900.0
STOP_GRACE_SECONDS = 30.0
# Boot 60 s -> 3 s, the demo target groups' health checks 10 s -> 0.5 s, attach/detach 2 s -> 0.1 s.
TIME_SCALE = 0.05

T = TypeVar("T")

# The [core] hostname_callable of each worker: the name it reports as a task instance's hostname.
WORKER_IDENTITY_MODULE = '''\
"""Each test worker reports its own name as the task instance hostname (both run on one machine)."""
import os


def hostname() -> str:
    return os.environ["IMMUDEPLOY_TEST_WORKER_NAME"]
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
    """Polls `check` until it returns something other than None; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


# --- the REST API (also used by tests/test_compose.py) ------------------------------------------------


@dataclass
class AirflowRest:
    """The few calls of Airflow's public REST API a deploy needs, with a token of the simple auth manager."""

    base_url: str
    token: str = ""

    def login(self, username: str, password: str) -> None:
        response = requests.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        assert response.status_code == 201, response.text
        self.token = response.json()["access_token"]

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(
            f"{self.base_url}/api/v2{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def answers(self) -> bool | None:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{self.base_url}/api/v2/version", timeout=5).ok:
                return True
        return None

    def dag_parsed(self, dag_id: str) -> bool | None:
        response = self.get(f"/dags/{dag_id}")
        return True if response.status_code == 200 else None

    def import_errors(self) -> list[dict[str, Any]]:
        response = self.get("/importErrors")
        response.raise_for_status()
        return list(response.json()["import_errors"])

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        response = requests.post(
            f"{self.base_url}/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": conf},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return str(response.json()["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=1000)
        response.raise_for_status()
        return list(response.json()["task_instances"])

    def event_logs(self, dag_id: str, run_id: str, event: str) -> list[dict[str, Any]]:
        response = self.get("/eventLogs", dag_id=dag_id, run_id=run_id, event=event, limit=1000)
        response.raise_for_status()
        return list(response.json()["event_logs"])

    def downstream(self, dag_id: str) -> dict[str, list[str]]:
        response = self.get(f"/dags/{dag_id}/tasks")
        response.raise_for_status()
        return {task["task_id"]: list(task["downstream_task_ids"]) for task in response.json()["tasks"]}

    def follow_run(
        self, dag_id: str, run_id: str, timeout: float, say: Callable[[str], None], check: Callable[[], None]
    ) -> tuple[str, list[dict[str, Any]]]:
        """Waits until the run ends, saying each task's state change; `check` fails fast on a dead process."""
        started = time.monotonic()
        seen: dict[str, tuple[str, str]] = {}
        while True:
            check()
            state = self.run_state(dag_id, run_id)
            tasks = self.task_instances(dag_id, run_id)
            for ti in sorted(tasks, key=lambda t: (t.get("start_date") or "", t["task_id"])):
                now = (str(ti["state"]), str(ti.get("hostname") or "-"))
                if seen.get(ti["task_id"]) != now:
                    seen[ti["task_id"]] = now
                    if ti["state"] is not None:
                        say(
                            f"  {time.monotonic() - started:6.1f}s  {ti['task_id']:<32} {now[0]:<16} {now[1]}"
                        )
            if state in ("success", "failed"):
                return state, tasks
            if time.monotonic() - started > timeout:
                pytest.fail(f"run {run_id} still {state} after {timeout:.0f}s")
            time.sleep(2)


# --- processes ------------------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    """Processes started in their own sessions, stopped by process group (then any stray descendant)."""

    root: Path
    components: list[Component] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Component:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        component = Component(name, process, log)
        self.components.append(component)
        return component

    def check_alive(self) -> None:
        for component in self.components:
            if component.process.poll() is not None:
                pytest.fail(
                    f"{component.name} exited with {component.process.returncode}:\n{log_tail(component.log)}"
                )

    def stop(self) -> list[str]:
        """SIGTERM every group, wait, then SIGKILL what is left; returns what had to be killed."""
        import psutil

        family: list[psutil.Process] = []
        for component in self.components:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(component.process.pid)
                family += [parent, *parent.children(recursive=True)]
        for component in self.components:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for component in self.components:
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        killed = []
        for component in self.components:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.process.pid, signal.SIGKILL)
                killed.append(component.name)
            component.process.wait(timeout=10)
        _, alive = psutil.wait_procs(family, timeout=5)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
                killed.append(f"pid {process.pid}")
        psutil.wait_procs(alive, timeout=5)
        return killed


# --- PostgreSQL and Redis ---------------------------------------------------------------------------


def _postgres_admin() -> Any:
    import psycopg2

    connection = psycopg2.connect(dbname="postgres", connect_timeout=5, **POSTGRES)
    connection.autocommit = True
    return connection


@pytest.fixture
def metadata_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards (with any connection a stray process still holds)."""
    try:
        admin = _postgres_admin()
    except Exception as error:
        pytest.skip(f"no PostgreSQL on {POSTGRES['host']}:{POSTGRES['port']} (user postgres): {error}")
    name = f"immudeploy_celery_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    try:
        yield name
    finally:
        admin = _postgres_admin()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def broker_database() -> Iterator[int]:
    """An empty Redis database number, claimed with a marker key and flushed afterwards."""
    import redis

    marker = f"immudeploy:celery-test:{uuid.uuid4().hex}"
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5).ping()
    except redis.RedisError as error:
        pytest.skip(f"no Redis on {REDIS_HOST}:{REDIS_PORT}: {error}")
    for number in sorted(range(1, 16), key=lambda _: secrets.randbelow(1000)):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number, socket_timeout=5)
        if client.dbsize() == 0 and client.set(marker, "1", nx=True):
            if client.dbsize() == 1:
                break
            client.delete(marker)
    else:
        pytest.skip("no empty Redis database number among 1-15")
    try:
        yield number
    finally:
        client.flushdb()


# --- the test -----------------------------------------------------------------------------------------


def write_deploy_config(path: Path) -> Path:
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    app = config["apps"][APP]
    app["packer_template"] = str(REPO / "packer")
    app["environments"][ENVIRONMENT]["observation_minutes"] = 0
    # Only the run this test triggers: no scheduled nightly rebuild competing for the lock.
    app["environments"][ENVIRONMENT]["nightly"] = {"enabled": False}
    path.write_text(yaml.safe_dump(config))
    return path


def component_environment(
    root: Path, database: str, broker_db: int, api_port: int, aws_connection: str
) -> dict[str, str]:
    from cryptography.fernet import Fernet

    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({DEPLOYER: secrets.token_urlsafe(16)}))
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "IMMUDEPLOY_", "PYTEST_"))
    }
    sql = f"postgresql+psycopg2://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{database}"
    api_url = f"http://127.0.0.1:{api_port}"
    return {
        **inherited,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{inherited.get('PATH', '')}",
        "AIRFLOW_HOME": str(root / "airflow-home"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql,
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{broker_db}",
        # The driver named: SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3, not installed here.
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{sql}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        # Sending a task to Redis may take longer than 1 s while every component starts on 2 cores.
        "AIRFLOW__CELERY__OPERATION_TIMEOUT": "15",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": api_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{DEPLOYER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection,
        "IMMUDEPLOY_CONFIG": str(write_deploy_config(root / "deployments.yaml")),
        "IMMUDEPLOY_PACKER_DIR": str(REPO / "packer"),
        "IMMUDEPLOY_POLL_SECONDS": "1",
        # One retry, for Airflow 3.3.2's race only (checked after the run): a wait resumed from the
        # triggerer can be failed by the late executor event of its own deferral (apache/airflow#67287,
        # #72716); with timing, waits really defer. Supervisors waking every second keep that event
        # from coming up to 5 s late, which makes the race rare (see immudeploy_dev/components.py).
        "IMMUDEPLOY_RETRIES": "1",
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "IMMUDEPLOY_RETRY_DELAY_SECONDS": "1",
        "IMMUDEPLOY_LOCK_WAIT_SECONDS": "60",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def worker_environment(root: Path, base: dict[str, str], name: str) -> tuple[dict[str, str], Path]:
    """A worker's own home, temp and working directories, as if it were a machine of its own."""
    own = root / name
    for sub in ("airflow-home", "home", "tmp", "work"):
        (own / sub).mkdir(parents=True, exist_ok=True)
    env = {
        **base,
        "AIRFLOW_HOME": str(own / "airflow-home"),
        "HOME": str(own / "home"),
        "TMPDIR": str(own / "tmp"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "identity"), base.get("PYTHONPATH")])),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "immudeploy_test_worker_identity.hostname",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "IMMUDEPLOY_TEST_WORKER_NAME": name,
    }
    return env, own / "work"


@pytest.mark.slow
def test_deploy_runs_on_two_celery_workers(
    metadata_database: str,
    broker_database: int,
    aws: Any,
    demo_network: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    def say(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    began = time.monotonic()
    aws.standin.configure(time_scale=TIME_SCALE)
    # The stand-in is shared by the session: tests after this one get the instant pace back.
    request.addfinalizer(lambda: aws.standin.configure(time_scale=0.0))
    airflow = str(Path(sys.executable).parent / "airflow")
    api_port = free_port()
    env = component_environment(tmp_path, metadata_database, broker_database, api_port, aws.connection_json())
    (tmp_path / "identity").mkdir()
    (tmp_path / "identity" / "immudeploy_test_worker_identity.py").write_text(WORKER_IDENTITY_MODULE)
    say(f"\n[celery] database {metadata_database}, redis db {broker_database}, api port {api_port}")

    migrate = subprocess.run(
        [airflow, "db", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT,
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    say(f"[celery] db migrate: {time.monotonic() - began:.1f}s")

    stack = Stack(tmp_path)

    def stop() -> None:
        stopping = time.monotonic()
        killed = stack.stop()
        say(f"[celery] stopped in {time.monotonic() - stopping:.1f}s (had to kill: {killed or 'nothing'})")

    request.addfinalizer(stop)
    for command in ("api-server", "scheduler", "dag-processor", "triggerer"):
        stack.start(command, [airflow, command], env, tmp_path)
    worker_logs = []
    for name in WORKERS:
        worker_env, cwd = worker_environment(tmp_path, env, name)
        worker = stack.start(
            name,
            [airflow, "celery", "worker", "--concurrency", "2", "--celery-hostname", f"{name}@%h"],
            worker_env,
            cwd,
        )
        worker_logs.append(worker.log)

    api = AirflowRest(f"http://127.0.0.1:{api_port}")

    def alive_and(check: Callable[[], T | None]) -> Callable[[], T | None]:
        def checked() -> T | None:
            stack.check_alive()
            return check()

        return checked

    wait_for("the api-server", alive_and(api.answers), START_TIMEOUT)
    api.login(
        DEPLOYER,
        json.loads(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())[DEPLOYER],
    )
    for log in worker_logs:
        wait_for(
            f"the Celery worker logging to {log}",
            alive_and(lambda log=log: True if " ready." in log.read_text(errors="replace") else None),
            START_TIMEOUT,
        )
    wait_for(f"{DEPLOY_DAG_ID} to be parsed", alive_and(lambda: api.dag_parsed(DEPLOY_DAG_ID)), START_TIMEOUT)
    assert api.import_errors() == []
    say(f"[celery] stack ready: {time.monotonic() - began:.1f}s; triggering {APP}/{ENVIRONMENT} {VERSION}")

    triggered = time.monotonic()
    run_id = api.trigger(DEPLOY_DAG_ID, {"app": APP, "environment": ENVIRONMENT, "version": VERSION})
    state, tasks = api.follow_run(DEPLOY_DAG_ID, run_id, RUN_TIMEOUT, say, stack.check_alive)
    say(
        f"[celery] run {state} in {time.monotonic() - triggered:.1f}s; whole test {time.monotonic() - began:.1f}s"
    )

    states = {ti["task_id"]: ti["state"] for ti in tasks}
    if state != "success":
        # Task logs stay on the worker that ran the task, as they would on separate machines.
        for ti in tasks:
            if ti["state"] in ("failed", "up_for_retry"):
                for log in tmp_path.glob(
                    f"celery-worker-*/airflow-home/logs/**/task_id={ti['task_id']}/**/*.log"
                ):
                    say(f"--- {log}\n{log_tail(log)}")
    assert state == "success", states
    assert "failed" not in states.values() and "upstream_failed" not in states.values(), states
    # A task that needed its retry must have been hit by Airflow's race, logged as a state mismatch.
    retried = {ti["task_id"] for ti in tasks if ti["try_number"] > 1}
    if retried:
        mismatched = {e["task_id"] for e in api.event_logs(DEPLOY_DAG_ID, run_id, "state mismatch")}
        say(f"[celery] retried after Airflow's stale-event race: {sorted(retried)}")
        assert retried <= mismatched, f"retried without a state mismatch: {sorted(retried - mismatched)}"

    ran = {ti["task_id"]: ti["hostname"] for ti in tasks if ti["state"] == "success"}
    assert set(ran.values()) == set(WORKERS), ran
    # Some task read what its upstream produced on the other worker: only XCom and AWS carried it.
    crossings = [
        (upstream, downstream)
        for upstream, downstreams in api.downstream(DEPLOY_DAG_ID).items()
        for downstream in downstreams
        if upstream in ran and downstream in ran and ran[upstream] != ran[downstream]
    ]
    assert crossings, ran
    say(f"[celery] tasks per worker: { {w: sum(h == w for h in ran.values()) for w in WORKERS} }")

    groups = aws.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert [g["AutoScalingGroupName"] for g in groups] == [f"{APP}-{ENVIRONMENT}-v001"]
