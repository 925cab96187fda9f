"""The one place that turns the domain's values into XCom values (plain JSON) and back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from immudeploy.core.plan import Capacity, DeployPlan, ServerGroup, StagingPlan


def capacity_to_xcom(capacity: Capacity) -> dict[str, int]:
    return {"min": capacity.min, "max": capacity.max, "desired": capacity.desired}


def capacity_from_xcom(value: Mapping[str, Any]) -> Capacity:
    return Capacity(int(value["min"]), int(value["max"]), int(value["desired"]))


def server_group_to_xcom(group: ServerGroup) -> dict[str, Any]:
    """A JSON dict of the group (asdict turns the nested capacities into dicts)."""
    return asdict(group)


def server_group_from_xcom(value: Mapping[str, Any]) -> ServerGroup:
    known = {f.name for f in fields(ServerGroup)}
    data = {key: item for key, item in value.items() if key in known}
    restore = data.get("restore_capacity")
    data["capacity"] = capacity_from_xcom(data["capacity"])
    data["restore_capacity"] = capacity_from_xcom(restore) if restore else None
    return ServerGroup(**data)


def plan_to_xcom(plan: DeployPlan) -> dict[str, Any]:
    """One XCom value for the whole plan; every task reads it back with plan_from_xcom."""
    value = asdict(plan)
    value["live"] = server_group_to_xcom(plan.live) if plan.live else None
    value["capacity"] = capacity_to_xcom(plan.capacity)
    return value


def plan_from_xcom(value: Mapping[str, Any]) -> DeployPlan:
    known = {f.name for f in fields(DeployPlan)}
    data = {key: item for key, item in value.items() if key in known}
    staging = data.get("staging")
    live = data.get("live")
    data["staging"] = StagingPlan(**staging) if staging else None
    data["live"] = server_group_from_xcom(live) if live else None
    data["capacity"] = capacity_from_xcom(data["capacity"])
    return DeployPlan(**data)
