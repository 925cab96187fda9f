"""What a run did, for the task log and XCom: what serves now, which group it replaced, time per phase, what it cost."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from immudeploy.core.naming import TAG_DEPLOY_ID, TAG_ENVIRONMENT, staging_environment
from immudeploy.core.plan import DeployPlan

log = logging.getLogger(__name__)


def summarize(
    plan: DeployPlan,
    image_id: str,
    group_name: str,
    instance_count: int,
    timings: Mapping[str, float],
    retired: Mapping[str, Any],
    cost: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    replaced = plan.live.name if plan.live else None
    lines = [
        f"### {plan.app}/{plan.environment} now runs {plan.version}",
        "",
        f"- image: `{image_id}`",
        f"- server group: `{group_name}` ({instance_count} instances)"
        + (f", replacing `{replaced}`" if replaced else " (first deploy)"),
        f"- deleted groups: {', '.join(retired.get('deleted_groups', [])) or 'none'}; "
        f"kept for rollback: {', '.join(retired.get('kept_groups', [])) or 'none'}",
        f"- deleted images: {', '.join(retired.get('deleted_images', [])) or 'none'}",
        "",
        "| phase | seconds |",
        "| --- | ---: |",
        *[f"| {phase} | {seconds:.1f} |" for phase, seconds in timings.items()],
    ]
    lines += [f"- {note}" for note in plan.notes]
    if cost is not None:
        lines += ["", *cost_lines(cost)]
    return {
        "app": plan.app,
        "environment": plan.environment,
        "version": plan.version,
        "image_id": image_id,
        "server_group": group_name,
        "replaced": replaced,
        "deleted_groups": list(retired.get("deleted_groups", [])),
        "phase_seconds": dict(timings),
        "cost": dict(cost) if cost is not None else None,
        "markdown": "\n".join(lines),
    }


def phase_seconds(task_seconds: Mapping[str, float | None], phases: Sequence[str]) -> dict[str, float]:
    """Seconds per phase: the summed durations of its finished tasks, as Airflow recorded them.

    `task_seconds` maps task ids (`launch.launch_fleet`, or `prepare` for a phase of one task) to
    each task instance's own duration; tasks that did not run (skipped, None) count nothing.
    """
    totals = {phase: 0.0 for phase in phases}
    ran: set[str] = set()
    for task_id, seconds in task_seconds.items():
        phase = task_id.split(".", 1)[0]
        if phase in totals and seconds is not None:
            totals[phase] += float(seconds)
            ran.add(phase)
    return {phase: round(totals[phase], 1) for phase in phases if phase in ran}


# --- what a deploy cost ------------------------------------------------------------------------

# EC2's StateTransitionReason of a stopped or terminated instance: "User initiated (2026-01-01
# 10:55:14 GMT)" on AWS, "... UTC)" on moto. The only place describe_instances gives an end time.
_TRANSITION_TIME = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?:GMT|UTC)\)")
_ENDED_STATES = ("shutting-down", "terminated", "stopping", "stopped")


@dataclass(frozen=True)
class InstanceSpan:
    """When one instance of a group ran: from launch to its end (None: still running)."""

    instance_id: str
    group_name: str
    instance_type: str
    launched_at: datetime
    ended_at: datetime | None

    def minutes(self, now: datetime, since: datetime | None = None) -> float:
        start = max(self.launched_at, since) if since else self.launched_at
        end = self.ended_at or now
        return max(0.0, (end - start).total_seconds() / 60)


def ended_at(instance: Mapping[str, Any]) -> datetime | None:
    """When an instance stopped running, from its state transition reason; None while it runs.

    An ended instance whose reason carries no time (AWS sometimes gives "Server.ScheduledStop"
    or nothing) counts as ended at its launch: its minutes are then undercounted, never invented.
    """
    if instance.get("State", {}).get("Name") not in _ENDED_STATES:
        return None
    match = _TRANSITION_TIME.search(instance.get("StateTransitionReason") or "")
    if match is None:
        launched: datetime = instance["LaunchTime"]
        return launched
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def instance_spans(ec2: Any, filters: list[dict[str, Any]]) -> list[InstanceSpan]:
    """Every instance matching `filters`, terminated ones included, with its group (Auto Scaling's tag)."""
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    spans = []
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
                launched = instance["LaunchTime"]
                spans.append(
                    InstanceSpan(
                        instance_id=instance["InstanceId"],
                        group_name=tags.get("aws:autoscaling:groupName", ""),
                        instance_type=instance.get("InstanceType", ""),
                        launched_at=launched if launched.tzinfo else launched.replace(tzinfo=UTC),
                        ended_at=ended_at(instance),
                    )
                )
    return sorted(spans, key=lambda span: (span.group_name, span.launched_at, span.instance_id))


def _fleet(spans: Sequence[InstanceSpan], minutes: float) -> dict[str, Any]:
    return {
        "instance_minutes": round(minutes, 1),
        "instances": len(spans),
        "instance_types": sorted({span.instance_type for span in spans}),
        "groups": sorted({span.group_name for span in spans}),
    }


def deploy_cost(
    new_group: Sequence[InstanceSpan],
    old_group: Sequence[InstanceSpan],
    staging: Sequence[InstanceSpan],
    now: datetime,
) -> dict[str, Any]:
    """The instance-minutes a deploy added on top of running one fleet: what an immutable deploy costs.

    - staging: every staging instance, from its launch to its end.
    - overlap: the old fleet's instances that have ended, counted from the new fleet's first
      launch (both fleets ran) to their end.
    - kept so far: the old fleet's instances still running (a group kept at full size), from the
      new fleet's first launch until `now`; they keep adding until the group is retired.
    The new fleet itself replaces the old one and is not counted.
    """
    start = min((span.launched_at for span in new_group), default=now)
    ended = [span for span in old_group if span.ended_at is not None]
    running = [span for span in old_group if span.ended_at is None]
    parts = {
        "staging": _fleet(staging, sum(span.minutes(now) for span in staging)),
        "overlap": _fleet(ended, sum(span.minutes(now, since=start) for span in ended)),
        "kept_so_far": _fleet(running, sum(span.minutes(now, since=start) for span in running)),
    }
    total = sum(part["instance_minutes"] for part in parts.values())
    return {
        "total_instance_minutes": round(total, 1),
        "measured_at": now.isoformat(timespec="seconds"),
        **parts,
    }


def group_filter(group_names: Iterable[str]) -> list[dict[str, Any]]:
    return [{"Name": "tag:aws:autoscaling:groupName", "Values": sorted(set(group_names))}]


def measure_deploy_cost(
    clients: Any, plan: DeployPlan, group_name: str, now: datetime | None = None
) -> dict[str, Any]:
    """deploy_cost from the instances' launch and end times as EC2 reports them now.

    The run's staging instances are found by its deploy id and the staging environment tag (their
    group is gone by now); the fleets by Auto Scaling's group tag.
    """
    old = plan.live.name if plan.live and plan.live.name != group_name else None
    spans = instance_spans(clients.ec2, group_filter([group_name, *([old] if old else [])]))
    staging = instance_spans(
        clients.ec2,
        [
            {"Name": f"tag:{TAG_DEPLOY_ID}", "Values": [plan.deploy_id]},
            {"Name": f"tag:{TAG_ENVIRONMENT}", "Values": [staging_environment(plan.environment)]},
        ],
    )
    return deploy_cost(
        [span for span in spans if span.group_name == group_name],
        [span for span in spans if span.group_name == old],
        staging,
        now or datetime.now(UTC),
    )


def cost_lines(cost: Mapping[str, Any]) -> list[str]:
    """The cost as markdown lines: instance-minutes per part, with instance count and type to price them."""
    if "error" in cost:
        return [f"- instance-minutes: not measured ({cost['error']})"]
    lines = [f"- instance-minutes added: {cost['total_instance_minutes']:.1f}"]
    for part, label in (
        ("overlap", "both fleets running"),
        ("staging", "staging"),
        ("kept_so_far", "kept group so far"),
    ):
        fleet = cost[part]
        types = ", ".join(fleet["instance_types"]) or "-"
        lines.append(
            f"  - {label}: {fleet['instance_minutes']:.1f} ({fleet['instances']} x {types}"
            + (f", {', '.join(fleet['groups'])}" if fleet["groups"] else "")
            + ")"
        )
    return lines
