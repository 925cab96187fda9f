"""Auto Scaling as AWS times it: boot, asynchronous attach/detach, force delete, scale-in drains."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from immudeploy_dev.standin import ManualClock, StandIn

from .helpers import (
    DELAY,
    HEALTHY,
    INTERVAL,
    Clients,
    Network,
    group,
    lifecycle,
    make_clients,
    make_group,
    make_network,
    target_states,
)

BOOT = 60  # the stand-in's default, in AWS seconds
LB_SYNC = 2  # the stand-in's default attach/detach lag


def boot(aws: Clients, net: Network, clock: ManualClock, name: str = "web-v001", **kwargs: Any) -> list[str]:
    """A group whose instances are InService and healthy in the test target group."""
    make_group(aws, net, name, **kwargs)
    clock.advance(BOOT + INTERVAL * HEALTHY)
    states = lifecycle(aws, name)
    assert set(states.values()) == {"InService"}
    return sorted(states)


def test_instances_are_pending_until_boot_time_and_register_only_once_in_service(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    make_group(aws, net, capacity=2)
    states = lifecycle(aws, "web-v001")
    assert len(states) == 2 and set(states.values()) == {"Pending"}
    assert target_states(aws, net.target_group_arn) == {}
    clock.advance(BOOT - 0.01)
    assert set(lifecycle(aws, "web-v001").values()) == {"Pending"}
    clock.advance(0.01)
    assert set(lifecycle(aws, "web-v001").values()) == {"InService"}
    targets = target_states(aws, net.target_group_arn)
    assert targets == dict.fromkeys(states, ("initial", "Elb.RegistrationInProgress"))
    clock.advance(INTERVAL * HEALTHY)
    assert {s for s, _ in target_states(aws, net.target_group_arn).values()} == {"healthy"}


def test_pending_instances_count_toward_capacity(aws: Clients, net: Network) -> None:
    make_group(aws, net, capacity=2)
    aws.autoscaling.set_desired_capacity(AutoScalingGroupName="web-v001", DesiredCapacity=3)
    assert len(lifecycle(aws, "web-v001")) == 3


def test_detach_returns_at_once_then_targets_drain_then_are_gone(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    instances = boot(aws, net, clock)
    aws.autoscaling.detach_load_balancer_target_groups(
        AutoScalingGroupName="web-v001", TargetGroupARNs=[net.target_group_arn]
    )
    # Right after the call AWS has not started deregistering: the old targets still serve.
    assert target_states(aws, net.target_group_arn) == dict.fromkeys(instances, ("healthy", None))
    clock.advance(LB_SYNC)
    draining = ("draining", "Target.DeregistrationInProgress")
    assert target_states(aws, net.target_group_arn) == dict.fromkeys(instances, draining)
    clock.advance(DELAY * 0.1)
    assert target_states(aws, net.target_group_arn) == {}


def test_attach_returns_at_once_then_registers_in_service_instances(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    instances = boot(aws, net, clock, target_groups=[])
    aws.autoscaling.attach_load_balancer_target_groups(
        AutoScalingGroupName="web-v001", TargetGroupARNs=[net.target_group_arn]
    )
    assert target_states(aws, net.target_group_arn) == {}
    clock.advance(LB_SYNC)
    assert target_states(aws, net.target_group_arn) == dict.fromkeys(
        instances, ("initial", "Elb.RegistrationInProgress")
    )


def test_attach_of_an_unknown_target_group_fails_in_the_call(aws: Clients, net: Network) -> None:
    make_group(aws, net, target_groups=[])
    missing = net.target_group_arn.replace("web-tg", "nope-tg")
    with pytest.raises(ClientError) as error:
        aws.autoscaling.attach_load_balancer_target_groups(
            AutoScalingGroupName="web-v001", TargetGroupARNs=[missing]
        )
    assert error.value.response["Error"]["Code"] == "TargetGroupNotFound"


def test_force_delete_terminates_protected_instances_and_shows_delete_in_progress(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    instances = boot(aws, net, clock, protected=True)
    aws.autoscaling.delete_auto_scaling_group(AutoScalingGroupName="web-v001", ForceDelete=True)
    deleting = group(aws, "web-v001")
    assert deleting is not None and deleting["Status"] == "Delete in progress"
    reservations = aws.ec2.describe_instances(InstanceIds=instances)["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} == {"terminated"}
    draining = ("draining", "Target.DeregistrationInProgress")
    assert target_states(aws, net.target_group_arn) == dict.fromkeys(instances, draining)
    clock.advance(60)  # the default span of "Delete in progress"
    assert group(aws, "web-v001") is None
    assert target_states(aws, net.target_group_arn) == {}


def test_delete_without_force_is_refused_while_the_group_has_instances(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    boot(aws, net, clock)
    with pytest.raises(ClientError) as error:
        aws.autoscaling.delete_auto_scaling_group(AutoScalingGroupName="web-v001")
    assert error.value.response["Error"]["Code"] == "ResourceInUse"
    assert group(aws, "web-v001") is not None


def test_scale_in_terminates_and_the_terminated_targets_drain(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    instances = boot(aws, net, clock, capacity=2)
    aws.autoscaling.set_desired_capacity(AutoScalingGroupName="web-v001", DesiredCapacity=1)
    states = target_states(aws, net.target_group_arn)
    assert sorted(s for s, _ in states.values()) == ["draining", "healthy"]
    assert set(states) == set(instances)
    clock.advance(DELAY * 0.1)
    assert len(target_states(aws, net.target_group_arn)) == 1


def test_real_clock_boot_and_health_at_time_scale_0_05() -> None:
    """The wall-clock path: 20 s boot and 2 x 10 s checks at scale 0.05 take about 1 s each."""
    with StandIn(0.05, boot_seconds=20) as standin:
        standin.reset()
        aws = make_clients(standin.endpoint_url)
        net = make_network(aws, healthy=2)
        started = time.monotonic()
        make_group(aws, net, capacity=1)
        assert set(lifecycle(aws, "web-v001").values()) == {"Pending"}
        while set(lifecycle(aws, "web-v001").values()) != {"InService"}:
            time.sleep(0.05)
        in_service = time.monotonic() - started
        while {s for s, _ in target_states(aws, net.target_group_arn).values()} != {"healthy"}:
            time.sleep(0.05)
        healthy = time.monotonic() - started
        standin.reset()
    assert 0.9 <= in_service < 3.0
    assert in_service + 0.9 <= healthy < in_service + 3.0
