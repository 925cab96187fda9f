"""immutable_deploy end to end with dag.test(): moto over HTTP, real Packer, the real DAG file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, ENVIRONMENT

from immudeploy.aws.lock import current_holder
from immudeploy.core.naming import TAG_APP, from_aws_tags

REPO = Path(__file__).resolve().parents[2]


def load_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Path:
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    app = config["apps"][APP]
    app["packer_template"] = str(REPO / "packer")
    env = app["environments"][ENVIRONMENT]
    env["observation_minutes"] = 0
    for key, value in overrides.items():
        env[key] = value
    path = tmp_path / "deployments.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("IMMUDEPLOY_CONFIG", str(path))
    return path


def run_dag(dag_id: str, **conf: Any) -> Any:
    """One run of a freshly parsed DAG (operators keep their clients only for one task run)."""
    return load_dag(dag_id).test(run_conf={"app": APP, "environment": ENVIRONMENT, **conf})


def deployed(version: str) -> None:
    run = run_dag("immutable_deploy", version=version)
    assert str(run.state) == "success", task_states(run)


def orphan_instances(clients: Any) -> set[str]:
    """Running instances of the app that belong to no Auto Scaling group (staging included)."""
    in_groups = {
        i["InstanceId"]
        for g in clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
        for i in g["Instances"]
    }
    reservations = clients.ec2.describe_instances(
        Filters=[
            {"Name": f"tag:{TAG_APP}", "Values": [APP]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return {i["InstanceId"] for r in reservations for i in r["Instances"]} - in_groups


def task_states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def serving_groups(clients: Any, target_group_arn: str) -> dict[str, list[str]]:
    """Group name -> its instance ids registered and healthy in the target group."""
    healthy = {
        d["Target"]["Id"]
        for d in clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)[
            "TargetHealthDescriptions"
        ]
        if d["TargetHealth"]["State"] == "healthy"
    }
    result: dict[str, list[str]] = {}
    for group in clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]:
        ids = sorted(i["InstanceId"] for i in group["Instances"] if i["InstanceId"] in healthy)
        if ids:
            result[group["AutoScalingGroupName"]] = ids
    return result


@pytest.fixture
def deploy(airflow_db: None, aws: Any, demo_network: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_config(tmp_path, monkeypatch)
    dag = load_dag("immutable_deploy")

    def run(version: str, **conf: Any) -> Any:
        return dag.test(run_conf={"app": APP, "environment": ENVIRONMENT, "version": version, **conf})

    return run


def test_first_deploy_then_second_deploy_replaces_v001_with_v002(deploy, fleet_clients, demo_network) -> None:
    first = deploy("1.0.0")
    assert str(first.state) == "success", task_states(first)
    assert serving_groups(fleet_clients, demo_network.target_group_arn).keys() == {"shop-prod-v001"}

    second = deploy("1.1.0")
    assert str(second.state) == "success", task_states(second)
    serving = serving_groups(fleet_clients, demo_network.target_group_arn)
    assert list(serving) == ["shop-prod-v002"]
    assert len(serving["shop-prod-v002"]) == 2  # the first deploy's capacity, carried over
    group = fleet_clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["shop-prod-v002"])[
        "AutoScalingGroups"
    ][0]
    assert from_aws_tags(group["Tags"])["immutable:version"] == "1.1.0"
    # keep_old_groups is 1 in the sample configuration: v001 stays, detached, for an instant rollback.
    names = {
        g["AutoScalingGroupName"]
        for g in fleet_clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    }
    assert names == {"shop-prod-v001", "shop-prod-v002"}
    # No staging group is left behind.
    assert not [n for n in names if "stg" in n]
    # The tasks link to the AWS console: the image, the new Auto Scaling group, the target group.
    assert "ImageDetails:imageId=ami-" in stored_link(second, "bake.bake_image", "AWS Image")
    assert "AutoScalingGroupDetails:id=shop-prod-v002" in stored_link(
        second, "launch.wait_in_service", "Auto Scaling Group"
    )
    assert "TargetGroup:targetGroupArn=" in stored_link(second, "cutover.health_gate", "Target Group")
    # The plan travels as one XCom value, and the summary times each phase from the task instances'
    # own durations: a phase's seconds are the sum of its tasks' durations as Airflow recorded them.
    prepare = xcom_values(second, "prepare")
    assert list(prepare) == ["return_value"] and prepare["return_value"]["live"]["name"] == "shop-prod-v001"
    summary = xcom_values(second, "summary")["return_value"]
    durations = {ti.task_id: ti.duration for ti in second.get_task_instances() if ti.duration is not None}
    for phase in ("prepare", "bake", "launch", "cutover", "drain", "teardown"):
        expected = sum(seconds for task_id, seconds in durations.items() if task_id.split(".")[0] == phase)
        assert summary["phase_seconds"][phase] == pytest.approx(expected, abs=0.1), phase
    assert summary["server_group"] == "shop-prod-v002" and summary["replaced"] == "shop-prod-v001"


def xcom_values(run: Any, task_id: str) -> dict[str, Any]:
    """Every XCom value a task of the run pushed, by key."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(XComModel.key, XComModel.value).where(
                XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id, XComModel.task_id == task_id
            )
        ).all()
    return {key: value for key, value in rows}


