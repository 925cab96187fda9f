"""Instances that boot (issue 11): the user data and the image's units, checked with the real tools.

`cloud-init schema` (Debian's cloud-init) validates the rendered user data; `systemd-analyze
verify` the units packer/scripts/install-service.sh installs (into a scratch root, with a copy of
this machine's system units so their dependencies resolve). scripts/bootstrap installs both; a
test is skipped only when its binary is absent, saying which. The boot order is checked from the
files themselves: nothing is booted.
"""

from __future__ import annotations

import base64
import configparser
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, FleetClients

from immudeploy.aws.groups.launch import RELEASE_ENV_PATH, LaunchSpec, launch_server_group, release_user_data
from immudeploy.core.config import parse_config
from immudeploy.core.errors import InvalidInput
from immudeploy.core.plan import Capacity
from immudeploy_dev.demo import DemoEnvironment

REPO = Path(__file__).resolve().parents[3]
PACKER = REPO / "packer"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
CLOUD_CFG = Path("/etc/cloud/cloud.cfg")
PROFILE_ARN = "arn:aws:iam::123456789012:instance-profile/deploy/shop-prod"


def _spec(**overrides: Any) -> LaunchSpec:
    values: dict[str, Any] = {
        "app": APP,
        "environment": ENVIRONMENT,
        "version": "2.0.0-rc.1_build.7",
        "image_id": BASE_IMAGE,
        "deploy_id": "immutable_deploy-0123456789abcdef",
        "instance_type": "t3.micro",
        "subnet_ids": ["subnet-0123456789abcdef0"],
        "security_group_ids": [],
        "target_group_arns": [],
        "capacity": Capacity(1, 1, 1),
        "ssm_config_path": "/immutable/shop/prod/releases/2.0.0-rc.1/0123456789ab",
        "cache_key_prefix": "shop:prod:2.0.0-rc.1_build.7:",
    }
    values.update(overrides)
    return LaunchSpec(**values)


def _user_data() -> str:
    return release_user_data(_spec(), "shop-prod-v007")


def _unit(name: str) -> dict[tuple[str, str], list[str]]:
    """A unit as install-service.sh renders it (its sed: @APP@ -> the app); (section, key) -> values.

    A list per key: systemd keys such as EnvironmentFile repeat, and After= takes several words.
    """
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in (PACKER / "files" / name).read_text().replace("@APP@", APP).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).extend(value.split())
    return settings


# --- the user data ---------------------------------------------------------------------------------


def test_user_data_is_cloud_config_writing_the_release_file() -> None:
    user_data = _user_data()
    assert user_data.startswith("#cloud-config\n")
    document = yaml.safe_load(user_data)
    assert set(document) == {"write_files"}
    (entry,) = document["write_files"]
    assert entry["path"] == RELEASE_ENV_PATH
    # Deferred files are written in cloud-final, after the units: this one must not be.
    assert not entry.get("defer", False)
    assert "IMMUTABLE_SSM_PATH=/immutable/shop/prod/releases/2.0.0-rc.1/0123456789ab\n" in entry["content"]


@pytest.mark.skipif(
    shutil.which("cloud-init") is None, reason="cloud-init is not installed (scripts/bootstrap)"
)
def test_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    rendered = tmp_path / "user-data"
    rendered.write_text(_user_data())
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(rendered)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout

    # And the tool has teeth: a write_files entry it does not know is refused.
    broken = yaml.safe_load(_user_data())
    broken["write_files"][0]["mode"] = "0644"
    rendered.write_text("#cloud-config\n" + yaml.safe_dump(broken))
    refused = subprocess.run(["cloud-init", "schema", "--config-file", str(rendered)], capture_output=True)
    assert refused.returncode != 0


