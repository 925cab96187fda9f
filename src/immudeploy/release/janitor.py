"""The janitor: removes what deploys leave behind once nothing needs it, each phase a plain function.

Every function returns what it removed, or with `dry_run` what it would remove, as `Removed`
values. The per-target phases (expired groups, zero-kept groups, abandoned staging, images) expect
the caller to hold that app and environment's lock: no run of it is alive meanwhile, so nothing
they find belongs to a running run. None of them touches a group attached to a target group or
with an instance registered in one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from immudeploy.aws.errors import error_code
from immudeploy.aws.groups.inventory import raw_groups_of, to_server_group
from immudeploy.aws.groups.retire import (
    KEPT_ZERO,
    delete_server_group,
    expiry_of,
    scale_to_zero,
    still_serving,
)
from immudeploy.aws.target_health import registered_targets
from immudeploy.core.errors import DeployError
from immudeploy.core.naming import STATE_DISABLED, TAG_STATE, from_aws_tags
from immudeploy.core.plan import Capacity, ServerGroup
from immudeploy.release.deploy import apply_image_retention, remove_abandoned_staging
from immudeploy.release.summary import group_filter, instance_spans

log = logging.getLogger(__name__)

# Packer's temporary key pairs and security groups are `packer_` + a time-ordered UUID whose first
# 8 hex digits are the Unix time of the build (packer/common/uuid TimeOrderedUUID): their age.
PACKER_TEMPORARY_NAME = re.compile(r"^packer_([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The tag packer/app.pkr.hcl puts on every build instance (run_tags); a fleet instance never has it.
PACKER_BUILD_TAG = "packer:ami-name"
PACKER_APP_TAG = "packer:app"
_LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]


@dataclass(frozen=True)
class Removed:
    """One thing the janitor removed (or, in a dry run, would remove)."""

    kind: str
    name: str
    reason: str
    instance_type: str = ""
    instances: int = 0
    instance_hours: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _kept_groups(clients: Any, app: str, environment: str) -> list[tuple[ServerGroup, dict[str, str]]]:
    """This target's disabled (kept) groups with their tags, oldest first."""
    found = []
    for raw in raw_groups_of(clients, app, environment, include_deleting=False):
        tags = from_aws_tags(raw.get("Tags"))
        if tags.get(TAG_STATE) == STATE_DISABLED:
            found.append((to_server_group(clients, raw), tags))
    return sorted(found, key=lambda item: item[0].sequence)


def kept_instance_hours(
    clients: Any, group: ServerGroup, since: datetime | None, now: datetime
) -> tuple[float, str, int]:
    """Instance-hours the group's instances ran since it was kept (all of its life when unknown)."""
    spans = instance_spans(clients.ec2, group_filter([group.name]))
    hours = sum(span.minutes(now, since=since) for span in spans) / 60
    types = ", ".join(sorted({span.instance_type for span in spans})) or (group.instance_type or "")
    return round(hours, 3), types, len(spans)


