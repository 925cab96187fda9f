"""dag.test() of immutable_janitor: an expired kept group is retired, the serving group stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_fixtures import FleetClients

from e2e.test_deploy_dag import load_dag, task_states, write_config
from immudeploy.aws.groups.retire import TAG_EXPIRES_AT
from immudeploy.core.naming import TAG_STATE
from immudeploy.core.plan import ServerGroup
from immudeploy_dev.demo import DemoEnvironment

PHASES = {
    "retire_expired_groups",
    "scale_down_zero_kept",
    "remove_abandoned_staging",
    "remove_packer_leftovers",
    "apply_image_retention",
    "janitor_summary",
}


def kept_group_expired(clients: FleetClients, live: ServerGroup) -> str:
    """A second, detached group marked kept with an expiry in the past (as retirement leaves it)."""
    raw = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[live.name])[
        "AutoScalingGroups"
    ][0]
    name = live.name.replace("-v001", "-v000")
    template = clients.ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": live.image_id, "InstanceType": "t3.micro"}
    )["LaunchTemplate"]
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds")
    tags = {
        "immutable:app": live.app,
        "immutable:environment": live.environment,
        "immutable:version": "0.9.0",
    }
    tags |= {TAG_STATE: "disabled", TAG_EXPIRES_AT: past}
    clients.autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"]},
        MinSize=1,
        MaxSize=1,
        DesiredCapacity=1,
        VPCZoneIdentifier=raw["VPCZoneIdentifier"],
        Tags=[
            {
                "ResourceId": name,
                "ResourceType": "auto-scaling-group",
                "Key": k,
                "Value": v,
                "PropagateAtLaunch": True,
            }
            for k, v in tags.items()
        ],
    )
    return name


def groups(clients: FleetClients) -> list[str]:
    return sorted(
        g["AutoScalingGroupName"]
        for g in clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    )


@pytest.mark.usefixtures("airflow_db")
def test_the_janitor_dag_dry_runs_then_retires_an_expired_kept_group(
    aws: Any,
    fleet_clients: FleetClients,
    demo_network: DemoEnvironment,
    live_fleet: ServerGroup,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_config(tmp_path, monkeypatch)
    expired = kept_group_expired(fleet_clients, live_fleet)
    dag = load_dag("immutable_janitor")
    assert {task.task_id for task in dag.tasks} == PHASES

    dry = dag.test(run_conf={"dry_run": True})
    assert str(dry.state) == "success", task_states(dry)
    assert groups(fleet_clients) == [expired, live_fleet.name]

    run = load_dag("immutable_janitor").test(run_conf={"dry_run": False})
    assert str(run.state) == "success", task_states(run)
    assert groups(fleet_clients) == [live_fleet.name]
    summary = next(ti for ti in run.get_task_instances() if ti.task_id == "janitor_summary").xcom_pull(
        task_ids="janitor_summary"
    )
    removed = summary["targets"]["shop/prod"]["removed"]
    assert [(item["kind"], item["name"]) for item in removed] == [("server-group", expired)]
