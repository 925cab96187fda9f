"""Run the configured staging test command against the staging fleet, streaming its output, with a timeout."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from immudeploy.core.environment import allowed_environment
from immudeploy.core.errors import DeployError, InvalidInput, WaitTimeout
from immudeploy.core.naming import validate_app, validate_environment, validate_version

logger = logging.getLogger(__name__)

ENV_ENDPOINT = "IMMUTABLE_STAGING_ENDPOINT"
ENV_INSTANCE_IDS = "IMMUTABLE_STAGING_INSTANCE_IDS"
ENV_TARGET_GROUP_ARN = "IMMUTABLE_STAGING_TARGET_GROUP_ARN"
ENV_APP = "IMMUTABLE_APP"
ENV_ENVIRONMENT = "IMMUTABLE_ENVIRONMENT"
ENV_VERSION = "IMMUTABLE_VERSION"

INSTANCE_ID_PATTERN = r"^i-[0-9a-f]{8,17}$"
TAIL_LINES = 20
# After SIGTERM, how long the test command gets to clean up before SIGKILL.
KILL_GRACE_SECONDS = 5.0
# How long to keep reading after the command exited, for output still in the pipe.
DRAIN_SECONDS = 2.0
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class StagingTestResult:
    returncode: int
    duration_seconds: float
    tail: list[str] = field(default_factory=list)


def staging_test_environment(
    endpoint: str,
    instance_ids: Sequence[str],
    target_group_arn: str,
    app: str,
    environment: str,
    version: str,
    aws: Mapping[str, str],
) -> dict[str, str]:
    """The variables the test command reads; everything about the staging fleet travels this way only."""
    for instance_id in instance_ids:
        if not re.fullmatch(INSTANCE_ID_PATTERN, instance_id):
            raise InvalidInput("instance_ids", f"{instance_id!r} is not an EC2 instance id")
    if not instance_ids:
        raise InvalidInput("instance_ids", "the staging fleet has no instances")
    foreign = sorted(name for name in aws if not name.startswith("AWS_"))
    if foreign:
        raise InvalidInput("aws", f"only AWS_* variables belong here, got {', '.join(foreign)}")
    return {
        **aws,
        ENV_ENDPOINT: endpoint,
        ENV_INSTANCE_IDS: ",".join(instance_ids),
        ENV_TARGET_GROUP_ARN: target_group_arn,
        ENV_APP: validate_app(app),
        ENV_ENVIRONMENT: validate_environment(environment),
        ENV_VERSION: validate_version(version),
    }


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    # A thread, so the caller's thread can stop waiting at the deadline even if no line ever comes.
    try:
        for line in stream:
            lines.put(line.rstrip("\r\n"))
    except (OSError, ValueError):
        pass  # the pipe broke under us after the command was killed
    finally:
        lines.put(None)  # end of output


def _next_line(lines: queue.Queue[str | None]) -> str | None:
    try:
        return lines.get_nowait()
    except queue.Empty:
        return None


def _exited(process: subprocess.Popen[str]) -> bool:
    """Whether the command exited, WITHOUT reaping it: its zombie keeps the process-group id reserved
    until we have killed what is left of the group, so killpg can never hit an unrelated process."""
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, signum)


def _stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM the whole group, SIGKILL it after a grace period: no grandchild outlives the step."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    while not _exited(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(process.pid, signal.SIGKILL)


def run_staging_tests(
    command: Sequence[str],
    *,
    environment: Mapping[str, str],
    timeout_seconds: float,
    log_line: Callable[[str], None],
    cwd: str | None = None,
) -> StagingTestResult:
    """Run `command` (an argv list, never through a shell) and stream its output to `log_line`.

    Raises WaitTimeout when it runs longer than `timeout_seconds` (its process group is killed) and
    DeployError with the exit code and the last lines of output when it fails.
    """
    if isinstance(command, str) or not command or not all(isinstance(arg, str) for arg in command):
        raise InvalidInput("test_command", "must be a non-empty argv list of strings, not a shell string")
    if timeout_seconds <= 0:
        raise InvalidInput("test_timeout_seconds", "must be positive")
    shown = shlex.join(command)
    # Only an allow-list of the worker's environment: Airflow's secrets are none of the tests' business.
    env = allowed_environment()
    # Python test runners block-buffer a pipe; unbuffered, their lines reach the task log as they happen.
    env["PYTHONUNBUFFERED"] = "1"
    env.update(environment)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    lines: queue.Queue[str | None] = queue.Queue()
    started = time.monotonic()
    deadline = started + timeout_seconds
    logger.info("Running staging tests: %s (timeout %g s)", shown, timeout_seconds)
    try:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # its own process group, so a timeout kills grandchildren too
        )
    except OSError as error:
        raise DeployError(f"staging test command {shown} could not start: {error}") from error
    assert process.stdout is not None
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    timed_out = False
    eof = False
    drain_until: float | None = None
    try:
        while True:
            if eof:
                time.sleep(POLL_SECONDS)
            else:
                try:
                    line = lines.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    pass
                else:
                    if line is None:  # end of output
                        eof = True
                    else:
                        tail.append(line)
                        log_line(line)
            now = time.monotonic()
            if _exited(process):
                if eof:
                    break
                # A background grandchild may hold the pipe open forever: read briefly, then stop.
                if drain_until is None:
                    drain_until = now + DRAIN_SECONDS
                if now >= drain_until:
                    break
            if now >= deadline and drain_until is None:  # an exited command has not timed out
                timed_out = True
                break
    finally:
        # Also on success: whatever the command left running in its group goes with it.
        if _exited(process):
            _signal_group(process.pid, signal.SIGKILL)
        else:
            _stop_group(process)
        returncode = process.wait()
        reader.join(timeout=1.0)
        # Closing a pipe another thread still reads can block; a process that escaped the group
        # (setsid) may hold it open, and then the daemon reader and its pipe are left behind.
        if not reader.is_alive():
            process.stdout.close()
        # Lines read just before the kill still belong in the log and the tail.
        while (line := _next_line(lines)) is not None:
            tail.append(line)
            log_line(line)
    duration = time.monotonic() - started
    if timed_out:
        raise WaitTimeout(
            f"staging test command {shown} did not finish within {timeout_seconds:g} s; its process group "
            "was killed. Last lines:\n" + "\n".join(tail)
        )
    result = StagingTestResult(returncode=returncode, duration_seconds=duration, tail=list(tail))
    if returncode != 0:
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
        raise DeployError(f"staging test command {shown} {how}. Last {len(tail)} lines:\n" + "\n".join(tail))
    logger.info("Staging tests passed in %.1f s", duration)
    return result
