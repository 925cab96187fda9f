"""BakeImageOperator: XCom values, idempotent reruns, cancel, and no credentials in its log."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET_KEY

from immudeploy.airflow.operators.bake import BakeImageOperator
from immudeploy.core.errors import BakeError
from immudeploy.release.bake import default_template_dir


class RecordingTaskInstance:
    """Collects what the operator pushes to XCom, as the task runner's TaskInstance would."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _operator(template: Path, **overrides: Any) -> BakeImageOperator:
    arguments: dict[str, Any] = {
        "task_id": "bake",
        "app": "web",
        "version": "2.0.0",
        "environment": "staging",
        "base_image_id": "ami-785db401",
        "template_dir": str(template),
    }
    arguments.update(overrides)
    return BakeImageOperator(**arguments)


@pytest.fixture
def template(tmp_path: Path) -> Path:
    copy = tmp_path / "packer"
    shutil.copytree(default_template_dir(), copy)
    return copy


def test_bake_task_returns_the_image_and_keeps_credentials_out_of_its_log(
    aws, template: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    ti = RecordingTaskInstance()
    image_id = _operator(template).execute({"ti": ti})  # type: ignore[arg-type]

    assert image_id.startswith("ami-")
    assert ti.pushed == {
        "image_id": image_id,
        "region": "us-east-1",
        "reused": False,
    }
    out, err = capfd.readouterr()
    task_log = "\n".join(r.getMessage() for r in caplog.records) + out + err
    # The log really is the task's: packer's own progress lines are in it ...
    assert "packer:" in task_log and image_id in task_log
    # ... and the connection's secret is not.
    assert SECRET_KEY not in task_log


def test_rerunning_the_bake_task_reuses_the_image(aws, template: Path) -> None:
    first = _operator(template).execute({"ti": RecordingTaskInstance()})  # type: ignore[arg-type]
    ti = RecordingTaskInstance()
    again = _operator(template, packer_executable="/nonexistent/packer").execute({"ti": ti})  # type: ignore[arg-type]
    assert again == first
    assert ti.pushed["reused"] is True


def test_force_as_a_rendered_string_is_understood(aws, template: Path) -> None:
    first = _operator(template).execute({"ti": RecordingTaskInstance()})  # type: ignore[arg-type]
    unforced = _operator(template, force="False", packer_executable="/nonexistent/packer")
    assert unforced.execute({"ti": RecordingTaskInstance()}) == first  # type: ignore[arg-type]
    forced = _operator(template, force="True").execute({"ti": RecordingTaskInstance()})  # type: ignore[arg-type]
    assert forced != first


def test_a_broken_template_fails_the_task_with_packers_message(aws) -> None:
    broken = Path(__file__).resolve().parents[2] / "data" / "broken_template"
    with pytest.raises(BakeError, match="no_such_argument"):
        _operator(broken).execute({"ti": RecordingTaskInstance()})  # type: ignore[arg-type]
