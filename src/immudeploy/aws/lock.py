"""One deployment at a time per app and environment: a lock held as an SSM parameter created atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from immudeploy.core.errors import DeployError
from immudeploy.core.naming import validate_app, validate_environment

logger = logging.getLogger(__name__)

UNKNOWN = "?"
# Breaking a lock takes two API calls; a breaking marker older than this was left by a crashed breaker.
MARKER_STALE_SECONDS = 60.0


@dataclass(frozen=True)
class LockHolder:
    """Who holds the lock: an Airflow run. `acquired_at` (ISO 8601, UTC) is stamped by acquire_lock."""

    dag_id: str
    run_id: str
    acquired_at: str = ""

    def same_run(self, other: LockHolder) -> bool:
        return (self.dag_id, self.run_id) == (other.dag_id, other.run_id)

    def age_seconds(self, now: datetime) -> float:
        try:
            acquired = datetime.fromisoformat(self.acquired_at)
        except ValueError:
            return 0.0  # unreadable time: never treat as stale on a guess
        if acquired.tzinfo is None:
            acquired = acquired.replace(tzinfo=UTC)
        return (now - acquired).total_seconds()


def lock_parameter_name(app: str, environment: str) -> str:
    """Fixed, not taken from the app's configured ssm_prefix: every Airflow installation must agree on it."""
    return f"/immutable/{validate_app(app)}/{validate_environment(environment)}/lock"


def _break_marker_name(lock_name: str, value: str) -> str:
    # One marker per lock value: of several runs finding the same stale lock, exactly one breaks it.
    digest = hashlib.sha256(value.encode()).hexdigest()[:16]
    return f"{lock_name}-breaking/{digest}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _parse_holder(value: str, parameter: dict[str, Any]) -> LockHolder:
    try:
        data = json.loads(value)
        return LockHolder(str(data["dag_id"]), str(data["run_id"]), str(data["acquired_at"]))
    except (ValueError, KeyError, TypeError):
        # Written by hand or by something else: still a lock, aged by when SSM last saw it change.
        modified = parameter.get("LastModifiedDate")
        since = modified.astimezone(UTC).isoformat() if isinstance(modified, datetime) else ""
        return LockHolder(UNKNOWN, UNKNOWN, since)


def _read(ssm: Any, name: str) -> tuple[LockHolder, str] | None:
    """The holder and the raw value (compared before breaking), or None when nobody holds the lock."""
    try:
        parameter = ssm.get_parameter(Name=name)["Parameter"]
    except ssm.exceptions.ParameterNotFound:
        return None
    return _parse_holder(parameter["Value"], parameter), parameter["Value"]


def _try_create(ssm: Any, name: str, value: str, description: str) -> bool:
    try:
        ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=False, Description=description)
    except ssm.exceptions.ParameterAlreadyExists:
        return False
    return True


def _delete(ssm: Any, name: str) -> None:
    with contextlib.suppress(ssm.exceptions.ParameterNotFound):
        ssm.delete_parameter(Name=name)


def current_holder(ssm: Any, app: str, environment: str) -> LockHolder | None:
    """Who holds the lock of this app and environment now, or None."""
    found = _read(ssm, lock_parameter_name(app, environment))
    return found[0] if found else None


def _break_stale(ssm: Any, name: str, stale: LockHolder, stale_value: str, age: float, log: Any) -> bool:
    """Delete a lock whose holder presumably crashed; False when another run is breaking it right now.

    SSM has no conditional delete, so breakers first race to create a marker; the winner re-reads the
    lock and deletes it only if it still carries the stale value, then removes the marker.
    """
    marker = _break_marker_name(name, stale_value)
    now = _utc_now()
    if not _try_create(ssm, marker, now.isoformat(), "immudeploy: breaking a stale deployment lock"):
        found = _read(ssm, marker)
        # A breaker that crashed between marker and delete must not block the lock forever.
        if found is not None and _marker_age(found[1], now) > MARKER_STALE_SECONDS:
            _delete(ssm, marker)
        return False
    try:
        found = _read(ssm, name)
        if found is not None and found[1] == stale_value:
            log.warning(
                "Breaking stale deployment lock %s: held by run %s of %s since %s (%.0f s ago, "
                "the run presumably crashed without releasing it)",
                name,
                stale.run_id,
                stale.dag_id,
                stale.acquired_at,
                age,
            )
            _delete(ssm, name)
    finally:
        _delete(ssm, marker)
    return True


def _marker_age(value: str, now: datetime) -> float:
    try:
        return (now - datetime.fromisoformat(value)).total_seconds()
    except (ValueError, TypeError):
        return MARKER_STALE_SECONDS + 1  # not written by us: nothing worth keeping


def acquire_lock(
    ssm: Any,
    app: str,
    environment: str,
    holder: LockHolder,
    *,
    wait_seconds: float,
    poll_interval: float,
    stale_after_seconds: float,
    log: Any = logger,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LockHolder:
    """Take the lock for `holder`'s run, waiting up to `wait_seconds` for another run to release it.

    Re-entrant: a retried task of the same run gets its existing lock back. A lock older than
    `stale_after_seconds` is broken, so that setting must exceed the longest deployment.
    Raises DeployError naming the holder when the lock stays taken.
    """
    name = lock_parameter_name(app, environment)
    if wait_seconds < 0 or poll_interval <= 0 or stale_after_seconds <= 0:
        raise DeployError("acquire_lock: wait_seconds >= 0, poll_interval > 0, stale_after_seconds > 0")
    deadline = clock() + wait_seconds
    while True:
        mine = replace(holder, acquired_at=_utc_now().isoformat())
        description = f"immudeploy deployment lock of {app}/{environment}"
        if _try_create(ssm, name, json.dumps(asdict(mine), sort_keys=True), description):
            log.info("Acquired deployment lock %s for run %s of %s", name, mine.run_id, mine.dag_id)
            return mine
        found = _read(ssm, name)
        if found is None:
            continue  # released between our create and our read: try again at once
        current, value = found
        if current.same_run(holder):
            log.info(
                "Run %s of %s already holds lock %s (since %s)",
                holder.run_id,
                holder.dag_id,
                name,
                current.acquired_at,
            )
            return current
        age = current.age_seconds(_utc_now())
        if age > stale_after_seconds and _break_stale(ssm, name, current, value, age, log):
            continue
        remaining = deadline - clock()
        message = (
            f"{app}/{environment} is locked by run {current.run_id} of {current.dag_id} "
            f"since {current.acquired_at}"
        )
        if remaining <= 0:
            raise DeployError(f"{message}; gave up after waiting {wait_seconds:g} s (lock parameter {name})")
        log.info("%s; waiting up to %.0f s more for it to be released", message, remaining)
        sleep(min(poll_interval, remaining))


def release_lock(ssm: Any, app: str, environment: str, holder: LockHolder) -> bool:
    """Release `holder`'s lock; True when it was held by this run. Never deletes another run's lock."""
    name = lock_parameter_name(app, environment)
    found = _read(ssm, name)
    if found is None:
        return False
    current, _ = found
    if not current.same_run(holder):
        logger.warning(
            "Not releasing lock %s: it is held by run %s of %s, not by run %s of %s",
            name,
            current.run_id,
            current.dag_id,
            holder.run_id,
            holder.dag_id,
        )
        return False
    _delete(ssm, name)
    logger.info("Released deployment lock %s of run %s of %s", name, holder.run_id, holder.dag_id)
    return True
