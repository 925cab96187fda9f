"""The deployment lock against moto's DynamoDB: atomic, re-entrant, kept alive, broken only when dead."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from immudeploy.aws.lock import (
    DEFAULT_LOCK_TABLE,
    LockHolder,
    LockKeeper,
    acquire_lock,
    current_holder,
    ensure_lock_table,
    heartbeat,
    hold_lock,
    lock_key,
    lock_table_name,
    release_lock,
)
from immudeploy.core.errors import DeployError, InvalidInput

APP, ENV = "shop", "prod"
FIRST = LockHolder("deploy_shop", "manual__2026-01-01T00:00:00")
SECOND = LockHolder("rollback_shop", "manual__2026-01-01T00:05:00")


class FakeTime:
    """clock/sleep pair: waiting costs no wall time; `on_sleep` lets a test act while we 'wait'."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: Any = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep()


@pytest.fixture
def ddb(aws: Any) -> Any:
    return aws.client("dynamodb")


def _acquire(ddb: Any, holder: LockHolder, fake: FakeTime | None = None, **overrides: Any) -> LockHolder:
    fake = fake or FakeTime()
    settings = {"wait_seconds": 30.0, "poll_interval": 5.0, "stale_after_seconds": 300.0, **overrides}
    return acquire_lock(ddb, APP, ENV, holder, clock=fake.clock, sleep=fake.sleep, **settings)


def _plant(ddb: Any, holder: LockHolder, heartbeat_ago: timedelta) -> None:
    """A lock item as another run left it, its last heartbeat `heartbeat_ago`."""
    ensure_lock_table(ddb)
    beat = datetime.now(UTC) - heartbeat_ago
    ddb.put_item(
        TableName=DEFAULT_LOCK_TABLE,
        Item={
            "lock_id": {"S": f"{APP}/{ENV}"},
            "dag_id": {"S": holder.dag_id},
            "run_id": {"S": holder.run_id},
            "acquired_at": {"S": (beat - timedelta(hours=5)).isoformat()},
            "heartbeat_at": {"S": beat.isoformat()},
            "heartbeat_epoch": {"N": f"{beat.timestamp():.3f}"},
        },
    )


def _heartbeat_at(ddb: Any) -> datetime:
    holder = current_holder(ddb, APP, ENV)
    assert holder is not None
    return datetime.fromisoformat(holder.heartbeat_at)


def test_lock_key_and_table_name_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lock_key(APP, ENV) == "shop/prod"
    with pytest.raises(InvalidInput, match="app"):
        lock_key("Shop Prod", ENV)
    assert lock_table_name() == DEFAULT_LOCK_TABLE
    monkeypatch.setenv("IMMUDEPLOY_LOCK_TABLE", "bad name; rm")
    with pytest.raises(InvalidInput, match="IMMUDEPLOY_LOCK_TABLE"):
        lock_table_name()


