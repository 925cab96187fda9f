"""Staging test runner (argv only, env-only inputs, streamed output, timeout kills the group) and the smoke module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from immudeploy.core.errors import DeployError, InvalidInput, WaitTimeout
from immudeploy.release.staging import run_staging_tests, staging_test_environment

PY = sys.executable
FAKE_ID = "i-0123456789abcdef0"


def _env(**overrides: str) -> dict[str, str]:
    env = staging_test_environment(
        endpoint="http://staging.example.internal",
        instance_ids=[FAKE_ID, "i-0fedcba9876543210"],
        target_group_arn="arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop-staging/0123",
        app="shop",
        environment="prod",
        version="1.2.0",
        aws={"AWS_DEFAULT_REGION": "us-east-1"},
    )
    return {**env, **overrides}


def _run(command: list[str], lines: list[str], timeout: float = 30.0, **env: str) -> Any:
    return run_staging_tests(command, environment=_env(**env), timeout_seconds=timeout, log_line=lines.append)


def test_environment_names_and_validation() -> None:
    env = _env()
    assert env["IMMUTABLE_STAGING_ENDPOINT"] == "http://staging.example.internal"
    assert env["IMMUTABLE_STAGING_INSTANCE_IDS"] == f"{FAKE_ID},i-0fedcba9876543210"
    assert env["IMMUTABLE_STAGING_TARGET_GROUP_ARN"].endswith("shop-staging/0123")
    assert (env["IMMUTABLE_APP"], env["IMMUTABLE_ENVIRONMENT"], env["IMMUTABLE_VERSION"]) == (
        "shop",
        "prod",
        "1.2.0",
    )
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    base = {"endpoint": "e", "target_group_arn": "t", "app": "shop", "environment": "prod", "version": "1"}
    with pytest.raises(InvalidInput, match="instance_ids"):
        staging_test_environment(instance_ids=["i-1,i-2"], aws={}, **base)
    with pytest.raises(InvalidInput, match="PATH"):
        staging_test_environment(instance_ids=[FAKE_ID], aws={"PATH": "/evil"}, **base)


def test_passing_command_streams_its_output() -> None:
    lines: list[str] = []
    script = "import os, sys; print(os.environ['IMMUTABLE_VERSION']); print('to stderr', file=sys.stderr)"
    result = _run([PY, "-c", script], lines)
    assert result.returncode == 0
    assert lines == ["1.2.0", "to stderr"]
    assert result.tail == lines
    assert result.duration_seconds > 0


def test_output_arrives_while_the_command_runs() -> None:
    seen_at: list[float] = []
    script = "import time; print('first', flush=True); time.sleep(1.0); print('second', flush=True)"
    started = time.monotonic()
    run_staging_tests(
        [PY, "-c", script],
        environment=_env(),
        timeout_seconds=30,
        log_line=lambda _line: seen_at.append(time.monotonic() - started),
    )
    assert len(seen_at) == 2
    assert seen_at[1] - seen_at[0] > 0.5  # the first line was logged before the second existed


def test_worker_secrets_are_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://secret@db/airflow")
    lines: list[str] = []
    _run([PY, "-c", "import os; print(sorted(k for k in os.environ if k.startswith('AIRFLOW')))"], lines)
    assert lines == ["[]"]


def test_failing_command_raises_with_its_tail() -> None:
    lines: list[str] = []
    script = "import sys\nfor n in range(30): print(f'line {n}')\nsys.exit(3)"
    with pytest.raises(DeployError) as raised:
        _run([PY, "-c", script], lines)
    message = str(raised.value)
    assert "exited with code 3" in message
    assert "line 29" in message and "line 10" in message and "line 9\n" not in message
    assert len(lines) == 30


def test_hanging_command_is_killed_with_its_children() -> None:
    # The child spawns a grandchild that would outlive a plain kill of the child.
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    lines: list[str] = []
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        _run([PY, "-c", script], lines, timeout=1.0)
    assert time.monotonic() - started < 10
    assert "within 1 s" in str(raised.value) and "time.sleep(60)" in str(raised.value)
    assert lines == ["started"]
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and "import time; time.sleep(60)" in " ".join(p.info["cmdline"])
    ]
    assert leftovers == []
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_plain_sleep_command_times_out() -> None:
    with pytest.raises(WaitTimeout):
        _run([PY, "-c", "import time; time.sleep(60)"], [], timeout=1.0)
    assert not [
        p for p in psutil.Process().children(recursive=True) if "time.sleep(60)" in " ".join(p.cmdline())
    ]


def test_endless_output_still_times_out() -> None:
    script = "import time\nwhile True:\n    print('still going', flush=True)\n    time.sleep(0.01)\n"
    lines: list[str] = []
    with pytest.raises(WaitTimeout, match="Last lines:\nstill going"):
        _run([PY, "-c", script], lines, timeout=1.0)
    assert 10 < len(lines) < 1000


def test_background_process_left_behind_is_cleaned_up() -> None:
    # The command exits but leaves a daemon holding the output pipe: we must not wait for it forever.
    script = (
        f"import subprocess; subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)']); print('done')"
    )
    lines: list[str] = []
    started = time.monotonic()
    result = _run([PY, "-c", script], lines)
    assert result.returncode == 0 and lines == ["done"]
    assert time.monotonic() - started < 10
    assert not [
        p for p in psutil.Process().children(recursive=True) if "time.sleep(60)" in " ".join(p.cmdline())
    ]


def test_shell_syntax_in_values_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}`; touch {marker}"
    lines: list[str] = []
    _run(
        [
            PY,
            "-c",
            "import os, sys; print(os.environ['IMMUTABLE_STAGING_ENDPOINT']); print(sys.argv[1])",
            hostile,
        ],
        lines,
        IMMUTABLE_STAGING_ENDPOINT=hostile,
    )
    assert lines == [hostile, hostile]
    assert not marker.exists()


def test_shell_strings_and_bad_commands_refused() -> None:
    with pytest.raises(InvalidInput, match="argv list"):
        run_staging_tests("pytest tests/", environment={}, timeout_seconds=5, log_line=print)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        run_staging_tests([], environment={}, timeout_seconds=5, log_line=print)
    with pytest.raises(DeployError, match="could not start"):
        run_staging_tests(["/nonexistent/run-tests"], environment={}, timeout_seconds=5, log_line=print)


# ---------------------------------------------------------------------------------------------
# The smoke module against moto
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def staging_fleet(aws: Any) -> dict[str, Any]:
    ec2, elbv2 = aws.client("ec2"), aws.client("elbv2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    target_group = elbv2.create_target_group(
        Name="shop-prod-staging", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="instance"
    )["TargetGroups"][0]["TargetGroupArn"]
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "immutable:version", "Value": "1.2.0"}]}]
    reservation = ec2.run_instances(
        ImageId="ami-785db401", MinCount=2, MaxCount=2, SubnetId=subnet, TagSpecifications=tags
    )
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    elbv2.register_targets(TargetGroupArn=target_group, Targets=[{"Id": i} for i in ids])
    return {"ec2": ec2, "elbv2": elbv2, "ids": ids, "subnet": subnet, "target_group": target_group}


def _smoke(aws: Any, fleet: dict[str, Any], ids: list[str]) -> subprocess.CompletedProcess[str]:
    env = staging_test_environment(
        endpoint="http://shop-staging.example.internal",
        instance_ids=ids,
        target_group_arn=fleet["target_group"],
        app="shop",
        environment="prod",
        version="1.2.0",
        aws={
            "AWS_ENDPOINT_URL": aws.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": aws.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )
    env["PATH"] = os.environ.get("PATH", "")
    return subprocess.run(
        [PY, "-m", "immudeploy.release.smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_smoke_passes_on_a_healthy_fleet(aws: Any, staging_fleet: dict[str, Any]) -> None:
    done = _smoke(aws, staging_fleet, staging_fleet["ids"])
    assert done.returncode == 0, done.stderr
    assert "2 instances exist and are running" in done.stdout
    assert "2 instances are healthy" in done.stdout


def test_smoke_through_the_runner(aws: Any, staging_fleet: dict[str, Any]) -> None:
    env = staging_test_environment(
        endpoint="http://shop-staging.example.internal",
        instance_ids=staging_fleet["ids"],
        target_group_arn=staging_fleet["target_group"],
        app="shop",
        environment="prod",
        version="1.2.0",
        aws={
            "AWS_ENDPOINT_URL": aws.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": aws.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )
    lines: list[str] = []
    result = run_staging_tests(
        [PY, "-m", "immudeploy.release.smoke"], environment=env, timeout_seconds=60, log_line=lines.append
    )
    assert result.returncode == 0
    assert lines[-1] == "smoke test passed"


def test_smoke_fails_on_an_unregistered_instance(aws: Any, staging_fleet: dict[str, Any]) -> None:
    extra = staging_fleet["ec2"].run_instances(
        ImageId="ami-785db401", MinCount=1, MaxCount=1, SubnetId=staging_fleet["subnet"]
    )["Instances"][0]["InstanceId"]
    done = _smoke(aws, staging_fleet, [*staging_fleet["ids"], extra])
    assert done.returncode == 1
    assert re.search(rf"staging target group: .*{extra} in \S+: not registered", done.stderr)


def test_smoke_fails_on_a_terminated_instance(aws: Any, staging_fleet: dict[str, Any]) -> None:
    victim = staging_fleet["ids"][0]
    staging_fleet["ec2"].terminate_instances(InstanceIds=[victim])
    done = _smoke(aws, staging_fleet, staging_fleet["ids"])
    assert done.returncode == 1
    assert f"{victim} is terminated, not running" in done.stderr


def test_smoke_fails_on_a_missing_instance_and_a_wrong_version(
    aws: Any, staging_fleet: dict[str, Any]
) -> None:
    staging_fleet["ec2"].create_tags(
        Resources=[staging_fleet["ids"][1]], Tags=[{"Key": "immutable:version", "Value": "1.1.0"}]
    )
    done = _smoke(aws, staging_fleet, [*staging_fleet["ids"], FAKE_ID])
    assert done.returncode == 1
    assert f"{FAKE_ID} does not exist" in done.stderr
    assert f"{staging_fleet['ids'][1]} runs version 1.1.0, not 1.2.0" in done.stderr
