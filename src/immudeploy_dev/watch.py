"""What the local stack shows of AWS: clients for its stand-in, and the live target group as it changes."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from immudeploy_dev.components import (
    REGION,
)
from immudeploy_dev.demo import (
    describe_composition,
    live_target_group_name,
    target_group_composition,
)

APP = "shop"
ENVIRONMENT = "prod"
DEPLOY_TIMEOUT = 900.0
LIVE_TARGET_GROUP = live_target_group_name(APP, ENVIRONMENT)
COMPOSITION_INTERVAL = 0.5


@dataclass
class StackClients:
    ec2: Any
    autoscaling: Any
    elbv2: Any
    ssm: Any


def aws_clients(aws_url: str) -> StackClients:
    import boto3
    from botocore.config import Config

    # A local endpoint answers in milliseconds: a stuck call should fail soon, not after boto3's 60 s.
    config = Config(connect_timeout=5, read_timeout=30)

    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=aws_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=config,
        )

    return StackClients(client("ec2"), client("autoscaling"), client("elbv2"), client("ssm"))


def live_groups(aws_url: str) -> list[str]:
    """Server groups of the demo app, by name."""
    groups = aws_clients(aws_url).autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    return sorted(
        g["AutoScalingGroupName"] for g in groups if g["AutoScalingGroupName"].startswith(f"{APP}-")
    )


def live_composition(clients: StackClients) -> str:
    arn = clients.elbv2.describe_target_groups(Names=[LIVE_TARGET_GROUP])["TargetGroups"][0]["TargetGroupArn"]
    return describe_composition(target_group_composition(clients, arn))


# --- what happens behind the load balancer during a deploy -----------------------------------------------


class WholeLines(io.TextIOBase):
    """A stream several threads print to: each complete line goes out in one piece.

    print() writes the text and the newline in two calls, so another thread's line could land between
    them; here each thread's text is held until its newline and written under a lock.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._lock = threading.Lock()
        self._pending = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        held: str = getattr(self._pending, "text", "") + text
        lines, newline, rest = held.rpartition("\n")
        self._pending.text = rest
        if newline:
            with self._lock:
                self._stream.write(lines + newline)
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        held: str = getattr(self._pending, "text", "")
        self._pending.text = ""
        with self._lock:
            self._stream.write(held)
            self._stream.flush()


class CompositionWatcher(threading.Thread):
    """Prints `  <target group>: <group> <n> <state>, ... | ...` whenever the target group's targets
    change, while its `with` block runs (one last look as it ends), for at most `limit` seconds."""

    def __init__(
        self,
        clients: StackClients,
        target_group_arn: str,
        label: str,
        out: TextIO,
        *,
        interval: float = COMPOSITION_INTERVAL,
        limit: float = DEPLOY_TIMEOUT,
    ) -> None:
        super().__init__(name=f"watch {label}", daemon=True)
        self.clients = clients
        self.target_group_arn = target_group_arn
        self.label = label
        self.out = out
        self.interval = interval
        self.limit = limit
        self.halt = threading.Event()
        self.last: str | None = None

    def look(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            now = describe_composition(target_group_composition(self.clients, self.target_group_arn))
        except (BotoCoreError, ClientError):
            return  # a failed look shows nothing new; the deploy's own output reports AWS errors
        if now != self.last:
            self.last = now
            self.out.write(f"  {self.label}: {now}\n")

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.halt.is_set() and time.monotonic() < deadline:
            self.look()
            self.halt.wait(self.interval)

    def __enter__(self) -> CompositionWatcher:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.halt.set()
        self.join(timeout=60)
        if not self.is_alive():
            self.look()  # what the run left behind


# --- commands --------------------------------------------------------------------------------------------
