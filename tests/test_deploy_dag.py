"""immutable_deploy end to end with dag.test(): moto over HTTP, real Packer, the real DAG file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, ENVIRONMENT

from immudeploy.naming import from_aws_tags

REPO = Path(__file__).resolve().parents[1]


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