def retire_expired_groups(
    clients: Any,
    app: str,
    environment: str,
    target_group_arns: Sequence[str],
    *,
    keep_for_minutes: float | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[Removed]:
    """Delete this target's kept groups whose expiry tag has passed, through the deploy's delete.

    A group without an expiry (kept until the next deploy), not yet expired, or still serving
    (attached, or with a target registered in `target_group_arns`) stays. The instance-hours each
    ran while kept are counted from `expiry - keep_for_minutes` when the retention is known.
    Raises DeployError after the others when AWS refuses a delete.
    """
    moment = now or datetime.now(UTC)
    registered = registered_targets(clients, list(target_group_arns))
    removed: list[Removed] = []
    failures: list[str] = []
    for group, tags in _kept_groups(clients, app, environment):
        expires = expiry_of(tags)
        if expires is None or expires > moment:
            continue
        serving = still_serving(group, registered)
        if serving:
            log.warning("Not retiring expired group %s: %s", group.name, serving)
            continue
        since = expires - timedelta(minutes=keep_for_minutes) if keep_for_minutes else None
        hours, types, count = kept_instance_hours(clients, group, since, moment)
        entry = Removed(
            "server-group",
            group.name,
            f"kept until {expires.isoformat(timespec='seconds')}",
            instance_type=types,
            instances=count,
            instance_hours=hours,
        )
        if dry_run:
            removed.append(entry)
            continue
        try:
            if delete_server_group(clients, group.name):
                log.info("Retired expired kept group %s (%.2f instance-hours kept)", group.name, hours)
                removed.append(entry)
        except (ClientError, DeployError) as error:
            failures.append(f"{group.name}: {error}")
    if failures:
        raise DeployError(f"could not retire expired group(s): {'; '.join(failures)}")
    return removed


def scale_down_zero_kept(
    clients: Any,
    app: str,
    environment: str,
    target_group_arns: Sequence[str],
    kept_capacity: str,
    *,
    dry_run: bool = False,
) -> list[Removed]:
    """With `kept_capacity` "zero", scale this target's kept groups that still have a size to 0.

    An operator or a scaling policy may have scaled one up since its retirement; a serving group
    is never touched.
    """
    if kept_capacity != KEPT_ZERO:
        return []
    registered = registered_targets(clients, list(target_group_arns))
    removed = []
    for group, _ in _kept_groups(clients, app, environment):
        if group.capacity == Capacity(0, 0, 0) or still_serving(group, registered):
            continue
        entry = Removed(
            "scaled-to-zero",
            group.name,
            f"kept at zero capacity, was min {group.capacity.min}, max {group.capacity.max}, "
            f"desired {group.capacity.desired}",
            instance_type=group.instance_type or "",
            instances=len(group.instance_ids),
        )
        if dry_run or scale_to_zero(clients, group):
            removed.append(entry)
    return removed


def remove_dead_runs_staging(
    clients: Any, app: str, environment: str, *, dry_run: bool = False
) -> list[Removed]:
    """Staging groups and launch templates of runs that are no longer running (the caller holds the lock)."""
    names = remove_abandoned_staging(clients, app, environment, dry_run=dry_run)
    return [Removed("staging", name, "left by a run that is no longer running") for name in names]


def remove_unused_images(clients: Any, app: str, keep_images: int, *, dry_run: bool = False) -> list[Removed]:
    """Image retention, as a deploy's teardown applies it."""
    ids = apply_image_retention(clients, app, keep_images, dry_run=dry_run)
    return [Removed("image", image_id, f"beyond the newest {keep_images} and unused") for image_id in ids]


def packer_name_time(name: str) -> datetime | None:
    """When Packer made a temporary key pair or security group, read from its name; None if not Packer's."""
    match = PACKER_TEMPORARY_NAME.fullmatch(name)
    return datetime.fromtimestamp(int(match[1], 16), UTC) if match else None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def remove_packer_leftovers(
    clients: Any,
    *,
    older_than_seconds: float,
    apps: Sequence[str] | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[Removed]:
    """What killed bakes left: build instances, temporary key pairs and security groups.

    Only things older than `older_than_seconds` (the longest bake timeout): a running bake's are
    younger. Build instances by the tag the template sets (of `apps` when given), key pairs and
    security groups by Packer's `packer_<time-ordered uuid>` names. A security group still used by
    a terminating instance is left for the next run.
    """
    moment = now or datetime.now(UTC)
    cutoff = moment - timedelta(seconds=older_than_seconds)
    removed: list[Removed] = []
    filters: list[dict[str, Any]] = [
        {"Name": "tag-key", "Values": [PACKER_BUILD_TAG]},
        {"Name": "instance-state-name", "Values": _LIVE_INSTANCE_STATES},
    ]
    instances = []
    for page in clients.ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = from_aws_tags(instance.get("Tags"))
                if apps is not None and tags.get(PACKER_APP_TAG) not in apps:
                    continue
                if _aware(instance["LaunchTime"]) <= cutoff:
                    instances.append(instance)
                    removed.append(
                        Removed(
                            "packer-instance",
                            instance["InstanceId"],
                            f"build instance of {tags.get(PACKER_BUILD_TAG)} launched "
                            f"{_aware(instance['LaunchTime']).isoformat(timespec='seconds')}",
                            instance_type=instance.get("InstanceType", ""),
                            instances=1,
                        )
                    )
    if instances and not dry_run:
        clients.ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in instances])
    key_pairs = clients.ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["packer_*"]}])
    for pair in key_pairs.get("KeyPairs", []):
        made = packer_name_time(pair["KeyName"])
        if made is None or made > cutoff:
            continue
        if not dry_run:
            clients.ec2.delete_key_pair(KeyName=pair["KeyName"])
        removed.append(Removed("packer-key-pair", pair["KeyName"], f"made {made.isoformat()}"))
    pages = clients.ec2.get_paginator("describe_security_groups").paginate(
        Filters=[{"Name": "group-name", "Values": ["packer_*"]}]
    )
    for group in (g for page in pages for g in page["SecurityGroups"]):
        made = packer_name_time(group["GroupName"])
        if made is None or made > cutoff:
            continue
        if not dry_run:
            try:
                clients.ec2.delete_security_group(GroupId=group["GroupId"])
            except ClientError as error:
                if error_code(error) != "DependencyViolation":
                    raise
                log.info("Security group %s is still in use; the next run deletes it", group["GroupName"])
                continue
        removed.append(
            Removed(
                "packer-security-group",
                f"{group['GroupName']} ({group['GroupId']})",
                f"made {made.isoformat()}",
            )
        )
    for entry in removed:
        log.info(
            "%s %s %s: %s", "Would remove" if dry_run else "Removed", entry.kind, entry.name, entry.reason
        )
    return removed


