"""Run the real Packer binary: command line from packer-py, output streamed line by line, timeout and cancel."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packerpy import PackerExecutable

from immudeploy.core.environment import allowed_environment
from immudeploy.core.errors import BakeError, WaitTimeout

log = logging.getLogger(__name__)

# Packer cleans up its temporary key pair, security group and instance when interrupted; give it
# this long before the whole process group is killed.
TERMINATE_GRACE_SECONDS = 30.0
# Packer's own settings a platform team may set on the worker (plugin and cache dirs, its log).
PACKER_VARIABLES = (
    "PACKER_PLUGIN_PATH",
    "PACKER_CACHE_DIR",
    "PACKER_CONFIG_DIR",
    "PACKER_LOG",
    "PACKER_LOG_PATH",
)


@dataclass(frozen=True)
class PackerEvent:
    """One line of `-machine-readable` output: `timestamp,target,type,data...`."""

    target: str
    type: str
    data: tuple[str, ...]

    @classmethod
    def parse(cls, line: str) -> PackerEvent | None:
        parts = line.rstrip("\n").split(",")
        if len(parts) < 3 or not parts[0].isdigit():
            return None
        data = tuple(
            p.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "") for p in parts[3:]
        )
        return cls(target=parts[1], type=parts[2], data=data)

    @property
    def text(self) -> str:
        """The human-readable part: for `ui` events the message, else the data joined."""
        if self.type == "ui" and len(self.data) >= 2:
            return self.data[1]
        return " ".join(self.data)


@dataclass
class PackerRun:
    """What one packer command did."""

    returncode: int
    events: list[PackerEvent] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        errors = [e.text for e in self.events if e.type == "ui" and e.data[:1] == ("error",)]
        if not errors:
            # validate and parse errors of 1.6.6 are partly printed without the machine-readable prefix.
            errors = [line for line in self.raw_lines if PackerEvent.parse(line) is None and line.strip()]
        return errors

    @property
    def artifact_ids(self) -> list[str]:
        """`artifact,0,id,us-east-1:ami-0abc` lines; the value after the region is the image id."""
        return [
            e.data[2] for e in self.events if e.type == "artifact" and len(e.data) >= 3 and e.data[1] == "id"
        ]


class StreamingPackerExecutable(PackerExecutable):
    """packer-py builds the command line; this subclass runs it differently.

    packer-py's own `execute_cmd` waits on `Popen.communicate()`: output appears only when Packer
    exits, there is no timeout and nothing can cancel it. A bake takes minutes, so this version
    streams every line to a callback while Packer runs, runs it in its own process group, and kills
    that group on timeout, on `terminate()` or when the caller is interrupted, leaving no packer
    process behind.
    """

    def __init__(
        self,
        executable_path: str = "packer",
        environment: Mapping[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(executable_path=executable_path, machine_readable=True)
        self.environment = dict(environment or {})
        self.on_line = on_line or (lambda line: None)
        self.timeout: float | None = None
        self._process: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()

    def command_line(self, packer_cmd: str, template: str, **kwargs: object) -> list[str]:
        args = [self.configuration[PackerExecutable.PATH], packer_cmd]
        if "machine-readable" in self.configuration:
            args.append("-machine-readable")
        args.extend(self._explode_args(**kwargs))
        args.append(template)
        return args

    def execute_cmd(self, packer_cmd: str, template: str | None = None, **kwargs: object) -> PackerRun:  # type: ignore[override]
        if template is None:
            raise ValueError("a template path is required")
        args = self.command_line(packer_cmd, template, **kwargs)
        # An allow-list of the worker's environment (PATH, HOME for the plugin cache, proxies, Packer's
        # own settings) plus the connection's AWS settings: never Airflow's secrets or the worker's AWS keys.
        env = allowed_environment(PACKER_VARIABLES)
        env.update(self.environment)
        env.setdefault("CHECKPOINT_DISABLE", "1")
        self._cancelled.clear()
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._process = process
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process, lines), daemon=True)
        reader.start()
        run = PackerRun(returncode=-1)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while True:
                if self._cancelled.is_set():
                    raise BakeError(f"packer {packer_cmd} was cancelled")
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(
                        f"packer {packer_cmd} did not finish within {self.timeout:.0f} s; it was stopped"
                    )
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    break
                run.raw_lines.append(line)
                event = PackerEvent.parse(line)
                if event is not None:
                    run.events.append(event)
                self.on_line(line)
            run.returncode = process.wait()
            return run
        finally:
            # Any way out of the loop but a normal exit (timeout, cancel, the task's own timeout or
            # kill raising in this thread) must not leave packer running.
            if process.poll() is None:
                self._stop(process)
            reader.join(timeout=5)
            self._process = None

    def terminate(self) -> None:
        """Cancel a running command from another thread (Airflow's on_kill)."""
        self._cancelled.set()
        process = self._process
        if process is not None and process.poll() is None:
            self._stop(process)

    @staticmethod
    def _stop(process: subprocess.Popen[str]) -> None:
        log.warning("Stopping packer (pid %s) and its plugins", process.pid)
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=TERMINATE_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line.rstrip("\n"))
    lines.put(None)


class PackerRunner:
    """Validate and build one template directory with one generated var file."""

    def __init__(
        self,
        executable: str = "packer",
        environment: Mapping[str, str] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.logger = logger or log
        self.packer = StreamingPackerExecutable(executable, environment, on_line=self._log_line)

    def _log_line(self, line: str) -> None:
        event = PackerEvent.parse(line)
        if event is None:
            self.logger.info("packer: %s", line)
        elif event.type == "ui":
            for text in event.text.splitlines() or [""]:
                self.logger.info("packer: %s", text)

    def validate(self, template_dir: Path, var_file: Path, only: str | None = None) -> None:
        kwargs: dict[str, object] = {"var_file": str(var_file)}
        if only:
            kwargs["only"] = only
        self.packer.timeout = 120
        run = self.packer.validate(str(template_dir), **kwargs)
        if run.returncode != 0:
            raise BakeError("packer validate failed:\n" + "\n".join(run.error_lines))

    def build(self, template_dir: Path, var_file: Path, only: str, timeout: float) -> PackerRun:
        self.packer.timeout = timeout
        run = self.packer.build(str(template_dir), only=only, var_file=str(var_file))
        if run.returncode != 0:
            raise BakeError(
                f"packer build failed (exit {run.returncode}):\n" + "\n".join(run.error_lines[-30:])
            )
        return run

    def terminate(self) -> None:
        self.packer.terminate()
