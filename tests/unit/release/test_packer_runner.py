"""The Packer runner against the real binary: streaming, timeout, cancel, errors, no process left behind."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from immudeploy.aws.connection import packer_aws_settings
from immudeploy.core.errors import BakeError, WaitTimeout
from immudeploy.release.packer import PackerEvent, PackerRunner

DATA = Path(__file__).resolve().parents[2] / "data"
PACKER = shutil.which("packer")


@pytest.fixture(autouse=True)
def _require_packer() -> None:
    if PACKER is None:
        pytest.fail("the packer binary is not installed: run the README's set-up command")


def _packer_processes_for(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if marker in cmdline or ("sleep 300" in cmdline and "packer" in cmdline):
            found.append(process)
    return found


def _slow_build(tmp_path: Path, aws) -> tuple[PackerRunner, Path, Path]:
    template = tmp_path / "slow"
    shutil.copytree(DATA / "slow_template", template)
    settings = packer_aws_settings()
    var_file = tmp_path / "vars.json"
    var_file.write_text(
        json.dumps(
            {
                "ec2_endpoint": settings.ec2_endpoint,
                "base_ami_id": "ami-785db401",
                "ami_name": f"slow-{time.time_ns()}",
            }
        )
    )
    return PackerRunner(PACKER or "packer", settings.environment), template, var_file


def _wait_gone(marker: str, seconds: float = 10) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [
            p for p in _packer_processes_for(marker) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
        if not left:
            return []
        time.sleep(0.2)
    return left


def test_machine_readable_lines_are_parsed() -> None:
    event = PackerEvent.parse("1700000000,amazon-ebs.local,artifact,0,id,us-east-1:ami-0abc")
    assert event is not None and event.type == "artifact" and event.data == ("0", "id", "us-east-1:ami-0abc")
    ui = PackerEvent.parse("1700000000,,ui,say,==> amazon-ebs.local: a%!(PACKER_COMMA) b")
    assert ui is not None and ui.text == "==> amazon-ebs.local: a, b"
    assert PackerEvent.parse("not a machine readable line") is None


def test_a_build_past_its_timeout_is_killed_and_leaves_no_packer(tmp_path: Path, aws) -> None:
    runner, template, var_file = _slow_build(tmp_path, aws)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="did not finish within 3 s"):
        runner.build(template, var_file, only="amazon-ebs.local", timeout=3)
    assert time.monotonic() - started < 3 + 35  # the timeout plus at most the clean-up grace
    assert _wait_gone(str(template)) == []


def test_terminate_from_another_thread_cancels_the_build(tmp_path: Path, aws) -> None:
    runner, template, var_file = _slow_build(tmp_path, aws)
    outcome: list[BaseException] = []

    def build() -> None:
        try:
            runner.build(template, var_file, only="amazon-ebs.local", timeout=300)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=build)
    worker.start()
    # Wait until the provisioner's sleep is really running, then cancel as Airflow's on_kill would.
    deadline = time.monotonic() + 30
    while not any("sleep 300" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        assert time.monotonic() < deadline, "the slow build never reached its provisioner"
        time.sleep(0.2)
    runner.terminate()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert outcome and isinstance(outcome[0], BakeError)
    assert _wait_gone(str(template)) == []


def test_output_is_logged_while_packer_runs(tmp_path: Path, aws, caplog: pytest.LogCaptureFixture) -> None:
    runner, template, var_file = _slow_build(tmp_path, aws)
    runner.logger = logging.getLogger("bake-test")
    caplog.set_level(logging.INFO, logger="bake-test")
    with pytest.raises(WaitTimeout):
        runner.build(template, var_file, only="amazon-ebs.local", timeout=4)
    # Lines arrived before packer ended: the provisioner's start is in the log of a build that never finished.
    messages = [r.getMessage() for r in caplog.records]
    assert any("Running local shell script" in m or "shell-local" in m for m in messages), messages


def test_a_broken_template_fails_with_packers_own_message(tmp_path: Path, aws) -> None:
    settings = packer_aws_settings()
    runner = PackerRunner(PACKER or "packer", settings.environment)
    var_file = tmp_path / "vars.json"
    var_file.write_text("{}")
    with pytest.raises(BakeError) as failure:
        runner.validate(DATA / "broken_template", var_file)
    assert "no_such_argument" in str(failure.value)


def test_packer_gets_an_allow_list_of_the_worker_environment_never_airflows_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Packer's process really receives (a stand-in executable writes its environment out)."""
    dump = tmp_path / "packer-env.json"
    fake = tmp_path / "packer"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os\nopen({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow:db-secret@db/airflow")
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", "redis://:broker-secret@redis:6379/0")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", "aws://AKIA:conn-secret@")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-own-secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("PACKER_PLUGIN_PATH", "/opt/packer/plugins")
    runner = PackerRunner(
        str(fake), {"AWS_ACCESS_KEY_ID": "conn-key", "AWS_SECRET_ACCESS_KEY": "conn-secret"}
    )
    runner.packer.timeout = 30
    runner.packer.execute_cmd("version", template=str(tmp_path))
    seen = json.loads(dump.read_text())
    assert seen["AWS_SECRET_ACCESS_KEY"] == "conn-secret"  # the connection's, not the worker's own
    assert seen["HTTPS_PROXY"] == "http://proxy.internal:3128"
    assert seen["PACKER_PLUGIN_PATH"] == "/opt/packer/plugins"
    assert seen["PATH"]
    leaked = [name for name in seen if name.startswith("AIRFLOW")]
    assert leaked == []
    assert not any("secret" in value and value != "conn-secret" for value in seen.values())
