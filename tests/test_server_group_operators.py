"""The server group operators' execute() against moto through the aws_default connection, and their links."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, LIVE_CAPACITY, FleetClients

from immudeploy import links
from immudeploy.demo import DemoEnvironment
from immudeploy.errors import TrafficGuardError
from immudeploy.operators.server_groups import (
    XCOM_PREVIOUS_SERVER_GROUP,
    AttachServerGroupOperator,
    DetachServerGroupOperator,
    LaunchServerGroupOperator,
    RestoreCapacityOperator,
    RetireServerGroupsOperator,
    _ServerGroupOperator,
)
from immudeploy.server_groups import Capacity, ServerGroup, find_server_groups


class _FakeTaskInstance:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def _run(operator: Any) -> tuple[Any, dict[str, Any]]:
    ti = _FakeTaskInstance()
    result = operator.execute({"ti": ti})
    # What goes through XCom must survive JSON.
    assert json.loads(json.dumps(result)) == result
    return result, ti.xcom


def test_operators_run_a_swap(
    fleet_clients: FleetClients,
    demo_network: DemoEnvironment,
    live_fleet: ServerGroup,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Clients through aws_default cost ~0.3 s each to build; the other tests cover that path.
    monkeypatch.setattr(_ServerGroupOperator, "_clients", lambda self: fleet_clients)
    tg = demo_network.target_group_arn
    launch = LaunchServerGroupOperator(
        task_id="launch",
        app=APP,
        environment=ENVIRONMENT,
        version="1.1.0",
        image_id=BASE_IMAGE,
        deploy_id="deploy/manual__2026-01-01T00:00:00+00:00",
        instance_type="t3.micro",
        subnet_ids=demo_network.subnet_ids,
        # Rendered templates arrive as strings unless the DAG renders native objects.
        security_group_ids=json.dumps([demo_network.security_group_id]),
        target_group_arns=[tg],
        ssm_config_path="/immutable/shop/prod/1.1.0",
        cache_key_prefix="shop/prod/1.1.0",
    )
    new, launch_xcom = _run(launch)
    assert new["name"] == "shop-prod-v002" and new["capacity"] == {"min": 3, "max": 3, "desired": 3}
    assert launch_xcom[XCOM_PREVIOUS_SERVER_GROUP]["name"] == live_fleet.name
    assert launch_xcom[links.XCOM_SERVER_GROUP_NAME] == "shop-prod-v002"
    assert launch_xcom[links.XCOM_IMAGE_ID] == BASE_IMAGE and launch_xcom[links.XCOM_REGION] == "us-east-1"
    assert _run(launch)[0]["name"] == "shop-prod-v002"  # a retry finds the same group

    attached, attach_xcom = _run(
        AttachServerGroupOperator(task_id="attach", group_name=new["name"], target_group_arns=tg)
    )
    assert attached["target_group_arns"] == [tg] and attach_xcom[links.XCOM_TARGET_GROUP_ARN] == tg
    detached, _ = _run(
        DetachServerGroupOperator(task_id="detach", group_name=live_fleet.name, target_group_arns=[tg])
    )
    assert detached["disabled"] and detached["target_group_arns"] == []
    restored, _ = _run(RestoreCapacityOperator(task_id="restore", group_name=new["name"]))
    assert Capacity.from_xcom(restored["capacity"]) == LIVE_CAPACITY
    retired, _ = _run(
        RetireServerGroupsOperator(
            task_id="retire",
            app=APP,
            environment=ENVIRONMENT,
            current_group_name=new["name"],
            target_group_arns=[tg],
            keep=0,
            keep_images=1,
        )
    )
    assert retired == {"deleted_server_groups": [live_fleet.name], "deleted_images": []}
    assert [g.name for g in find_server_groups(fleet_clients, APP, ENVIRONMENT)] == [new["name"]]


def test_detach_operator_skips_a_first_deploy_and_keeps_the_guard(
    aws: Any, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    for absent in (None, "", "None"):
        detach = DetachServerGroupOperator(task_id="detach", group_name=absent, target_group_arns=[])
        assert _run(detach) == (None, {})
    detach = DetachServerGroupOperator(
        task_id="detach", group_name=live_fleet.name, target_group_arns=[demo_network.target_group_arn]
    )
    with pytest.raises(TrafficGuardError):
        _run(detach)


def test_launch_operator_needs_a_capacity_on_first_deploy(aws: Any, demo_network: DemoEnvironment) -> None:
    kwargs: dict[str, Any] = dict(
        task_id="launch",
        app=APP,
        environment=ENVIRONMENT,
        version="1.0.0",
        image_id=BASE_IMAGE,
        deploy_id="run-1",
        instance_type="t3.micro",
        subnet_ids=demo_network.subnet_ids,
        security_group_ids=[demo_network.security_group_id],
        target_group_arns=[demo_network.target_group_arn],
        ssm_config_path="/immutable/shop/prod/1.0.0",
        cache_key_prefix="shop/prod/1.0.0",
    )
    with pytest.raises(ValueError, match="default_capacity"):
        _run(LaunchServerGroupOperator(**kwargs))
    group, xcom = _run(
        LaunchServerGroupOperator(**kwargs, default_capacity='{"min": 1, "max": 4, "desired": 2}')
    )
    assert group["name"] == "shop-prod-v001" and group["restore_capacity"] == {
        "min": 1,
        "max": 4,
        "desired": 2,
    }
    assert xcom[XCOM_PREVIOUS_SERVER_GROUP] is None


def test_links_read_region_and_resource_from_xcom(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time.xcom import XCom

    values = {
        "region": "eu-west-1",
        "image_id": "ami-0123456789abcdef0",
        "server_group_name": "shop-prod-v002",
        "target_group_arn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop-prod-live/0123abcd",
    }
    monkeypatch.setattr(XCom, "get_value", classmethod(lambda cls, *, ti_key, key: values.get(key)))
    ti_key = object()

    assert links.ImageLink().get_link(None, ti_key=ti_key) == (  # type: ignore[arg-type]
        "https://eu-west-1.console.aws.amazon.com/ec2/home?region=eu-west-1#ImageDetails:imageId=ami-0123456789abcdef0"
    )
    assert (
        links.ServerGroupLink()
        .get_link(None, ti_key=ti_key)
        .endswith(  # type: ignore[arg-type]
            "#AutoScalingGroupDetails:id=shop-prod-v002;view=details"
        )
    )
    assert (
        links.TargetGroupLink()
        .get_link(None, ti_key=ti_key)
        .endswith(  # type: ignore[arg-type]
            "#TargetGroup:targetGroupArn=" + values["target_group_arn"]
        )
    )
    values["region"] = "evil.example.com/x"
    assert links.ImageLink().get_link(None, ti_key=ti_key) == ""  # type: ignore[arg-type]
    values.clear()
    assert links.ServerGroupLink().get_link(None, ti_key=ti_key) == ""  # type: ignore[arg-type]
