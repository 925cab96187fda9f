"""Server group discovery, launch, swap, traffic guard and retention against a moto server."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from dataclasses import replace
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT, LIVE_CAPACITY, FleetClients

from immudeploy.airflow.xcom import server_group_from_xcom, server_group_to_xcom
from immudeploy.aws.groups.capacity import (
    SWAP_SUSPENDED_PROCESSES,
    pin_capacity,
    restore_capacity,
    scale_server_group,
)
from immudeploy.aws.groups.inventory import describe_server_group, find_server_groups, live_server_group
from immudeploy.aws.groups.launch import LaunchSpec, _ensure_launch_template, launch_server_group
from immudeploy.aws.groups.retire import delete_server_group, retire_server_groups
from immudeploy.aws.groups.traffic import (
    DISABLED_SUSPENDED_PROCESSES,
    attach_server_group,
    detach_server_group,
)
from immudeploy.aws.images import delete_unused_images, images_in_use
from immudeploy.aws.target_health import healthy_target_ids
from immudeploy.core.errors import DeployError, TrafficGuardError
from immudeploy.core.naming import TAG_APP, TAG_DEPLOY_ID, TAG_ENVIRONMENT, TAG_RESTORE_CAPACITY, TAG_VERSION
from immudeploy.core.plan import Capacity, ServerGroup
from immudeploy_dev.demo import DemoEnvironment


def _spec(net: DemoEnvironment, version: str, deploy_id: str, image_id: str = BASE_IMAGE) -> LaunchSpec:
    return LaunchSpec(
        app=APP,
        environment=ENVIRONMENT,
        version=version,
        image_id=image_id,
        deploy_id=deploy_id,
        instance_type="t3.micro",
        subnet_ids=list(net.subnet_ids),
        security_group_ids=[net.security_group_id],
        target_group_arns=[],
        capacity=LIVE_CAPACITY,
        ssm_config_path=f"/immutable/{APP}/{ENVIRONMENT}/{version}",
        cache_key_prefix=f"{APP}/{ENVIRONMENT}/{version}",
    )


def _launch_templates(clients: FleetClients) -> list[str]:
    return sorted(t["LaunchTemplateName"] for t in clients.ec2.describe_launch_templates()["LaunchTemplates"])


def _target_ids(clients: FleetClients, target_group_arn: str) -> set[str]:
    health = clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)
    return {d["Target"]["Id"] for d in health["TargetHealthDescriptions"]}


def _swap(
    clients: FleetClients, net: DemoEnvironment, version: str, deploy_id: str, keep: int
) -> ServerGroup:
    """The release sequence, without waits: moto reports targets healthy as soon as they register."""
    old = live_server_group(clients, APP, ENVIRONMENT, [net.target_group_arn])
    assert old is not None
    new = launch_server_group(clients, replace(_spec(net, version, deploy_id), capacity=old.capacity))
    attach_server_group(clients, new.name, [net.target_group_arn])
    detach_server_group(clients, old.name, [net.target_group_arn])
    restore_capacity(clients, new.name)
    retire_server_groups(clients, APP, ENVIRONMENT, keep, new.name, [net.target_group_arn])
    return new


def test_first_deploy_finds_no_live_group(fleet_clients: FleetClients, demo_network: DemoEnvironment) -> None:
    assert find_server_groups(fleet_clients, APP, ENVIRONMENT) == []
    assert live_server_group(fleet_clients, APP, ENVIRONMENT, [demo_network.target_group_arn]) is None


def test_discovery_reads_names_tags_and_launch_template(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    # Decoys: right name but another app's tags, and a foreign name carrying this app's tags.
    asg = fleet_clients.autoscaling
    for name, tags in [
        ("shop-prod-v007", {TAG_APP: "other", TAG_ENVIRONMENT: ENVIRONMENT}),
        ("shop-prod-legacy", {TAG_APP: APP, TAG_ENVIRONMENT: ENVIRONMENT}),
    ]:
        asg.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": live_fleet.name, "Version": "1"},
            MinSize=0,
            MaxSize=0,
            VPCZoneIdentifier=demo_network.subnet_ids[0],
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": False} for k, v in tags.items()],
        )

    groups = find_server_groups(fleet_clients, APP, ENVIRONMENT)

    assert [g.name for g in groups] == ["shop-prod-v001"]
    live = live_server_group(fleet_clients, APP, ENVIRONMENT, [demo_network.target_group_arn])
    assert live is not None and live.name == "shop-prod-v001"
    assert (live.sequence, live.version, live.deploy_id) == (1, "1.0.0", "demo-seed-1.0.0")
    assert (live.image_id, live.instance_type) == (BASE_IMAGE, "t3.micro")
    assert live.launch_template_name == "shop-prod-v001"
    assert live.security_group_ids == [demo_network.security_group_id]
    assert sorted(live.subnet_ids) == sorted(demo_network.subnet_ids)
    assert live.capacity == LIVE_CAPACITY
    assert len(live.instance_ids) == 3
    assert live.target_group_arns == [demo_network.target_group_arn]
    assert not live.disabled and live.restore_capacity is None
    # The seeded fleet looks like a finished swap: nothing left suspended.
    assert live.suspended_processes == []
    as_xcom = server_group_to_xcom(live)
    assert json.loads(json.dumps(as_xcom)) == as_xcom
    assert server_group_from_xcom(as_xcom) == live


def test_launch_is_idempotent_per_deploy_id(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    spec = _spec(demo_network, "1.1.0", "run-2")

    first = launch_server_group(fleet_clients, spec)
    second = launch_server_group(fleet_clients, spec)

    assert first.name == second.name == "shop-prod-v002"
    assert sorted(first.instance_ids) == sorted(second.instance_ids) and len(first.instance_ids) == 3
    assert [g.name for g in find_server_groups(fleet_clients, APP, ENVIRONMENT)] == [
        "shop-prod-v001",
        "shop-prod-v002",
    ]
    assert _launch_templates(fleet_clients) == ["shop-prod-v001", "shop-prod-v002"]
    reservations = fleet_clients.ec2.describe_instances(
        Filters=[{"Name": f"tag:{TAG_DEPLOY_ID}", "Values": ["run-2"]}]
    )["Reservations"]
    assert sum(len(r["Instances"]) for r in reservations) == 3
    # Pinned during the swap, the live group's size recorded for the restore, swap-fighting processes off.
    assert first.capacity == Capacity(3, 3, 3)
    assert first.restore_capacity == LIVE_CAPACITY
    assert set(SWAP_SUSPENDED_PROCESSES) <= set(first.suspended_processes)
    assert first.target_group_arns == []


def test_launch_template_requires_imdsv2_and_writes_release_env(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, tmp_path: Any
) -> None:
    # "+" is fine in a version and in user data, but not in an SSM parameter name.
    spec = replace(
        _spec(demo_network, "2.0.0-rc.1_build.7", "run-1"), ssm_config_path="/immutable/shop/prod/2.0.0-rc.1"
    )
    group = launch_server_group(fleet_clients, spec)

    version = fleet_clients.ec2.describe_launch_template_versions(LaunchTemplateName=group.name)[
        "LaunchTemplateVersions"
    ][0]
    data = version["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["ImageId"] == BASE_IMAGE
    template = fleet_clients.ec2.describe_launch_templates(LaunchTemplateNames=[group.name])[
        "LaunchTemplates"
    ][0]
    template_tags = {t["Key"]: t["Value"] for t in template["Tags"]}
    assert template_tags[TAG_VERSION] == "2.0.0-rc.1_build.7" and template_tags[TAG_DEPLOY_ID] == "run-1"

    # The user data is cloud-config: write the file its write_files names, as cloud-init would,
    # into a scratch directory, and source it (tests/unit/aws/test_user_data.py runs cloud-init).
    user_data = base64.b64decode(data["UserData"]).decode()
    assert user_data.startswith("#cloud-config\n")
    (entry,) = yaml.safe_load(user_data)["write_files"]
    assert entry["path"] == "/etc/immutable/release.env"
    env_file = tmp_path / "release.env"
    env_file.write_text(entry["content"])
    sourced = subprocess.run(
        ["bash", "-c", f"set -a; . {env_file}; env"], check=True, capture_output=True, text=True, env={}
    ).stdout.splitlines()
    assert {
        "IMMUTABLE_APP=shop",
        "IMMUTABLE_ENVIRONMENT=prod",
        "IMMUTABLE_VERSION=2.0.0-rc.1_build.7",
        "IMMUTABLE_SERVER_GROUP=shop-prod-v001",
        "IMMUTABLE_SSM_PATH=/immutable/shop/prod/2.0.0-rc.1",
        "IMMUTABLE_CACHE_PREFIX=shop/prod/2.0.0-rc.1_build.7",
    } <= set(sourced)


def test_launch_retry_reuses_only_its_own_half_created_template(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    # Another run crashed after creating v002's template; then this run crashed after creating v003's.
    _ensure_launch_template(fleet_clients, "shop-prod-v002", _spec(demo_network, "1.1.0", "run-crashed"))
    _ensure_launch_template(fleet_clients, "shop-prod-v003", _spec(demo_network, "1.2.0", "run-3"))

    group = launch_server_group(fleet_clients, _spec(demo_network, "1.2.0", "run-3"))
    assert group.name == "shop-prod-v003"

    # The orphan's number is never reused; retiring around the new current group removes it.
    assert launch_server_group(fleet_clients, _spec(demo_network, "1.3.0", "run-4")).name == "shop-prod-v004"
    attach_server_group(fleet_clients, "shop-prod-v004", [demo_network.target_group_arn])
    detach_server_group(fleet_clients, live_fleet.name, [demo_network.target_group_arn])
    retire_server_groups(
        fleet_clients, APP, ENVIRONMENT, 0, "shop-prod-v004", [demo_network.target_group_arn]
    )
    assert "shop-prod-v002" not in _launch_templates(fleet_clients)


def test_launch_refuses_a_group_name_owned_by_another_deploy(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    _ensure_launch_template(fleet_clients, "shop-prod-v001", _spec(demo_network, "1.0.0", "run-1"))
    with pytest.raises(DeployError, match="belongs to deploy 'run-1'"):
        _ensure_launch_template(fleet_clients, "shop-prod-v001", _spec(demo_network, "1.0.0", "run-2"))


class _HealthSampler(threading.Thread):
    """Counts healthy targets every 50 ms from its own client while the swap runs."""

    def __init__(self, clients: FleetClients, target_group_arn: str) -> None:
        super().__init__(daemon=True)
        self.clients, self.target_group_arn = clients, target_group_arn
        self.counts: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.counts.append(len(healthy_target_ids(self.clients, self.target_group_arn)))
            self.stopped.wait(0.05)


def test_swap_keeps_capacity_serving_and_every_step_is_idempotent(
    aws: Any, fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    """Launch, attach, detach old, restore, retire; each step twice.

    Moto gap: new targets are healthy the moment they register, so no health gate is needed here
    and the sampler checks only the ORDER of attach and detach (detaching first would show 0).
    Target states moto cannot produce (initial, unhealthy, draining) are tested with stubs in waits.
    """
    tg = demo_network.target_group_arn
    sampler_clients = FleetClients(aws.client("ec2"), aws.client("autoscaling"), aws.client("elbv2"), None)
    sampler = _HealthSampler(sampler_clients, tg)
    sampler.start()
    try:
        old = live_server_group(fleet_clients, APP, ENVIRONMENT, [tg])
        assert old is not None
        spec = replace(_spec(demo_network, "1.1.0", "run-2"), capacity=old.capacity)
        new = [launch_server_group(fleet_clients, spec) for _ in range(2)][-1]
        for _ in range(2):
            attach_server_group(fleet_clients, new.name, [tg])
        assert _target_ids(fleet_clients, tg) == set(old.instance_ids) | set(new.instance_ids)
        for _ in range(2):
            detached = detach_server_group(fleet_clients, old.name, [tg])
        for _ in range(2):
            restored = restore_capacity(fleet_clients, new.name)
        deleted = [retire_server_groups(fleet_clients, APP, ENVIRONMENT, 0, new.name, [tg]) for _ in range(2)]
    finally:
        sampler.stopped.set()
        sampler.join()

    assert len(sampler.counts) >= 3
    assert min(sampler.counts) >= old.capacity.desired == 3
    assert detached is not None and detached.disabled and detached.target_group_arns == []
    assert set(DISABLED_SUSPENDED_PROCESSES) <= set(detached.suspended_processes)
    # After the swap the new group takes the old group's min/max; its pin and suspensions are gone.
    assert restored.capacity == LIVE_CAPACITY and restored.restore_capacity is None
    assert not set(SWAP_SUSPENDED_PROCESSES) & set(restored.suspended_processes)
    assert deleted == [[old.name], []]
    groups = find_server_groups(fleet_clients, APP, ENVIRONMENT)
    assert [g.name for g in groups] == [new.name]
    assert groups[0].target_group_arns == [tg] and len(groups[0].instance_ids) == 3
    assert _launch_templates(fleet_clients) == [new.name]
    assert _target_ids(fleet_clients, tg) == healthy_target_ids(fleet_clients, tg) == set(new.instance_ids)


def test_traffic_guard_refuses_to_detach_or_delete_the_only_serving_group(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    tg = demo_network.target_group_arn
    with pytest.raises(
        TrafficGuardError, match=r"shop-prod-live would keep 0 healthy targets, needs 1 \(3 healthy now"
    ):
        detach_server_group(fleet_clients, live_fleet.name, [tg])
    with pytest.raises(TrafficGuardError):
        delete_server_group(fleet_clients, live_fleet.name)

    still = describe_server_group(fleet_clients, live_fleet.name)
    assert still is not None and still.target_group_arns == [tg] and not still.disabled
    assert healthy_target_ids(fleet_clients, tg) == set(live_fleet.instance_ids)


def test_retention_keeps_newest_disabled_groups(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    for number in (2, 3, 4):
        _swap(fleet_clients, demo_network, f"1.{number}.0", f"run-{number}", keep=2)

    groups = {g.name: g for g in find_server_groups(fleet_clients, APP, ENVIRONMENT)}
    assert sorted(groups) == ["shop-prod-v002", "shop-prod-v003", "shop-prod-v004"]
    assert groups["shop-prod-v004"].target_group_arns == [demo_network.target_group_arn]
    for kept in ("shop-prod-v002", "shop-prod-v003"):
        assert groups[kept].disabled and groups[kept].target_group_arns == []
        assert "AddToLoadBalancer" in groups[kept].suspended_processes
    assert _launch_templates(fleet_clients) == sorted(groups)

    # A kept group is re-enabled by attaching it (rollback), which lifts its disabled marks.
    enabled = attach_server_group(fleet_clients, "shop-prod-v003", [demo_network.target_group_arn])
    assert not enabled.disabled and "AddToLoadBalancer" not in enabled.suspended_processes
    # Retire never deletes an attached group, whatever `keep` says: it deletes the rest, then fails
    # naming the one left running (issue 10, point 7: not a warning).
    with pytest.raises(
        DeployError, match=r"shop-prod-v003: still attached to target group\(s\) shop-prod-live"
    ):
        retire_server_groups(
            fleet_clients, APP, ENVIRONMENT, 0, "shop-prod-v004", [demo_network.target_group_arn]
        )
    assert [g.name for g in find_server_groups(fleet_clients, APP, ENVIRONMENT)] == [
        "shop-prod-v003",
        "shop-prod-v004",
    ]


def _bake(clients: FleetClients, name: str) -> str:
    instance_id = clients.ec2.run_instances(ImageId=BASE_IMAGE, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    image_id = clients.ec2.create_image(
        InstanceId=instance_id,
        Name=name,
        TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": TAG_APP, "Value": APP}]}],
    )["ImageId"]
    clients.ec2.terminate_instances(InstanceIds=[instance_id])
    return str(image_id)


def test_image_retention_never_deletes_an_image_in_use(
    fleet_clients: FleetClients, demo_network: DemoEnvironment
) -> None:
    # Names break CreationDate ties (moto stamps with one-second resolution).
    oldest, middle, newer, newest = (_bake(fleet_clients, f"shop-2026-01-0{n}") for n in range(1, 5))
    snapshots = {
        i["ImageId"]: i["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        for i in fleet_clients.ec2.describe_images(ImageIds=[oldest, middle, newer, newest])["Images"]
    }
    group = launch_server_group(fleet_clients, _spec(demo_network, "0.9.0", "run-old", image_id=oldest))
    assert images_in_use(fleet_clients, APP) == {oldest: [group.name]}

    deleted = [delete_unused_images(fleet_clients, APP, keep=1) for _ in range(2)]

    assert sorted(deleted[0]) == sorted([middle, newer]) and deleted[1] == []
    remaining = {i["ImageId"] for i in fleet_clients.ec2.describe_images(Owners=["self"])["Images"]}
    assert remaining == {oldest, newest}
    left_snapshots = {
        s["SnapshotId"] for s in fleet_clients.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    }
    assert snapshots[middle] not in left_snapshots and snapshots[oldest] in left_snapshots


def test_restore_after_a_crash_reads_the_recorded_capacity(
    fleet_clients: FleetClients, demo_network: DemoEnvironment, live_fleet: ServerGroup
) -> None:
    group = launch_server_group(fleet_clients, _spec(demo_network, "1.1.0", "run-2"))
    tags = fleet_clients.autoscaling.describe_tags(
        Filters=[
            {"Name": "auto-scaling-group", "Values": [group.name]},
            {"Name": "key", "Values": [TAG_RESTORE_CAPACITY]},
        ]
    )["Tags"]
    assert [t["Value"] for t in tags] == ["2,6,3"]

    restored = restore_capacity(fleet_clients, group.name)

    assert restored.capacity == Capacity(2, 6, 3)
    raw = fleet_clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group.name])[
        "AutoScalingGroups"
    ][0]
    assert raw["NewInstancesProtectedFromScaleIn"] is False
    assert not any(i["ProtectedFromScaleIn"] for i in raw["Instances"])


def test_pin_records_the_original_size_once_and_scale_sets_it_exactly(
    fleet_clients: FleetClients, live_fleet: ServerGroup
) -> None:
    for _ in range(2):  # a retried pin must not record the pinned size as the original
        pinned = pin_capacity(fleet_clients, live_fleet.name, live_fleet.capacity)
    assert pinned.capacity == Capacity(3, 3, 3) and pinned.restore_capacity == LIVE_CAPACITY

    assert restore_capacity(fleet_clients, live_fleet.name).capacity == LIVE_CAPACITY
    scaled = scale_server_group(fleet_clients, live_fleet.name, Capacity(1, 5, 4))
    assert scaled.capacity == Capacity(1, 5, 4) and len(scaled.instance_ids) == 4
