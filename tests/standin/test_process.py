"""`python -m immudeploy_dev.standin` in its own process, driven through its HTTP control API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

import immudeploy_dev.standin as standin_package
from immudeploy_dev.standin import StandInClient, StandInControlError

from .helpers import make_clients, make_network, target_states

SRC = Path(standin_package.__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the connection sat in the backlog when the listening socket closed.
        return True
    return False


def wait_for(condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def standin_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "immudeploy_dev.standin", "--port", str(port), "--time-scale", "0.05"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, start_new_session=True)
    try:
        wait_for(lambda: out.read_text().strip() or process.poll() is not None, 60)
        assert process.poll() is None, err.read_text()
        url = out.read_text().strip()
        assert url == f"http://127.0.0.1:{port}"
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_control_api_of_a_separate_process(standin_process: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, process = standin_process
    control = StandInClient(url)
    assert control.health()["settings"]["time_scale"] == 0.05
    aws = make_clients(url)
    net = make_network(aws)
    instance = aws.ec2.run_instances(ImageId="ami-785db401", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]

    with control.inject("ec2", "DescribeVpcs", "throttle", count=1):
        with pytest.raises(ClientError) as error:
            aws.ec2.describe_vpcs()
        assert error.value.response["Error"]["Code"] == "RequestLimitExceeded"
        aws.ec2.describe_vpcs()
    assert [(i["operation"], i["code"]) for i in control.injections()] == [
        ("DescribeVpcs", "RequestLimitExceeded")
    ]
    assert control.faults() == []

    control.configure(drain_fraction=1.0)
    aws.elbv2.register_targets(TargetGroupArn=net.target_group_arn, Targets=[{"Id": instance}])
    assert target_states(aws, net.target_group_arn)[instance][0] == "initial"
    aws.elbv2.deregister_targets(TargetGroupArn=net.target_group_arn, Targets=[{"Id": instance}])
    assert target_states(aws, net.target_group_arn)[instance][0] == "draining"
    assert control.set_connections_closed(instance) == 1
    assert target_states(aws, net.target_group_arn) == {}

    port = int(url.rsplit(":", 1)[1])
    control.outage(1.0)
    wait_for(lambda: refused(port), 3)
    wait_for(lambda: not refused(port), 5)
    control.reset()
    assert aws.elbv2.describe_target_groups()["TargetGroups"] == []

    with pytest.raises(StandInControlError, match="404"):
        control._call("GET", "nothing-here")
    with pytest.raises(StandInControlError, match="400"):
        control.inject("ec2", kind="explode")

    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
