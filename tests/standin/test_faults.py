"""Faults on demand: throttling and 5xx with AWS's codes, latency, time bounds, and an outage of the port."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from immudeploy_dev.standin import StandIn

from .helpers import Clients, make_clients


def error_of(call: Callable[[], Any]) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def calls(aws: Clients) -> dict[str, Callable[[], Any]]:
    """One cheap read per service, keyed by the service name the fault names."""
    return {
        "ec2": aws.ec2.describe_vpcs,
        "autoscaling": aws.autoscaling.describe_auto_scaling_groups,
        "elasticloadbalancing": aws.elbv2.describe_target_groups,
        "ssm": aws.ssm.describe_parameters,
    }


# Codes and statuses botocore's _retry.json expects from each service when it throttles.
@pytest.mark.parametrize(
    ("service", "operation", "code", "status"),
    [
        ("ec2", "DescribeVpcs", "RequestLimitExceeded", 503),
        ("autoscaling", "DescribeAutoScalingGroups", "Throttling", 400),
        ("elasticloadbalancing", "DescribeTargetGroups", "Throttling", 400),
        ("ssm", "DescribeParameters", "ThrottlingException", 400),
    ],
)
def test_throttling_n_times_then_ok(
    standin: StandIn, aws: Clients, service: str, operation: str, code: str, status: int
) -> None:
    call = calls(aws)[service]
    with standin.inject(service, operation, "throttle", count=2):
        assert error_of(call) == (code, status)
        assert error_of(call) == (code, status)
        call()
        # Only the named operation of the named service is hit.
        for other, other_call in calls(aws).items():
            if other != service:
                other_call()
    assert [(i.service, i.operation, i.kind, i.code, i.status) for i in standin.injections] == [
        (service, operation, "throttle", code, status)
    ] * 2


def test_boto3_client_name_elbv2_is_an_alias(standin: StandIn, aws: Clients) -> None:
    with standin.inject("elbv2", "DescribeTargetGroups", count=1):
        assert error_of(aws.elbv2.describe_target_groups) == ("Throttling", 400)


@pytest.mark.parametrize(
    ("service", "status", "code"),
    [
        ("autoscaling", 500, "InternalFailure"),
        ("elasticloadbalancing", 503, "ServiceUnavailable"),
        ("ec2", 500, "InternalError"),
        ("ec2", 503, "Unavailable"),
        ("ssm", 500, "InternalServerError"),
    ],
)
def test_5xx_burst(standin: StandIn, aws: Clients, service: str, status: int, code: str) -> None:
    call = calls(aws)[service]
    with standin.inject(service, "*", "error", status=status, count=3):
        for _ in range(3):
            assert error_of(call) == (code, status)
        call()


def test_botocore_retries_ride_out_a_short_burst(standin: StandIn) -> None:
    """botocore's standard retry mode treats the injected errors as retryable, as it would AWS's."""
    aws = make_clients(standin.endpoint_url, retries={"mode": "standard", "total_max_attempts": 4})
    with (
        standin.inject("autoscaling", "DescribeAutoScalingGroups", "throttle", count=1),
        standin.inject("autoscaling", "DescribeAutoScalingGroups", "error", status=503, count=1),
    ):
        aws.autoscaling.describe_auto_scaling_groups()
    assert sorted(i.kind for i in standin.injections) == ["error", "throttle"]


@pytest.mark.parametrize(
    ("service", "code", "status"),
    [
        ("ec2", "UnauthorizedOperation", 403),
        ("autoscaling", "AccessDenied", 403),
        ("elasticloadbalancing", "AccessDenied", 403),
        ("ssm", "AccessDeniedException", 400),
    ],
)
def test_a_denied_call_fails_as_iam_refuses_it_and_is_not_retried(
    standin: StandIn, service: str, code: str, status: int
) -> None:
    """A permission the role lacks: AWS's code for the protocol; botocore gives up at the first answer."""
    aws = make_clients(standin.endpoint_url, retries={"mode": "standard", "total_max_attempts": 5})
    with standin.inject(service, "*", "denied"):
        assert error_of(calls(aws)[service]) == (code, status)
    assert len(standin.injections) == 1


def test_fault_bounded_in_time(standin: StandIn, aws: Clients) -> None:
    standin.inject("ec2", "DescribeVpcs", seconds=0.3)
    assert error_of(aws.ec2.describe_vpcs)[0] == "RequestLimitExceeded"
    time.sleep(0.35)
    aws.ec2.describe_vpcs()


def test_leaving_the_with_switches_the_fault_off(standin: StandIn, aws: Clients) -> None:
    with standin.inject("ec2", "*"):
        assert error_of(aws.ec2.describe_vpcs)[0] == "RequestLimitExceeded"
        assert error_of(aws.ec2.describe_subnets)[0] == "RequestLimitExceeded"
    aws.ec2.describe_vpcs()


def test_added_latency(standin: StandIn, aws: Clients) -> None:
    with standin.inject("ec2", "DescribeVpcs", "latency", delay=0.5, count=1):
        started = time.monotonic()
        aws.ec2.describe_vpcs()
        slow = time.monotonic() - started
        started = time.monotonic()
        aws.ec2.describe_vpcs()
        fast = time.monotonic() - started
    assert slow >= 0.5 > fast
    assert [(i.kind, i.delay) for i in standin.injections] == [("latency", 0.5)]


def test_bad_fault_parameters_are_refused(standin: StandIn) -> None:
    with pytest.raises(ValueError, match="kind"):
        standin.inject("ec2", kind="explode")
    with pytest.raises(ValueError, match="5xx"):
        standin.inject("ec2", kind="error", status=404)
    with pytest.raises(ValueError, match="delay"):
        standin.inject("ec2", kind="latency")


def test_outage_refuses_connections_then_recovers_on_the_same_port(standin: StandIn, aws: Clients) -> None:
    port = standin.port
    aws.ec2.describe_vpcs()  # a pooled keep-alive connection the outage must cut too
    outage = standin.outage(1.0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(EndpointConnectionError):
        aws.ec2.describe_vpcs()
    assert outage.wait(5)
    assert standin.port == port
    aws.ec2.describe_vpcs()
    assert [i.kind for i in standin.injections] == ["outage"]
