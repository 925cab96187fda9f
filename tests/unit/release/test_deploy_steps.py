"""The release steps as plain functions against moto: plan, launch, attach, detach, finish, retire, undo, summary."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, LIVE_CAPACITY, LIVE_VERSION, FleetClients

from immudeploy.aws.groups.capacity import pin_capacity
from immudeploy.aws.groups.inventory import describe_server_group
from immudeploy.aws.target_health import healthy_target_ids
from immudeploy.core.config import DeploymentConfig, parse_config
from immudeploy.core.errors import DeployError, InvalidInput
from immudeploy.core.naming import TAG_DEPLOY_ID, TAG_RESTORE_CAPACITY, TAG_VERSION, from_aws_tags
from immudeploy.core.plan import Capacity, DeployPlan, ServerGroup
from immudeploy.release.deploy import (
    attach_fleet,
    deploy_id_for,
    detach_old_fleet,
    finish_swap,
    launch_fleet,
    plan_deploy,
    retire,
)
from immudeploy.release.rollback import bring_up_rollback_fleet, plan_rollback
from immudeploy.release.summary import phase_seconds, summarize
from immudeploy.release.undo import undo_failed_run
from immudeploy_dev.demo import STAGING_PORT, DemoEnvironment

REPO = Path(__file__).resolve().parents[3]
DAG_ID = "immutable_deploy"
RUN_ID = "manual__2026-01-01T00:00:00+00:00"
NEW_VERSION = "2.0.0"
PHASES = ["prepare", "bake", "staging", "publish_config", "launch", "cutover", "drain", "observe", "teardown"]


def deployment_config(**overrides: Any) -> DeploymentConfig:
    """The sample configuration (as tests/e2e write_config shapes it) with overrides for shop/prod."""
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    app = config["apps"][APP]
    app["packer_template"] = str(REPO / "packer")
    env = app["environments"][ENVIRONMENT]
    env["observation_minutes"] = 0
    env.update(overrides)
    return parse_config(yaml.safe_dump(config), REPO / "config" / "test.yaml")


def planned(
    clients: FleetClients, version: str = NEW_VERSION, run_id: str = RUN_ID, **overrides: Any
) -> DeployPlan:
    params = {"app": APP, "environment": ENVIRONMENT, "version": version}
    return plan_deploy(clients, deployment_config(**overrides), params, DAG_ID, run_id)


def raw_group(clients: FleetClients, name: str) -> dict[str, Any] | None:
    found = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ]
    return found[0] if found else None


def group_names(clients: FleetClients) -> list[str]:
    groups = clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    return sorted(g["AutoScalingGroupName"] for g in groups)


def launch_templates(clients: FleetClients) -> list[str]:
    return sorted(t["LaunchTemplateName"] for t in clients.ec2.describe_launch_templates()["LaunchTemplates"])


def registered(clients: FleetClients, target_group_arn: str) -> set[str]:
    health = clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)
    return {d["Target"]["Id"] for d in health["TargetHealthDescriptions"]}


def size(clients: FleetClients, name: str) -> Capacity:
    raw = raw_group(clients, name)
    assert raw is not None, f"{name} does not exist"
    return Capacity(raw["MinSize"], raw["MaxSize"], raw["DesiredCapacity"])


def swapped(clients: FleetClients, plan: DeployPlan) -> tuple[ServerGroup, list[str]]:
    """Launch, attach, detach the old group and finish: what a run does up to teardown."""
    new = launch_fleet(clients, plan, BASE_IMAGE)
    attach_fleet(clients, plan, new.name)
    draining = detach_old_fleet(clients, plan, new.name)
    finish_swap(clients, plan, new.name)
    return new, draining


# --- plan ------------------------------------------------------------------------------------------


def test_plan_reads_the_live_group_and_its_size(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)

    assert plan.live is not None
    assert plan.live.name == "shop-prod-v001"
    assert plan.live.version == LIVE_VERSION
    assert plan.live.instance_ids == live_fleet.instance_ids
    assert plan.capacity == LIVE_CAPACITY
    assert (plan.app, plan.environment, plan.version) == (APP, ENVIRONMENT, NEW_VERSION)
    assert plan.deploy_id == deploy_id_for(DAG_ID, RUN_ID)
    assert plan.subnet_ids == demo_network.subnet_ids
    assert plan.security_group_ids == [demo_network.security_group_id]
    assert plan.target_group_arns == [demo_network.target_group_arn]
    assert plan.staging is not None
    assert plan.staging.target_group_arn == demo_network.staging_target_group_arn
    assert plan.staging.endpoint == f"http://{demo_network.load_balancer_dns_name}:{STAGING_PORT}"
    assert plan.keep_old_groups == 1 and plan.observation_seconds == 0


def test_plan_of_a_group_pinned_by_an_interrupted_swap_takes_the_restore_tag_size(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    pin_capacity(fleet_clients, live_fleet.name, LIVE_CAPACITY)
    assert size(fleet_clients, live_fleet.name) == Capacity(3, 3, 3)

    plan = planned(fleet_clients)

    # The next run repairs the interrupted swap before it reads the live group: unpinned again.
    assert plan.live is not None
    assert plan.live.capacity == LIVE_CAPACITY and plan.live.restore_capacity is None
    assert size(fleet_clients, live_fleet.name) == LIVE_CAPACITY
    assert plan.capacity == LIVE_CAPACITY


def test_a_first_deploy_plan_has_no_live_group_and_the_first_deploy_capacity(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    plan = planned(fleet_clients, first_deploy_capacity={"min": 1, "max": 5, "desired": 2})

    assert plan.live is None
    assert plan.capacity == Capacity(1, 5, 2)


def test_a_deploy_id_is_stable_per_run_and_differs_between_runs() -> None:
    assert deploy_id_for(DAG_ID, RUN_ID) == deploy_id_for(DAG_ID, RUN_ID)
    assert deploy_id_for(DAG_ID, RUN_ID) != deploy_id_for(DAG_ID, RUN_ID + "x")
    assert deploy_id_for(DAG_ID, RUN_ID).startswith(f"{DAG_ID}-")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"version": "2.0.0\n"}, "version"),
        ({"version": "2.0.0; reboot"}, "version"),
        ({"app": "Shop"}, "app"),
        ({"environment": "prod\n"}, "environment"),
        ({"ami_id": "ami-nothex!"}, "ami_id"),
        ({"git_sha": "not-a-sha"}, "git_sha"),
    ],
)
def test_bad_params_are_refused_naming_the_field(
    fleet_clients: FleetClients, live_fleet: ServerGroup, params: dict[str, str], field: str
) -> None:
    conf = {"app": APP, "environment": ENVIRONMENT, "version": NEW_VERSION, **params}
    with pytest.raises(InvalidInput) as raised:
        plan_deploy(fleet_clients, deployment_config(), conf, DAG_ID, RUN_ID)
    assert raised.value.field == field


def test_an_image_that_does_not_exist_is_refused_at_plan_time(
    fleet_clients: FleetClients, live_fleet: ServerGroup
) -> None:
    conf = {"app": APP, "environment": ENVIRONMENT, "version": NEW_VERSION, "ami_id": "ami-0123456789abcdef0"}
    with pytest.raises(InvalidInput, match="does not exist") as raised:
        plan_deploy(fleet_clients, deployment_config(), conf, DAG_ID, RUN_ID)
    assert raised.value.field == "ami_id"


# --- launch, attach, detach, finish ----------------------------------------------------------------


def test_launch_makes_the_next_group_pinned_at_the_live_size_and_not_attached(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)

    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)

    assert new.name == "shop-prod-v002"
    assert new.capacity == Capacity(3, 3, 3)
    assert new.target_group_arns == []
    assert new.version == NEW_VERSION and new.image_id == BASE_IMAGE
    assert new.deploy_id == plan.deploy_id
    assert len(new.instance_ids) == 3
    # Nothing of the new fleet serves yet; the live fleet still does, pinned so nothing scales it in.
    assert registered(fleet_clients, demo_network.target_group_arn) == set(live_fleet.instance_ids)
    live = raw_group(fleet_clients, live_fleet.name)
    assert live is not None
    assert size(fleet_clients, live_fleet.name) == Capacity(3, 3, 3)
    assert from_aws_tags(live["Tags"])[TAG_RESTORE_CAPACITY] == LIVE_CAPACITY.to_tag()
    assert live["TargetGroupARNs"] == [demo_network.target_group_arn]


def test_launching_twice_gives_one_group(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)

    first = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    again = launch_fleet(fleet_clients, plan, BASE_IMAGE)

    assert again.name == first.name == "shop-prod-v002"
    assert sorted(again.instance_ids) == sorted(first.instance_ids)
    assert group_names(fleet_clients) == ["shop-prod-v001", "shop-prod-v002"]
    assert launch_templates(fleet_clients) == ["shop-prod-v001", "shop-prod-v002"]
    # The second pin of the live group did not record the pinned size as its original.
    live = raw_group(fleet_clients, live_fleet.name)
    assert live is not None
    assert from_aws_tags(live["Tags"])[TAG_RESTORE_CAPACITY] == LIVE_CAPACITY.to_tag()


def test_a_swap_that_stopped_before_finish_leaves_the_real_size_for_the_next_run(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    attach_fleet(fleet_clients, plan, new.name)
    detach_old_fleet(fleet_clients, plan, new.name)

    following = planned(fleet_clients, version="2.0.1", run_id="manual__next")

    assert following.live is not None and following.live.name == new.name
    assert following.capacity == LIVE_CAPACITY


def test_attach_then_detach_leaves_only_the_new_group_serving(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)

    attached = attach_fleet(fleet_clients, plan, new.name)
    assert attached.target_group_arns == [demo_network.target_group_arn]
    assert registered(fleet_clients, demo_network.target_group_arn) == set(live_fleet.instance_ids) | set(
        new.instance_ids
    )

    draining = detach_old_fleet(fleet_clients, plan, new.name)

    assert sorted(draining) == sorted(live_fleet.instance_ids)
    assert registered(fleet_clients, demo_network.target_group_arn) == set(new.instance_ids)
    old = describe_server_group(fleet_clients, live_fleet.name)
    assert old is not None
    assert old.target_group_arns == [] and old.disabled
    # Detaching again finds nothing attached and changes nothing.
    assert sorted(detach_old_fleet(fleet_clients, plan, new.name)) == sorted(live_fleet.instance_ids)
    assert registered(fleet_clients, demo_network.target_group_arn) == set(new.instance_ids)


def test_a_first_deploy_has_nothing_to_detach(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    plan = planned(fleet_clients)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    attach_fleet(fleet_clients, plan, new.name)

    assert new.name == "shop-prod-v001"
    assert detach_old_fleet(fleet_clients, plan, new.name) == []
    assert registered(fleet_clients, demo_network.target_group_arn) == set(new.instance_ids)


def test_finish_swap_gives_the_new_group_the_live_groups_min_and_max(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    attach_fleet(fleet_clients, plan, new.name)
    detach_old_fleet(fleet_clients, plan, new.name)

    finished = finish_swap(fleet_clients, plan, new.name)

    assert finished.capacity == LIVE_CAPACITY
    assert size(fleet_clients, new.name) == LIVE_CAPACITY
    assert finished.suspended_processes == []
    assert finished.restore_capacity is None
    raw = raw_group(fleet_clients, new.name)
    assert raw is not None and TAG_RESTORE_CAPACITY not in from_aws_tags(raw["Tags"])


def test_finish_swap_after_an_interrupted_swap_uses_the_original_size(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    # An earlier run pinned v001 and died; this run's plan reads the pinned group.
    pin_capacity(fleet_clients, live_fleet.name, LIVE_CAPACITY)
    plan = planned(fleet_clients)
    new, _ = swapped(fleet_clients, plan)
    assert size(fleet_clients, new.name) == LIVE_CAPACITY


# --- retire ----------------------------------------------------------------------------------------


def test_retire_with_keep_zero_deletes_the_old_group_and_its_launch_template(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients, keep_old_groups=0)
    new, _ = swapped(fleet_clients, plan)

    retired = retire(fleet_clients, plan, new.name)

    assert retired["deleted_groups"] == ["shop-prod-v001"]
    assert retired["kept_groups"] == []
    assert group_names(fleet_clients) == ["shop-prod-v002"]
    assert launch_templates(fleet_clients) == ["shop-prod-v002"]
    assert registered(fleet_clients, demo_network.target_group_arn) == set(new.instance_ids)


def test_retire_keeps_the_configured_number_of_old_groups(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients, keep_old_groups=1)
    new, _ = swapped(fleet_clients, plan)

    retired = retire(fleet_clients, plan, new.name)

    assert retired["deleted_groups"] == []
    assert retired["kept_groups"] == ["shop-prod-v001"]
    assert group_names(fleet_clients) == ["shop-prod-v001", "shop-prod-v002"]


# --- undo ------------------------------------------------------------------------------------------


def test_undo_after_launch_and_attach_puts_the_old_group_back_alone(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    attach_fleet(fleet_clients, plan, new.name)

    actions = undo_failed_run(fleet_clients, plan, poll_interval=0.05)

    assert f"detached {new.name}" in actions and f"deleted {new.name}" in actions
    assert group_names(fleet_clients) == ["shop-prod-v001"]
    assert launch_templates(fleet_clients) == ["shop-prod-v001"]
    assert registered(fleet_clients, demo_network.target_group_arn) == set(live_fleet.instance_ids)
    old = describe_server_group(fleet_clients, live_fleet.name)
    assert old is not None
    assert old.capacity == LIVE_CAPACITY
    assert old.restore_capacity is None and not old.disabled
    assert old.target_group_arns == [demo_network.target_group_arn]


def test_undo_twice_is_harmless(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    attach_fleet(fleet_clients, plan, new.name)
    undo_failed_run(fleet_clients, plan, poll_interval=0.05)

    again = undo_failed_run(fleet_clients, plan, poll_interval=0.05)

    assert again == ["nothing to undo"]
    assert group_names(fleet_clients) == ["shop-prod-v001"]
    assert size(fleet_clients, live_fleet.name) == LIVE_CAPACITY
    assert registered(fleet_clients, demo_network.target_group_arn) == set(live_fleet.instance_ids)


def test_undo_after_the_old_group_was_detached_attaches_it_again_first(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    attach_fleet(fleet_clients, plan, new.name)
    detach_old_fleet(fleet_clients, plan, new.name)

    actions = undo_failed_run(fleet_clients, plan, poll_interval=0.05)

    assert actions.index(f"re-attached {live_fleet.name}") < actions.index(f"detached {new.name}")
    assert group_names(fleet_clients) == ["shop-prod-v001"]
    assert registered(fleet_clients, demo_network.target_group_arn) == set(live_fleet.instance_ids)
    old = describe_server_group(fleet_clients, live_fleet.name)
    assert old is not None and not old.disabled and old.capacity == LIVE_CAPACITY


def test_undo_before_anything_was_launched_leaves_the_live_group_as_it_was(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)
    assert undo_failed_run(fleet_clients, plan, poll_interval=0.05) == ["nothing to undo"]
    assert group_names(fleet_clients) == ["shop-prod-v001"]
    assert size(fleet_clients, live_fleet.name) == LIVE_CAPACITY


def test_undo_of_a_first_deploy_that_never_became_healthy_deletes_it(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    plan = planned(fleet_clients)
    new = launch_fleet(fleet_clients, plan, BASE_IMAGE)
    attach_fleet(fleet_clients, plan, new.name)
    # Stopped instances are what moto can show of a fleet that fails its health checks.
    fleet_clients.ec2.stop_instances(InstanceIds=new.instance_ids)
    assert healthy_target_ids(fleet_clients, demo_network.target_group_arn) == set()

    actions = undo_failed_run(fleet_clients, plan, poll_interval=0.05)

    assert f"deleted {new.name}" in actions
    assert group_names(fleet_clients) == []


def test_undo_leaves_groups_of_other_runs_alone(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients)
    other = planned(fleet_clients, run_id="manual__other")
    launch_fleet(fleet_clients, other, BASE_IMAGE)

    undo_failed_run(fleet_clients, plan, poll_interval=0.05)

    assert group_names(fleet_clients) == ["shop-prod-v001", "shop-prod-v002"]
    v002 = raw_group(fleet_clients, "shop-prod-v002")
    assert v002 is not None and from_aws_tags(v002["Tags"])[TAG_DEPLOY_ID] == other.deploy_id


# --- rollback --------------------------------------------------------------------------------------


def test_rollback_swaps_back_to_the_kept_group(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients, keep_old_groups=1)
    new, _ = swapped(fleet_clients, plan)
    retire(fleet_clients, plan, new.name)
    # The kept group was scaled in while disabled; the rollback brings it back to the live size.
    fleet_clients.autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=live_fleet.name, MinSize=0, MaxSize=6, DesiredCapacity=0
    )

    params = {"app": APP, "environment": ENVIRONMENT}
    rollback = plan_rollback(fleet_clients, deployment_config(), params, "immutable_rollback", "manual__rb")

    assert (rollback.rollback_mode, rollback.rollback_group) == ("swap", live_fleet.name)
    assert rollback.version == LIVE_VERSION
    assert rollback.live is not None and rollback.live.name == new.name
    assert rollback.staging is None
    back = bring_up_rollback_fleet(fleet_clients, rollback)
    assert back.name == live_fleet.name
    assert back.capacity == Capacity(3, 3, 3)


def test_rollback_without_a_live_group_is_refused(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    params = {"app": APP, "environment": ENVIRONMENT}
    with pytest.raises(DeployError, match="no live server group"):
        plan_rollback(fleet_clients, deployment_config(), params, "immutable_rollback", "manual__rb")


def test_rollback_without_kept_group_or_previous_image_says_so(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    params = {"app": APP, "environment": ENVIRONMENT}
    # No deploy record (a fleet from before it): the fallback looks for images of this environment only.
    with pytest.raises(
        DeployError, match=f"no image of {APP} in {ENVIRONMENT} with a version other than {LIVE_VERSION}"
    ):
        plan_rollback(fleet_clients, deployment_config(), params, "immutable_rollback", "manual__rb")


# --- summary ---------------------------------------------------------------------------------------


def test_phase_seconds_sums_each_phase_and_leaves_out_phases_that_did_not_run() -> None:
    task_seconds = {
        "prepare": 1.25,
        "bake.bake_image": 2.0,
        "bake.record_image": 0.5,
        "staging.launch_staging": None,  # skipped
        "staging.run_tests": None,
        "launch.launch_fleet": 3.0,
        "launch.wait_in_service": 4.5,
        "cutover.attach": 0.4,
        "cutover.health_gate": 0.3,
        "release_lock": 9.0,  # not a phase
    }

    assert phase_seconds(task_seconds, PHASES) == {
        "prepare": 1.2,
        "bake": 2.5,
        "launch": 7.5,
        "cutover": 0.7,
    }
    assert list(phase_seconds(task_seconds, PHASES)) == ["prepare", "bake", "launch", "cutover"]


def test_phase_seconds_keeps_a_phase_that_ran_in_no_time() -> None:
    assert phase_seconds({"drain.drained": 0.0, "observe.watch": None}, PHASES) == {"drain": 0.0}
    assert phase_seconds({}, PHASES) == {}


def test_summary_names_the_group_it_replaced(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    plan = planned(fleet_clients, keep_old_groups=0)
    new, _ = swapped(fleet_clients, plan)
    retired = retire(fleet_clients, plan, new.name)
    timings = {"prepare": 1.0, "launch": 7.5}

    summary = summarize(plan, BASE_IMAGE, new.name, 3, timings, retired)

    assert summary["replaced"] == "shop-prod-v001"
    assert summary["server_group"] == "shop-prod-v002"
    assert (summary["app"], summary["environment"], summary["version"]) == (APP, ENVIRONMENT, NEW_VERSION)
    assert summary["deleted_groups"] == ["shop-prod-v001"]
    assert summary["phase_seconds"] == timings
    markdown = summary["markdown"]
    assert f"### {APP}/{ENVIRONMENT} now runs {NEW_VERSION}" in markdown
    assert "`shop-prod-v002` (3 instances), replacing `shop-prod-v001`" in markdown
    assert "| launch | 7.5 |" in markdown
    group = raw_group(fleet_clients, new.name)
    assert group is not None and from_aws_tags(group["Tags"])[TAG_VERSION] == NEW_VERSION


def test_summary_of_a_first_deploy(fleet_clients: FleetClients, demo_network: DemoEnvironment) -> None:
    plan = planned(fleet_clients)
    summary = summarize(plan, BASE_IMAGE, "shop-prod-v001", 2, {}, {})
    assert summary["replaced"] is None
    assert "`shop-prod-v001` (2 instances) (first deploy)" in summary["markdown"]
    assert "deleted groups: none; kept for rollback: none" in summary["markdown"]


def test_summary_lists_the_plans_notes() -> None:
    # A plan needs no AWS to be summarised.
    plan = replace(_offline_plan(), notes=["swapping back to kept group shop-prod-v001 (1.0.0)"])
    markdown = summarize(plan, BASE_IMAGE, "shop-prod-v001", 3, {}, {"kept_groups": ["shop-prod-v002"]})[
        "markdown"
    ]
    assert markdown.splitlines()[-1] == "- swapping back to kept group shop-prod-v001 (1.0.0)"
    assert "kept for rollback: shop-prod-v002" in markdown


def _offline_plan() -> DeployPlan:
    return DeployPlan(
        dag_id=DAG_ID,
        run_id=RUN_ID,
        deploy_id=deploy_id_for(DAG_ID, RUN_ID),
        app=APP,
        environment=ENVIRONMENT,
        version=LIVE_VERSION,
        git_sha=None,
        ami_id=BASE_IMAGE,
        instance_type="t3.micro",
        subnet_ids=[],
        security_group_ids=[],
        target_group_arns=[],
        staging=None,
        live=None,
        capacity=LIVE_CAPACITY,
        keep_old_groups=1,
        keep_images=5,
        observation_seconds=0,
        alarms=[],
        health_timeout_seconds=None,
        drain_timeout_seconds=None,
        in_service_timeout_seconds=600,
        bake_timeout_seconds=3600,
        ssm_prefix=f"/immutable/{APP}/{ENVIRONMENT}",
        runtime_config={},
        base_image_id=BASE_IMAGE,
        base_image_name_pattern=None,
        base_image_owners=[],
        packer_template=str(REPO / "packer"),
        release_url="",
        planned_at="2026-01-01T00:00:00+00:00",
    )