def stored_link(run: Any, task_id: str, link_name: str) -> str:
    """The console URL Airflow stored for a task's extra link when the task finished."""
    values = xcom_values(run, task_id)
    return str(values.get(f"_link_{link_name}", values))


def group_names(clients: Any) -> set[str]:
    return {
        g["AutoScalingGroupName"]
        for g in clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    }


def launch_template_names(clients: Any) -> set[str]:
    return {t["LaunchTemplateName"] for t in clients.ec2.describe_launch_templates()["LaunchTemplates"]}


def registered_targets(clients: Any, target_group_arn: str) -> set[str]:
    described = clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)[
        "TargetHealthDescriptions"
    ]
    return {d["Target"]["Id"] for d in described}


def group_instances(clients: Any, name: str) -> set[str]:
    groups = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ]
    return {i["InstanceId"] for i in groups[0]["Instances"]} if groups else set()


def test_a_failing_staging_test_leaves_the_live_group_untouched_and_nothing_leaked(
    airflow_db, aws, demo_network, fleet_clients, tmp_path, monkeypatch
) -> None:
    write_config(tmp_path, monkeypatch)
    deployed("1.0.0")
    live_before = group_instances(fleet_clients, "shop-prod-v001")

    write_config(
        tmp_path,
        monkeypatch,
        staging={
            "target_group": "shop-prod-staging",
            "subnets": ["shop-prod-demo-us-east-1a"],
            "test_command": ["python", "-c", "import sys; print('3 tests failed'); sys.exit(3)"],
        },
    )
    run = run_dag("immutable_deploy", version="1.1.0")

    states = task_states(run)
    assert str(run.state) == "failed"
    assert states["staging.run_staging_tests"] == "failed"
    assert states["launch.launch_fleet"] == "upstream_failed"  # the fleet was never launched
    assert group_names(fleet_clients) == {"shop-prod-v001"}
    assert launch_template_names(fleet_clients) == {"shop-prod-v001"}
    assert group_instances(fleet_clients, "shop-prod-v001") == live_before
    assert registered_targets(fleet_clients, demo_network.target_group_arn) == live_before
    assert registered_targets(fleet_clients, demo_network.staging_target_group_arn) == set()
    # The lock was released: the next run for the target is not blocked.
    assert current_holder(fleet_clients.dynamodb, APP, ENVIRONMENT) is None


class UnhealthyFor:
    """A real moto client, except that target health reports the given group's instances unhealthy.

    moto never produces `unhealthy`; this stands in for an app that fails its health check.
    """

    def __init__(self, client: Any, autoscaling: Any, group_name: str) -> None:
        self._client = client
        self.autoscaling = autoscaling
        self._group_name = group_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def describe_target_health(self, **kwargs: Any) -> dict[str, Any]:
        response = self._client.describe_target_health(**kwargs)
        bad = group_instances(self, self._group_name)
        for description in response["TargetHealthDescriptions"]:
            if description["Target"]["Id"] in bad:
                description["TargetHealth"] = {
                    "State": "unhealthy",
                    "Reason": "Target.ResponseCodeMismatch",
                    "Description": "Health checks failed with these codes: [500]",
                }
        return response


def test_a_health_gate_failure_removes_the_new_group_while_the_old_one_serves(
    airflow_db, aws, demo_network, fleet_clients, tmp_path, monkeypatch
) -> None:
    # No grace period: the gate fails at the first `unhealthy` instead of tolerating it for 300 s.
    write_config(tmp_path, monkeypatch, health_check_grace_period_seconds=0)
    deployed("1.0.0")
    live = group_instances(fleet_clients, "shop-prod-v001")

    from immudeploy.airflow import triggers as trigger_waits

    real_build = trigger_waits.build_client

    def build_client(service: str, conn_id: str, region: str | None) -> Any:
        client = real_build(service, conn_id, region)
        if service == "elbv2":
            return UnhealthyFor(client, real_build("autoscaling", conn_id, region), "shop-prod-v002")
        return client

    monkeypatch.setattr(trigger_waits, "build_client", build_client)
    # A freshly parsed DAG: operators keep their clients for the length of one task run.
    run = run_dag("immutable_deploy", version="1.1.0")

    states = task_states(run)
    assert str(run.state) == "failed"
    assert states["cutover.health_gate"] == "failed"
    assert states["undo_on_failure"] == "success"
    assert group_names(fleet_clients) == {"shop-prod-v001"}
    assert registered_targets(fleet_clients, demo_network.target_group_arn) == live
    assert "shop-prod-v002" not in launch_template_names(fleet_clients)


