"""Names in the configuration become AWS ids: subnets, security groups, target groups and the staging endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, ENVIRONMENT, FleetClients

from immudeploy.aws.network import resolve_environment
from immudeploy.core.config import EnvironmentConfig, parse_config
from immudeploy.core.errors import InvalidInput
from immudeploy_dev.demo import STAGING_PORT, DemoEnvironment

REPO = Path(__file__).resolve().parents[3]
WHERE = f"apps.{APP}.environments.{ENVIRONMENT}"

# The names seed_demo_network gives what it creates (see config/deployments.yaml).
SUBNET_A, SUBNET_B = f"{APP}-{ENVIRONMENT}-demo-us-east-1a", f"{APP}-{ENVIRONMENT}-demo-us-east-1b"
SECURITY_GROUP = f"{APP}-{ENVIRONMENT}-demo"
LIVE_TARGET_GROUP = f"{APP}-{ENVIRONMENT}-live"
STAGING_TARGET_GROUP = f"{APP}-{ENVIRONMENT}-staging"


def environment_config(**fields: Any) -> EnvironmentConfig:
    """One environment as the YAML file would give it; `staging=None` leaves staging out."""
    env: dict[str, Any] = {
        "subnets": [SUBNET_A, SUBNET_B],
        "security_groups": [SECURITY_GROUP],
        "target_groups": [LIVE_TARGET_GROUP],
        "staging": {
            "target_group": STAGING_TARGET_GROUP,
            "subnets": [SUBNET_A],
            "test_command": ["python", "-m", "immudeploy.release.smoke"],
        },
    }
    env.update(fields)
    if env["staging"] is None:
        del env["staging"]
    text = yaml.safe_dump(
        {
            "apps": {
                APP: {
                    "packer_template": str(REPO / "packer"),
                    "base_image": {"image_id": "ami-785db401"},
                    "environments": {ENVIRONMENT: env},
                }
            }
        }
    )
    return parse_config(text, REPO / "config" / "test.yaml").get(APP, ENVIRONMENT)


def test_names_resolve_to_the_demo_networks_ids(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    resolved = resolve_environment(fleet_clients.ec2, fleet_clients.elbv2, environment_config())

    assert resolved.subnet_ids == demo_network.subnet_ids
    assert resolved.security_group_ids == [demo_network.security_group_id]
    assert resolved.target_group_arns == [demo_network.target_group_arn]
    assert resolved.staging_target_group_arn == demo_network.staging_target_group_arn
    assert resolved.staging_subnet_ids == [demo_network.subnet_ids[0]]


def test_the_staging_endpoint_is_the_listener_that_forwards_to_the_staging_target_group(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    resolved = resolve_environment(fleet_clients.ec2, fleet_clients.elbv2, environment_config())

    assert demo_network.load_balancer_dns_name
    assert resolved.staging_endpoint == f"http://{demo_network.load_balancer_dns_name}:{STAGING_PORT}"


def test_ids_resolve_to_themselves(fleet_clients: FleetClients, demo_network: DemoEnvironment) -> None:
    config = environment_config(
        subnets=list(reversed(demo_network.subnet_ids)),
        security_groups=[demo_network.security_group_id],
        target_groups=[demo_network.target_group_arn],
        staging={
            "target_group": demo_network.staging_target_group_arn,
            "subnets": [demo_network.subnet_ids[1]],
            "test_command": ["true"],
        },
    )

    resolved = resolve_environment(fleet_clients.ec2, fleet_clients.elbv2, config)

    # The configured order is kept: it is the order the Auto Scaling group gets its subnets in.
    assert resolved.subnet_ids == list(reversed(demo_network.subnet_ids))
    assert resolved.security_group_ids == [demo_network.security_group_id]
    assert resolved.target_group_arns == [demo_network.target_group_arn]
    assert resolved.staging_target_group_arn == demo_network.staging_target_group_arn
    assert resolved.staging_subnet_ids == [demo_network.subnet_ids[1]]
    assert resolved.staging_endpoint.endswith(f":{STAGING_PORT}")


def test_names_and_ids_mix(fleet_clients: FleetClients, demo_network: DemoEnvironment) -> None:
    config = environment_config(
        subnets=[SUBNET_A, demo_network.subnet_ids[1]],
        target_groups=[demo_network.target_group_arn, STAGING_TARGET_GROUP],
    )
    resolved = resolve_environment(fleet_clients.ec2, fleet_clients.elbv2, config)
    assert resolved.subnet_ids == demo_network.subnet_ids
    assert resolved.target_group_arns == [
        demo_network.target_group_arn,
        demo_network.staging_target_group_arn,
    ]


def test_without_staging_there_is_no_staging_endpoint(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    resolved = resolve_environment(fleet_clients.ec2, fleet_clients.elbv2, environment_config(staging=None))
    assert resolved.staging_target_group_arn is None
    assert resolved.staging_subnet_ids == []
    assert resolved.staging_endpoint == ""
    assert resolved.target_group_arns == [demo_network.target_group_arn]


def test_the_resolved_environment_is_a_plain_dict_for_xcom(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    resolved = resolve_environment(fleet_clients.ec2, fleet_clients.elbv2, environment_config())
    assert resolved.to_dict() == {
        "subnet_ids": demo_network.subnet_ids,
        "security_group_ids": [demo_network.security_group_id],
        "target_group_arns": [demo_network.target_group_arn],
        "staging_subnet_ids": [demo_network.subnet_ids[0]],
        "staging_target_group_arn": demo_network.staging_target_group_arn,
        "staging_endpoint": f"http://{demo_network.load_balancer_dns_name}:{STAGING_PORT}",
    }


@pytest.mark.parametrize(
    ("fields", "field", "unknown"),
    [
        ({"subnets": [SUBNET_A, "shop-prod-nowhere"]}, f"{WHERE}.subnets", "shop-prod-nowhere"),
        ({"subnets": ["subnet-0123456789abcdef0"]}, f"{WHERE}.subnets", "subnet-0123456789abcdef0"),
        ({"security_groups": ["shop-prod-open"]}, f"{WHERE}.security_groups", "shop-prod-open"),
        ({"security_groups": ["sg-0123456789abcdef0"]}, f"{WHERE}.security_groups", "sg-0123456789abcdef0"),
        ({"target_groups": ["shop-prod-gone"]}, f"{WHERE}.target_groups", "shop-prod-gone"),
        (
            {
                "target_groups": [
                    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gone/0123456789abcdef"
                ]
            },
            f"{WHERE}.target_groups",
            "gone",
        ),
        (
            {
                "staging": {
                    "target_group": "shop-prod-stg-gone",
                    "subnets": [SUBNET_A],
                    "test_command": ["true"],
                }
            },
            f"{WHERE}.staging.target_group",
            "shop-prod-stg-gone",
        ),
        (
            {
                "staging": {
                    "target_group": STAGING_TARGET_GROUP,
                    "subnets": ["stg-nowhere"],
                    "test_command": ["true"],
                }
            },
            f"{WHERE}.staging.subnets",
            "stg-nowhere",
        ),
    ],
)
def test_an_unknown_name_fails_naming_the_field(
    fleet_clients: FleetClients,
    demo_network: DemoEnvironment,
    fields: dict[str, Any],
    field: str,
    unknown: str,
) -> None:
    with pytest.raises(InvalidInput) as raised:
        resolve_environment(fleet_clients.ec2, fleet_clients.elbv2, environment_config(**fields))
    assert raised.value.field == field
    assert unknown in str(raised.value)


def test_a_name_that_matches_two_subnets_is_refused(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    # A second subnet carrying the same Name tag: picking one of them would be a guess.
    vpc = fleet_clients.ec2.create_vpc(CidrBlock="10.43.0.0/16")["Vpc"]["VpcId"]
    fleet_clients.ec2.create_subnet(
        VpcId=vpc,
        CidrBlock="10.43.1.0/24",
        TagSpecifications=[{"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": SUBNET_A}]}],
    )
    with pytest.raises(InvalidInput, match="matches 2 subnets") as raised:
        resolve_environment(fleet_clients.ec2, fleet_clients.elbv2, environment_config())
    assert raised.value.field in (f"{WHERE}.subnets", f"{WHERE}.staging.subnets")
