"""The nightly rebuild: its deploy changes nothing if another release went live since it looked, and it bakes its version's artifact."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, LIVE_VERSION, FleetClients

from immudeploy.aws.connection import AwsClients, packer_aws_settings
from immudeploy.aws.lock import current_holder
from immudeploy.core.config import parse_config
from immudeploy.core.errors import InvalidInput
from immudeploy.core.plan import Capacity, ServerGroup
from immudeploy.release.bake import BakeRequest, BaseImage, bake_image, default_template_dir
from immudeploy.release.deploy import (
    attach_fleet,
    detach_old_fleet,
    finish_swap,
    launch_fleet,
    plan_deploy,
    validate_deploy_params,
)
from immudeploy.release.nightly import LiveChanged, nightly_targets, refuse_if_live_changed
from immudeploy.release.packer import PackerRunner
from immudeploy_dev.demo import DemoEnvironment

REPO = Path(__file__).resolve().parents[3]
DAG_ID = "immutable_deploy"
TONIGHT = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
CI_VERSION = "1.5.0"


def config_text() -> str:
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    app = config["apps"][APP]
    app["packer_template"] = str(REPO / "packer")
    app["environments"][ENVIRONMENT]["observation_minutes"] = 0
    return yaml.safe_dump(config)


def deploy_between(clients: FleetClients, version: str) -> ServerGroup:
    """A CI release that goes live after the nightly planned and before its deploy's prepare."""
    config = parse_config(config_text(), REPO / "config" / "test.yaml")
    params = {"app": APP, "environment": ENVIRONMENT, "version": version}
    plan = plan_deploy(clients, config, params, DAG_ID, "manual__ci-release")
    new = launch_fleet(clients, plan, BASE_IMAGE)
    attach_fleet(clients, plan, new.name)
    detach_old_fleet(clients, plan, new.name)
    return finish_swap(clients, plan, new.name)


def aws_state(clients: FleetClients, demo: DemoEnvironment) -> dict[str, Any]:
    """What a deploy would change: groups (size, target groups, tags), templates, images, registered targets."""
    groups = {
        g["AutoScalingGroupName"]: (
            g["MinSize"],
            g["MaxSize"],
            g["DesiredCapacity"],
            sorted(g.get("TargetGroupARNs", [])),
            sorted((t["Key"], t["Value"]) for t in g.get("Tags", [])),
            sorted(p["ProcessName"] for p in g.get("SuspendedProcesses", [])),
        )
        for g in clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    }
    templates = sorted(
        t["LaunchTemplateName"] for t in clients.ec2.describe_launch_templates()["LaunchTemplates"]
    )
    images = sorted(i["ImageId"] for i in clients.ec2.describe_images(Owners=["self"])["Images"])
    targets = sorted(
        d["Target"]["Id"]
        for d in clients.elbv2.describe_target_health(TargetGroupArn=demo.target_group_arn)[
            "TargetHealthDescriptions"
        ]
    )
    parameters = sorted(p["Name"] for p in clients.ssm.describe_parameters().get("Parameters", []))
    return {"groups": groups, "templates": templates, "images": images, "targets": targets, "ssm": parameters}


