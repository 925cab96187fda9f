"""A group's capacity: what it accepts, pinning it for a swap, and the restore tag that remembers it."""

from __future__ import annotations

import pytest

from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import TAG_RESTORE_CAPACITY
from immudeploy.core.plan import Capacity


@pytest.mark.parametrize(
    ("low", "high", "desired"),
    [(0, 0, 0), (1, 1, 1), (2, 6, 3), (0, 10, 0), (2, 6, 6), (100, 1000, 500)],
)
def test_a_capacity_with_min_le_desired_le_max_is_accepted(low: int, high: int, desired: int) -> None:
    capacity = Capacity(min=low, max=high, desired=desired)
    assert (capacity.min, capacity.max, capacity.desired) == (low, high, desired)


@pytest.mark.parametrize(
    ("low", "high", "desired"),
    [(3, 2, 2), (2, 6, 1), (2, 6, 7), (5, 1, 3)],
)
def test_desired_outside_min_and_max_is_refused(low: int, high: int, desired: int) -> None:
    with pytest.raises(InvalidInput, match="needs min <= desired <= max") as raised:
        Capacity(low, high, desired)
    assert raised.value.field == "capacity"
    assert f"min={low}, max={high}, desired={desired}" in str(raised.value)


@pytest.mark.parametrize(
    ("low", "high", "desired"),
    [(-1, 2, 1), (0, -1, 0), (0, 2, -1), (1.0, 2, 1), (1, "2", 1), (None, 2, 1), (1, 2, 1.5)],
)
def test_anything_but_whole_numbers_from_zero_is_refused(low: object, high: object, desired: object) -> None:
    with pytest.raises(InvalidInput, match="integers >= 0") as raised:
        Capacity(low, high, desired)  # type: ignore[arg-type]
    assert raised.value.field == "capacity"


def test_booleans_are_not_sizes() -> None:
    with pytest.raises(InvalidInput):
        Capacity(True, True, True)


def test_pinned_fixes_min_and_max_at_desired() -> None:
    assert Capacity(2, 6, 3).pinned() == Capacity(3, 3, 3)
    assert Capacity(0, 4, 0).pinned() == Capacity(0, 0, 0)
    # Pinning a pinned size changes nothing (a retried pin records nothing new either).
    assert Capacity(2, 6, 3).pinned().pinned() == Capacity(3, 3, 3)


def test_pinned_leaves_the_original_alone() -> None:
    capacity = Capacity(2, 6, 3)
    capacity.pinned()
    assert capacity == Capacity(2, 6, 3)


@pytest.mark.parametrize("capacity", [Capacity(2, 6, 3), Capacity(0, 0, 0), Capacity(10, 100, 42)])
def test_the_restore_tag_round_trips(capacity: Capacity) -> None:
    tag = capacity.to_tag()
    assert Capacity.from_tag(tag) == capacity


def test_the_restore_tag_is_min_max_desired() -> None:
    assert Capacity(2, 6, 3).to_tag() == "2,6,3"
    assert Capacity.from_tag("2,6,3") == Capacity(min=2, max=6, desired=3)


@pytest.mark.parametrize("value", ["", "2,6", "2,6,3,1", "a,b,c", "2;6;3", "2,,3", "two,6,3"])
def test_a_malformed_restore_tag_is_refused_naming_the_tag(value: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        Capacity.from_tag(value)
    assert raised.value.field == TAG_RESTORE_CAPACITY
    assert repr(value) in str(raised.value)
    assert "'min,max,desired'" in str(raised.value)


@pytest.mark.parametrize("value", ["5,1,3", "-1,2,1"])
def test_a_well_formed_but_impossible_restore_tag_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        Capacity.from_tag(value)


def test_an_impossible_restore_tag_is_refused_naming_the_tag() -> None:
    with pytest.raises(InvalidInput) as raised:
        Capacity.from_tag("5,1,3")
    assert raised.value.field == TAG_RESTORE_CAPACITY
