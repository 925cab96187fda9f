"""AWS through the Airflow connection: clients that reach the connection's endpoint, and Packer's settings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import SECRET_KEY

from immudeploy.aws.connection import AwsClients, packer_aws_settings


def _connection(**extra: Any) -> str:
    return json.dumps({"conn_type": "aws", "login": "AKIDREAL", "password": "real-secret", "extra": extra})


def test_clients_reach_the_connections_endpoint(aws: Any) -> None:
    # Made through a plain client: seeing it proves the connection's clients talk to this server.
    vpc_id = aws.client("ec2").create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]

    clients = AwsClients()

    assert clients.ec2.meta.endpoint_url == aws.endpoint_url
    assert clients.ec2.meta.region_name == aws.region
    assert vpc_id in {v["VpcId"] for v in clients.ec2.describe_vpcs()["Vpcs"]}
    assert clients.ec2.describe_regions()["Regions"]


def test_every_service_uses_the_same_endpoint(aws: Any) -> None:
    clients = AwsClients()
    for client in (clients.ec2, clients.autoscaling, clients.elbv2, clients.ssm, clients.cloudwatch):
        assert client.meta.endpoint_url == aws.endpoint_url
        assert client.meta.region_name == aws.region
    assert clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert clients.elbv2.describe_load_balancers()["LoadBalancers"] == []
    clients.ssm.put_parameter(Name="/immutable/shop/prod/probe", Value="1", Type="String")
    assert aws.client("ssm").get_parameter(Name="/immutable/shop/prod/probe")["Parameter"]["Value"] == "1"


def test_clients_retry_throttling_in_standard_mode(aws: Any) -> None:
    retries = AwsClients().autoscaling.meta.config.retries
    assert retries["mode"] == "standard"
    assert retries["total_max_attempts"] == 11  # max_attempts 10 retries + the first call


def test_one_hook_and_one_session_serve_every_client(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    sessions: list[Any] = []
    original = AwsBaseHook.get_session

    def counting_get_session(self: AwsBaseHook, *args: Any, **kwargs: Any) -> Any:
        session = original(self, *args, **kwargs)
        sessions.append(session)
        return session

    monkeypatch.setattr(AwsBaseHook, "get_session", counting_get_session)
    clients = AwsClients()

    built = [clients.ec2, clients.autoscaling, clients.elbv2, clients.ssm, clients.cloudwatch]

    assert len(sessions) == 1
    # Each service client is built once and reused for the whole step.
    assert [clients.ec2, clients.autoscaling, clients.elbv2, clients.ssm, clients.cloudwatch] == built
    assert len({id(client) for client in built}) == 5


def test_a_region_given_in_code_wins_over_the_connections(aws: Any) -> None:
    clients = AwsClients(region_name="eu-west-1")
    assert clients.ec2.meta.region_name == "eu-west-1"
    assert clients.ec2.meta.endpoint_url == aws.endpoint_url


def test_a_named_connection_is_used(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_OTHER", _connection(region_name="ap-south-1", endpoint_url=aws.endpoint_url)
    )
    clients = AwsClients("aws_other")
    assert clients.ec2.meta.region_name == "ap-south-1"
    assert clients.ec2.meta.endpoint_url == aws.endpoint_url


def test_packer_gets_credentials_only_through_its_environment(aws: Any) -> None:
    settings = packer_aws_settings()

    assert settings.environment == {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": aws.region,
        "AWS_DEFAULT_REGION": aws.region,
        # moto has no instance metadata service: without this Packer waits on it.
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    # The template variables (they reach Packer's command line and log) carry no secret.
    assert settings.region == aws.region
    assert settings.ec2_endpoint == aws.endpoint_url
    for value in (settings.region, settings.ec2_endpoint):
        assert SECRET_KEY not in value and "testing" not in value


def test_packer_settings_for_real_aws_have_no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_REAL", _connection(region_name="eu-central-1"))

    settings = packer_aws_settings("aws_real")

    assert settings.ec2_endpoint == ""
    assert settings.region == "eu-central-1"
    assert settings.environment["AWS_ACCESS_KEY_ID"] == "AKIDREAL"
    assert settings.environment["AWS_SECRET_ACCESS_KEY"] == "real-secret"
    assert settings.environment["AWS_REGION"] == settings.environment["AWS_DEFAULT_REGION"] == "eu-central-1"
    # Real AWS builds may use the metadata service; only a stand-in turns it off.
    assert "AWS_EC2_METADATA_DISABLED" not in settings.environment
    assert "AWS_SESSION_TOKEN" not in settings.environment


def test_a_session_token_reaches_packer_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_TEMPORARY",
        _connection(region_name="us-west-2", aws_session_token="session-token-1"),
    )
    settings = packer_aws_settings("aws_temporary")
    assert settings.environment["AWS_SESSION_TOKEN"] == "session-token-1"
    assert "session-token-1" not in settings.region + settings.ec2_endpoint


def test_a_region_given_in_code_reaches_packer(aws: Any) -> None:
    settings = packer_aws_settings(region_name="eu-west-1")
    assert settings.region == "eu-west-1"
    assert settings.environment["AWS_REGION"] == "eu-west-1"
    assert settings.environment["AWS_DEFAULT_REGION"] == "eu-west-1"