def test_the_table_is_created_on_first_use_and_reused(ddb: Any) -> None:
    assert DEFAULT_LOCK_TABLE not in ddb.list_tables()["TableNames"]
    _acquire(ddb, FIRST)
    table = ddb.describe_table(TableName=DEFAULT_LOCK_TABLE)["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert table["KeySchema"] == [{"AttributeName": "lock_id", "KeyType": "HASH"}]
    assert ensure_lock_table(ddb) == DEFAULT_LOCK_TABLE  # exists: no error, same table
    assert ddb.list_tables()["TableNames"].count(DEFAULT_LOCK_TABLE) == 1


def test_moto_honours_conditional_writes(ddb: Any) -> None:
    """The whole lock rests on this: a conditional put fails when its condition does not hold."""
    ensure_lock_table(ddb)
    item = {"lock_id": {"S": "x"}}
    ddb.put_item(TableName=DEFAULT_LOCK_TABLE, Item=item, ConditionExpression="attribute_not_exists(lock_id)")
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(
            TableName=DEFAULT_LOCK_TABLE, Item=item, ConditionExpression="attribute_not_exists(lock_id)"
        )


def test_acquire_free_lock_stamps_time_and_is_visible(ddb: Any) -> None:
    before = datetime.now(UTC)
    held = _acquire(ddb, FIRST)
    assert held.same_run(FIRST)
    assert datetime.fromisoformat(held.acquired_at) >= before
    assert current_holder(ddb, APP, ENV) == held
    assert current_holder(ddb, APP, "staging") is None


def test_reacquire_by_same_run_keeps_the_lock_and_refreshes_the_heartbeat(ddb: Any) -> None:
    held = _acquire(ddb, FIRST)
    time.sleep(0.01)
    fake = FakeTime()
    again = _acquire(ddb, FIRST, fake)
    assert again.acquired_at == held.acquired_at
    assert again.heartbeat_at > held.heartbeat_at
    assert fake.sleeps == []


def test_other_run_waits_then_fails_naming_the_holder(ddb: Any) -> None:
    held = _acquire(ddb, FIRST)
    fake = FakeTime()
    with pytest.raises(DeployError) as raised:
        _acquire(ddb, SECOND, fake, wait_seconds=12.0, poll_interval=5.0)
    assert f"locked by run {FIRST.run_id} of {FIRST.dag_id} (since {held.acquired_at}" in str(raised.value)
    assert fake.sleeps == [5.0, 5.0, 2.0]
    assert current_holder(ddb, APP, ENV).same_run(FIRST)  # type: ignore[union-attr]


def test_zero_wait_fails_at_once(ddb: Any) -> None:
    _acquire(ddb, FIRST)
    fake = FakeTime()
    with pytest.raises(DeployError, match="locked by run"):
        _acquire(ddb, SECOND, fake, wait_seconds=0.0)
    assert fake.sleeps == []


def test_waiter_gets_the_lock_once_it_is_released(ddb: Any) -> None:
    _acquire(ddb, FIRST)
    fake = FakeTime()
    fake.on_sleep = lambda: release_lock(ddb, APP, ENV, FIRST) if len(fake.sleeps) == 2 else None
    held = _acquire(ddb, SECOND, fake)
    assert held.same_run(SECOND)
    assert len(fake.sleeps) == 2


def test_a_lock_without_heartbeat_is_broken_with_a_warning(
    ddb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _plant(ddb, LockHolder("deploy_shop", "crashed_run"), heartbeat_ago=timedelta(minutes=6))
    with caplog.at_level(logging.WARNING, logger="immudeploy.aws.lock"):
        held = _acquire(ddb, SECOND, wait_seconds=0.0, stale_after_seconds=300.0)
    assert held.same_run(SECOND)
    assert current_holder(ddb, APP, ENV) == held
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "Broke the deployment lock" in w and "crashed_run" in w and "no heartbeat" in w for w in warnings
    )


def test_a_long_run_with_a_fresh_heartbeat_is_never_stale(ddb: Any) -> None:
    """Taken five hours ago, heartbeat a minute ago: a long but live run keeps its lock."""
    _plant(ddb, LockHolder("deploy_shop", "long_run"), heartbeat_ago=timedelta(minutes=1))
    with pytest.raises(DeployError, match="long_run"):
        _acquire(ddb, SECOND, wait_seconds=0.0, stale_after_seconds=300.0)


def test_liveness_from_airflow_overrides_the_heartbeat(ddb: Any) -> None:
    asked: list[str] = []

    def alive(holder: LockHolder) -> bool:
        asked.append(holder.run_id)
        return holder.run_id == "deferred_run"

    # Deferred on a long drain, no heartbeat for an hour, but Airflow says the run is running.
    _plant(ddb, LockHolder("deploy_shop", "deferred_run"), heartbeat_ago=timedelta(hours=1))
    with pytest.raises(DeployError, match="deferred_run"):
        _acquire(ddb, SECOND, wait_seconds=0.0, is_alive=alive)
    # Finished run (worker lost, marked failed, nothing left to run): broken at once, fresh heartbeat or not.
    _plant(ddb, LockHolder("deploy_shop", "dead_run"), heartbeat_ago=timedelta(seconds=5))
    held = _acquire(ddb, SECOND, wait_seconds=0.0, is_alive=alive)
    assert held.same_run(SECOND)
    assert asked == ["deferred_run", "dead_run"]


def test_hold_lock_takes_a_free_lock_back_and_refuses_another_live_run(ddb: Any) -> None:
    # A task cleared after its run released the lock: taken back.
    held = hold_lock(ddb, APP, ENV, FIRST, stale_after_seconds=300.0)
    assert held.same_run(FIRST)
    before = _heartbeat_at(ddb)
    time.sleep(0.01)
    assert hold_lock(ddb, APP, ENV, FIRST, stale_after_seconds=300.0).acquired_at == held.acquired_at
    assert _heartbeat_at(ddb) > before
    # Another run holds it now: the cleared task must not touch AWS.
    release_lock(ddb, APP, ENV, FIRST)
    _acquire(ddb, SECOND)
    with pytest.raises(
        DeployError, match=f"locked by run {SECOND.run_id} of {SECOND.dag_id}.*changes nothing"
    ):
        hold_lock(ddb, APP, ENV, FIRST, stale_after_seconds=300.0)
    assert current_holder(ddb, APP, ENV).same_run(SECOND)  # type: ignore[union-attr]


def test_heartbeat_only_for_the_holder(ddb: Any) -> None:
    _acquire(ddb, FIRST)
    assert heartbeat(ddb, APP, ENV, FIRST) is True
    assert heartbeat(ddb, APP, ENV, SECOND) is False
    release_lock(ddb, APP, ENV, FIRST)
    assert heartbeat(ddb, APP, ENV, FIRST) is False
    assert current_holder(ddb, APP, ENV) is None  # a heartbeat never re-creates a released lock


def test_keeper_heartbeats_while_a_step_runs_and_fails_the_step_when_the_lock_is_lost(ddb: Any) -> None:
    held = _acquire(ddb, FIRST)
    with LockKeeper(ddb, APP, ENV, held, interval_seconds=0.05):
        time.sleep(0.3)
        assert _heartbeat_at(ddb) > datetime.fromisoformat(held.heartbeat_at)
    keeper = LockKeeper(ddb, APP, ENV, held, interval_seconds=0.05)
    with pytest.raises(DeployError, match="lost the deployment lock"), keeper:
        release_lock(ddb, APP, ENV, FIRST)
        _acquire(ddb, SECOND)
        time.sleep(0.3)


def test_release_only_own_lock_and_idempotent(ddb: Any) -> None:
    held = _acquire(ddb, FIRST)
    assert release_lock(ddb, APP, ENV, SECOND) is False
    assert current_holder(ddb, APP, ENV) == held
    assert release_lock(ddb, APP, ENV, FIRST) is True
    assert current_holder(ddb, APP, ENV) is None
    assert release_lock(ddb, APP, ENV, FIRST) is False


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_concurrent_acquirers_exactly_one_wins(aws: Any, stale: bool) -> None:
    """Free lock: the conditional create decides. Stale lock: the break conditioned on the heartbeat seen."""
    if stale:
        _plant(
            aws.client("dynamodb"), LockHolder("deploy_shop", "crashed_run"), heartbeat_ago=timedelta(hours=1)
        )
    else:
        ensure_lock_table(aws.client("dynamodb"))
    runs = [LockHolder("deploy_shop", f"run_{n}") for n in range(6)]
    start = threading.Barrier(len(runs))
    outcomes: dict[str, str] = {}

    def contend(holder: LockHolder) -> None:
        client = aws.client("dynamodb")
        start.wait()
        try:
            _acquire(client, holder, wait_seconds=0.0)
            outcomes[holder.run_id] = "won"
        except DeployError:
            outcomes[holder.run_id] = "refused"

    threads = [threading.Thread(target=contend, args=(h,)) for h in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [run for run, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == len(runs)
    assert len(winners) == 1, outcomes
    holder = current_holder(aws.client("dynamodb"), APP, ENV)
    assert holder is not None and holder.run_id == winners[0]
