"""docker-compose.yaml and the Dockerfile: a real compose parser, their fit with the project, and a deploy.

The deploy brings the whole compose stack up (local profile: moto instead of AWS) with testcontainers;
it needs a Docker engine and is skipped where `docker info` fails.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.test_celery import AirflowRest, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
ONE_SHOT_SERVICES = {"airflow-init", "moto-seed"}
LOCAL_PROFILE_SERVICES = {"moto", "moto-seed"}
PASSWORDS_IN_CONTAINER = "/opt/airflow/simple_auth_manager_passwords.json.generated"
# Variables the compose file reads from the caller's environment; cleared so defaults are what is tested.
COMPOSE_VARIABLES = (
    "IMMUDEPLOY_AWS_CONNECTION",
    "IMMUDEPLOY_AWS_CONN_ID",
    "IMMUDEPLOY_POLL_SECONDS",
    "IMMUDEPLOY_IMAGE",
    "AIRFLOW_API_PORT",
    "AIRFLOW_USERS",
    "POSTGRES_PASSWORD",
    "COMPOSE_PROFILES",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
)


def load_compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def pinned(requirements: list[str], name: str) -> str:
    for requirement in requirements:
        match = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([\w.]+)", requirement.strip())
        if match:
            return match.group(2)
    raise AssertionError(f"{name} is not pinned with == in {requirements}")


# --- the Dockerfile, read the way Docker reads it (enough of it for these checks) -----------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    workdir: str
    user: str


def dockerfile_instructions() -> list[Instruction]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    workdir, user = "/", "root"
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, arguments.strip())
        elif keyword == "USER":
            user = arguments.strip()
        instructions.append(Instruction(keyword, arguments.strip(), workdir, user))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction in dockerfile_instructions():
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_copies() -> list[tuple[Path, str]]:
    """(source in the repository, destination in the image) for every COPY; a directory copies its content."""
    copies = []
    for instruction in dockerfile_instructions():
        if instruction.keyword != "COPY":
            continue
        words = [w for w in shlex.split(instruction.arguments) if not w.startswith("--")]
        *sources, destination = words
        target = posixpath.join(instruction.workdir, destination)
        for source in sources:
            path = REPO / source
            if path.is_dir() or destination.endswith("/") or len(sources) > 1:
                into = target if path.is_dir() else posixpath.join(target, path.name)
            else:
                into = target
            copies.append((path, posixpath.normpath(into)))
    return copies


def dockerignored(relative: str) -> bool:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(candidate.split("/")[-1], pattern[3:])
            ):
                return True
    return False


def repo_path_in_image(image_path: str) -> Path | None:
    """The repository file or directory the Dockerfile copies to `image_path`, if any."""
    found = None
    for source, destination in dockerfile_copies():
        if source.is_dir() and (image_path == destination or image_path.startswith(destination + "/")):
            found = source / posixpath.relpath(image_path, destination)
        elif not source.is_dir() and image_path == destination:
            found = source
    if found is not None and dockerignored(found.relative_to(REPO).as_posix()):
        return None
    return found


# --- a real compose parser ------------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) if it works, else Debian's `docker-compose` (v1); neither needs an engine."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture
def compose() -> Iterator[Any]:
    command = compose_command()
    if command is None:
        pytest.skip(
            "no compose parser: neither `docker compose` (plugin) nor `docker-compose` is installed "
            "(Debian: apt-get install --no-install-recommends docker-compose)"
        )
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}

    def run(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), *args],
            cwd=REPO,
            env={**env, **variables},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{command} {args}: {result.stderr}"
        return result

    yield run


def test_compose_file_is_valid_for_a_real_parser(compose: Any) -> None:
    compose("config", "-q")
    compose("--profile", "local", "config", "-q")


def test_compose_variables_have_safe_defaults_and_overrides(compose: Any) -> None:
    services = yaml.safe_load(compose("config").stdout)["services"]
    worker = services["airflow-worker"]["environment"]
    # No keys in the default connection: credentials only from the host's role.
    assert worker["AIRFLOW_CONN_AWS_DEFAULT"] == "aws://?region_name=us-east-1"
    assert worker["IMMUDEPLOY_AWS_CONN_ID"] == "aws_default"

    local = yaml.safe_load(
        compose(
            "--profile", "local", "config", IMMUDEPLOY_AWS_CONN_ID="aws_local", AIRFLOW_API_PORT="18080"
        ).stdout
    )["services"]
    for name in AIRFLOW_SERVICES:
        assert local[name]["environment"]["IMMUDEPLOY_AWS_CONN_ID"] == "aws_local", name
    assert "18080" in str(local["airflow-apiserver"]["ports"])
    assert local["airflow-worker"]["environment"]["AIRFLOW__API__BASE_URL"] == "http://localhost:18080"


# --- the compose file against the project -------------------------------------------------------------


def test_every_airflow_service_is_built_from_the_common_anchor() -> None:
    root = yaml.compose(COMPOSE_FILE.read_text())
    top = {key.value: value for key, value in root.value}
    common_node = top["x-airflow-common"]
    services = {key.value: value for key, value in top["services"].value}
    for name in [*AIRFLOW_SERVICES, "airflow-init", "moto-seed"]:
        merged = [value for key, value in services[name].value if key.value == "<<"]
        assert merged and merged[0] is common_node, f"{name} does not merge <<: *airflow-common"

    compose = load_compose()
    common = compose["x-airflow-common"]
    assert common["build"] == "."
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        service = compose["services"][name]
        assert service["image"] == common["image"] and service["build"] == common["build"], name
        for key, value in common["environment"].items():
            assert service["environment"][key] == value, (name, key)


def test_services_have_healthchecks_and_start_in_order() -> None:
    services = load_compose()["services"]
    assert {"postgres", "redis", "airflow-init", *AIRFLOW_SERVICES} <= services.keys()
    for name in ["postgres", "redis", *AIRFLOW_SERVICES, "moto"]:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command, name
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"

    init = services["airflow-init"]
    assert "airflow db migrate" in " ".join(init["command"])
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" not in init and init["restart"] == "no"

    api_check = " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    assert "http://localhost:8080/api/v2/version" in api_check
    assert "8080" in str(services["airflow-apiserver"]["ports"])
    assert "http://localhost:8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])


def test_celery_executor_with_postgres_and_redis() -> None:
    compose = load_compose()
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    # Every component must agree on the JWT secret and fernet key: one airflow.cfg on a shared volume.
    assert env["AIRFLOW_CONFIG"].startswith("/opt/airflow/config/")
    assert "airflow-config:/opt/airflow/config" in compose["x-airflow-common"]["volumes"]


def test_immudeploy_paths_point_at_what_the_dockerfile_copies() -> None:
    env = load_compose()["x-airflow-common"]["environment"]
    image_env = dockerfile_env()
    for name in ("IMMUDEPLOY_CONFIG", "IMMUDEPLOY_PACKER_DIR"):
        assert env[name] == image_env[name], name

    config = repo_path_in_image(env["IMMUDEPLOY_CONFIG"])
    assert config == REPO / "config" / "deployments.yaml" and config.is_file()
    packer_dir = repo_path_in_image(env["IMMUDEPLOY_PACKER_DIR"])
    assert packer_dir is not None and list(packer_dir.glob("*.pkr.hcl")), packer_dir
    dags = repo_path_in_image(posixpath.join(image_env["AIRFLOW__CORE__DAGS_FOLDER"], "immutable_deploy.py"))
    assert dags == REPO / "dags" / "immutable_deploy.py"

    # A relative packer_template is resolved against the config file's directory, inside the image too.
    apps = yaml.safe_load(config.read_text())["apps"]
    for name, app in apps.items():
        template = app.get("packer_template", "packer")
        in_image = posixpath.normpath(posixpath.join(posixpath.dirname(env["IMMUDEPLOY_CONFIG"]), template))
        assert repo_path_in_image(in_image) is not None, f"{name}: {in_image} is not in the image"


def test_dockerfile_extends_the_pinned_airflow_and_installs_packer() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    instructions = dockerfile_instructions()
    (base,) = [i.arguments for i in instructions if i.keyword == "FROM"]
    match = re.fullmatch(r"apache/airflow:([\d.]+)-python(\d+\.\d+)", base)
    assert match, base
    assert match.group(1) == pinned(project["dependencies"], "apache-airflow")
    assert f">={match.group(2)}" in project["requires-python"]

    runs = [i for i in instructions if i.keyword == "RUN"]
    apt = [r for r in runs if "apt-get install" in r.arguments]
    assert apt and re.search(r"\bpacker\b", apt[0].arguments) and apt[0].user == "root"
    pip = [r for r in runs if "pip install" in r.arguments]
    assert pip and all(r.user == "airflow" for r in pip)
    assert "-c constraints.txt" in pip[0].arguments
    assert "[test]" not in pip[0].arguments and "-e " not in pip[0].arguments
    assert instructions[-1].user == "airflow"
    # What the pip install builds from is copied before it.
    before_pip = {p.relative_to(REPO).as_posix() for p in pip_sources()}
    assert {"pyproject.toml", "constraints.txt", "src"} <= before_pip


def pip_sources() -> list[Path]:
    """The COPY sources placed before the first pip install."""
    sources: list[Path] = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "RUN" and "pip install" in instruction.arguments:
            break
        if instruction.keyword == "COPY":
            words = [w for w in shlex.split(instruction.arguments) if not w.startswith("--")]
            sources += [REPO / w for w in words[:-1]]
    return sources


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (".venv", ".local", ".git", "src/immudeploy/__pycache__", "src/immudeploy.egg-info"):
        assert dockerignored(path), path
    for path in (
        "pyproject.toml",
        "constraints.txt",
        "src/immudeploy/airflow/tasks.py",
        "plugins/immudeploy_console_links.py",
        "config",
        "packer",
        "dags",
    ):
        assert not dockerignored(path), path


def test_project_wheel_builds_from_what_the_dockerfile_copies_first(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in pip_sources():
        if source.is_dir():
            shutil.copytree(
                source,
                context / source.relative_to(REPO),
                ignore=lambda d, names: [
                    n for n in names if dockerignored(os.path.relpath(f"{d}/{n}", REPO))
                ],
            )
        else:
            shutil.copy2(source, context / source.name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "out"), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "out").glob("immudeploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "immudeploy/airflow/tasks.py" in names and "immudeploy/airflow/triggers.py" in names
    extras = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "Provides-Extra: celery" in zipfile.ZipFile(wheel).read(extras).decode()


def test_moto_only_in_the_local_profile() -> None:
    compose = load_compose()
    services = compose["services"]
    for name, service in services.items():
        if name in LOCAL_PROFILE_SERVICES:
            assert service.get("profiles") == ["local"], name
        else:
            assert "profiles" not in service, name
            assert not LOCAL_PROFILE_SERVICES & set(service.get("depends_on", {})), name
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    assert services["moto"]["image"] == f"motoserver/moto:{pinned(constraints, 'moto')}"
    assert services["moto-seed"]["depends_on"] == {"moto": {"condition": "service_healthy"}}
    # The local connection points at the moto service on the port its healthcheck uses.
    local = compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_AWS_LOCAL"]
    assert "endpoint_url=http%3A%2F%2Fmoto%3A5000" in local
    assert "localhost:5000" in " ".join(services["moto"]["healthcheck"]["test"])


# --- the whole stack, where a Docker engine runs --------------------------------------------------------


def docker_engine_missing() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no Docker engine: the docker CLI is not installed"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"no Docker engine: `docker info` failed: {reason}"
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        return "the Docker engine runs but the `docker compose` plugin testcontainers drives is missing"
    return None


@pytest.mark.slow
def test_compose_stack_deploys_against_moto(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = docker_engine_missing()
    if missing:
        pytest.skip(missing)
    from testcontainers.compose import DockerCompose

    def say(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    port = free_port()
    for name in COMPOSE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", f"immudeploy-test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("AIRFLOW_API_PORT", str(port))
    monkeypatch.setenv("IMMUDEPLOY_AWS_CONN_ID", "aws_local")
    monkeypatch.setenv("IMMUDEPLOY_POLL_SECONDS", "1")
    began = time.monotonic()
    stack = DockerCompose(
        context=REPO, compose_file_name=COMPOSE_FILE.name, profiles=["local"], build=True, wait=False
    )
    with stack:
        say(f"\n[compose] up in {time.monotonic() - began:.0f}s; waiting for the api-server on port {port}")
        api = AirflowRest(f"http://127.0.0.1:{port}")
        wait_for("the api-server", api.answers, 600, interval=3)

        def seeded() -> bool | None:
            seed = stack.get_container("moto-seed", include_all=True)
            if seed.State == "exited":
                assert seed.ExitCode == 0, stack.get_logs("moto-seed")
                return True
            return None

        wait_for("moto-seed to seed the demo network", seeded, 300, interval=3)
        passwords, _, code = stack.exec_in_container(["cat", PASSWORDS_IN_CONTAINER], "airflow-apiserver")
        assert code == 0, passwords
        api.login("deployer", json.loads(passwords)["deployer"])
        wait_for("immutable_deploy to be parsed", lambda: api.dag_parsed("immutable_deploy"), 300, interval=3)

        run_id = api.trigger("immutable_deploy", {"app": "shop", "environment": "prod", "version": "1.0.0"})
        state, tasks = api.follow_run("immutable_deploy", run_id, 900, say, lambda: None)
        if state != "success":
            say(stack.get_logs("airflow-worker")[0][-5000:])
        assert state == "success", {ti["task_id"]: ti["state"] for ti in tasks}
        say(f"[compose] deploy {state}; whole test {time.monotonic() - began:.0f}s")