def test_the_nightly_passes_the_live_group_and_version_it_saw(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    config = parse_config(config_text(), REPO / "config" / "test.yaml")
    confs = nightly_targets(fleet_clients, config, TONIGHT)
    assert confs == [
        {
            "app": APP,
            "environment": ENVIRONMENT,
            "version": LIVE_VERSION,
            "expect_live_version": LIVE_VERSION,
            "expect_live_group": live_fleet.name,
        }
    ]
    # ... and the deploy accepts them as its own params.
    checked = validate_deploy_params(confs[0])
    assert (checked["expect_live_version"], checked["expect_live_group"]) == (LIVE_VERSION, live_fleet.name)


def test_a_target_deployed_to_a_new_version_since_planning_is_not_rebuilt_and_the_plan_says_why(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    config = parse_config(config_text(), REPO / "config" / "test.yaml")
    tonight = nightly_targets(fleet_clients, config, TONIGHT)[0]
    ci = deploy_between(fleet_clients, CI_VERSION)
    before = aws_state(fleet_clients, demo_network)

    with pytest.raises(LiveChanged) as refused:
        plan_deploy(fleet_clients, config, tonight, DAG_ID, "scheduled__nightly")

    message = str(refused.value)
    assert "\n" not in message
    assert f"{live_fleet.name} at {LIVE_VERSION}" in message
    assert f"{ci.name} at {CI_VERSION}" in message
    assert aws_state(fleet_clients, demo_network) == before


def test_the_guard_compares_group_and_version_each_on_its_own() -> None:
    live = ServerGroup(
        name="shop-prod-v004",
        app=APP,
        environment=ENVIRONMENT,
        sequence=4,
        version="1.4.2",
        image_id=BASE_IMAGE,
        launch_template_name="shop-prod-v004",
        capacity=Capacity(1, 1, 1),
        instance_type="t3.micro",
        subnet_ids=[],
        security_group_ids=[],
        target_group_arns=[],
        instance_ids=[],
        suspended_processes=[],
        deploy_id=None,
        created_time="",
    )
    refuse_if_live_changed(live, None, None)  # an ordinary deploy expects nothing
    refuse_if_live_changed(live, "1.4.2", "shop-prod-v004")
    # The same version redeployed as a new group (another nightly, a manual rerun) is a change too.
    with pytest.raises(LiveChanged, match=r"shop-prod-v005 at 1\.4\.2.*shop-prod-v004 at 1\.4\.2"):
        refuse_if_live_changed(live, "1.4.2", "shop-prod-v005")
    with pytest.raises(LiveChanged, match=r"1\.4\.1"):
        refuse_if_live_changed(live, "1.4.1", "shop-prod-v004")
    with pytest.raises(LiveChanged, match="no group is live"):
        refuse_if_live_changed(None, "1.4.2", "shop-prod-v004")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expect_live_version", "1.0.0\n"),
        ("expect_live_group", "shop-prod-v1"),
        ("expect_live_group", "x; rm"),
    ],
)
def test_expectations_are_validated_like_every_other_param(field: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        validate_deploy_params({"app": APP, "environment": ENVIRONMENT, "version": "1.0.0", field: value})


def test_the_triggered_run_is_skipped_with_the_reason_and_gives_the_lock_back(
    airflow_db: None,
    aws: Any,
    fleet_clients: FleetClients,
    demo_network: DemoEnvironment,
    live_fleet: ServerGroup,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    path = tmp_path / "deployments.yaml"
    path.write_text(config_text())
    monkeypatch.setenv("IMMUDEPLOY_CONFIG", str(path))
    tonight = nightly_targets(fleet_clients, parse_config(config_text(), path), TONIGHT)[0]
    deploy_between(fleet_clients, CI_VERSION)
    before = aws_state(fleet_clients, demo_network)

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag(DAG_ID).test(run_conf=tonight)

    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["prepare"] == "skipped", states
    # Nothing else acted: every step skipped; the teardowns ran and found nothing to do.
    failed = {task: state for task, state in states.items() if state in ("failed", "upstream_failed")}
    assert not failed, states
    assert str(run.state) == "success", states
    assert aws_state(fleet_clients, demo_network) == before
    assert current_holder(fleet_clients.dynamodb, APP, ENVIRONMENT) is None


# --- the artifact a rebuild installs ---------------------------------------------------------------


class RecordingRunner(PackerRunner):
    """The real Packer, remembering the variables each build was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variables: list[dict[str, Any]] = []

    def validate(self, template_dir: Path, var_file: Path, only: str | None = None) -> None:
        self.variables.append(json.loads(var_file.read_text()))
        super().validate(template_dir, var_file, only)


def test_a_rebuild_bakes_the_artifact_of_its_version_and_a_moved_artifact_is_another_image(
    aws: Any, tmp_path: Path
) -> None:
    settings = packer_aws_settings()
    runner = RecordingRunner(shutil.which("packer") or "packer", settings.environment)
    template = tmp_path / "packer"
    shutil.copytree(default_template_dir(), template)

    def bake(url: str, version: str = "1.4.2") -> Any:
        request = BakeRequest(
            app=APP,
            version=version,
            environment=ENVIRONMENT,
            template_dir=template,
            base_image=BaseImage(image_id=BASE_IMAGE),
            release_url=url,
        )
        return bake_image(AwsClients().ec2, runner, settings, request)

    first = bake("https://releases.example.com/shop/shop-{version}.tar.gz")
    assert runner.variables[-1]["release_url"] == "https://releases.example.com/shop/shop-1.4.2.tar.gz"
    assert first.base_image_id == BASE_IMAGE
    again = bake("https://releases.example.com/shop/shop-{version}.tar.gz")
    assert again.reused and again.image_id == first.image_id and len(runner.variables) == 1
    moved = bake("https://artifacts.example.com/shop-{version}.tar.gz")
    assert not moved.reused and moved.fingerprint != first.fingerprint
    with pytest.raises(InvalidInput, match="release_url"):
        bake("https://releases.example.com/shop/latest.tar.gz")
