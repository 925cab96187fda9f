"""The deploy record against moto: what it holds, what rollback chooses from it, what retention keeps."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, FleetClients

from immudeploy.aws.deploy_record import (
    KIND_ROLLBACK,
    Release,
    previous_release,
    record_release,
    record_served_release,
    recorded_images,
    release_history,
    release_of_version,
)
from immudeploy.core.config import DeploymentConfig, parse_config
from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import as_aws_tags, identity_tags
from immudeploy.core.plan import Capacity, DeployPlan, ServerGroup
from immudeploy.release.deploy import (
    attach_fleet,
    detach_old_fleet,
    finish_swap,
    launch_fleet,
    plan_deploy,
    retire,
)
from immudeploy.release.rollback import bring_up_rollback_fleet, plan_rollback
from immudeploy_dev.demo import DemoEnvironment, seed_live_fleet

REPO = Path(__file__).resolve().parents[3]
_names = itertools.count()
_times = itertools.count()


def deployment_config(**overrides: Any) -> DeploymentConfig:
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    app = config["apps"][APP]
    app["packer_template"] = str(REPO / "packer")
    env = app["environments"][ENVIRONMENT]
    env["observation_minutes"] = 0
    env.update(overrides)
    return parse_config(yaml.safe_dump(config), REPO / "config" / "test.yaml")


def bake(clients: FleetClients, version: str, environment: str) -> str:
    """An image as a bake tags it; names sort in baking order (CreationDate has one-second ties)."""
    instance = clients.ec2.run_instances(ImageId=BASE_IMAGE, MinCount=1, MaxCount=1)["Instances"][0]
    image_id = clients.ec2.create_image(
        InstanceId=instance["InstanceId"],
        Name=f"{APP}-{next(_names):04d}-{environment}-{version}",
        TagSpecifications=[
            {"ResourceType": "image", "Tags": as_aws_tags(identity_tags(APP, environment, version))}
        ],
    )["ImageId"]
    clients.ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    return str(image_id)


def serve(
    clients: FleetClients, version: str, image_id: str, **overrides: Any
) -> tuple[DeployPlan, ServerGroup]:
    """A deploy that reached serving and stood: swap, record, tear down (as the DAG orders them)."""
    params = {"app": APP, "environment": ENVIRONMENT, "version": version}
    plan = plan_deploy(
        clients, deployment_config(**overrides), params, "immutable_deploy", f"manual__{version}"
    )
    new = launch_fleet(clients, plan, image_id)
    attach_fleet(clients, plan, new.name)
    detach_old_fleet(clients, plan, new.name)
    finish_swap(clients, plan, new.name)
    record_served_release(clients, plan, new.name)
    retire(clients, plan, new.name)
    return plan, new


def entry(environment: str, version: str, image_id: str, **fields: Any) -> Release:
    """A record entry of another environment, as its own deploy would have written it."""
    at = f"2026-01-01T00:00:{next(_times):02d}.000000+00:00"
    return Release(
        app=APP,
        environment=environment,
        version=version,
        image_id=image_id,
        group=f"{APP}-{environment}-v{next(_names):03d}",
        dag_id="immutable_deploy",
        run_id=f"manual__{environment}-{version}",
        recorded_key=f"{at}#{environment}-{version}",
        recorded_at=at,
        **fields,
    )


def rollback_plan(clients: FleetClients, **params: Any) -> DeployPlan:
    return plan_rollback(
        clients,
        deployment_config(keep_old_groups=0),
        {"app": APP, "environment": ENVIRONMENT, **params},
        "immutable_rollback",
        "manual__rollback",
    )


def aws_state(clients: FleetClients, target_group_arn: str) -> dict[str, Any]:
    groups = clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    return {
        "groups": sorted((g["AutoScalingGroupName"], g["DesiredCapacity"], g["MinSize"]) for g in groups),
        "templates": sorted(
            t["LaunchTemplateName"] for t in clients.ec2.describe_launch_templates()["LaunchTemplates"]
        ),
        "images": sorted(i["ImageId"] for i in clients.ec2.describe_images(Owners=["self"])["Images"]),
        "targets": sorted(
            d["Target"]["Id"]
            for d in clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)[
                "TargetHealthDescriptions"
            ]
        ),
    }


@pytest.fixture
def prod_history(fleet_clients: FleetClients, demo_network: DemoEnvironment) -> dict[str, str]:
    """1.3.0, 1.4.0 then 1.5.0 served in prod (no group kept); then a 1.6.0-rc1 image baked for qa
    and a 1.5.1 image for prod whose deploy failed (never recorded). Version -> image id."""
    images = {}
    for version in ("1.3.0", "1.4.0", "1.5.0"):
        images[version] = bake(fleet_clients, version, ENVIRONMENT)
        serve(fleet_clients, version, images[version], keep_old_groups=0)
    images["1.6.0-rc1"] = bake(fleet_clients, "1.6.0-rc1", "qa")
    images["1.5.1"] = bake(fleet_clients, "1.5.1", ENVIRONMENT)
    return images


# --- the record ------------------------------------------------------------------------------------


def test_each_served_release_is_recorded_once_newest_first(
    fleet_clients: FleetClients, prod_history: dict[str, str]
) -> None:
    history = release_history(fleet_clients.dynamodb, APP, ENVIRONMENT)

    assert [(r.version, r.image_id, r.kind) for r in history] == [
        (v, prod_history[v], "deploy") for v in ("1.5.0", "1.4.0", "1.3.0")
    ]
    assert [r.group for r in history] == ["shop-prod-v003", "shop-prod-v002", "shop-prod-v001"]
    # A retried record task of the same run (a later time, so another key) writes nothing new.
    first = record_release(fleet_clients.dynamodb, entry("qa", "1.6.0-rc1", prod_history["1.6.0-rc1"]))
    retried = record_release(fleet_clients.dynamodb, entry("qa", "1.6.0-rc1", prod_history["1.6.0-rc1"]))
    assert retried == first
    assert release_history(fleet_clients.dynamodb, APP, "qa") == [first]


def test_reading_a_record_that_was_never_written_creates_nothing(fleet_clients: FleetClients) -> None:
    assert release_history(fleet_clients.dynamodb, APP, ENVIRONMENT) == []
    assert recorded_images(fleet_clients.dynamodb, APP, ENVIRONMENT, 5) == []
    assert fleet_clients.dynamodb.list_tables()["TableNames"] == []


def test_previous_release_skips_the_current_version_and_what_a_rollback_rejected() -> None:
    one, two, three = (
        entry(ENVIRONMENT, v, f"ami-0000000{i}") for i, v in enumerate(["1.3.0", "1.4.0", "1.5.0"])
    )
    back = entry(ENVIRONMENT, "1.4.0", two.image_id, kind=KIND_ROLLBACK, rolled_back_from_version="1.5.0")
    assert previous_release([three, two, one], "1.5.0") == two
    # After the rollback from 1.5.0 to 1.4.0, the next rollback goes to 1.3.0, not back to 1.5.0.
    assert previous_release([back, three, two, one], "1.4.0") == one
    assert previous_release([one], "1.3.0") is None
    assert release_of_version([back, three, two, one], "1.4.0") == back


# --- rollback chooses from the record ---------------------------------------------------------------


def test_rollback_goes_to_the_release_before_the_live_one_of_this_environment_without_rebake(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, prod_history: dict[str, str]
) -> None:
    images_before = aws_state(fleet_clients, demo_network.target_group_arn)["images"]

    plan = rollback_plan(fleet_clients)

    # Not the newer 1.6.0-rc1 of qa, not the 1.5.1 whose deploy failed: what served before 1.5.0.
    assert (plan.rollback_mode, plan.version, plan.ami_id) == ("redeploy", "1.4.0", prod_history["1.4.0"])
    back = bring_up_rollback_fleet(fleet_clients, plan)
    assert back.image_id == prod_history["1.4.0"]
    assert aws_state(fleet_clients, demo_network.target_group_arn)["images"] == images_before  # no rebake

    record_served_release(fleet_clients, plan, back.name)
    newest = release_history(fleet_clients.dynamodb, APP, ENVIRONMENT)[0]
    assert (newest.kind, newest.version, newest.image_id, newest.group) == (
        KIND_ROLLBACK,
        "1.4.0",
        prod_history["1.4.0"],
        back.name,
    )
    assert (newest.rolled_back_from_version, newest.rolled_back_from_group) == ("1.5.0", "shop-prod-v003")


def test_rollback_to_a_recorded_version_takes_that_versions_latest_entry(
    fleet_clients: FleetClients, prod_history: dict[str, str]
) -> None:
    plan = rollback_plan(fleet_clients, to_version="1.3.0")

    assert (plan.rollback_mode, plan.version, plan.ami_id) == ("redeploy", "1.3.0", prod_history["1.3.0"])


@pytest.mark.parametrize("version", ["9.9.9", "1.5.1", "1.6.0-rc1"])
def test_rollback_to_a_version_that_never_served_here_fails_naming_it_and_changes_nothing(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, prod_history: dict[str, str], version: str
) -> None:
    before = aws_state(fleet_clients, demo_network.target_group_arn)

    with pytest.raises(InvalidInput, match=f"to_version: {version} never served in shop/prod") as error:
        rollback_plan(fleet_clients, to_version=version)

    assert "recorded: 1.5.0, 1.4.0, 1.3.0" in str(error.value)
    assert aws_state(fleet_clients, demo_network.target_group_arn) == before


def test_rollback_swaps_back_to_the_recorded_group_while_it_is_kept(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    for version in ("1.3.0", "1.4.0", "1.5.0"):
        serve(fleet_clients, version, bake(fleet_clients, version, ENVIRONMENT), keep_old_groups=1)

    plan = rollback_plan(fleet_clients)

    assert (plan.rollback_mode, plan.rollback_group, plan.version) == ("swap", "shop-prod-v002", "1.4.0")


def test_a_target_without_a_record_falls_back_to_images_of_its_own_environment(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    own = bake(fleet_clients, "1.4.0", ENVIRONMENT)
    bake(fleet_clients, "1.6.0-rc1", "qa")  # newer, another environment
    live = bake(fleet_clients, "1.5.0", ENVIRONMENT)
    seed_live_fleet(fleet_clients, demo_network, APP, ENVIRONMENT, "1.5.0", live, Capacity(1, 2, 1))

    plan = rollback_plan(fleet_clients)

    assert (plan.rollback_mode, plan.version, plan.ami_id) == ("redeploy", "1.4.0", own)


# --- retention ---------------------------------------------------------------------------------------


def test_retention_with_three_environments_keeps_every_image_a_record_would_roll_back_to(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    # qa: 1.5.0 then 1.6.0-rc1 served; two newer release candidates were baked and never served.
    qa = {v: bake(fleet_clients, v, "qa") for v in ("1.5.0", "1.6.0-rc1", "1.6.0-rc2", "1.6.0-rc3")}
    record_release(fleet_clients.dynamodb, entry("qa", "1.5.0", qa["1.5.0"]))
    record_release(fleet_clients.dynamodb, entry("qa", "1.6.0-rc1", qa["1.6.0-rc1"]))
    # dev: only 1.4.0 ever served; three newer bakes failed their deploys.
    dev = {v: bake(fleet_clients, v, "dev") for v in ("1.4.0", "1.4.1", "1.4.2", "1.4.3")}
    record_release(fleet_clients.dynamodb, entry("dev", "1.4.0", dev["1.4.0"]))
    # prod: 1.3.0, 1.4.0, 1.5.0 served and were retired as groups (keep_old_groups 0), 1.5.1 failed.
    prod = {}
    for version in ("1.3.0", "1.4.0"):
        prod[version] = bake(fleet_clients, version, ENVIRONMENT)
        serve(fleet_clients, version, prod[version], keep_old_groups=0, keep_images=1)
    prod["1.5.1"] = bake(fleet_clients, "1.5.1", ENVIRONMENT)
    prod["1.5.0"] = bake(fleet_clients, "1.5.0", ENVIRONMENT)
    serve(fleet_clients, "1.5.0", prod["1.5.0"], keep_old_groups=0, keep_images=1)

    left = set(aws_state(fleet_clients, demo_network.target_group_arn)["images"])

    # What each environment's rollback would go to, and its newest entry, are kept...
    for environment in (ENVIRONMENT, "qa", "dev"):
        history = release_history(fleet_clients.dynamodb, APP, environment)
        target = previous_release(history, history[0].version)
        assert history[0].image_id in left
        assert target is None or target.image_id in left, environment
    assert {prod["1.4.0"], prod["1.5.0"], qa["1.5.0"], qa["1.6.0-rc1"], dev["1.4.0"]} <= left
    # ...and each environment's newest bake (counted per environment, not pushed out by another's).
    assert {qa["1.6.0-rc3"], dev["1.4.3"]} <= left
    # What no record needs and is not the newest of its environment goes.
    assert not {prod["1.3.0"], prod["1.5.1"], qa["1.6.0-rc2"], dev["1.4.1"], dev["1.4.2"]} & left
    assert rollback_plan(fleet_clients).ami_id == prod["1.4.0"]
