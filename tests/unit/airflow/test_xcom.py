"""The plan travels between tasks as one plain-JSON XCom value and comes back equal."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from immudeploy.airflow.xcom import (
    capacity_from_xcom,
    capacity_to_xcom,
    plan_from_xcom,
    plan_to_xcom,
    server_group_from_xcom,
    server_group_to_xcom,
)
from immudeploy.core.errors import InvalidInput
from immudeploy.core.plan import Capacity, DeployPlan, ServerGroup, StagingPlan

TG_LIVE = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop-prod-live/0123abcd"
TG_STAGING = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop-prod-staging/4567ef01"


def live_group(**changes: Any) -> ServerGroup:
    group = ServerGroup(
        name="shop-prod-v001",
        app="shop",
        environment="prod",
        sequence=1,
        version="1.0.0",
        image_id="ami-785db401",
        launch_template_name="shop-prod-v001",
        capacity=Capacity(3, 3, 3),
        instance_type="t3.micro",
        subnet_ids=["subnet-0123abcd", "subnet-4567ef01"],
        security_group_ids=["sg-0123abcd"],
        target_group_arns=[TG_LIVE],
        instance_ids=["i-0000000000000001", "i-0000000000000002", "i-0000000000000003"],
        suspended_processes=["AZRebalance"],
        deploy_id="immutable_deploy-0123456789abcdef",
        created_time="2026-01-01T00:00:00+00:00",
        disabled=False,
        # Pinned by a swap that has not finished: the tag remembers the real size.
        restore_capacity=Capacity(2, 6, 3),
    )
    return replace(group, **changes)


def deploy_plan(**changes: Any) -> DeployPlan:
    plan = DeployPlan(
        dag_id="immutable_deploy",
        run_id="manual__2026-01-01T00:00:00+00:00",
        deploy_id="immutable_deploy-0123456789abcdef",
        app="shop",
        environment="prod",
        version="2.0.0",
        git_sha="abc1234",
        ami_id=None,
        instance_type="t3.micro",
        subnet_ids=["subnet-0123abcd", "subnet-4567ef01"],
        security_group_ids=["sg-0123abcd"],
        target_group_arns=[TG_LIVE],
        staging=StagingPlan(
            target_group_arn=TG_STAGING,
            subnet_ids=["subnet-0123abcd"],
            endpoint="http://shop-prod-demo-1.us-east-1.elb.amazonaws.com:8080",
            test_command=["python", "-m", "immudeploy.release.smoke"],
            test_timeout_seconds=300,
            capacity=1,
        ),
        live=live_group(),
        capacity=Capacity(2, 6, 3),
        keep_old_groups=1,
        keep_images=5,
        observation_seconds=6.0,
        alarms=["shop-prod-5xx"],
        health_timeout_seconds=None,
        drain_timeout_seconds=120,
        in_service_timeout_seconds=600,
        bake_timeout_seconds=3600,
        ssm_prefix="/immutable/shop/prod",
        runtime_config={"LOG_LEVEL": "info", "FEATURE_NEW_CHECKOUT": "false"},
        base_image_id="ami-785db401",
        base_image_name_pattern=None,
        base_image_owners=[],
        packer_template="/work/main/packer",
        release_url="",
        planned_at="2026-01-01T00:00:01+00:00",
        notes=["a note for the summary"],
    )
    return replace(plan, **changes)


def through_json(value: Any) -> Any:
    """What the XCom backend stores and hands the next task."""
    return json.loads(json.dumps(value))


def test_a_plan_with_live_group_staging_and_capacity_round_trips() -> None:
    plan = deploy_plan()

    value = plan_to_xcom(plan)
    restored = plan_from_xcom(through_json(value))

    assert restored == plan
    assert isinstance(restored.live, ServerGroup)
    assert restored.live.restore_capacity == Capacity(2, 6, 3)
    assert restored.live.capacity == Capacity(3, 3, 3)
    assert isinstance(restored.staging, StagingPlan)
    assert restored.staging.endpoint.endswith(":8080")
    assert restored.capacity == Capacity(2, 6, 3)


def test_the_value_is_plain_json() -> None:
    value = plan_to_xcom(deploy_plan())
    assert through_json(value) == value
    assert value["capacity"] == {"min": 2, "max": 6, "desired": 3}
    assert value["live"]["name"] == "shop-prod-v001"
    assert value["live"]["restore_capacity"] == {"min": 2, "max": 6, "desired": 3}
    assert value["staging"]["target_group_arn"] == TG_STAGING


def test_a_first_deploy_plan_without_live_group_or_staging_round_trips() -> None:
    plan = deploy_plan(live=None, staging=None, git_sha=None, ami_id="ami-0123456789abcdef0", notes=[])

    value = plan_to_xcom(plan)

    assert value["live"] is None and value["staging"] is None
    assert through_json(value) == value
    restored = plan_from_xcom(through_json(value))
    assert restored == plan
    assert restored.live is None and restored.staging is None


def test_a_rollback_plan_keeps_its_mode_and_group() -> None:
    plan = deploy_plan(rollback_mode="swap", rollback_group="shop-prod-v001", staging=None)
    assert plan_from_xcom(through_json(plan_to_xcom(plan))) == plan


def test_a_live_group_without_restore_tag_round_trips() -> None:
    plan = deploy_plan(live=live_group(restore_capacity=None, capacity=Capacity(2, 6, 3)))
    restored = plan_from_xcom(through_json(plan_to_xcom(plan)))
    assert restored.live is not None and restored.live.restore_capacity is None
    assert restored == plan


def test_fields_the_reader_does_not_know_are_ignored() -> None:
    # A value written by a newer worker during a rolling upgrade must still load.
    value = through_json(plan_to_xcom(deploy_plan()))
    value["added_later"] = 1
    value["live"]["also_added_later"] = "x"
    assert plan_from_xcom(value) == deploy_plan()


def test_server_group_converters_round_trip() -> None:
    for group in (live_group(), live_group(restore_capacity=None, disabled=True, version=None)):
        value = server_group_to_xcom(group)
        assert through_json(value) == value
        assert server_group_from_xcom(through_json(value)) == group


def test_capacity_converters_round_trip() -> None:
    capacity = Capacity(2, 6, 3)
    value = capacity_to_xcom(capacity)
    assert value == {"min": 2, "max": 6, "desired": 3}
    assert capacity_from_xcom(through_json(value)) == capacity


def test_a_capacity_read_back_is_validated_again() -> None:
    with pytest.raises(InvalidInput, match="min <= desired <= max"):
        capacity_from_xcom({"min": 3, "max": 2, "desired": 2})
