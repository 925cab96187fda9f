"""Target health as the load balancer reports it: one home for reading and judging it."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from immudeploy.aws.connection import AwsApi
from immudeploy.core.naming import listed, target_group_label
from immudeploy.core.wait_status import WaitStatus


def describe_targets(
    elbv2: Any, target_group_arns: Sequence[str], instance_ids: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """TargetHealthDescriptions per target group, optionally only those of `instance_ids`.

    One call per target group without a Targets filter: the answer lists every registered port
    and leaves unregistered instances out, which the evaluators read as "not registered".
    """
    wanted = None if instance_ids is None else set(instance_ids)
    result: dict[str, list[dict[str, Any]]] = {}
    for arn in target_group_arns:
        descriptions = elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        result[arn] = [d for d in descriptions if wanted is None or d["Target"]["Id"] in wanted]
    return result


def healthy_target_ids(clients: AwsApi, target_group_arn: str) -> set[str]:
    """Ids of targets whose state is `healthy` in one target group."""
    descriptions = clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)[
        "TargetHealthDescriptions"
    ]
    return {d["Target"]["Id"] for d in descriptions if d.get("TargetHealth", {}).get("State") == "healthy"}


def registered_targets(clients: AwsApi, target_group_arns: Sequence[str]) -> dict[str, list[str]]:
    """Every target still registered (healthy, draining, ...) as `{id: ["state in tg", ...]}`.

    Deleting the instance of any of them would cut its requests.
    """
    registered: dict[str, list[str]] = {}
    for arn, descriptions in describe_targets(clients.elbv2, target_group_arns).items():
        for description in descriptions:
            state = description.get("TargetHealth", {}).get("State", "?")
            registered.setdefault(description["Target"]["Id"], []).append(
                f"{state} in {target_group_label(arn)}"
            )
    return registered


def unhealthy_targets(elbv2: Any, target_group_arns: Sequence[str], instance_ids: Sequence[str]) -> list[str]:
    """`instance in group: state (reason)` for every instance not `healthy` in every target group."""
    problems: list[str] = []
    for arn in target_group_arns:
        # All registrations rather than Targets=[...]: those default to the group's port and would
        # call an instance registered on another port "not registered".
        health = elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        states: dict[str, list[str]] = {}
        for description in health:
            target_health = description["TargetHealth"]
            state = target_health["State"]
            if state != "healthy" and target_health.get("Reason"):
                state = f"{state} ({target_health['Reason']})"
            states.setdefault(description["Target"]["Id"], []).append(state)
        for instance_id in instance_ids:
            seen = states.get(instance_id)
            if not seen:
                problems.append(f"{instance_id} in {target_group_label(arn)}: not registered")
            elif any(state != "healthy" for state in seen):
                problems.append(f"{instance_id} in {target_group_label(arn)}: {', '.join(seen)}")
    return problems


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _by_instance(descriptions: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    # One instance may be registered on several ports of the same target group.
    result: dict[str, list[Mapping[str, Any]]] = {}
    for description in descriptions:
        result.setdefault(description["Target"]["Id"], []).append(description)
    return result


def _reason(health: Mapping[str, Any]) -> str:
    state = health.get("State", "?")
    detail = ": ".join(part for part in (health.get("Reason"), health.get("Description")) if part)
    return f"{state}: {detail}" if detail else state


def evaluate_health_gate(
    target_health_descriptions: Mapping[str, Sequence[Mapping[str, Any]]],
    instance_ids: Sequence[str],
    *,
    fail_fast: bool = True,
    grace_ends: Mapping[str, float] | None = None,
    now: float | None = None,
) -> WaitStatus:
    """Done when every instance is `healthy` in every target group.

    `unhealthy` fails (naming the instances and AWS's reason) unless `fail_fast` is False, then it
    is pending like `initial`; `unused` or absent means not registered yet, also pending. An
    instance in `grace_ends` (its health check grace period's end, epoch seconds) is still allowed
    to be `unhealthy` before that time, `now` (default: the wall clock): a slow first boot is
    tolerated as Auto Scaling tolerates it, a broken one fails as soon as the grace is over.
    """
    grace_ends = grace_ends or {}
    if now is None:
        now = time.time()
    wanted = _unique(instance_ids)
    if not wanted:
        return WaitStatus(False, True, "no instances to check: the health gate would pass vacuously")
    if not target_health_descriptions:
        return WaitStatus(False, True, "no target groups to check")
    pending: list[str] = []
    failed: list[str] = []
    pending_notes: list[str] = []
    failed_notes: list[str] = []
    for arn, descriptions in target_health_descriptions.items():
        tg = target_group_label(arn)
        by_instance = _by_instance(descriptions)
        for instance_id in wanted:
            entries = by_instance.get(instance_id, [])
            healths = [entry.get("TargetHealth", {}) for entry in entries]
            bad = [h for h in healths if str(h.get("State", "")).startswith("unhealthy")]
            grace_end = grace_ends.get(instance_id)
            if bad and fail_fast and grace_end is not None and now < grace_end:
                pending.append(instance_id)
                pending_notes.append(
                    f"{instance_id} in {tg} ({_reason(bad[0])}; tolerated during its health check "
                    f"grace period, {grace_end - now:.0f}s left)"
                )
            elif bad and fail_fast:
                failed.append(instance_id)
                over = "" if grace_end is None else "; its health check grace period is over"
                failed_notes.append(f"{instance_id} in {tg} ({_reason(bad[0])}{over})")
            elif not healths:
                pending.append(instance_id)
                pending_notes.append(f"{instance_id} in {tg} (not registered)")
            elif any(h.get("State") != "healthy" for h in healths):
                pending.append(instance_id)
                worst = next(h for h in healths if h.get("State") != "healthy")
                pending_notes.append(f"{instance_id} in {tg} ({_reason(worst)})")
    groups = len(target_health_descriptions)
    if failed:
        failed = _unique(failed)
        message = f"{len(failed)} of {len(wanted)} instances unhealthy: {listed(failed_notes)}"
        return WaitStatus(False, True, message, _unique(pending), failed)
    pending = _unique(pending)
    healthy = len(wanted) - len(pending)
    message = f"{healthy} of {len(wanted)} instances healthy in all {groups} target group(s)"
    if pending:
        return WaitStatus(False, False, f"{message}; waiting for: {listed(pending_notes)}", pending, [])
    return WaitStatus(True, False, message, [], [])


def evaluate_drain(
    target_health_descriptions: Mapping[str, Sequence[Mapping[str, Any]]],
    instance_ids: Sequence[str] | None,
) -> WaitStatus:
    """Done when none of `instance_ids` is registered in any target group any more.

    A named instance still `healthy` (or `initial`, `unhealthy`) has not started draining: on AWS a
    detach deregisters a group's instances asynchronously, after the call returned, so "not
    draining" right after it proves nothing. With `instance_ids` None (every target) only `draining`
    targets are waited for.
    """
    wanted = None if instance_ids is None else set(instance_ids)
    pending: list[str] = []
    draining: list[str] = []
    not_started: list[str] = []
    for arn, descriptions in target_health_descriptions.items():
        tg = target_group_label(arn)
        for description in descriptions:
            instance_id = description["Target"]["Id"]
            if wanted is not None and instance_id not in wanted:
                continue
            state = description.get("TargetHealth", {}).get("State")
            if state == "draining":
                pending.append(instance_id)
                draining.append(f"{instance_id} in {tg}")
            elif state not in (None, "unused") and wanted is not None:
                pending.append(instance_id)
                not_started.append(f"{instance_id} in {tg} ({state})")
    total = f" of {len(wanted)}" if wanted is not None else ""
    message = f"{len(draining)}{total} targets still draining"
    if draining:
        message += f": {listed(draining)}"
    if not_started:
        message += f"; {len(not_started)} still registered, not deregistered yet: {listed(not_started)}"
    return WaitStatus(not pending, False, message, _unique(pending), [])
