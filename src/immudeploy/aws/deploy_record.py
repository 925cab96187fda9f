"""The deploy record: per app and environment, every release that served and every rollback.

Why a DynamoDB table (`immudeploy-releases`, `IMMUDEPLOY_RELEASE_TABLE`) and not an SSM parameter's
history: the record is read by target and by version (rollback, retention, `--list`), which is one
`Query` on the partition `{app}/{environment}`; an SSM parameter keeps only its last 100 versions and
cannot be searched by value. The sort key is the time of the entry (microseconds) and the run's
deploy id, so a Query returns the history in order. A retried task records once: it looks for its
run's entry first (safe: it runs under the target's lock, so no other run writes this partition
meanwhile) and the write is a `PutItem` conditioned on the key not existing.

An entry is written when a release stands (after its observation window): rollback goes only to
entries, so never to an image of another environment or of a release whose deploy did not serve.
Reading never creates the table: a target without a table or entry has an empty record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from immudeploy.aws.groups.inventory import describe_server_group
from immudeploy.aws.tables import ensure_table, table_name
from immudeploy.core.errors import DeployError
from immudeploy.core.naming import validate_app, validate_environment
from immudeploy.core.plan import DeployPlan

log = logging.getLogger(__name__)

RELEASE_TABLE_ENV_VAR = "IMMUDEPLOY_RELEASE_TABLE"
DEFAULT_RELEASE_TABLE = "immudeploy-releases"
KIND_DEPLOY = "deploy"
KIND_ROLLBACK = "rollback"


@dataclass(frozen=True)
class Release:
    """One entry: a release that served in an app and environment (a deploy, or a rollback to it)."""

    app: str
    environment: str
    version: str
    image_id: str
    group: str
    dag_id: str
    run_id: str
    # Sortable: the entry's time (ISO 8601, microseconds), then the run's deploy id.
    recorded_key: str
    recorded_at: str
    kind: str = KIND_DEPLOY
    git_sha: str | None = None
    rolled_back_from_version: str | None = None
    rolled_back_from_group: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        what = f"{self.version} ({self.image_id}, {self.group})"
        if self.kind == KIND_ROLLBACK:
            what += f", rollback from {self.rolled_back_from_version} ({self.rolled_back_from_group})"
        return f"{self.recorded_at} {what} by run {self.run_id} of {self.dag_id}"


def release_table_name() -> str:
    return table_name(RELEASE_TABLE_ENV_VAR, DEFAULT_RELEASE_TABLE)


def target_key(app: str, environment: str) -> str:
    return f"{validate_app(app)}/{validate_environment(environment)}"


def ensure_release_table(dynamodb: Any, table: str | None = None) -> str:
    """The record table, created when it does not exist yet; returns its name."""
    keys = [("target", "HASH"), ("recorded_key", "RANGE")]
    return ensure_table(dynamodb, table or release_table_name(), keys, "deploy record")


def _to_item(release: Release) -> dict[str, Any]:
    item: dict[str, Any] = {"target": {"S": target_key(release.app, release.environment)}}
    for name, value in release.to_json().items():
        if value is not None:
            item[name] = {"S": str(value)}
    return item


def _from_item(item: dict[str, Any]) -> Release:
    values = {name: value["S"] for name, value in item.items() if name != "target" and "S" in value}
    known = set(Release.__dataclass_fields__)
    return Release(**{name: value for name, value in values.items() if name in known})


def record_release(dynamodb: Any, release: Release) -> Release:
    """Write the entry once: a retry of the same run finds its entry and returns what is stored."""
    table = ensure_release_table(dynamodb)
    for stored in release_history(dynamodb, release.app, release.environment):
        if (stored.dag_id, stored.run_id) == (release.dag_id, release.run_id):
            log.info("Run %s of %s is already in the deploy record", release.run_id, release.dag_id)
            return stored
    try:
        dynamodb.put_item(
            TableName=table,
            Item=_to_item(release),
            ConditionExpression="attribute_not_exists(recorded_key)",
        )
    except dynamodb.exceptions.ConditionalCheckFailedException:
        stored = dynamodb.get_item(
            TableName=table,
            Key={
                "target": {"S": target_key(release.app, release.environment)},
                "recorded_key": {"S": release.recorded_key},
            },
            ConsistentRead=True,
        )
        log.info("Run %s is already in the deploy record", release.run_id)
        return _from_item(stored["Item"])
    log.info("Recorded in the deploy record: %s", release.describe())
    return release


def record_served_release(clients: Any, plan: DeployPlan, group_name: str) -> Release:
    """Record the run's release as serving in its group (the image read from the group's launch template).

    A rollback's entry names what it rolled back from: the group and version live when it planned.
    """
    group = describe_server_group(clients, group_name)
    if group is None or not group.image_id:
        raise DeployError(f"server group {group_name} or its image is gone: cannot record the release")
    rollback = plan.rollback_mode is not None
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    release = Release(
        app=plan.app,
        environment=plan.environment,
        version=group.version or plan.version,
        image_id=group.image_id,
        group=group.name,
        dag_id=plan.dag_id,
        run_id=plan.run_id,
        recorded_key=f"{now}#{plan.deploy_id}",
        recorded_at=now,
        kind=KIND_ROLLBACK if rollback else KIND_DEPLOY,
        git_sha=plan.git_sha,
        rolled_back_from_version=plan.live.version if rollback and plan.live else None,
        rolled_back_from_group=plan.live.name if rollback and plan.live else None,
    )
    return record_release(clients.dynamodb, release)


def _pages(dynamodb: Any, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Items of a Query or Scan; nothing when the table does not exist (nothing recorded yet)."""
    try:
        for page in dynamodb.get_paginator(operation).paginate(**kwargs):
            yield from page.get("Items", [])
    except dynamodb.exceptions.ResourceNotFoundException:
        return


