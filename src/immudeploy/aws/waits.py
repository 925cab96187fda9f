"""What "in service", "healthy" and "drained" mean, how long to wait for them, and the blocking wait loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from immudeploy.aws.errors import is_throttling
from immudeploy.aws.groups.inventory import DELETE_IN_PROGRESS, describe_asg
from immudeploy.aws.target_health import describe_targets, evaluate_drain, evaluate_health_gate
from immudeploy.core.errors import DeployError, WaitTimeout
from immudeploy.core.naming import listed, target_group_label
from immudeploy.core.wait_status import WaitStatus

logger = logging.getLogger(__name__)

# The boto3 service each kind of wait polls.
WAIT_SERVICES: dict[str, str] = {"in_service": "autoscaling", "healthy": "elbv2", "drained": "elbv2"}

THROTTLE_BACKOFF_BASE = 1.0
THROTTLE_BACKOFF_CAP = 30.0

# AWS defaults, used when a target group does not report a value (e.g. health checks disabled).
DEFAULT_HEALTH_CHECK_INTERVAL = 30
DEFAULT_HEALTHY_THRESHOLD = 5
DEFAULT_HEALTH_CHECK_TIMEOUT = 5
DEFAULT_DEREGISTRATION_DELAY = 300
DEREGISTRATION_DELAY_KEY = "deregistration_delay.timeout_seconds"
# Launch plus boot of an instance; launch lifecycle hooks need an explicit timeout.
DEFAULT_IN_SERVICE_TIMEOUT = 900.0


def evaluate_in_service(asg_description: Mapping[str, Any] | None, expected_count: int) -> WaitStatus:
    """Done when the group has at least `expected_count` instances InService and Healthy.

    `asg_description` is one entry of describe_auto_scaling_groups, or None when the group is gone.
    """
    if asg_description is None:
        return WaitStatus(False, True, "the Auto Scaling group does not exist (deleted?)")
    name = asg_description.get("AutoScalingGroupName", "?")
    if asg_description.get("Status") == DELETE_IN_PROGRESS:
        return WaitStatus(False, True, f"{name} is being deleted")
    ready: list[str] = []
    pending: list[str] = []
    notes: list[str] = []
    for instance in asg_description.get("Instances", []):
        state, health = instance.get("LifecycleState", "?"), instance.get("HealthStatus", "?")
        if state == "InService" and health == "Healthy":
            ready.append(instance["InstanceId"])
        else:
            pending.append(instance["InstanceId"])
            notes.append(f"{instance['InstanceId']} ({state}/{health})")
    message = f"{len(ready)} of {expected_count} instances InService and Healthy in {name}"
    if len(ready) >= expected_count:
        return WaitStatus(True, False, message, [], [])
    if notes:
        message += f"; pending: {listed(notes)}"
    missing = expected_count - len(ready) - len(pending)
    if missing > 0:
        message += f"; {missing} not launched yet"
    return WaitStatus(False, False, message, pending, [])


# Lifecycle states of instances leaving a group (or parked): they will never turn healthy behind it.
LEAVING_STATE_PREFIXES = ("Terminat", "Detach", "EnteringStandby", "Standby", "Warmed")


def group_instance_ids(autoscaling: Any, group_name: str, *, serving: bool = False) -> list[str]:
    """The ids of the group's instances ([] when the group is gone); `serving`: leave out leaving ones."""
    group = describe_asg(autoscaling, group_name)
    return [
        instance["InstanceId"]
        for instance in (group or {}).get("Instances", [])
        if not (serving and instance.get("LifecycleState", "").startswith(LEAVING_STATE_PREFIXES))
    ]


# describe_auto_scaling_instances takes at most 50 instance ids, describe_auto_scaling_groups 100 names.
_INSTANCE_BATCH = 50
_GROUP_BATCH = 100


def _batches(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def health_check_grace_ends(autoscaling: Any, ec2: Any, instance_ids: Sequence[str]) -> dict[str, float]:
    """When each instance's health check grace period ends (epoch seconds), as AWS describes it.

    The grace period is the instance's Auto Scaling group's HealthCheckGracePeriod, counted from
    the instance's LaunchTime (AWS counts from InService, which no API reports and which comes
    later: so the gate never tolerates longer than Auto Scaling does). Instances outside any group,
    or of a group without a grace period, are left out: for them `unhealthy` fails at once.
    """
    ids = list(dict.fromkeys(instance_ids))
    group_of: dict[str, str] = {}
    for batch in _batches(ids, _INSTANCE_BATCH):
        pages = autoscaling.get_paginator("describe_auto_scaling_instances").paginate(InstanceIds=batch)
        for page in pages:
            for instance in page["AutoScalingInstances"]:
                group_of[instance["InstanceId"]] = instance["AutoScalingGroupName"]
    grace: dict[str, int] = {}
    for batch in _batches(sorted(set(group_of.values())), _GROUP_BATCH):
        pages = autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
            AutoScalingGroupNames=batch
        )
        for page in pages:
            for group in page["AutoScalingGroups"]:
                grace[group["AutoScalingGroupName"]] = int(group.get("HealthCheckGracePeriod") or 0)
    graced = [iid for iid in ids if grace.get(group_of.get(iid, ""), 0) > 0]
    ends: dict[str, float] = {}
    for batch in _batches(graced, _INSTANCE_BATCH):
        # A filter, not InstanceIds: an instance gone meanwhile is left out instead of failing the call.
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": batch}]
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    iid = instance["InstanceId"]
                    ends[iid] = instance["LaunchTime"].timestamp() + grace[group_of[iid]]
    return ends


