"""Configuration per deploy (issue 11): own path per deploy, published before staging, secrets as SecureString."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, FleetClients

from immudeploy.airflow.xcom import plan_to_xcom
from immudeploy.aws.groups.retire import delete_server_group
from immudeploy.aws.release_config import TAG_CONFIG_PATH, read_release_config
from immudeploy.core.config import parse_config
from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import from_aws_tags
from immudeploy.core.plan import DeployPlan, ServerGroup
from immudeploy.release.deploy import (
    attach_fleet,
    detach_old_fleet,
    finish_swap,
    launch_fleet,
    launch_staging,
    plan_deploy,
    publish_config,
    release_path,
)
from immudeploy_dev.demo import DemoEnvironment

REPO = Path(__file__).resolve().parents[3]
DAG_ID = "immutable_deploy"
PREFIX = f"/immutable/{APP}/{ENVIRONMENT}"
SOURCE_PARAMETER = "/platform/shop/prod/db-password"
DB_PASSWORD = "s3cr3t-db-password-9c1e"
API_TOKEN = "s3cr3t-api-token-77ab"


def _plan(
    clients: FleetClients, run_id: str, version: str = "2.0.0", git_sha: str | None = None, **env: Any
) -> DeployPlan:
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    app = config["apps"][APP]
    app["packer_template"] = str(REPO / "packer")
    app["environments"][ENVIRONMENT].update(env)
    parsed = parse_config(yaml.safe_dump(config), REPO / "config" / "test.yaml")
    params = {"app": APP, "environment": ENVIRONMENT, "version": version, "git_sha": git_sha}
    return plan_deploy(clients, parsed, params, DAG_ID, run_id)


def _snapshot(ssm: Any, path: str) -> list[tuple[str, str, str, int, str]]:
    """Everything about the parameters under `path` that a rewrite would change."""
    found = ssm.get_parameters_by_path(Path=path, Recursive=True, WithDecryption=True)["Parameters"]
    return sorted((p["Name"], p["Value"], p["Type"], p["Version"], str(p["LastModifiedDate"])) for p in found)


def _paths_in_ssm(ssm: Any) -> set[str]:
    """The deploy paths (`releases/{version}/{key}`) holding parameters."""
    found = ssm.get_parameters_by_path(Path=f"{PREFIX}/releases", Recursive=True)["Parameters"]
    paths = {p["Name"].rsplit("/", 1)[0] for p in found}
    return {path for path in paths if path.count("/") == PREFIX.count("/") + 3}


def _deployed(clients: FleetClients, plan: DeployPlan) -> ServerGroup:
    """A whole swap (what a run does up to teardown): the new group serves, the old one is detached."""
    publish_config(clients, plan)
    new = launch_fleet(clients, plan, BASE_IMAGE)
    attach_fleet(clients, plan, new.name)
    detach_old_fleet(clients, plan, new.name)
    finish_swap(clients, plan, new.name)
    return new


def _user_data_path(clients: FleetClients, group_name: str) -> str:
    """IMMUTABLE_SSM_PATH as an instance of the group reads it at boot (from its user data)."""
    version = clients.ec2.describe_launch_template_versions(LaunchTemplateName=group_name)[
        "LaunchTemplateVersions"
    ][0]
    user_data = yaml.safe_load(base64.b64decode(version["LaunchTemplateData"]["UserData"]))
    (entry,) = user_data["write_files"]
    values = dict(line.split("=", 1) for line in entry["content"].splitlines())
    return values["IMMUTABLE_SSM_PATH"]


def test_a_redeploy_of_the_live_version_leaves_the_live_path_byte_for_byte(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    ssm = fleet_clients.ssm
    first = _plan(fleet_clients, "manual__first", git_sha="a" * 40)
    serving = _deployed(fleet_clients, first)
    published = {"path": release_path(first)}
    assert _user_data_path(fleet_clients, serving.name) == published["path"]
    before = _snapshot(ssm, published["path"])
    assert ("GIT_SHA", "a" * 40) in {(n.rsplit("/", 1)[1], v) for n, v, *_ in before}

    # The nightly: the same version again, without a git sha and with a changed setting.
    again = _plan(
        fleet_clients,
        "scheduled__nightly",
        runtime_config={"LOG_LEVEL": "debug", "FEATURE_NEW_CHECKOUT": "x"},
    )
    republished = publish_config(fleet_clients, again)

    assert republished["path"] != published["path"]
    assert republished["path"].startswith(f"{PREFIX}/releases/2.0.0/")
    assert _snapshot(ssm, published["path"]) == before
    assert read_release_config(ssm, republished["path"])["LOG_LEVEL"] == "debug"
    assert "GIT_SHA" not in read_release_config(ssm, republished["path"])


def test_staging_instances_find_their_configuration_at_boot(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = _plan(fleet_clients, "manual__staged")
    assert plan.staging is not None
    publish_config(fleet_clients, plan)  # the DAG's order: publish, then the staging launch
    staging = launch_staging(fleet_clients, plan, BASE_IMAGE)
    assert staging is not None

    path = _user_data_path(fleet_clients, staging.name)
    config = read_release_config(fleet_clients.ssm, path)
    assert config["LOG_LEVEL"] == "info" and config["RELEASE_VERSION"] == "2.0.0"
    group = fleet_clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[staging.name])
    assert from_aws_tags(group["AutoScalingGroups"][0]["Tags"])[TAG_CONFIG_PATH] == path


def test_secrets_are_securestring_and_never_in_the_plan_the_xcom_or_the_log(
    fleet_clients: FleetClients,
    demo_network: DemoEnvironment,
    live_fleet: ServerGroup,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ssm = fleet_clients.ssm
    ssm.put_parameter(Name=SOURCE_PARAMETER, Value=DB_PASSWORD, Type="SecureString")
    monkeypatch.setenv("SHOP_API_TOKEN", API_TOKEN)
    secrets = {"DB_PASSWORD": f"ssm:{SOURCE_PARAMETER}", "API_TOKEN": "env:SHOP_API_TOKEN"}
    # This project's own logs, at every level (botocore's DEBUG wire log is not ours: see README).
    caplog.set_level(logging.DEBUG, logger="immudeploy")

    plan = _plan(fleet_clients, "manual__secrets", secret_runtime_config=secrets)
    plan_xcom = json.dumps(plan_to_xcom(plan))
    result = json.dumps(publish_config(fleet_clients, plan))

    stored = {
        p["Name"].rsplit("/", 1)[1]: p
        for p in ssm.get_parameters_by_path(Path=release_path(plan), WithDecryption=True)["Parameters"]
    }
    assert (stored["DB_PASSWORD"]["Type"], stored["DB_PASSWORD"]["Value"]) == ("SecureString", DB_PASSWORD)
    assert (stored["API_TOKEN"]["Type"], stored["API_TOKEN"]["Value"]) == ("SecureString", API_TOKEN)
    assert stored["LOG_LEVEL"]["Type"] == "String"
    # The plan carries the references only.
    assert plan.secret_runtime_config == secrets and f"ssm:{SOURCE_PARAMETER}" in plan_xcom
    for secret in (DB_PASSWORD, API_TOKEN):
        assert secret not in plan_xcom
        assert secret not in result
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("refs", "field", "says"),
    [
        ({"DB_PASSWORD": "hunter2"}, "secret_runtime_config.DB_PASSWORD", "reference"),
        ({"LOG_LEVEL": "env:LEVEL"}, "secret_runtime_config.LOG_LEVEL", "also set in runtime_config"),
    ],
)
def test_a_secret_that_is_not_a_reference_is_refused_at_load(
    refs: dict[str, str], field: str, says: str
) -> None:
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    config["apps"][APP]["packer_template"] = str(REPO / "packer")
    config["apps"][APP]["environments"][ENVIRONMENT]["secret_runtime_config"] = refs
    with pytest.raises(InvalidInput) as raised:
        parse_config(yaml.safe_dump(config), REPO / "config" / "test.yaml").get(APP, ENVIRONMENT)
    assert raised.value.field.endswith(field) and says in raised.value.reason
    assert "hunter2" not in str(raised.value)


def test_a_missing_secret_source_fails_the_publish_naming_it(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = _plan(
        fleet_clients, "manual__missing", secret_runtime_config={"DB_PASSWORD": "ssm:/platform/none"}
    )
    with pytest.raises(InvalidInput, match="/platform/none does not exist"):
        publish_config(fleet_clients, plan)
    assert read_release_config(fleet_clients.ssm, release_path(plan)) == {}


def test_superseded_paths_go_once_no_group_uses_them(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    ssm = fleet_clients.ssm
    ssm.put_parameter(Name=f"{PREFIX}/releases/1.0.0/LOG_LEVEL", Value="info", Type="String")
    first = _plan(fleet_clients, "manual__one")
    old = _deployed(fleet_clients, first)
    # A run that published and died before it launched anything.
    abandoned = _plan(fleet_clients, "manual__abandoned")
    publish_config(fleet_clients, abandoned)
    second = _plan(fleet_clients, "manual__two")
    new = _deployed(fleet_clients, second)
    # The next run's publish: a path nobody launched from is gone, the groups' paths stay.
    assert _paths_in_ssm(ssm) == {release_path(first), release_path(second)}

    # Retirement deletes the old group (and its launch template); the next deploy's publish
    # deletes the path it used, and only that one.
    assert delete_server_group(fleet_clients, old.name, force=True)
    third = _plan(fleet_clients, "manual__three")
    result = publish_config(fleet_clients, third)

    assert result["superseded_paths"] == [release_path(first)]
    assert _paths_in_ssm(ssm) == {release_path(second), release_path(third)}
    assert _user_data_path(fleet_clients, new.name) == release_path(second)
    # Only this scheme's paths are candidates: the per-version path of earlier releases stays.
    assert ssm.get_parameter(Name=f"{PREFIX}/releases/1.0.0/LOG_LEVEL")["Parameter"]["Value"] == "info"
