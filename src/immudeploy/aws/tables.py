"""The project's DynamoDB tables (the deployment lock, the deploy record): named, created on first use."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

from immudeploy.core.errors import InvalidInput

log = logging.getLogger(__name__)

TABLE_ACTIVE_TIMEOUT_SECONDS = 120


def table_name(env_var: str, default: str) -> str:
    """The table named by `env_var` (or `default`), checked against DynamoDB's naming rules."""
    name = os.environ.get(env_var, default)
    if not (3 <= len(name) <= 255) or not all(c.isalnum() or c in "_.-" for c in name):
        raise InvalidInput(env_var, f"{name!r} is not a DynamoDB table name")
    return name


def ensure_table(dynamodb: Any, name: str, keys: Sequence[tuple[str, str]], purpose: str) -> str:
    """Create table `name` (on-demand billing) when it does not exist yet; wait until it is active.

    `keys` are (attribute name, key type) pairs of string attributes, e.g. [("lock_id", "HASH")].
    """
    try:
        status = dynamodb.describe_table(TableName=name)["Table"]["TableStatus"]
    except dynamodb.exceptions.ResourceNotFoundException:
        log.info("Creating the %s table %s (DynamoDB, on-demand billing)", purpose, name)
        # Another run may create it at the same moment.
        with contextlib.suppress(dynamodb.exceptions.ResourceInUseException):
            dynamodb.create_table(
                TableName=name,
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"} for key, _ in keys],
                KeySchema=[{"AttributeName": key, "KeyType": kind} for key, kind in keys],
                BillingMode="PAY_PER_REQUEST",
                Tags=[{"Key": "immutable:purpose", "Value": purpose.replace(" ", "-")}],
            )
        status = "CREATING"
    if status != "ACTIVE":
        dynamodb.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": TABLE_ACTIVE_TIMEOUT_SECONDS}
        )
    return name