# --- the units -------------------------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or shutil.which("systemctl") is None,
    reason="systemd-analyze/systemctl are not installed (Debian's systemd package; scripts/bootstrap)",
)
def test_the_units_install_service_sh_installs_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    # The system's own units (multi-user.target, network-online.target, cloud-init.service...).
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    subprocess.run(
        ["bash", str(PACKER / "scripts" / "install-service.sh")],
        env={**os.environ, "APP": APP, "IMMUTABLE_ROOT": str(root), "FILES": str(PACKER / "files")},
        check=True,
        capture_output=True,
    )
    units = root / "etc" / "systemd" / "system"
    assert (units / "multi-user.target.wants" / f"{APP}-config.service").is_symlink()
    assert (units / "multi-user.target.wants" / f"{APP}.service").is_symlink()
    # What install-release.sh puts there from the release tarball: an executable bin/start.
    start = root / "opt" / APP / "current" / "bin" / "start"
    start.parent.mkdir(parents=True)
    start.write_text("#!/bin/sh\n")
    start.chmod(0o755)

    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            f"--root={root}",
            f"/etc/systemd/system/{APP}-config.service",
            f"/etc/systemd/system/{APP}.service",
        ],
        capture_output=True,
        text=True,
    )
    # verify exits 0 on warnings (an unknown key, a bad value): any output is a failure too.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_the_release_file_is_written_before_the_units_that_read_it_start() -> None:
    config_unit, app_unit = _unit("app-config.service"), _unit("app.service")
    # Both read the file the user data writes; a missing file fails the unit (no "-" prefix), so
    # the instance never turns healthy and the health gate stops the rollout.
    assert RELEASE_ENV_PATH in config_unit[("Service", "EnvironmentFile")]
    assert RELEASE_ENV_PATH in app_unit[("Service", "EnvironmentFile")]
    # The fetch starts after cloud-init.service (where write_files runs), the app after the fetch.
    assert "cloud-init.service" in config_unit[("Unit", "After")]
    assert f"{APP}-config.service" in app_unit[("Unit", "After")]
    assert f"{APP}-config.service" in app_unit[("Unit", "Requires")]
    # The fetch reads the variable the release file sets.
    (entry,) = yaml.safe_load(_user_data())["write_files"]
    assert "IMMUTABLE_SSM_PATH=" in entry["content"]
    assert '"$IMMUTABLE_SSM_PATH"' in (PACKER / "files" / "immutable-fetch-config").read_text()


@pytest.mark.skipif(not CLOUD_CFG.exists(), reason="cloud-init is not installed (scripts/bootstrap)")
def test_write_files_runs_in_cloud_init_service_on_debian() -> None:
    """The other half of the order: Debian's cloud-init writes the files in cloud-init.service."""
    cloud_cfg = yaml.safe_load(CLOUD_CFG.read_text())
    init_modules = [m if isinstance(m, str) else m[0] for m in cloud_cfg["cloud_init_modules"]]
    assert {"write-files", "write_files"} & set(init_modules)
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read_string((SYSTEM_UNITS / "cloud-init.service").read_text())
    exec_start = service.get("Service", "ExecStart")
    # `cloud-init init` (not --local) is the stage that runs cloud_init_modules.
    assert exec_start.split()[1:] == ["init"], exec_start


# --- the launch template -----------------------------------------------------------------------------


def test_instance_profile_and_key_pair_reach_the_launch_template(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    spec = _spec(
        subnet_ids=demo_network.subnet_ids, iam_instance_profile=PROFILE_ARN, key_name="platform-admins"
    )
    group = launch_server_group(fleet_clients, spec)
    data = fleet_clients.ec2.describe_launch_template_versions(LaunchTemplateName=group.name)[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    assert data["IamInstanceProfile"] == {"Arn": PROFILE_ARN}
    assert data["KeyName"] == "platform-admins"
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert base64.b64decode(data["UserData"]).decode().startswith("#cloud-config\n")

    named = launch_server_group(
        fleet_clients,
        _spec(subnet_ids=demo_network.subnet_ids, deploy_id="other", iam_instance_profile="shop"),
    )
    data = fleet_clients.ec2.describe_launch_template_versions(LaunchTemplateName=named.name)[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    assert data["IamInstanceProfile"] == {"Name": "shop"} and "KeyName" not in data


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("iam_instance_profile", "has space"),
        ("iam_instance_profile", "arn:aws:iam::123:instance-profile/x"),
        ("key_name", "\tkey"),
    ],
)
def test_bad_instance_settings_are_refused_at_load(field: str, value: str) -> None:
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    config["apps"][APP]["packer_template"] = str(PACKER)
    config["apps"][APP]["environments"][ENVIRONMENT][field] = value
    with pytest.raises(InvalidInput) as raised:
        parse_config(yaml.safe_dump(config), REPO / "config" / "test.yaml").get(APP, ENVIRONMENT)
    assert raised.value.field.endswith(f"{ENVIRONMENT}.{field}")


def test_instance_settings_are_read_from_the_configuration() -> None:
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    config["apps"][APP]["packer_template"] = str(PACKER)
    config["apps"][APP]["environments"][ENVIRONMENT].update(
        iam_instance_profile=PROFILE_ARN, key_name="platform-admins"
    )
    env = parse_config(yaml.safe_dump(config), REPO / "config" / "test.yaml").get(APP, ENVIRONMENT)
    assert (env.iam_instance_profile, env.key_name) == (PROFILE_ARN, "platform-admins")