def summarize_janitor(
    phases: Mapping[str, Sequence[Mapping[str, Any]] | None], dry_run: bool
) -> dict[str, Any]:
    """Per app and environment, what each phase removed, and the instance-hours of retired kept groups.

    `phases` maps a phase name to its results: {"target", "removed", "skipped"} dicts.
    """
    targets: dict[str, dict[str, Any]] = {}
    for phase, results in phases.items():
        for result in results or []:
            target = targets.setdefault(
                result["target"], {"removed": [], "skipped": [], "instance_hours": 0.0}
            )
            for item in result.get("removed", []):
                target["removed"].append({"phase": phase, **item})
                target["instance_hours"] += float(item.get("instance_hours") or 0.0)
            if result.get("skipped"):
                target["skipped"].append(f"{phase}: {result['skipped']}")
    verb = "would remove" if dry_run else "removed"
    lines = [f"### janitor{' (dry run: nothing deleted)' if dry_run else ''}"]
    for name in sorted(targets):
        target = targets[name]
        target["instance_hours"] = round(target["instance_hours"], 3)
        lines.append(f"- {name}: {verb} {len(target['removed'])}")
        for item in target["removed"]:
            extra = (
                f" ({item['instances']} x {item['instance_type']}, {item['instance_hours']:.2f} instance-hours kept)"
                if item["kind"] == "server-group"
                else ""
            )
            lines.append(f"  - {item['phase']}: {item['kind']} {item['name']}{extra}: {item['reason']}")
        lines += [f"  - skipped {reason}" for reason in target["skipped"]]
    total = sum(target["instance_hours"] for target in targets.values())
    lines.append(f"- instance-hours of kept groups {'to retire' if dry_run else 'retired'}: {total:.2f}")
    return {
        "dry_run": dry_run,
        "targets": targets,
        "instance_hours_retired": round(total, 3),
        "markdown": "\n".join(lines),
    }
