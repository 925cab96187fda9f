"""Processes of the local stack: start each in its own session, record them, stop exactly those."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

from immudeploy_ci.api import CiError

STATE_FILE = "stack.json"
# Every process `up` starts carries this variable (value: the stack's id); children inherit it, so
# `down` also finds a Packer run, which has a session of its own. Airflow's processes that set their
# title (api-server, task supervisors) lose a readable environment: they are found by session.
MARKER_VARIABLE = "IMMUDEPLOY_LOCAL_STACK"
STOP_GRACE_SECONDS = 30.0

T = TypeVar("T")


class StackError(Exception):
    """`up`, `down` or `status` cannot go on; the message says what it waited for or what failed."""


@dataclass
class StackProcess:
    name: str
    pid: int
    create_time: float
    log: str


@dataclass
class StackState:
    stack_id: str
    state_dir: str
    airflow_home: str
    # The AWS stand-in's endpoint (python -m immudeploy_dev.standin: moto with AWS's timing).
    aws_url: str
    api_url: str
    started_at: float
    # The stand-in's time scale; None: a stack recorded before the stand-in (plain moto, no timing).
    time_scale: float | None = None
    processes: list[StackProcess] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / STATE_FILE

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
        temporary.replace(self.path)

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        # A state file written before the stand-in replaced plain moto: `down` must still find it.
        if "moto_url" in data:
            data["aws_url"] = data.pop("moto_url")
        data["processes"] = [StackProcess(**p) for p in data.get("processes", [])]
        return cls(**data)


def say(message: str = "") -> None:
    print(message, flush=True)


def free_port() -> int:
    """A free loopback port (another process could take it before we bind: good enough locally)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
    """Calls `check` until it returns something other than None; says what it waits for, and fails
    naming it after `timeout` seconds. `check` may raise StackError to give up early."""
    say(f"  waiting for {what} (up to {timeout:.0f} s)")
    started = time.monotonic()
    last_error: str | None = None
    while True:
        try:
            result = check()
        except (requests.RequestException, CiError) as error:
            result, last_error = None, str(error)
        if result is not None:
            say(f"  ... {what}: ready after {time.monotonic() - started:.1f} s")
            return result
        if time.monotonic() - started > timeout:
            raise StackError(
                f"timed out after {timeout:.0f} s waiting for {what}"
                + (f" (last error: {last_error})" if last_error else "")
            )
        time.sleep(interval)


# --- processes --------------------------------------------------------------------------------------


def _alive(process: StackProcess) -> bool:
    import psutil

    try:
        found = psutil.Process(process.pid)
        # A different create time means the pid was reused by an unrelated process.
        return abs(found.create_time() - process.create_time) < 1.0 and found.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start_process(
    state: StackState, name: str, argv: list[str], env: dict[str, str], log_dir: Path
) -> StackProcess:
    """Starts one component in its own session, output to logs/<name>.log; recorded at once in the state file."""
    import psutil

    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=state.state_dir,
            start_new_session=True,
        )
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        create_time = time.time()
    process = StackProcess(name=name, pid=popen.pid, create_time=create_time, log=str(log_path))
    state.processes.append(process)
    state.save()
    return process


def log_tail(path: str | Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"    {line}" for line in text[-lines:])


def _session_members(recorded: StackProcess) -> list[Any]:
    """Processes in the session `up` started for this component (its leader's pid is the session id).

    Linux does not reuse a pid while it is some process's session id, so members found while the
    leader is gone are the leader's orphans; a live pid with another create time is a reused pid.
    """
    import psutil

    if psutil.pid_exists(recorded.pid) and not _alive(recorded):
        return []
    members = []
    for candidate in psutil.process_iter(["pid"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(candidate.pid) == recorded.pid and candidate.status() != psutil.STATUS_ZOMBIE:
                members.append(candidate)
    return members


def _stack_processes(state: StackState) -> list[Any]:
    """Every live process of the stack: the recorded ones and their sessions, their descendants in
    other sessions (Packer runs in its own), and processes carrying the stack's marker variable
    (an orphan that left its session; processes that set their title lose their readable environ)."""
    import psutil

    found: dict[int, Any] = {}
    for recorded in state.processes:
        for member in _session_members(recorded):
            found[member.pid] = member
        if _alive(recorded):
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(recorded.pid).children(recursive=True):
                    found[child.pid] = child
    for candidate in psutil.process_iter(["pid"]):
        if candidate.pid in found or candidate.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if candidate.environ().get(MARKER_VARIABLE) == state.stack_id:
                found[candidate.pid] = candidate
    return list(found.values())


def stop_stack(state: StackState, grace: float = STOP_GRACE_SECONDS) -> list[str]:
    """SIGTERM to each recorded process's session group (the components first, the AWS stand-in
    last), SIGKILL to whatever is left after `grace` seconds. Returns what had to be killed."""
    import psutil

    victims = _stack_processes(state)
    for recorded in reversed(state.processes):
        if _session_members(recorded):
            # start_new_session made the pid the group id: the group holds its workers too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(recorded.pid, signal.SIGTERM)
    for victim in victims:
        with contextlib.suppress(psutil.Error):
            victim.terminate()
    _, still_alive = psutil.wait_procs(victims, timeout=grace)
    killed = []
    for victim in still_alive:
        with contextlib.suppress(psutil.Error):
            killed.append(f"{victim.pid} ({' '.join(victim.cmdline()[:3])})")
            victim.kill()
    psutil.wait_procs(still_alive, timeout=10)
    leftovers = _stack_processes(state)
    if leftovers:
        raise StackError(f"processes of the stack still run after SIGKILL: {[p.pid for p in leftovers]}")
    return killed


# --- configuration ------------------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Creates the file readable by its owner only (0600) before any secret is written into it."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
