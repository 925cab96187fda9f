"""The deployment lock against moto's SSM: atomic, re-entrant, waits, breaks stale locks, releases only its own."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from immudeploy.aws.lock import (
    LockHolder,
    _break_marker_name,
    acquire_lock,
    current_holder,
    lock_parameter_name,
    release_lock,
)
from immudeploy.core.errors import DeployError, InvalidInput

APP, ENV = "shop", "prod"
LOCK = "/immutable/shop/prod/lock"
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


def _acquire(ssm: Any, holder: LockHolder, fake: FakeTime | None = None, **overrides: float) -> LockHolder:
    fake = fake or FakeTime()
    settings = {"wait_seconds": 30.0, "poll_interval": 5.0, "stale_after_seconds": 3600.0, **overrides}
    return acquire_lock(ssm, APP, ENV, holder, clock=fake.clock, sleep=fake.sleep, **settings)


def _plant(ssm: Any, holder: LockHolder) -> None:
    ssm.put_parameter(Name=LOCK, Value=json.dumps(holder.__dict__), Type="String")


def test_lock_path_is_fixed_and_validated() -> None:
    assert lock_parameter_name(APP, ENV) == LOCK
    with pytest.raises(InvalidInput, match="app"):
        lock_parameter_name("Shop Prod", ENV)


def test_acquire_free_lock_stamps_time_and_is_visible(aws: Any) -> None:
    ssm = aws.client("ssm")
    before = datetime.now(UTC)
    held = _acquire(ssm, FIRST)
    assert (held.dag_id, held.run_id) == (FIRST.dag_id, FIRST.run_id)
    assert datetime.fromisoformat(held.acquired_at) >= before
    assert current_holder(ssm, APP, ENV) == held
    assert current_holder(ssm, APP, "staging") is None


def test_moto_honours_overwrite_false(aws: Any) -> None:
    """The whole lock rests on this: a second create of the same name fails."""
    ssm = aws.client("ssm")
    ssm.put_parameter(Name=LOCK, Value="a", Type="String", Overwrite=False)
    with pytest.raises(ssm.exceptions.ParameterAlreadyExists):
        ssm.put_parameter(Name=LOCK, Value="b", Type="String", Overwrite=False)


def test_reacquire_by_same_run_is_idempotent(aws: Any) -> None:
    ssm = aws.client("ssm")
    held = _acquire(ssm, FIRST)
    fake = FakeTime()
    again = _acquire(ssm, FIRST, fake)
    assert again == held  # original acquisition time kept
    assert fake.sleeps == []


def test_other_run_waits_then_fails_naming_the_holder(aws: Any) -> None:
    ssm = aws.client("ssm")
    held = _acquire(ssm, FIRST)
    fake = FakeTime()
    with pytest.raises(DeployError) as raised:
        _acquire(ssm, SECOND, fake, wait_seconds=12.0, poll_interval=5.0)
    message = str(raised.value)
    assert f"locked by run {FIRST.run_id} of {FIRST.dag_id} since {held.acquired_at}" in message
    assert fake.sleeps == [5.0, 5.0, 2.0]
    assert current_holder(ssm, APP, ENV) == held


def test_zero_wait_fails_at_once(aws: Any) -> None:
    ssm = aws.client("ssm")
    _acquire(ssm, FIRST)
    fake = FakeTime()
    with pytest.raises(DeployError, match="locked by run"):
        _acquire(ssm, SECOND, fake, wait_seconds=0.0)
    assert fake.sleeps == []


def test_waiter_gets_the_lock_once_it_is_released(aws: Any) -> None:
    ssm = aws.client("ssm")
    _acquire(ssm, FIRST)
    fake = FakeTime()
    fake.on_sleep = lambda: release_lock(ssm, APP, ENV, FIRST) if len(fake.sleeps) == 2 else None
    held = _acquire(ssm, SECOND, fake)
    assert held.run_id == SECOND.run_id
    assert len(fake.sleeps) == 2


def test_stale_lock_is_broken_with_a_warning(aws: Any, caplog: pytest.LogCaptureFixture) -> None:
    ssm = aws.client("ssm")
    crashed_at = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    _plant(ssm, LockHolder("deploy_shop", "crashed_run", crashed_at))
    with caplog.at_level(logging.WARNING, logger="immudeploy.aws.lock"):
        held = _acquire(ssm, SECOND, stale_after_seconds=3600.0)
    assert current_holder(ssm, APP, ENV) == held
    assert held.run_id == SECOND.run_id
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Breaking stale deployment lock" in w and "crashed_run" in w for w in warnings)
    # The marker that serialises breakers is gone again.
    assert [p["Name"] for p in ssm.describe_parameters()["Parameters"]] == [LOCK]


def test_marker_left_by_a_crashed_breaker_expires(aws: Any) -> None:
    ssm = aws.client("ssm")
    stale = LockHolder("deploy_shop", "crashed_run", (datetime.now(UTC) - timedelta(hours=3)).isoformat())
    _plant(ssm, stale)
    marker = _break_marker_name(LOCK, ssm.get_parameter(Name=LOCK)["Parameter"]["Value"])
    left_at = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    ssm.put_parameter(Name=marker, Value=left_at, Type="String")
    fake = FakeTime()
    held = _acquire(ssm, SECOND, fake, stale_after_seconds=3600.0)
    assert held.run_id == SECOND.run_id
    assert len(fake.sleeps) == 1  # one poll: the old marker was cleared, the next look broke the lock
    assert [p["Name"] for p in ssm.describe_parameters()["Parameters"]] == [LOCK]


def test_fresh_lock_is_not_broken(aws: Any) -> None:
    ssm = aws.client("ssm")
    recent = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    _plant(ssm, LockHolder("deploy_shop", "busy_run", recent))
    with pytest.raises(DeployError, match="busy_run"):
        _acquire(ssm, SECOND, wait_seconds=0.0, stale_after_seconds=3600.0)


def test_unreadable_lock_value_still_counts_as_held(aws: Any) -> None:
    ssm = aws.client("ssm")
    ssm.put_parameter(Name=LOCK, Value="held by hand", Type="String")
    holder = current_holder(ssm, APP, ENV)
    assert holder is not None and holder.run_id == "?"
    with pytest.raises(DeployError, match=r"locked by run \? of \?"):
        _acquire(ssm, SECOND, wait_seconds=0.0)


def test_release_only_own_lock_and_idempotent(aws: Any) -> None:
    ssm = aws.client("ssm")
    held = _acquire(ssm, FIRST)
    assert release_lock(ssm, APP, ENV, SECOND) is False
    assert current_holder(ssm, APP, ENV) == held
    assert release_lock(ssm, APP, ENV, FIRST) is True
    assert current_holder(ssm, APP, ENV) is None
    assert release_lock(ssm, APP, ENV, FIRST) is False


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_concurrent_acquirers_exactly_one_wins(aws: Any, stale: bool) -> None:
    """Free lock: the atomic create decides. Stale lock: the breaking marker lets one breaker through."""
    if stale:
        crashed_at = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
        _plant(aws.client("ssm"), LockHolder("deploy_shop", "crashed_run", crashed_at))
    runs = [LockHolder("deploy_shop", f"run_{n}") for n in range(6)]
    start = threading.Barrier(len(runs))
    outcomes: dict[str, str] = {}

    def contend(holder: LockHolder) -> None:
        ssm = aws.client("ssm")
        start.wait()
        try:
            _acquire(ssm, holder, wait_seconds=0.0)
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
    assert len(winners) == 1
    holder = current_holder(aws.client("ssm"), APP, ENV)
    assert holder is not None and holder.run_id == winners[0]
