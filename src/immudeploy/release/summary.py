"""What a run did, for the task log and XCom: what serves now, which group it replaced, time per phase."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from immudeploy.core.plan import DeployPlan

log = logging.getLogger(__name__)


def summarize(
    plan: DeployPlan,
    image_id: str,
    group_name: str,
    instance_count: int,
    timings: Mapping[str, float],
    retired: Mapping[str, Any],
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
    return {
        "app": plan.app,
        "environment": plan.environment,
        "version": plan.version,
        "image_id": image_id,
        "server_group": group_name,
        "replaced": replaced,
        "deleted_groups": list(retired.get("deleted_groups", [])),
        "phase_seconds": dict(timings),
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
