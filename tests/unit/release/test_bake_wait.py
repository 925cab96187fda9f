"""Waiting for a baked image with EC2's image_available waiter: stubbed states moto never shows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from immudeploy.core.errors import BakeError, WaitTimeout
from immudeploy.release.bake import wait_until_available

IMAGE_ID = "ami-0123456789abcdef0"
POLL = 0.01


def image(state: str, **extra: Any) -> dict[str, Any]:
    return {"Images": [{"ImageId": IMAGE_ID, "Name": "shop-2.0.0-0123456789ab", "State": state, **extra}]}


@pytest.fixture
def ec2() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "ec2", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    with Stubber(client) as stubber:
        yield client, stubber


def count_looks(client: Any) -> list[str]:
    """One entry per DescribeImages call the client makes."""
    calls: list[str] = []
    client.meta.events.register("before-parameter-build.ec2.DescribeImages", lambda **_: calls.append("look"))
    return calls


def expect_states(stubber: Stubber, *states: str) -> None:
    for state in states:
        stubber.add_response("describe_images", image(state), {"ImageIds": [IMAGE_ID]})


def test_pending_then_available_returns(ec2: tuple[Any, Stubber]) -> None:
    client, stubber = ec2
    expect_states(stubber, "pending", "pending", "available")

    assert wait_until_available(client, IMAGE_ID, timeout=5, poll_interval=POLL) is None

    stubber.assert_no_pending_responses()


def test_available_at_once_asks_once(ec2: tuple[Any, Stubber]) -> None:
    client, stubber = ec2
    expect_states(stubber, "available")
    looks = count_looks(client)
    wait_until_available(client, IMAGE_ID, timeout=5, poll_interval=POLL)
    assert len(looks) == 1


def test_pending_beyond_the_timeout_raises_wait_timeout_naming_image_and_state(
    ec2: tuple[Any, Stubber],
) -> None:
    client, stubber = ec2
    # timeout / poll interval = 3 looks at the image, all pending.
    expect_states(stubber, "pending", "pending", "pending")

    with pytest.raises(WaitTimeout) as raised:
        wait_until_available(client, IMAGE_ID, timeout=3 * POLL, poll_interval=POLL)

    message = str(raised.value)
    assert IMAGE_ID in message
    assert "still pending" in message
    assert "'available'" in message
    stubber.assert_no_pending_responses()


def test_the_timeout_bounds_the_number_of_looks(ec2: tuple[Any, Stubber]) -> None:
    client, stubber = ec2
    # More pending answers than the timeout allows looks: the wait stops after the third.
    expect_states(stubber, *["pending"] * 5)
    looks = count_looks(client)

    with pytest.raises(WaitTimeout):
        wait_until_available(client, IMAGE_ID, timeout=3 * POLL, poll_interval=POLL)

    assert len(looks) == 3


def test_a_failed_image_raises_bake_error_naming_the_state(ec2: tuple[Any, Stubber]) -> None:
    client, stubber = ec2
    expect_states(stubber, "pending", "failed")

    with pytest.raises(BakeError) as raised:
        wait_until_available(client, IMAGE_ID, timeout=5, poll_interval=POLL)

    message = str(raised.value)
    assert IMAGE_ID in message
    assert f"image {IMAGE_ID} is failed" in message
    assert not isinstance(raised.value, WaitTimeout)
    stubber.assert_no_pending_responses()


def test_a_failed_image_stops_the_wait_at_once(ec2: tuple[Any, Stubber]) -> None:
    client, stubber = ec2
    expect_states(stubber, "failed", "available")
    looks = count_looks(client)

    with pytest.raises(BakeError, match="is failed"):
        wait_until_available(client, IMAGE_ID, timeout=5, poll_interval=POLL)

    assert len(looks) == 1  # "available" was never asked for