def test_a_failure_in_the_observation_window_swaps_back(
    airflow_db, aws, demo_network, fleet_clients, tmp_path, monkeypatch
) -> None:
    write_config(tmp_path, monkeypatch)
    deployed("1.0.0")
    live = group_instances(fleet_clients, "shop-prod-v001")

    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="shop-prod-5xx",
        MetricName="HTTPCode_Target_5XX_Count",
        Namespace="AWS/ApplicationELB",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    cloudwatch.set_alarm_state(
        AlarmName="shop-prod-5xx", StateValue="ALARM", StateReason="errors after cutover"
    )
    write_config(tmp_path, monkeypatch, observation_minutes=0.05, alarms=["shop-prod-5xx"])

    run = run_dag("immutable_deploy", version="1.1.0")

    states = task_states(run)
    assert str(run.state) == "failed"
    assert states["drain.wait_drained"] == "success"  # the old group had already been detached
    assert states["observe.observe_window"] == "failed"
    assert states["undo_on_failure"] == "success"
    assert group_names(fleet_clients) == {"shop-prod-v001"}
    assert registered_targets(fleet_clients, demo_network.target_group_arn) == live


def test_rollback_swaps_back_to_the_kept_group_and_retires_the_bad_one(
    airflow_db, aws, demo_network, fleet_clients, tmp_path, monkeypatch
) -> None:
    write_config(tmp_path, monkeypatch)  # keep_old_groups: 1
    for version in ("1.0.0", "1.1.0"):
        deployed(version)
    kept = group_instances(fleet_clients, "shop-prod-v001")
    assert registered_targets(fleet_clients, demo_network.target_group_arn) == group_instances(
        fleet_clients, "shop-prod-v002"
    )

    run = run_dag("immutable_rollback")

    assert str(run.state) == "success", task_states(run)
    assert group_names(fleet_clients) == {"shop-prod-v001"}
    assert group_instances(fleet_clients, "shop-prod-v001") == kept  # the same servers: an instant swap
    assert registered_targets(fleet_clients, demo_network.target_group_arn) == kept
    assert orphan_instances(fleet_clients) == set()


def test_rollback_without_a_kept_group_redeploys_the_previous_image_without_rebaking(
    airflow_db, aws, demo_network, fleet_clients, tmp_path, monkeypatch
) -> None:
    write_config(tmp_path, monkeypatch, keep_old_groups=0)
    for version in ("1.0.0", "1.1.0"):
        deployed(version)
    assert group_names(fleet_clients) == {"shop-prod-v002"}
    images_before = fleet_clients.ec2.describe_images(Owners=["self"])["Images"]
    v1_image = next(
        i["ImageId"] for i in images_before if from_aws_tags(i["Tags"]).get("immutable:version") == "1.0.0"
    )

    run = run_dag("immutable_rollback")

    assert str(run.state) == "success", task_states(run)
    assert group_names(fleet_clients) == {"shop-prod-v003"}
    group = fleet_clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["shop-prod-v003"])[
        "AutoScalingGroups"
    ][0]
    assert from_aws_tags(group["Tags"])["immutable:version"] == "1.0.0"
    instances = fleet_clients.ec2.describe_instances(
        InstanceIds=[i["InstanceId"] for i in group["Instances"]]
    )
    assert {i["ImageId"] for r in instances["Reservations"] for i in r["Instances"]} == {v1_image}
    assert len(fleet_clients.ec2.describe_images(Owners=["self"])["Images"]) == len(
        images_before
    )  # no rebake
    assert registered_targets(fleet_clients, demo_network.target_group_arn) == group_instances(
        fleet_clients, "shop-prod-v003"
    )
    # Nothing of the app runs outside a server group: staging and retired fleets are gone with
    # their instances (the stand-in terminates protected instances on a force delete, as AWS does).
    assert orphan_instances(fleet_clients) == set()


