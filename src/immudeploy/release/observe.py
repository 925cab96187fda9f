"""The observation window after cutover: the new fleet must stay healthy and its alarms quiet, or we swap back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from immudeploy.aws.target_health import unhealthy_targets
from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import listed

logger = logging.getLogger(__name__)

# DescribeAlarms takes at most 100 names per call.
ALARM_BATCH = 100


@dataclass(frozen=True)
class ObservationResult:
    ok: bool
    reason: str
    checks: int


def alarms_firing(cloudwatch: Any, alarm_names: Sequence[str]) -> list[str]:
    """Names of the alarms in ALARM, as `name (reason)`; InvalidInput when a name matches no alarm."""
    states: dict[str, tuple[str, str]] = {}
    for start in range(0, len(alarm_names), ALARM_BATCH):
        batch = list(alarm_names[start : start + ALARM_BATCH])
        # Composite alarms too: otherwise a composite alarm's name would look like a missing one.
        paginator = cloudwatch.get_paginator("describe_alarms")
        pages = paginator.paginate(AlarmNames=batch, AlarmTypes=["MetricAlarm", "CompositeAlarm"])
        for page in pages:
            for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
                states[alarm["AlarmName"]] = (alarm["StateValue"], alarm.get("StateReason", ""))
    missing = [name for name in alarm_names if name not in states]
    if missing:
        raise InvalidInput(
            "alarm_names", f"no CloudWatch alarm named {listed(missing)} (misspelt, other region?)"
        )
    return [f"{name} ({states[name][1]})" for name in alarm_names if states[name][0] == "ALARM"]


def observe_release(
    elbv2: Any,
    cloudwatch: Any,
    *,
    target_group_arns: Sequence[str],
    instance_ids: Sequence[str],
    alarm_names: Sequence[str],
    duration_seconds: float,
    poll_interval: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Any = logger,
) -> ObservationResult:
    """Watch the new fleet for `duration_seconds`; ok=False at the first unhealthy target or firing alarm.

    Checks once more at the end of the window, so duration 0 means exactly one check. A named alarm that
    does not exist raises InvalidInput on the first check: a misspelt alarm must not pass silently.
    """
    if not target_group_arns or not instance_ids:
        raise InvalidInput("observe_release", "needs at least one target group and one instance")
    if duration_seconds < 0 or poll_interval <= 0:
        raise InvalidInput("observe_release", "duration_seconds must be >= 0 and poll_interval > 0")
    started = clock()
    checks = 0
    while True:
        checks += 1
        # Alarms first: a misconfigured alarm name is reported even when a target is unhealthy too.
        firing = alarms_firing(cloudwatch, alarm_names) if alarm_names else []
        if firing:
            reason = f"alarm(s) in ALARM: {listed(firing)}"
            log.warning("Observation failed at check %d: %s", checks, reason)
            return ObservationResult(ok=False, reason=reason, checks=checks)
        unhealthy = unhealthy_targets(elbv2, target_group_arns, instance_ids)
        if unhealthy:
            reason = f"target(s) not healthy: {listed(unhealthy)}"
            log.warning("Observation failed at check %d: %s", checks, reason)
            return ObservationResult(ok=False, reason=reason, checks=checks)
        elapsed = clock() - started
        if elapsed >= duration_seconds:
            reason = (
                f"{len(instance_ids)} instance(s) healthy in {len(target_group_arns)} target group(s) and "
                f"{len(alarm_names)} alarm(s) quiet for {duration_seconds:g} s ({checks} checks)"
            )
            log.info("Observation passed: %s", reason)
            return ObservationResult(ok=True, reason=reason, checks=checks)
        remaining = duration_seconds - elapsed
        log.info(
            "Observation check %d ok: %d instance(s) healthy, %d alarm(s) quiet; %.0f s of %g s left",
            checks,
            len(instance_ids),
            len(alarm_names),
            remaining,
            duration_seconds,
        )
        sleep(min(poll_interval, remaining))