def release_history(dynamodb: Any, app: str, environment: str, limit: int | None = None) -> list[Release]:
    """The record of one app and environment, newest first (at most `limit` entries)."""
    kwargs: dict[str, Any] = {
        "TableName": release_table_name(),
        "KeyConditionExpression": "#target = :target",
        "ExpressionAttributeNames": {"#target": "target"},
        "ExpressionAttributeValues": {":target": {"S": target_key(app, environment)}},
        "ScanIndexForward": False,
        "ConsistentRead": True,
    }
    if limit is not None:
        kwargs["PaginationConfig"] = {"MaxItems": limit}
    return [_from_item(item) for item in _pages(dynamodb, "query", **kwargs)]


def previous_release(history: Sequence[Release], current_version: str | None) -> Release | None:
    """The entry rollback goes to without a version: the newest one before what serves now.

    Entries newer than the current version's newest one and entries of the current version are
    skipped, and so are versions a newer rollback rolled back from: after 1.4.0, 1.5.0 and a rollback from 1.5.0 to 1.4.0, the next rollback goes to what
    served before 1.4.0, not back to the release that was just rejected.
    """
    # Entries newer than the current version's newest one (its release was undone or replaced
    # outside this tool) are not "before" it.
    start = next((i for i, r in enumerate(history) if r.version == current_version), 0)
    rejected = {
        r.rolled_back_from_version
        for r in history[:start]
        if r.kind == KIND_ROLLBACK and r.rolled_back_from_version
    }
    for release in history[start:]:  # newest first
        if release.version != current_version and release.version not in rejected:
            return release
        if release.kind == KIND_ROLLBACK and release.rolled_back_from_version:
            rejected.add(release.rolled_back_from_version)
    return None


def release_of_version(history: Sequence[Release], version: str) -> Release | None:
    """That version's latest entry in this record."""
    return next((release for release in history if release.version == version), None)


def recorded_images(dynamodb: Any, app: str, environment: str, last_n: int) -> list[str]:
    """Images a rollback of this app and environment may need: its newest `last_n` entries' and the
    image of the entry a rollback without a version would go to (even when `last_n` is 1)."""
    history = release_history(dynamodb, app, environment)
    chosen = [*history[:last_n], previous_release(history, history[0].version if history else None)]
    return _unique(release.image_id for release in chosen if release is not None)


def recorded_images_of_app(dynamodb: Any, app: str, last_n: int) -> dict[str, list[str]]:
    """{environment: image ids of its newest `last_n` entries} for every environment with a record.

    A Scan for the app's targets: the table holds one partition per app and environment, few enough
    that listing them beats keeping a separate index of the app's environments.
    """
    prefix = f"{validate_app(app)}/"
    environments = {
        item["target"]["S"].split("/", 1)[1]
        for item in _pages(
            dynamodb,
            "scan",
            TableName=release_table_name(),
            ProjectionExpression="#target",
            FilterExpression="begins_with(#target, :prefix)",
            ExpressionAttributeNames={"#target": "target"},
            ExpressionAttributeValues={":prefix": {"S": prefix}},
        )
    }
    return {env: recorded_images(dynamodb, app, env, last_n) for env in sorted(environments)}


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
