"""Configuration that cannot work is refused when it is read, and one broken entry stops only its own runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, ENVIRONMENT, LIVE_CAPACITY, FleetClients

from immudeploy.aws.groups.capacity import pin_capacity
from immudeploy.core.config import DEFAULT_CONFIG_PATH, DeploymentConfig, load_config, parse_config
from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import TAG_RESTORE_CAPACITY, from_aws_tags
from immudeploy.core.plan import ServerGroup
from immudeploy.release.deploy import plan_deploy
from immudeploy_dev.demo import DemoEnvironment

REPO = Path(__file__).resolve().parents[3]
PATH = REPO / "config" / "test.yaml"
STAGING = {"target_group": "web-staging", "subnets": ["web-a"], "test_command": ["true"]}


def web(**environments: dict[str, Any]) -> dict[str, Any]:
    return {
        "packer_template": str(REPO / "packer"),
        "base_image": {"image_id": "ami-785db401"},
        "environments": environments or {"prod": env()},
    }


def env(**fields: Any) -> dict[str, Any]:
    return {"subnets": ["web-a"], "target_groups": ["web-prod"], **fields}


def parse(**apps: dict[str, Any]) -> DeploymentConfig:
    return parse_config(yaml.safe_dump({"apps": apps}), PATH)


def refused(config: DeploymentConfig, app: str, environment: str) -> str:
    with pytest.raises(InvalidInput) as failure:
        config.get(app, environment)
    return str(failure.value)


def test_a_staging_group_name_that_would_not_fit_is_refused() -> None:
    # 18 letters: fine as an environment, but `{environment}stg` is 21, over the 20 a name may have.
    name = "integrationtesting"
    config = parse(web=web(**{name: env(staging=STAGING)}))
    message = refused(config, "web", name)
    assert f"apps.web.environments.{name}.staging" in message
    assert f"{name}stg" in message
    # Without staging the same name is fine.
    assert parse(web=web(**{name: env()})).get("web", name).environment == name


def test_an_environment_named_like_another_ones_staging_groups_is_refused_with_it() -> None:
    config = parse(web=web(prod=env(staging=STAGING), prodstg=env(), qa=env(staging=STAGING)))
    for environment in ("prod", "prodstg"):
        message = refused(config, "web", environment)
        assert "apps.web.environments.prod.staging" in message
        assert "web-prodstg-vNNN" in message and "'prodstg'" in message
    assert config.get("web", "qa").staging is not None


@pytest.mark.parametrize("schedule", ["0 3 * *", "61 3 * * *", "every night", ""])
def test_a_nightly_schedule_that_is_not_cron_is_refused(schedule: str) -> None:
    config = parse(web=web(prod=env(nightly={"enabled": True, "schedule": schedule})))
    message = refused(config, "web", "prod")
    assert "apps.web.environments.prod.nightly.schedule" in message
    assert "not a valid cron expression" in message
    assert config.nightly_targets() == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://releases.example.com/web/latest.tar.gz", "has no {version}"),
        ("https://releases.example.com/web/{Version}.tar.gz", "has no {version}"),
        ("https://releases.example.com/{app}/{version}.tar.gz", "only placeholder"),
    ],
)
def test_a_release_url_that_does_not_name_the_version_is_refused(url: str, reason: str) -> None:
    config = parse(web={**web(), "release_url": url})
    message = refused(config, "web", "prod")
    assert "apps.web.release_url" in message and reason in message


def test_a_versioned_release_url_and_an_empty_one_are_accepted() -> None:
    url = "https://releases.example.com/web/web-{version}.tar.gz"
    assert parse(web={**web(), "release_url": url}).get("web", "prod").release_url == url
    assert parse(web={**web(), "release_url": ""}).get("web", "prod").release_url == ""
    assert load_config(DEFAULT_CONFIG_PATH).get("shop", "prod").release_url == ""


def test_a_broken_app_leaves_the_others_usable_and_its_runs_get_the_reason() -> None:
    config = parse(
        shop=web(prod=env()),
        billing={**web(prod=env(), qa=env()), "release_url": "https://example.com/billing.tar.gz"},
        Bad={"environments": {}},
    )
    assert config.get("shop", "prod").target == "shop/prod"
    for environment in ("prod", "qa"):
        message = refused(config, "billing", environment)
        assert "apps.billing.release_url" in message and "{version}" in message
        assert f"billing/{environment}" in message
    assert "lower-case" in refused(config, "Bad", "prod")
    # Broken entries are still named, so the trigger form offers them and their runs fail with the reason.
    assert ("billing", "qa") in config.targets() and ("shop", "prod") in config.targets()
    with pytest.raises(InvalidInput, match="Bad"):
        config.check()
    # An entry never configured still says what is.
    assert "shop/prod" in refused(config, "shop", "qa")


def test_the_dags_parse_with_a_broken_app_and_offer_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from immudeploy.airflow.params import deploy_params

    path = tmp_path / "deployments.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apps": {
                    "shop": web(prod=env(nightly={"enabled": True})),
                    "billing": web(prod=env(nightly={"enabled": True, "schedule": "at three"})),
                }
            }
        )
    )
    monkeypatch.setenv("IMMUDEPLOY_CONFIG", str(path))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert {"immutable_deploy", "immutable_rollback", "immutable_nightly_rebuild"} <= set(bag.dag_ids)
    assert deploy_params()["app"].schema["enum"] == ["billing", "shop"]


# --- against the AWS stand-in: prepare's plan ----------------------------------------------------


def demo_config(alarms: list[str] | None = None, **apps: dict[str, Any]) -> DeploymentConfig:
    """The local demo's shop/prod, plus other apps."""
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["apps"][APP]["packer_template"] = str(REPO / "packer")
    shop = config["apps"][APP]["environments"][ENVIRONMENT]
    shop.update(observation_minutes=0, alarms=alarms or [])
    config["apps"].update(apps)
    return parse_config(yaml.safe_dump(config), PATH)