# ---------------------------------------------------------------------------------------------
# Timeouts from the target groups' own settings
# ---------------------------------------------------------------------------------------------


def _describe_target_groups(elbv2: Any, target_group_arns: Sequence[str]) -> list[dict[str, Any]]:
    return elbv2.describe_target_groups(TargetGroupArns=list(target_group_arns))["TargetGroups"]


def health_gate_timeout(
    elbv2: Any, target_group_arns: Sequence[str], margin: float = 60.0, floor: float = 120.0
) -> float:
    """Seconds a new target may need to turn healthy: interval * (healthy threshold + 1) + check timeout.

    The +1 covers a target registered just after a check started; max over the groups, plus
    `margin`, never below `floor`.
    """
    longest = 0.0
    for group in _describe_target_groups(elbv2, target_group_arns):
        interval = group.get("HealthCheckIntervalSeconds") or DEFAULT_HEALTH_CHECK_INTERVAL
        threshold = group.get("HealthyThresholdCount") or DEFAULT_HEALTHY_THRESHOLD
        check_timeout = group.get("HealthCheckTimeoutSeconds") or DEFAULT_HEALTH_CHECK_TIMEOUT
        longest = max(longest, float(interval * (threshold + 1) + check_timeout))
    return max(floor, longest + margin)


def drain_timeout(elbv2: Any, target_group_arns: Sequence[str], margin: float = 60.0) -> float:
    """The longest deregistration delay of the target groups plus `margin`: AWS drains no longer."""
    longest = 0.0
    for arn in target_group_arns:
        attributes = elbv2.describe_target_group_attributes(TargetGroupArn=arn)["Attributes"]
        values = {a["Key"]: a["Value"] for a in attributes}
        longest = max(longest, float(values.get(DEREGISTRATION_DELAY_KEY, DEFAULT_DEREGISTRATION_DELAY)))
    return longest + margin


# ---------------------------------------------------------------------------------------------
# Checks: the one definition of each wait, shared by the blocking loop, the trigger and the operators
# ---------------------------------------------------------------------------------------------


def in_service_check(autoscaling: Any, group_name: str, expected_count: int) -> Callable[[], WaitStatus]:
    return lambda: evaluate_in_service(describe_asg(autoscaling, group_name), expected_count)


