"""The CI client installs on its own into an empty virtualenv, without Airflow, and its command runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CI_CLIENT = REPO / "ci-client"

# A CI runner's install: the project's own source, dependencies from pip's configured index.
INSTALL_TIMEOUT_SECONDS = 300

LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted(d.metadata['Name'] for d in m.distributions())))"
)


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # Outside the repository: its src/ must not be importable by accident from the working directory.
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=Path(argv[0]).parent
    )


@pytest.fixture(scope="module")
def ci_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only `pip install ci-client` in it."""
    root = tmp_path_factory.mktemp("ci-venv")
    # Install from a copy: building in place would leave build/ and egg-info in the working tree,
    # and a stale egg-info there could hide a missing file.
    source = root / "ci-client"
    shutil.copytree(CI_CLIENT, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = root / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert created.returncode == 0, created.stderr
    installed = _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            str(source),
        ],
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-4000:]
    return venv


def test_installing_the_ci_client_brings_no_airflow(ci_venv: Path) -> None:
    listed = _run([str(ci_venv / "bin" / "python"), "-c", LIST_DISTRIBUTIONS])
    assert listed.returncode == 0, listed.stderr
    names = {name.lower().replace("_", "-") for name in json.loads(listed.stdout)}
    assert "immudeploy-ci" in names
    assert "requests" in names
    assert sorted(n for n in names if n.startswith("apache-airflow")) == []
    # Nor the main distribution, which depends on Airflow.
    assert "immudeploy" not in names


def test_pip_list_agrees(ci_venv: Path) -> None:
    listed = _run([str(ci_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"])
    assert listed.returncode == 0, listed.stderr
    names = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert "immudeploy-ci" in names
    assert [n for n in names if n.startswith("apache-airflow")] == []


def test_the_command_prints_its_help(ci_venv: Path) -> None:
    result = _run([str(ci_venv / "bin" / "immudeploy-ci"), "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: immudeploy-ci")
    assert "deploy" in result.stdout
    assert "rollback" in result.stdout


def test_the_client_module_imports_without_airflow(ci_venv: Path) -> None:
    script = (
        "import sys, immudeploy_ci.client, immudeploy_ci.api; "
        "print(immudeploy_ci.client.__file__); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'immudeploy')))"
    )
    result = _run([str(ci_venv / "bin" / "python"), "-c", script])
    assert result.returncode == 0, result.stderr
    module_file, imported = result.stdout.strip().splitlines()
    # The installed copy, not the repository's source.
    assert Path(module_file).resolve().is_relative_to(ci_venv.resolve())
    assert imported == "[]"
