"""The deferrable side of immudeploy.aws.waits: one trigger polls in-service, health-gate and drain checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore.exceptions import ClientError

from immudeploy.aws import waits
from immudeploy.aws.connection import DEFAULT_CONN_ID, aws_hook
from immudeploy.core.wait_status import WaitStatus


def build_client(service: str, aws_conn_id: str, region_name: str | None) -> Any:
    """A sync boto3 client from the Airflow connection; tests replace this to hand in a stubbed client."""
    return aws_hook(service, aws_conn_id, region_name).conn


class ImmutableWaitTrigger(BaseTrigger):
    """Polls one wait (`kind`: in_service, healthy or drained) and fires exactly one event.

    Event: {"status": "success" | "failed" | "timeout", "message": str, "failed_ids": [instance ids]};
    on timeout `failed_ids` names the instances still not ready. Read-only, so safe to run twice.
    """

    def __init__(
        self,
        *,
        kind: str,
        aws_conn_id: str = DEFAULT_CONN_ID,
        region_name: str | None = None,
        group_name: str | None = None,
        target_group_arns: list[str] | None = None,
        instance_ids: list[str] | None = None,
        expected_count: int = 0,
        fail_fast: bool = True,
        poll_interval: float = 10.0,
        timeout_seconds: float = 600.0,
    ) -> None:
        super().__init__()
        if kind not in waits.WAIT_SERVICES:
            raise ValueError(f"unknown wait kind {kind!r}; expected one of {sorted(waits.WAIT_SERVICES)}")
        self.kind = kind
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.group_name = group_name
        self.target_group_arns = list(target_group_arns or [])
        self.instance_ids = None if instance_ids is None else list(instance_ids)
        self.expected_count = expected_count
        self.fail_fast = fail_fast
        self.poll_interval = poll_interval
        self.timeout_seconds = timeout_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "kind": self.kind,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "group_name": self.group_name,
                "target_group_arns": list(self.target_group_arns),
                "instance_ids": None if self.instance_ids is None else list(self.instance_ids),
                "expected_count": self.expected_count,
                "fail_fast": self.fail_fast,
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
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The deadline restarts if the triggerer restarts; the operator's defer timeout is the backstop.
        deadline = time.monotonic() + self.timeout_seconds
        what = self.kind
        try:
            # Built in a thread: the connection lookup and boto3 setup block.
            client = await asyncio.to_thread(
                build_client, waits.WAIT_SERVICES[self.kind], self.aws_conn_id, self.region_name
            )
            what, check = self._check(client)
            event = await self._poll(check, what, deadline)
        except Exception as error:
            # A trigger that raises leaves the task with a bare traceback; an event carries the reason.
            self.log.exception("Wait for %s failed", what)
            event = {"status": "failed", "message": waits.failure_message(what, str(error)), "failed_ids": []}
        yield TriggerEvent(event)

    async def _poll(self, check: Callable[[], WaitStatus], what: str, deadline: float) -> dict[str, Any]:
        last = WaitStatus(False, False, "no answer from AWS yet")
        throttled = 0
        while True:
            try:
                status: WaitStatus = await asyncio.to_thread(check)
            except ClientError as error:
                if not waits.is_throttling(error):
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._timeout_event(what, last, " (AWS throttling)")
                delay = min(waits.throttle_backoff(throttled), remaining)
                throttled += 1
                self.log.warning("AWS throttled the wait for %s (%s); retrying in %.1fs", what, error, delay)
                await asyncio.sleep(delay)
                continue
            throttled = 0
            last = status
            self.log.info("Waiting for %s: %s", what, status.message)
            if status.failed:
                message = waits.failure_message(what, status.message)
                return {"status": "failed", "message": message, "failed_ids": list(status.failed_ids)}
            if status.done:
                return {"status": "success", "message": status.message, "failed_ids": []}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._timeout_event(what, status)
            await asyncio.sleep(min(self.poll_interval, remaining))

    def _timeout_event(self, what: str, last: WaitStatus, note: str = "") -> dict[str, Any]:
        message = waits.timeout_message(what, self.timeout_seconds, last.message + note)
        return {"status": "timeout", "message": message, "failed_ids": list(last.pending)}
