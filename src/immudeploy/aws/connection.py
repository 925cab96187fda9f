"""AWS access through an Airflow connection: boto3 clients for the domain code and Packer's environment."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from botocore.config import Config

DEFAULT_CONN_ID = "aws_default"

# Large fleets make many describe calls; the standard retry mode backs off on throttling errors.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 10})


def aws_hook(client_type: str, aws_conn_id: str = DEFAULT_CONN_ID, region_name: str | None = None) -> Any:
    """An AwsBaseHook for one service; imported lazily so DAG files parse without the provider's weight."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(
        aws_conn_id=aws_conn_id, client_type=client_type, region_name=region_name, config=RETRY_CONFIG
    )


class AwsApi(Protocol):
    """What the AWS-layer functions need: boto3 clients (AwsClients, or plain clients in tests)."""

    @property
    def ec2(self) -> Any: ...

    @property
    def autoscaling(self) -> Any: ...

    @property
    def elbv2(self) -> Any: ...

    @property
    def ssm(self) -> Any: ...


@dataclass
class AwsClients:
    """The boto3 clients one deployment step needs, all built from the same Airflow connection.

    One hook and one boto3 session serve every service: building a hook per client costs a
    connection lookup and a session each time, which adds up over a run's few dozen tasks.
    """

    aws_conn_id: str = DEFAULT_CONN_ID
    region_name: str | None = None

    @cached_property
    def _hook(self) -> Any:
        return aws_hook("ec2", self.aws_conn_id, self.region_name)

    @cached_property
    def _session(self) -> Any:
        return self._hook.get_session(region_name=self.region_name)

    def client(self, service: str) -> Any:
        hook = self._hook
        return self._session.client(
            service_name=service,
            endpoint_url=hook.conn_config.get_service_endpoint_url(service_name=service),
            config=hook._get_config(RETRY_CONFIG),
            verify=hook.verify,
        )

    @cached_property
    def ec2(self) -> Any:
        return self.client("ec2")

    @cached_property
    def autoscaling(self) -> Any:
        return self.client("autoscaling")

    @cached_property
    def elbv2(self) -> Any:
        return self.client("elbv2")

    @cached_property
    def ssm(self) -> Any:
        return self.client("ssm")

    @cached_property
    def cloudwatch(self) -> Any:
        return self.client("cloudwatch")

    @cached_property
    def dynamodb(self) -> Any:
        """The deployment lock's table (immudeploy.aws.lock)."""
        return self.client("dynamodb")


@dataclass(frozen=True)
class PackerAwsSettings:
    """What Packer needs from the connection: secrets go in `environment`, the rest are template vars."""

    environment: dict[str, str]
    region: str
    ec2_endpoint: str


def packer_aws_settings(
    aws_conn_id: str = DEFAULT_CONN_ID, region_name: str | None = None
) -> PackerAwsSettings:
    """Credentials reach Packer only through its environment, never its command line or the log."""
    hook = aws_hook("ec2", aws_conn_id, region_name)
    credentials = hook.get_credentials()
    region = hook.region_name or hook.conn_config.region_name or "us-east-1"
    env = {
        "AWS_ACCESS_KEY_ID": credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }
    if credentials.token:
        env["AWS_SESSION_TOKEN"] = credentials.token
    endpoint = hook.conn_config.get_service_endpoint_url("ec2") or ""
    if endpoint:
        # A local stand-in has no instance metadata service; without this Packer waits on it.
        env["AWS_EC2_METADATA_DISABLED"] = "true"
    return PackerAwsSettings(environment=env, region=region, ec2_endpoint=endpoint)
