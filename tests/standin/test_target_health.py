"""Target health over time: initial -> healthy/unhealthy from the group's settings, draining, early drain end."""

from __future__ import annotations

import pytest

from immudeploy_dev.standin import ManualClock, StandIn

from .helpers import (
    BASE_IMAGE,
    DELAY,
    HEALTHY,
    INTERVAL,
    UNHEALTHY,
    Clients,
    Network,
    make_clients,
    make_network,
    target_states,
)

INITIAL = ("initial", "Elb.RegistrationInProgress")
HEALTHY_STATE = ("healthy", None)
UNHEALTHY_STATE = ("unhealthy", "Target.FailedHealthChecks")
DRAINING = ("draining", "Target.DeregistrationInProgress")
NOT_REGISTERED = ("unused", "Target.NotRegistered")


def run_instance(aws: Clients, net: Network, image_id: str = BASE_IMAGE) -> str:
    return aws.ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, SubnetId=net.subnet_ids[0])[
        "Instances"
    ][0]["InstanceId"]


def register(aws: Clients, net: Network, *instance_ids: str) -> None:
    aws.elbv2.register_targets(TargetGroupArn=net.target_group_arn, Targets=[{"Id": i} for i in instance_ids])


def test_new_target_is_initial_until_interval_times_healthy_threshold(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    instance = run_instance(aws, net)
    register(aws, net, instance)
    assert target_states(aws, net.target_group_arn) == {instance: INITIAL}
    clock.advance(INTERVAL * HEALTHY - 0.01)
    assert target_states(aws, net.target_group_arn) == {instance: INITIAL}
    clock.advance(0.01)
    assert target_states(aws, net.target_group_arn) == {instance: HEALTHY_STATE}


def test_timing_follows_each_target_groups_own_settings(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    other = make_network(aws, "api", interval=30, healthy=5)
    instance = run_instance(aws, net)
    register(aws, net, instance)
    aws.elbv2.register_targets(TargetGroupArn=other.target_group_arn, Targets=[{"Id": instance}])
    clock.advance(INTERVAL * HEALTHY)
    assert target_states(aws, net.target_group_arn)[instance] == HEALTHY_STATE
    assert target_states(aws, other.target_group_arn)[instance] == INITIAL
    clock.advance(30 * 5 - INTERVAL * HEALTHY)
    assert target_states(aws, other.target_group_arn)[instance] == HEALTHY_STATE


def test_time_scale_multiplies_every_duration() -> None:
    clock = ManualClock()
    with StandIn(0.05, clock=clock) as standin:
        standin.reset()
        aws = make_clients(standin.endpoint_url)
        net = make_network(aws)
        instance = run_instance(aws, net)
        register(aws, net, instance)
        clock.advance(INTERVAL * HEALTHY * 0.05 - 0.01)
        assert target_states(aws, net.target_group_arn)[instance] == INITIAL
        clock.advance(0.01)
        assert target_states(aws, net.target_group_arn)[instance] == HEALTHY_STATE
        standin.reset()


def test_image_tagged_broken_goes_unhealthy_after_unhealthy_threshold(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    builder = run_instance(aws, net)
    broken_image = aws.ec2.create_image(InstanceId=builder, Name="web-2.0.0")["ImageId"]
    aws.ec2.create_tags(Resources=[broken_image], Tags=[{"Key": "standin:health", "Value": "broken"}])
    good, bad = run_instance(aws, net), run_instance(aws, net, broken_image)
    register(aws, net, good, bad)
    clock.advance(INTERVAL * UNHEALTHY - 0.01)
    assert target_states(aws, net.target_group_arn) == {good: INITIAL, bad: INITIAL}
    clock.advance(0.01)
    assert target_states(aws, net.target_group_arn) == {good: INITIAL, bad: UNHEALTHY_STATE}
    clock.advance(INTERVAL * HEALTHY)
    assert target_states(aws, net.target_group_arn) == {good: HEALTHY_STATE, bad: UNHEALTHY_STATE}


def test_image_listed_broken_in_the_settings_goes_unhealthy(
    standin: StandIn, aws: Clients, net: Network, clock: ManualClock
) -> None:
    builder = run_instance(aws, net)
    image = aws.ec2.create_image(InstanceId=builder, Name="web-2.0.1")["ImageId"]
    standin.mark_image_broken(image)
    instance = run_instance(aws, net, image)
    register(aws, net, instance)
    clock.advance(INTERVAL * UNHEALTHY)
    assert target_states(aws, net.target_group_arn)[instance] == UNHEALTHY_STATE


def test_deregistered_target_drains_for_the_default_fraction_of_the_delay_then_is_gone(
    aws: Clients, net: Network, clock: ManualClock
) -> None:
    instance = run_instance(aws, net)
    register(aws, net, instance)
    clock.advance(INTERVAL * HEALTHY)
    aws.elbv2.deregister_targets(TargetGroupArn=net.target_group_arn, Targets=[{"Id": instance}])
    assert target_states(aws, net.target_group_arn) == {instance: DRAINING}
    clock.advance(DELAY * 0.1 - 0.01)
    assert target_states(aws, net.target_group_arn) == {instance: DRAINING}
    clock.advance(0.01)
    assert target_states(aws, net.target_group_arn) == {}
    asked = target_states(aws, net.target_group_arn, Targets=[{"Id": instance}])
    assert asked == {instance: NOT_REGISTERED}


def test_drain_fraction_per_target_group_up_to_the_full_delay(
    standin: StandIn, aws: Clients, net: Network, clock: ManualClock
) -> None:
    standin.set_target_group(net.target_group_arn, drain_fraction=1.0)
    instance = run_instance(aws, net)
    register(aws, net, instance)
    aws.elbv2.deregister_targets(TargetGroupArn=net.target_group_arn, Targets=[{"Id": instance}])
    clock.advance(DELAY - 0.01)
    assert target_states(aws, net.target_group_arn) == {instance: DRAINING}
    clock.advance(0.01)
    assert target_states(aws, net.target_group_arn) == {}


def test_connections_closed_ends_the_drain_at_once(
    standin: StandIn, aws: Clients, net: Network, clock: ManualClock
) -> None:
    standin.configure(drain_fraction=1.0)
    first, second = run_instance(aws, net), run_instance(aws, net)
    register(aws, net, first, second)
    aws.elbv2.deregister_targets(TargetGroupArn=net.target_group_arn, Targets=[{"Id": first}, {"Id": second}])
    clock.advance(1)
    assert standin.set_connections_closed(first) == 1
    assert target_states(aws, net.target_group_arn) == {second: DRAINING}


def test_connections_closed_before_the_deregistration_makes_the_drain_instant(
    standin: StandIn, aws: Clients, net: Network
) -> None:
    instance = run_instance(aws, net)
    register(aws, net, instance)
    assert standin.set_connections_closed(instance) == 0
    aws.elbv2.deregister_targets(TargetGroupArn=net.target_group_arn, Targets=[{"Id": instance}])
    assert target_states(aws, net.target_group_arn) == {}


def test_terminated_instance_drains_then_is_gone(aws: Clients, net: Network, clock: ManualClock) -> None:
    instance = run_instance(aws, net)
    register(aws, net, instance)
    aws.ec2.terminate_instances(InstanceIds=[instance])
    assert target_states(aws, net.target_group_arn) == {instance: DRAINING}
    clock.advance(DELAY * 0.1)
    assert target_states(aws, net.target_group_arn) == {}


@pytest.mark.parametrize("fraction", [-0.5])
def test_bad_settings_are_refused(standin: StandIn, fraction: float) -> None:
    with pytest.raises(ValueError, match="drain_fraction"):
        standin.configure(drain_fraction=fraction)
    with pytest.raises(ValueError, match="unknown"):
        standin.configure(drain_seconds=3)
