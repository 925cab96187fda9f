"""One deployment at a time per app and environment: a lock item in a DynamoDB table.

Why DynamoDB and not an SSM parameter: every change of the lock is a conditional write
(`PutItem`/`UpdateItem`/`DeleteItem` with a `ConditionExpression`), so taking a free lock, keeping it
alive, breaking a stale one and releasing it are each one atomic call. Two runs breaking the same
stale lock cannot both win: the break is a `PutItem` conditioned on the exact heartbeat it saw.
SSM has no conditional overwrite or delete, which made breaking a lock a two-step race.

The holder keeps the lock alive with a heartbeat (every task of the run, and a thread while a task
runs). A lock is broken when its holder is known to be dead (the caller's `is_alive` says so, e.g. the
Airflow run finished with nothing left running) or, when liveness cannot be known, when its heartbeat
is older than `stale_after_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from botocore.exceptions import ClientError

from immudeploy.aws.errors import error_code
from immudeploy.aws.tables import ensure_table, table_name
from immudeploy.core.errors import DeployError
from immudeploy.core.naming import validate_app, validate_environment

logger = logging.getLogger(__name__)

LOCK_TABLE_ENV_VAR = "IMMUDEPLOY_LOCK_TABLE"
DEFAULT_LOCK_TABLE = "immudeploy-locks"
UNKNOWN = "?"

# Whether a holder's run is still alive: True, False, or None when the caller cannot tell.
Liveness = Callable[["LockHolder"], "bool | None"]


@dataclass(frozen=True)
class LockHolder:
    """Who holds the lock: an Airflow run. The times (ISO 8601, UTC) are stamped by this module."""

    dag_id: str
    run_id: str
    acquired_at: str = ""
    heartbeat_at: str = ""

    def same_run(self, other: LockHolder) -> bool:
        return (self.dag_id, self.run_id) == (other.dag_id, other.run_id)

    def describe(self) -> str:
        return f"run {self.run_id} of {self.dag_id} (since {self.acquired_at}, last heartbeat {self.heartbeat_at})"


@dataclass(frozen=True)
class _Item:
    holder: LockHolder
    heartbeat_epoch: str  # the exact stored number: the break is conditioned on it


def lock_table_name() -> str:
    return table_name(LOCK_TABLE_ENV_VAR, DEFAULT_LOCK_TABLE)


def lock_key(app: str, environment: str) -> str:
    """Fixed, not configurable per app: every Airflow installation must agree on it."""
    return f"{validate_app(app)}/{validate_environment(environment)}"


def ensure_lock_table(dynamodb: Any, table: str | None = None) -> str:
    """The lock table, created when it does not exist yet; returns its name."""
    return ensure_table(dynamodb, table or lock_table_name(), [("lock_id", "HASH")], "deployment locks")


def _now() -> datetime:
    return datetime.now(UTC)


def _item_key(app: str, environment: str) -> dict[str, Any]:
    return {"lock_id": {"S": lock_key(app, environment)}}


def _new_item(
    app: str, environment: str, holder: LockHolder, acquired_at: str | None = None
) -> dict[str, Any]:
    now = _now()
    return {
        **_item_key(app, environment),
        "dag_id": {"S": holder.dag_id},
        "run_id": {"S": holder.run_id},
        "acquired_at": {"S": acquired_at or now.isoformat()},
        "heartbeat_at": {"S": now.isoformat()},
        "heartbeat_epoch": {"N": f"{now.timestamp():.3f}"},
    }


def _parse(item: dict[str, Any]) -> _Item:
    def text(name: str) -> str:
        return str(item.get(name, {}).get("S", UNKNOWN))

    holder = LockHolder(text("dag_id"), text("run_id"), text("acquired_at"), text("heartbeat_at"))
    return _Item(holder, str(item.get("heartbeat_epoch", {}).get("N", "0")))


def _read(dynamodb: Any, table: str, app: str, environment: str) -> _Item | None:
    response = dynamodb.get_item(TableName=table, Key=_item_key(app, environment), ConsistentRead=True)
    return _parse(response["Item"]) if "Item" in response else None


def _conditional(call: Callable[[], Any]) -> bool:
    """Run a conditional write; False when its condition did not hold."""
    try:
        call()
    except ClientError as error:
        if error_code(error) == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _try_create(dynamodb: Any, table: str, app: str, environment: str, holder: LockHolder) -> bool:
    return _conditional(
        lambda: dynamodb.put_item(
            TableName=table,
            Item=_new_item(app, environment, holder),
            ConditionExpression="attribute_not_exists(lock_id)",
        )
    )


def _try_break(
    dynamodb: Any, table: str, app: str, environment: str, seen: _Item, holder: LockHolder
) -> bool:
    """Replace the lock `seen` with ours, only if it is still exactly that lock (same run, same heartbeat)."""
    return _conditional(
        lambda: dynamodb.put_item(
            TableName=table,
            Item=_new_item(app, environment, holder),
            ConditionExpression="dag_id = :dag AND run_id = :run AND heartbeat_epoch = :beat",
            ExpressionAttributeValues={
                ":dag": {"S": seen.holder.dag_id},
                ":run": {"S": seen.holder.run_id},
                ":beat": {"N": seen.heartbeat_epoch},
            },
        )
    )


def _heartbeat_age(seen: _Item, now: datetime) -> float:
    try:
        return now.timestamp() - float(seen.heartbeat_epoch)
    except ValueError:
        return float("inf")


def _staleness(seen: _Item, stale_after_seconds: float, is_alive: Liveness | None) -> str | None:
    """Why the lock may be broken, or None while its holder may still be alive."""
    alive = is_alive(seen.holder) if is_alive else None
    if alive is True:
        return None
    if alive is False:
        return "its run is no longer running"
    age = _heartbeat_age(seen, _now())
    if age > stale_after_seconds:
        return f"no heartbeat for {age:.0f} s (stale after {stale_after_seconds:g} s)"
    return None


def current_holder(dynamodb: Any, app: str, environment: str, table: str | None = None) -> LockHolder | None:
    """Who holds the lock of this app and environment now, or None."""
    seen = _read(dynamodb, ensure_lock_table(dynamodb, table), app, environment)
    return seen.holder if seen else None


def _take(
    dynamodb: Any,
    table: str,
    app: str,
    environment: str,
    holder: LockHolder,
    stale_after_seconds: float,
    is_alive: Liveness | None,
    log: Any,
) -> tuple[LockHolder | None, _Item | None]:
    """One attempt: (our holder, None) when we hold the lock now, or (None, the other holder's item)."""
    for _ in range(10):  # each retry follows a change of the item by someone else
        if _try_create(dynamodb, table, app, environment, holder):
            log.info(
                "Acquired deployment lock %s for run %s of %s",
                lock_key(app, environment),
                holder.run_id,
                holder.dag_id,
            )
            return _read_holder(dynamodb, table, app, environment), None
        seen = _read(dynamodb, table, app, environment)
        if seen is None:
            continue  # released between our create and our read
        if seen.holder.same_run(holder):
            if heartbeat(dynamodb, app, environment, holder, table):
                return _read_holder(dynamodb, table, app, environment), None
            continue
        reason = _staleness(seen, stale_after_seconds, is_alive)
        if reason is None:
            return None, seen
        if _try_break(dynamodb, table, app, environment, seen, holder):
            log.warning(
                "Broke the deployment lock %s of %s: %s; it is now held by run %s of %s",
                lock_key(app, environment),
                seen.holder.describe(),
                reason,
                holder.run_id,
                holder.dag_id,
            )
            return _read_holder(dynamodb, table, app, environment), None
        # Someone else changed it first (a heartbeat or another breaker): look again.
    raise DeployError(f"the deployment lock {lock_key(app, environment)} kept changing under us; try again")


def _read_holder(dynamodb: Any, table: str, app: str, environment: str) -> LockHolder:
    seen = _read(dynamodb, table, app, environment)
    if seen is None:
        raise DeployError(
            f"the deployment lock {lock_key(app, environment)} vanished right after it was taken"
        )
    return seen.holder


def acquire_lock(
    dynamodb: Any,
    app: str,
    environment: str,
    holder: LockHolder,
    *,
    wait_seconds: float,
    poll_interval: float,
    stale_after_seconds: float,
    is_alive: Liveness | None = None,
    table: str | None = None,
    log: Any = logger,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LockHolder:
    """Take the lock for `holder`'s run, waiting up to `wait_seconds` for another run to release it.

    Re-entrant: a retried task of the same run gets its lock back (and refreshes the heartbeat).
    Raises DeployError naming the holder when the lock stays taken.
    """
    if wait_seconds < 0 or poll_interval <= 0 or stale_after_seconds <= 0:
        raise DeployError("acquire_lock: wait_seconds >= 0, poll_interval > 0, stale_after_seconds > 0")
    name = ensure_lock_table(dynamodb, table)
    deadline = clock() + wait_seconds
    while True:
        mine, other = _take(dynamodb, name, app, environment, holder, stale_after_seconds, is_alive, log)
        if mine is not None:
            return mine
        assert other is not None
        remaining = deadline - clock()
        message = f"{app}/{environment} is locked by {other.holder.describe()}"
        if remaining <= 0:
            raise DeployError(f"{message}; gave up after waiting {wait_seconds:g} s (lock table {name})")
        log.info("%s; waiting up to %.0f s more for it to be released", message, remaining)
        sleep(min(poll_interval, remaining))


def hold_lock(
    dynamodb: Any,
    app: str,
    environment: str,
    holder: LockHolder,
    *,
    stale_after_seconds: float,
    is_alive: Liveness | None = None,
    table: str | None = None,
    log: Any = logger,
) -> LockHolder:
    """Before a mutating step: make sure `holder`'s run holds the lock, without waiting.

    Held by this run: the heartbeat is refreshed. Free, stale or held by a dead run: taken (back).
    Held by another live run (a task cleared in the UI after its run released the lock and another
    run took it): DeployError naming the holder, and the step must not touch AWS.
    """
    name = ensure_lock_table(dynamodb, table)
    mine, other = _take(dynamodb, name, app, environment, holder, stale_after_seconds, is_alive, log)
    if mine is not None:
        return mine
    assert other is not None
    raise DeployError(
        f"{app}/{environment} is locked by {other.holder.describe()}, not by run {holder.run_id} of "
        f"{holder.dag_id}: this step changes nothing while another run deploys"
    )


def heartbeat(
    dynamodb: Any, app: str, environment: str, holder: LockHolder, table: str | None = None
) -> bool:
    """Refresh the heartbeat of `holder`'s lock; False when this run does not hold it (any more)."""
    name = ensure_lock_table(dynamodb, table)
    now = _now()
    return _conditional(
        lambda: dynamodb.update_item(
            TableName=name,
            Key=_item_key(app, environment),
            UpdateExpression="SET heartbeat_at = :at, heartbeat_epoch = :beat",
            ConditionExpression="dag_id = :dag AND run_id = :run",
            ExpressionAttributeValues={
                ":at": {"S": now.isoformat()},
                ":beat": {"N": f"{now.timestamp():.3f}"},
                ":dag": {"S": holder.dag_id},
                ":run": {"S": holder.run_id},
            },
        )
    )


def release_lock(
    dynamodb: Any, app: str, environment: str, holder: LockHolder, table: str | None = None
) -> bool:
    """Release `holder`'s lock; True when it was held by this run. Never deletes another run's lock."""
    name = ensure_lock_table(dynamodb, table)
    released = _conditional(
        lambda: dynamodb.delete_item(
            TableName=name,
            Key=_item_key(app, environment),
            ConditionExpression="dag_id = :dag AND run_id = :run",
            ExpressionAttributeValues={":dag": {"S": holder.dag_id}, ":run": {"S": holder.run_id}},
        )
    )
    if released:
        logger.info(
            "Released deployment lock %s of run %s of %s",
            lock_key(app, environment),
            holder.run_id,
            holder.dag_id,
        )
    else:
        current = _read(dynamodb, name, app, environment)
        logger.info(
            "Not releasing lock %s: %s",
            lock_key(app, environment),
            f"it is held by {current.holder.describe()}" if current else "nobody holds it",
        )
    return released


class LockKeeper:
    """A heartbeat thread for the lock while a long step runs (a bake, a blocking wait)."""

    def __init__(
        self,
        dynamodb: Any,
        app: str,
        environment: str,
        holder: LockHolder,
        *,
        interval_seconds: float,
        table: str | None = None,
        log: Any = logger,
    ) -> None:
        self._args = (dynamodb, app, environment, holder, table)
        self._interval = interval_seconds
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="immudeploy-lock-heartbeat", daemon=True)
        self.lost = False

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not heartbeat(*self._args):
                    self.lost = True
                    self._log.error(
                        "This run no longer holds the deployment lock %s (another run broke it); "
                        "the step will fail when it ends",
                        lock_key(self._args[1], self._args[2]),
                    )
                    return
            except Exception as error:  # a missed heartbeat is retried; staleness takes minutes
                self._log.warning("Lock heartbeat failed (will retry): %s", error)

    def __enter__(self) -> LockKeeper:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.lost and kind is None:
            raise DeployError(
                f"run {self._args[3].run_id} lost the deployment lock {lock_key(self._args[1], self._args[2])} "
                "while this step ran; another run may have changed the fleet since"
            )
