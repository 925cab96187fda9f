"""The janitor and time-bounded retention against the stand-in: expiry, zero-kept groups, leftovers, dry run."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, LIVE_VERSION, FleetClients

from immudeploy.airflow.janitor_tasks import run_locked
from immudeploy.aws.groups.retire import TAG_EXPIRES_AT
from immudeploy.core.errors import DeployError, InvalidInput
from immudeploy.core.naming import TAG_STATE, from_aws_tags
from immudeploy.core.plan import Capacity, ServerGroup
from immudeploy.release.deploy import launch_staging, retire
from immudeploy.release.janitor import (
    remove_dead_runs_staging,
    remove_packer_leftovers,
    retire_expired_groups,
    scale_down_zero_kept,
    summarize_janitor,
)
from immudeploy.release.rollback import bring_up_rollback_fleet, plan_rollback
from immudeploy_dev.demo import DemoEnvironment
from unit.release.test_deploy_steps import (
    deployment_config,
    group_names,
    launch_templates,
    planned,
    raw_group,
    size,
    swapped,
)

KEEP_FOR = 30.0
HOUR = 3600.0


def tags_of(clients: FleetClients, name: str) -> dict[str, str]:
    raw = raw_group(clients, name)
    assert raw is not None
    return from_aws_tags(raw.get("Tags"))


def set_group_tag(clients: FleetClients, name: str, key: str, value: str) -> None:
    clients.autoscaling.create_or_update_tags(
        Tags=[
            {
                "ResourceId": name,
                "ResourceType": "auto-scaling-group",
                "Key": key,
                "Value": value,
                "PropagateAtLaunch": False,
            }
        ]
    )


def kept_after_deploy(clients: FleetClients, **overrides: Any) -> tuple[Any, ServerGroup]:
    """A deploy of 2.0.0 up to teardown, keeping one group: (plan, new group)."""
    plan = planned(clients, keep_old_groups=1, **overrides)
    new, _ = swapped(clients, plan)
    retire(clients, plan, new.name)
    return plan, new


def packer_name(made: datetime) -> str:
    """`packer_` + a time-ordered UUID, as Packer names its temporary key pairs and security groups."""
    rest = uuid.uuid4().hex
    return f"packer_{int(made.timestamp()):08x}-{rest[:4]}-{rest[4:8]}-{rest[8:12]}-{rest[12:24]}"


# --- config --------------------------------------------------------------------------------------


def test_retention_fields_default_to_until_the_next_deploy_at_full_size() -> None:
    env = deployment_config().get(APP, ENVIRONMENT)
    assert (env.keep_for_minutes, env.kept_capacity) == (None, "full")
    env = deployment_config(keep_for_minutes=90, kept_capacity="zero").get(APP, ENVIRONMENT)
    assert (env.keep_for_minutes, env.kept_capacity) == (90.0, "zero")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("keep_for_minutes", 0, "greater than 0"),
        ("keep_for_minutes", "1h", "greater than 0"),
        ("kept_capacity", "half", "full, zero"),
    ],
)
def test_bad_retention_fields_are_refused_naming_app_environment_and_field(
    field: str, value: Any, reason: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        deployment_config(**{field: value}).get(APP, ENVIRONMENT)
    assert f"apps.{APP}.environments.{ENVIRONMENT}.{field}" in str(raised.value)
    assert reason in str(raised.value)


# --- expiry --------------------------------------------------------------------------------------


def test_a_kept_group_carries_its_expiry_and_the_janitor_retires_it_only_after(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    plan, new = kept_after_deploy(fleet_clients, keep_for_minutes=KEEP_FOR)
    expires = datetime.fromisoformat(tags_of(fleet_clients, live_fleet.name)[TAG_EXPIRES_AT])
    assert before + timedelta(minutes=KEEP_FOR) <= expires <= datetime.now(UTC) + timedelta(minutes=KEEP_FOR)
    assert TAG_EXPIRES_AT not in tags_of(fleet_clients, new.name)
    arns = plan.target_group_arns

    # Not before its expiry.
    assert retire_expired_groups(fleet_clients, APP, ENVIRONMENT, arns) == []
    early = expires - timedelta(seconds=1)
    assert retire_expired_groups(fleet_clients, APP, ENVIRONMENT, arns, now=early) == []
    assert group_names(fleet_clients) == [live_fleet.name, new.name]

    # The clock passing, as a tag written in the past.
    set_group_tag(
        fleet_clients,
        live_fleet.name,
        TAG_EXPIRES_AT,
        (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds"),
    )
    retired = retire_expired_groups(fleet_clients, APP, ENVIRONMENT, arns, keep_for_minutes=KEEP_FOR)

    assert [item.name for item in retired] == [live_fleet.name]
    assert retired[0].instances == 3 and retired[0].instance_type == "t3.micro"
    assert retired[0].instance_hours >= 0
    assert group_names(fleet_clients) == [new.name]
    assert launch_templates(fleet_clients) == [new.name]


def test_the_janitor_never_retires_a_serving_group_whatever_its_tags(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    set_group_tag(fleet_clients, live_fleet.name, TAG_STATE, "disabled")
    set_group_tag(fleet_clients, live_fleet.name, TAG_EXPIRES_AT, past)
    arns = [demo_network.target_group_arn]

    assert retire_expired_groups(fleet_clients, APP, ENVIRONMENT, arns) == []
    assert scale_down_zero_kept(fleet_clients, APP, ENVIRONMENT, arns, "zero") == []
    assert group_names(fleet_clients) == [live_fleet.name]
    assert size(fleet_clients, live_fleet.name).desired == 3


# --- zero-kept groups ----------------------------------------------------------------------------


def test_a_zero_kept_group_is_scaled_to_zero_and_a_rollback_scales_it_up_without_a_new_image(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    template_before = fleet_clients.ec2.describe_launch_templates(LaunchTemplateNames=[live_fleet.name])[
        "LaunchTemplates"
    ][0]["LaunchTemplateId"]
    images_before = fleet_clients.ec2.describe_images(Owners=["self"])["Images"]
    kept_after_deploy(fleet_clients, kept_capacity="zero")

    assert size(fleet_clients, live_fleet.name) == Capacity(0, 0, 0)
    assert live_fleet.name in launch_templates(fleet_clients)
    # Nothing left to scale down: the janitor finds it at zero already.
    arns = [demo_network.target_group_arn]
    assert scale_down_zero_kept(fleet_clients, APP, ENVIRONMENT, arns, "zero") == []

    params = {"app": APP, "environment": ENVIRONMENT}
    config = deployment_config(kept_capacity="zero")
    rollback = plan_rollback(fleet_clients, config, params, "immutable_rollback", "manual__rb")
    assert (rollback.rollback_mode, rollback.rollback_group) == ("swap", live_fleet.name)
    back = bring_up_rollback_fleet(fleet_clients, rollback)

    assert back.name == live_fleet.name
    assert back.capacity == Capacity(3, 3, 3)
    assert back.image_id == BASE_IMAGE and back.version == LIVE_VERSION
    raw = raw_group(fleet_clients, live_fleet.name)
    assert raw is not None and raw["LaunchTemplate"]["LaunchTemplateId"] == template_before
    assert fleet_clients.ec2.describe_images(Owners=["self"])["Images"] == images_before


def test_the_janitor_scales_a_zero_kept_group_that_was_scaled_up_back_to_zero(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    kept_after_deploy(fleet_clients)  # kept at full size: the environment then switches to zero
    arns = [demo_network.target_group_arn]
    assert scale_down_zero_kept(fleet_clients, APP, ENVIRONMENT, arns, "full") == []

    would = scale_down_zero_kept(fleet_clients, APP, ENVIRONMENT, arns, "zero", dry_run=True)
    assert size(fleet_clients, live_fleet.name).desired == 3
    done = scale_down_zero_kept(fleet_clients, APP, ENVIRONMENT, arns, "zero")

    assert [item.name for item in would] == [item.name for item in done] == [live_fleet.name]
    assert size(fleet_clients, live_fleet.name) == Capacity(0, 0, 0)


# --- leftovers -----------------------------------------------------------------------------------


def packer_leftovers(clients: FleetClients, subnet_id: str, made: datetime) -> dict[str, str]:
    """A build instance tagged as packer/app.pkr.hcl tags it, a temporary key pair and security group."""
    instance = clients.ec2.run_instances(
        ImageId=BASE_IMAGE,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        SubnetId=subnet_id,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": "Name", "Value": "packer-build shop-prod-2.0.0"},
                    {"Key": "packer:ami-name", "Value": "shop-prod-2.0.0"},
                    {"Key": "packer:app", "Value": APP},
                    {"Key": "packer:environment", "Value": ENVIRONMENT},
                ],
            }
        ],
    )["Instances"][0]["InstanceId"]
    key_name = packer_name(made)
    clients.ec2.create_key_pair(KeyName=key_name)
    group_name = packer_name(made)
    clients.ec2.create_security_group(GroupName=group_name, Description="Temporary group for Packer")
    return {"instance": instance, "key_pair": key_name, "security_group": group_name}


def running(clients: FleetClients, instance_id: str) -> bool:
    found = clients.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return found["State"]["Name"] in ("pending", "running")


def test_the_janitor_removes_a_dead_runs_staging_group_and_packer_leftovers_and_its_dry_run_lists_the_same(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    dead = planned(fleet_clients, run_id="manual__dead")
    staging = launch_staging(fleet_clients, dead, BASE_IMAGE)
    assert staging is not None
    # A launch that died between its template and its group.
    fleet_clients.ec2.create_launch_template(
        LaunchTemplateName=f"{APP}-{ENVIRONMENT}stg-v099", LaunchTemplateData={"ImageId": BASE_IMAGE}
    )
    now = datetime.now(UTC)
    old = packer_leftovers(fleet_clients, demo_network.subnet_ids[0], now - timedelta(hours=2))
    young = packer_name(now + timedelta(hours=2))  # a bake running when the janitor looks
    fleet_clients.ec2.create_key_pair(KeyName=young)
    # moto launches "now": the janitor looks two hours ahead, so the build instance is old enough.
    later = now + timedelta(hours=2)

    would_staging = remove_dead_runs_staging(fleet_clients, APP, ENVIRONMENT, dry_run=True)
    would_packer = remove_packer_leftovers(fleet_clients, older_than_seconds=HOUR, now=later, dry_run=True)
    assert staging.name in group_names(fleet_clients)
    assert running(fleet_clients, old["instance"])
    assert {p["KeyName"] for p in fleet_clients.ec2.describe_key_pairs()["KeyPairs"]} >= {
        old["key_pair"],
        young,
    }

    removed_staging = remove_dead_runs_staging(fleet_clients, APP, ENVIRONMENT)
    removed_packer = remove_packer_leftovers(fleet_clients, older_than_seconds=HOUR, now=later)

    assert [i.name for i in would_staging] == [i.name for i in removed_staging]
    assert [i.name for i in removed_staging] == [staging.name, f"{APP}-{ENVIRONMENT}stg-v099"]
    assert would_packer == removed_packer
    assert {(i.kind, i.name.split(" ")[0]) for i in removed_packer} == {
        ("packer-instance", old["instance"]),
        ("packer-key-pair", old["key_pair"]),
        ("packer-security-group", old["security_group"]),
    }
    assert group_names(fleet_clients) == [live_fleet.name]
    assert not running(fleet_clients, old["instance"])
    assert [p["KeyName"] for p in fleet_clients.ec2.describe_key_pairs()["KeyPairs"]] == [young]
    groups = fleet_clients.ec2.describe_security_groups()["SecurityGroups"]
    assert old["security_group"] not in {g["GroupName"] for g in groups}
    # The serving fleet's instances are not build instances.
    assert all(running(fleet_clients, iid) for iid in live_fleet.instance_ids)


def test_a_staging_group_of_the_running_run_is_left_alone(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    # The deploy's own call: its staging group stays while it runs (the janitor never runs beside
    # it: it would have to hold the lock the run holds).
    plan = planned(fleet_clients)
    staging = launch_staging(fleet_clients, plan, BASE_IMAGE)
    assert staging is not None
    from immudeploy.release.deploy import remove_abandoned_staging

    assert remove_abandoned_staging(fleet_clients, APP, ENVIRONMENT, own_deploy_id=plan.deploy_id) == []
    assert staging.name in group_names(fleet_clients)


def test_a_target_locked_by_another_live_run_is_skipped_and_said_so() -> None:
    @contextmanager
    def locked_by_someone(clients: Any, app: str, environment: str) -> Any:
        raise DeployError(f"{app}/{environment} is locked by run manual__x of immutable_deploy")
        yield

    calls: list[str] = []
    result = run_locked(
        None,
        APP,
        ENVIRONMENT,
        lambda: calls.append("ran") or [],
        lock=locked_by_someone,
        release=lambda *args: None,
    )
    assert calls == []
    assert result["removed"] == []
    assert "locked by run manual__x" in result["skipped"]


def test_the_summary_lists_per_target_and_counts_retired_instance_hours() -> None:
    item = {
        "kind": "server-group",
        "name": "shop-prod-v001",
        "reason": "kept until x",
        "instance_type": "t3.micro",
        "instances": 3,
        "instance_hours": 1.5,
    }
    summary = summarize_janitor(
        {"expired_groups": [{"target": "shop/prod", "removed": [item]}], "images": None}, dry_run=False
    )
    assert summary["instance_hours_retired"] == 1.5
    assert "shop/prod: removed 1" in summary["markdown"]
    assert "3 x t3.micro, 1.50 instance-hours kept" in summary["markdown"]
