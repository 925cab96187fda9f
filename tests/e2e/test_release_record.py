"""The deploy record end to end with dag.test(): two deploys and a rollback write it, rollback reads it."""

from __future__ import annotations

from typing import Any

from fleet_fixtures import APP, ENVIRONMENT

from immudeploy.aws.deploy_record import release_history
from immudeploy.core.naming import from_aws_tags

from .test_deploy_dag import group_names, run_dag, task_states, write_config, xcom_values


def test_deploys_and_a_rollback_are_recorded_and_the_rollback_goes_to_the_recorded_image(
    airflow_db: None, aws: Any, demo_network: Any, fleet_clients: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    write_config(tmp_path, monkeypatch, keep_old_groups=0)
    for version in ("1.0.0", "1.1.0"):
        run = run_dag("immutable_deploy", version=version, git_sha="abc1234")
        assert str(run.state) == "success", task_states(run)
    first, second = reversed(release_history(fleet_clients.dynamodb, APP, ENVIRONMENT))
    assert (first.version, first.group, first.git_sha) == ("1.0.0", "shop-prod-v001", "abc1234")
    # An image of the app baked later for another environment is no rollback target.
    qa_image = fleet_clients.ec2.copy_image(
        SourceImageId=first.image_id, SourceRegion="us-east-1", Name="shop-qa-rc1"
    )
    fleet_clients.ec2.create_tags(
        Resources=[qa_image["ImageId"]],
        Tags=[
            {"Key": "immutable:app", "Value": APP},
            {"Key": "immutable:environment", "Value": "qa"},
            {"Key": "immutable:version", "Value": "1.2.0-rc1"},
        ],
    )

    run = run_dag("immutable_rollback")

    assert str(run.state) == "success", task_states(run)
    assert group_names(fleet_clients) == {"shop-prod-v003"}
    group = fleet_clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["shop-prod-v003"])[
        "AutoScalingGroups"
    ][0]
    assert from_aws_tags(group["Tags"])["immutable:version"] == "1.0.0"
    newest = release_history(fleet_clients.dynamodb, APP, ENVIRONMENT)[0]
    assert (newest.kind, newest.version, newest.image_id, newest.group) == (
        "rollback",
        "1.0.0",
        first.image_id,
        "shop-prod-v003",
    )
    assert (newest.rolled_back_from_version, newest.rolled_back_from_group) == ("1.1.0", second.group)
    # What `immudeploy-ci rollback --list` reads: the record as the run left it, newest first.
    recorded = xcom_values(run, "teardown.record_release")["return_value"]
    assert [entry["version"] for entry in recorded["history"]] == ["1.0.0", "1.1.0", "1.0.0"]