def with_cloudwatch(clients: FleetClients, aws: Any) -> Any:
    return SimpleNamespace(**vars(clients), cloudwatch=aws.client("cloudwatch"))


def test_a_broken_second_app_leaves_the_first_apps_deploy_working(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    config = demo_config(billing={**web(), "release_url": "https://example.com/billing.tar.gz"})
    params = {"app": APP, "environment": ENVIRONMENT, "version": "2.0.0"}
    plan = plan_deploy(fleet_clients, config, params, "immutable_deploy", "manual__shop")
    assert plan.live is not None and plan.live.name == live_fleet.name

    broken = {"app": "billing", "environment": "prod", "version": "2.0.0"}
    with pytest.raises(InvalidInput, match=r"apps\.billing\.release_url"):
        plan_deploy(fleet_clients, config, broken, "immutable_deploy", "manual__billing")


def test_an_alarm_that_does_not_exist_fails_prepare_before_anything_changes(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    clients = with_cloudwatch(fleet_clients, aws)
    clients.cloudwatch.put_metric_alarm(
        AlarmName="shop-prod-5xx",
        MetricName="HTTPCode_Target_5XX_Count",
        Namespace="AWS/ApplicationELB",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=10,
        ComparisonOperator="GreaterThanThreshold",
    )
    # An interrupted swap's leftover: the next plan would repair it, i.e. change AWS.
    pin_capacity(fleet_clients, live_fleet.name, LIVE_CAPACITY)
    config = demo_config(alarms=["shop-prod-5xx", "shop-prod-latnecy"])
    params = {"app": APP, "environment": ENVIRONMENT, "version": "2.0.0"}

    with pytest.raises(InvalidInput) as failure:
        plan_deploy(clients, config, params, "immutable_deploy", "manual__alarms")

    message = str(failure.value)
    assert "apps.shop.environments.prod.alarms" in message
    assert "shop-prod-latnecy" in message and "shop-prod-5xx" not in message
    group = fleet_clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[live_fleet.name])[
        "AutoScalingGroups"
    ][0]
    assert TAG_RESTORE_CAPACITY in from_aws_tags(group["Tags"]), "the plan repaired the swap before refusing"

    config = demo_config(alarms=["shop-prod-5xx"])
    assert plan_deploy(clients, config, params, "immutable_deploy", "manual__alarms").alarms == [
        "shop-prod-5xx"
    ]
