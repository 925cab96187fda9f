"""The deferrable side of immudeploy.aws.waits: one trigger class per kind of wait, one shared loop.

Why not the Amazon provider's AwsBaseWaiterTrigger: a botocore waiter can only say "matched",
"failure" or "retry", so its failure message cannot name the unhealthy instance and AWS's reason,
and its timeout cannot name the targets still draining. The project's evaluators can; the loop
itself is `immudeploy.aws.waits.poll`, the same generator the blocking path drives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, ClassVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from immudeploy.aws import waits
from immudeploy.aws.connection import DEFAULT_CONN_ID, aws_hook
from immudeploy.core.wait_status import WaitStatus


def build_client(service: str, aws_conn_id: str, region_name: str | None) -> Any:
    """A sync boto3 client from the Airflow connection; tests replace this to hand in a stubbed client."""
    return aws_hook(service, aws_conn_id, region_name).conn


def _step(steps: Generator[float, None, WaitStatus]) -> float | WaitStatus:
    """One step of the wait loop (it calls AWS, so it runs in a thread): a delay, or the final status."""
    try:
        return next(steps)
    except StopIteration as finished:
        return finished.value


class ImmutableWaitTrigger(BaseTrigger):
    """Polls one wait (the subclass's `kind`) and fires exactly one event.

    Event: {"status": "success" | "failed" | "timeout", "message": str, "failed_ids": [instance ids]};
    on timeout `failed_ids` names the instances still not ready; on success `waited_for` repeats the
    group name and instance ids waited for. Read-only, so safe to run twice.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        *,
        aws_conn_id: str = DEFAULT_CONN_ID,
        region_name: str | None = None,
        group_name: str | None = None,
        target_group_arns: list[str] | None = None,
        instance_ids: list[str] | None = None,
        expected_count: int = 0,
        fail_fast: bool = True,
        grace_ends: dict[str, float] | None = None,
        poll_interval: float = 10.0,
        timeout_seconds: float = 600.0,
    ) -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.group_name = group_name
        self.target_group_arns = list(target_group_arns or [])
        self.instance_ids = None if instance_ids is None else list(instance_ids)
        self.expected_count = expected_count
        self.fail_fast = fail_fast
        # Epoch seconds, so a trigger restarted on another triggerer keeps the same grace periods.
        self.grace_ends = None if grace_ends is None else dict(grace_ends)
        self.poll_interval = poll_interval
        self.timeout_seconds = timeout_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "group_name": self.group_name,
                "target_group_arns": list(self.target_group_arns),
                "instance_ids": None if self.instance_ids is None else list(self.instance_ids),
                "expected_count": self.expected_count,
                "fail_fast": self.fail_fast,
                "grace_ends": None if self.grace_ends is None else dict(self.grace_ends),
                "poll_interval": self.poll_interval,
                "timeout_seconds": self.timeout_seconds,
            },
        )

    def _check(self, client: Any) -> tuple[str, Callable[[], WaitStatus]]:
        return waits.wait_check(
            self.kind,
            client,
            group_name=self.group_name,
            target_group_arns=self.target_group_arns,
            instance_ids=self.instance_ids,
            expected_count=self.expected_count,
            fail_fast=self.fail_fast,
            grace_ends=self.grace_ends,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The deadline restarts if the triggerer restarts; the operator's defer timeout is the backstop.
        what = self.kind
        try:
            # Built in a thread: the connection lookup and boto3 setup block.
            client = await asyncio.to_thread(
                build_client, waits.WAIT_SERVICES[self.kind], self.aws_conn_id, self.region_name
            )
            what, check = self._check(client)
            steps = waits.poll(
                check,
                what=what,
                timeout=self.timeout_seconds,
                poll_interval=self.poll_interval,
                log=self.log,
                clock=time.monotonic,
            )
            while not isinstance(step := await asyncio.to_thread(_step, steps), WaitStatus):
                await asyncio.sleep(step)
            event: dict[str, Any] = {
                "status": "success",
                "message": step.message,
                "failed_ids": [],
                "waited_for": {"group_name": self.group_name, "instance_ids": self.instance_ids},
            }
        except waits.WaitTimedOut as timeout:
            event = {"status": "timeout", "message": str(timeout), "failed_ids": list(timeout.status.pending)}
        except waits.WaitFailed as failure:
            event = {
                "status": "failed",
                "message": str(failure),
                "failed_ids": list(failure.status.failed_ids),
            }
        except Exception as error:
            # A trigger that raises leaves the task with a bare traceback; an event carries the reason.
            self.log.exception("Wait for %s failed", what)
            event = {"status": "failed", "message": waits.failure_message(what, str(error)), "failed_ids": []}
        yield TriggerEvent(event)


class InServiceTrigger(ImmutableWaitTrigger):
    """`expected_count` instances of `group_name` InService and Healthy."""

    kind = "in_service"


class HealthyTrigger(ImmutableWaitTrigger):
    """Every one of `instance_ids` healthy in every target group.

    Fails fast on `unhealthy`, except for an instance still within its health check grace period
    (`grace_ends`, read from AWS by the operator before it defers).
    """

    kind = "healthy"


class DrainedTrigger(ImmutableWaitTrigger):
    """None of `instance_ids` (None: no target at all) still draining in the target groups."""

    kind = "drained"


TRIGGERS: dict[str, type[ImmutableWaitTrigger]] = {
    trigger.kind: trigger for trigger in (InServiceTrigger, HealthyTrigger, DrainedTrigger)
}