def health_gate_check(
    elbv2: Any,
    target_group_arns: Sequence[str],
    instance_ids: Sequence[str],
    *,
    fail_fast: bool = True,
    grace_ends: Mapping[str, float] | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> Callable[[], WaitStatus]:
    """`grace_ends` (see health_check_grace_ends) is data, read once before the wait: the trigger
    carries it as an argument, and both paths judge it against the wall clock the same way."""
    return lambda: evaluate_health_gate(
        describe_targets(elbv2, target_group_arns, instance_ids),
        instance_ids,
        fail_fast=fail_fast,
        grace_ends=grace_ends,
        now=wall_clock(),
    )


def drain_check(
    elbv2: Any, target_group_arns: Sequence[str], instance_ids: Sequence[str] | None
) -> Callable[[], WaitStatus]:
    return lambda: evaluate_drain(describe_targets(elbv2, target_group_arns, instance_ids), instance_ids)


def wait_check(
    kind: str,
    client: Any,
    *,
    group_name: str | None = None,
    target_group_arns: Sequence[str] = (),
    instance_ids: Sequence[str] | None = None,
    expected_count: int = 0,
    fail_fast: bool = True,
    grace_ends: Mapping[str, float] | None = None,
) -> tuple[str, Callable[[], WaitStatus]]:
    """(what the wait is for, its check) for one kind of wait; `client` is of WAIT_SERVICES[kind]."""
    tgs = ", ".join(target_group_label(arn) for arn in target_group_arns)
    if kind == "in_service":
        if not group_name:
            raise DeployError("an in_service wait needs a group_name")
        what = f"{expected_count} instances InService in {group_name}"
        return what, in_service_check(client, group_name, expected_count)
    if kind == "healthy":
        ids = list(instance_ids or [])
        what = f"{len(ids)} instances healthy in target groups {tgs}"
        return what, health_gate_check(
            client, target_group_arns, ids, fail_fast=fail_fast, grace_ends=grace_ends
        )
    if kind == "drained":
        count = "all" if instance_ids is None else str(len(instance_ids))
        what = f"{count} targets drained from target groups {tgs}"
        return what, drain_check(client, target_group_arns, instance_ids)
    raise DeployError(f"unknown wait kind {kind!r}; expected one of {sorted(WAIT_SERVICES)}")


# ---------------------------------------------------------------------------------------------
# Blocking waits
# ---------------------------------------------------------------------------------------------


def throttle_backoff(
    attempt: int, base: float = THROTTLE_BACKOFF_BASE, cap: float = THROTTLE_BACKOFF_CAP
) -> float:
    """Seconds to wait after the `attempt`-th consecutive throttling error (0-based): 1, 2, 4 ... cap."""
    return min(cap, base * 2**attempt)


def failure_message(what: str, message: str) -> str:
    return f"Failed waiting for {what}: {message}"


def timeout_message(what: str, timeout: float, message: str) -> str:
    return f"Timed out after {timeout:g}s waiting for {what}: {message}"


class WaitFailed(DeployError):
    """What a wait waited for failed (e.g. a target turned unhealthy); `status` names the instances."""

    def __init__(self, message: str, status: WaitStatus) -> None:
        super().__init__(message)
        self.status = status


class WaitTimedOut(WaitTimeout):
    """A wait ran out of time; `status` is the last look, its `pending` the instances still not ready."""

    def __init__(self, message: str, status: WaitStatus) -> None:
        super().__init__(message)
        self.status = status


def poll(
    check: Callable[[], WaitStatus],
    *,
    what: str,
    timeout: float,
    poll_interval: float,
    log: logging.Logger | Any = logger,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[float, None, WaitStatus]:
    """The one wait loop: yields the seconds to sleep before the next look, returns the final status.

    The blocking path (`wait_for`) sleeps with time.sleep, the deferrable trigger with asyncio.sleep;
    both drive this generator, so they cannot drift apart. Checks at least once; each look is logged;
    throttling backs off exponentially (capped) and counts against the timeout. Raises WaitFailed
    when the check reports a failure and WaitTimedOut after `timeout` seconds.
    """
    deadline = clock() + timeout
    last = WaitStatus(False, False, "no answer from AWS yet")
    throttled = 0
    while True:
        try:
            status = check()
        except ClientError as error:
            if not is_throttling(error):
                raise
            remaining = deadline - clock()
            if remaining <= 0:
                message = timeout_message(what, timeout, f"{last.message} (AWS throttling)")
                raise WaitTimedOut(message, last) from error
            delay = min(throttle_backoff(throttled), remaining)
            throttled += 1
            log.warning("AWS throttled the wait for %s (%s); retrying in %.1fs", what, error, delay)
            yield delay
            continue
        throttled = 0
        last = status
        log.info("Waiting for %s: %s", what, status.message)
        if status.failed:
            raise WaitFailed(failure_message(what, status.message), status)
        if status.done:
            return status
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimedOut(timeout_message(what, timeout, status.message), status)
        yield min(poll_interval, remaining)


def wait_for(
    check: Callable[[], WaitStatus],
    *,
    what: str,
    timeout: float,
    poll_interval: float,
    log: logging.Logger | Any = logger,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> WaitStatus:
    """Block until `check` is done (see `poll`); DeployError when it fails, WaitTimeout after `timeout`."""
    steps = poll(check, what=what, timeout=timeout, poll_interval=poll_interval, log=log, clock=clock)
    while True:
        try:
            delay = next(steps)
        except StopIteration as finished:
            return finished.value
        sleep(delay)


def wait_until_in_service(
    autoscaling: Any,
    group_name: str,
    expected_count: int,
    timeout: float = DEFAULT_IN_SERVICE_TIMEOUT,
    poll_interval: float = 10.0,
    **options: Any,
) -> WaitStatus:
    """Block until `group_name` has `expected_count` InService, Healthy instances."""
    what, check = wait_check("in_service", autoscaling, group_name=group_name, expected_count=expected_count)
    return wait_for(check, what=what, timeout=timeout, poll_interval=poll_interval, **options)


def wait_until_healthy(
    elbv2: Any,
    target_group_arns: Sequence[str],
    instance_ids: Sequence[str],
    timeout: float,
    poll_interval: float = 10.0,
    *,
    fail_fast: bool = True,
    grace_ends: Mapping[str, float] | None = None,
    **options: Any,
) -> WaitStatus:
    """Block until every instance is healthy in every target group; fail on the first unhealthy one
    whose health check grace period (`grace_ends`, from health_check_grace_ends) is over."""
    what, check = wait_check(
        "healthy",
        elbv2,
        target_group_arns=target_group_arns,
        instance_ids=instance_ids,
        fail_fast=fail_fast,
        grace_ends=grace_ends,
    )
    return wait_for(check, what=what, timeout=timeout, poll_interval=poll_interval, **options)


def wait_until_drained(
    elbv2: Any,
    target_group_arns: Sequence[str],
    instance_ids: Sequence[str] | None,
    timeout: float,
    poll_interval: float = 10.0,
    **options: Any,
) -> WaitStatus:
    """Block until none of the instances (None: no target) is draining in the target groups."""
    what, check = wait_check("drained", elbv2, target_group_arns=target_group_arns, instance_ids=instance_ids)
    return wait_for(check, what=what, timeout=timeout, poll_interval=poll_interval, **options)