def test_bad_conf_is_refused_before_anything_changes(
    airflow_db, aws, demo_network, fleet_clients, tmp_path, monkeypatch
) -> None:
    write_config(tmp_path, monkeypatch)
    dag = load_dag("immutable_deploy")
    with pytest.raises(Exception, match="version"):
        dag.test(run_conf={"app": APP, "environment": ENVIRONMENT, "version": "1.0; rm -rf /"})
    assert group_names(fleet_clients) == set()
    assert fleet_clients.ec2.describe_images(Owners=["self"])["Images"] == []


def test_a_second_run_for_the_same_target_waits_and_names_the_holder(
    airflow_db, aws, demo_network, fleet_clients, tmp_path, monkeypatch
) -> None:
    from immudeploy.aws.lock import LockHolder, acquire_lock, release_lock

    write_config(tmp_path, monkeypatch)
    monkeypatch.setenv("IMMUDEPLOY_LOCK_WAIT_SECONDS", "2")
    other = LockHolder("immutable_rollback", "manual__other-run")
    acquire_lock(
        fleet_clients.dynamodb,
        APP,
        ENVIRONMENT,
        other,
        wait_seconds=0,
        poll_interval=0.1,
        stale_after_seconds=3600,
    )
    dag = load_dag("immutable_deploy")

    blocked = dag.test(run_conf={"app": APP, "environment": ENVIRONMENT, "version": "1.0.0"})

    assert str(blocked.state) == "failed"
    assert task_states(blocked)["prepare"] == "failed"
    assert group_names(fleet_clients) == set()
    # The holder's lock is still there: the blocked run did not release someone else's lock.
    assert release_lock(fleet_clients.dynamodb, APP, ENVIRONMENT, other)

    deployed("1.0.0")


def _register_base_image(ec2: Any, name: str) -> str:
    """A new base image release, EBS-backed as Packer requires.

    moto registers every new image with root device type "standard"; the moto server runs in this
    process, so its record is corrected directly: a state moto cannot produce through its API.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    image_id = ec2.copy_image(SourceImageId="ami-785db401", SourceRegion="us-east-1", Name=name)["ImageId"]
    ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].amis[image_id].root_device_type = "ebs"
    return image_id


def test_nightly_rebuild_rebakes_the_live_version_on_the_newest_base_image(
    airflow_db, aws, demo_network, fleet_clients, tmp_path, monkeypatch
) -> None:
    import time as clock
    from datetime import UTC, datetime

    from immudeploy.aws.connection import AwsClients
    from immudeploy.core.config import load_config
    from immudeploy.release.nightly import nightly_targets

    first_base = _register_base_image(fleet_clients.ec2, "shopbase-2026-10")
    config = write_config(tmp_path, monkeypatch)
    data = yaml.safe_load(config.read_text())
    data["apps"][APP]["base_image"] = {"name_pattern": "shopbase-*", "owners": ["self"]}
    config.write_text(yaml.safe_dump(data))
    deployed("1.0.0")

    clock.sleep(1.1)  # moto's image creation dates have one-second resolution
    newer_base = _register_base_image(fleet_clients.ec2, "shopbase-2026-11")
    assert newer_base != first_base

    # What the nightly DAG plans: due at 03:00 (the configured schedule), not at 04:00.
    clients = AwsClients()
    assert nightly_targets(clients, load_config(), datetime(2026, 11, 27, 4, 0, tzinfo=UTC)) == []
    tonight = nightly_targets(clients, load_config(), datetime(2026, 11, 27, 3, 0, tzinfo=UTC))
    assert tonight == [
        {
            "app": APP,
            "environment": ENVIRONMENT,
            "version": "1.0.0",
            "expect_live_version": "1.0.0",
            "expect_live_group": "shop-prod-v001",
        }
    ]

    # ... and what each of its triggered runs does.
    run = load_dag("immutable_deploy").test(run_conf=tonight[0])
    assert str(run.state) == "success", task_states(run)
    serving = serving_groups(fleet_clients, demo_network.target_group_arn)
    assert list(serving) == ["shop-prod-v002"]
    group = fleet_clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["shop-prod-v002"])[
        "AutoScalingGroups"
    ][0]
    assert from_aws_tags(group["Tags"])["immutable:version"] == "1.0.0"
    image_id = fleet_clients.ec2.describe_instances(InstanceIds=[group["Instances"][0]["InstanceId"]])[
        "Reservations"
    ][0]["Instances"][0]["ImageId"]
    image = fleet_clients.ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert from_aws_tags(image["Tags"])["immutable:base-image"] == newer_base


def test_an_unconfigured_app_is_refused_by_the_trigger_form(
    airflow_db, aws, demo_network, tmp_path, monkeypatch
) -> None:
    write_config(tmp_path, monkeypatch)
    with pytest.raises(Exception, match="app"):
        run_dag("immutable_deploy", app="billing", version="1.0.0")
