"""The layer's moto patches are process-wide: a plain moto server beside a StandIn must stay plain moto."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

from immudeploy_dev.standin import StandIn

from .helpers import Clients, lifecycle, make_clients, make_group, make_network, target_states


@pytest.fixture
def plain(standin: StandIn) -> Iterator[Clients]:
    """A plain ThreadedMotoServer started while a StandIn runs (so the patches are installed)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield make_clients(f"http://{host}:{port}")
    finally:
        server.stop()


def test_plain_moto_server_keeps_moto_behaviour(plain: Clients) -> None:
    net = make_network(plain, "plain")
    make_group(plain, net, "plain-v001", capacity=2, protected=True)
    states = lifecycle(plain, "plain-v001")
    assert set(states.values()) == {"InService"}
    assert target_states(plain, net.target_group_arn) == dict.fromkeys(states, ("healthy", None))
    plain.autoscaling.detach_load_balancer_target_groups(
        AutoScalingGroupName="plain-v001", TargetGroupARNs=[net.target_group_arn]
    )
    assert target_states(plain, net.target_group_arn) == {}
    # moto's leniency, kept: no ForceDelete needed, and protected instances survive their group.
    plain.autoscaling.delete_auto_scaling_group(AutoScalingGroupName="plain-v001")
    assert lifecycle(plain, "plain-v001") == {}
    reservations = plain.ec2.describe_instances(InstanceIds=list(states))["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} == {"running"}
