"""Thin Airflow operators around immudeploy.server_groups: launch, attach, detach, restore, retire."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from immudeploy.aws import DEFAULT_CONN_ID
from immudeploy.links import (
    XCOM_IMAGE_ID,
    XCOM_REGION,
    XCOM_SERVER_GROUP_NAME,
    XCOM_TARGET_GROUP_ARN,
    ImageLink,
    ServerGroupLink,
    TargetGroupLink,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from immudeploy.aws import AwsClients
    from immudeploy.server_groups import Capacity

# XCom key of LaunchServerGroupOperator: the group that was live when the new one was launched.
XCOM_PREVIOUS_SERVER_GROUP = "previous_server_group"
# What an unset group name renders to without render_template_as_native_obj.
_ABSENT = ("", "None")


def _capacity(value: Any) -> Capacity | None:
    """A Capacity from a dict (or its JSON, as a template renders it); None when unset."""
    from immudeploy.server_groups import Capacity

    if value in (None, *_ABSENT):
        return None
    if isinstance(value, str):
        value = json.loads(value)
    return Capacity.from_xcom(value)


def _as_list(value: Any) -> list[str]:
    """A list of strings, from a list or the JSON a template renders."""
    if isinstance(value, str):
        value = json.loads(value) if value.startswith("[") else [value]
    return [str(item) for item in value or []]


class _ServerGroupOperator(BaseOperator):
    """Connection handling and link values shared by the server group operators."""

    def __init__(self, *, aws_conn_id: str = DEFAULT_CONN_ID, region_name: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    def _clients(self) -> AwsClients:
        from immudeploy.aws import AwsClients

        return AwsClients(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    def _push_link_values(self, context: Context, clients: AwsClients, **values: str | None) -> None:
        ti = context["ti"]
        ti.xcom_push(key=XCOM_REGION, value=clients.autoscaling.meta.region_name)
        for key, value in values.items():
            if value:
                ti.xcom_push(key=key, value=value)


class LaunchServerGroupOperator(_ServerGroupOperator):
    """Launch the next server group of a release, sized like the live group (pinned until restored).

    Returns the new group's ServerGroup.to_xcom(); pushes the live group (or None on a first
    deploy) as XCom "previous_server_group". Safe to retry: the deploy id finds the first attempt's group.

    :param target_group_arns: the live target groups, used to find the live group; the new group
        is NOT attached here (AttachServerGroupOperator does that after staging).
    :param capacity: {"min", "max", "desired"}; default: the live group's, else `default_capacity`.
    """

    template_fields: Sequence[str] = (
        "app",
        "environment",
        "version",
        "image_id",
        "deploy_id",
        "instance_type",
        "subnet_ids",
        "security_group_ids",
        "target_group_arns",
        "ssm_config_path",
        "cache_key_prefix",
        "capacity",
        "default_capacity",
        "iam_instance_profile",
        "tags",
    )
    operator_extra_links = (ServerGroupLink(), ImageLink())

    def __init__(
        self,
        *,
        app: str,
        environment: str,
        version: str,
        image_id: str,
        instance_type: str,
        subnet_ids: list[str] | str,
        security_group_ids: list[str] | str,
        target_group_arns: list[str] | str,
        ssm_config_path: str,
        cache_key_prefix: str,
        deploy_id: str = "{{ dag.dag_id }}/{{ run_id }}",
        capacity: dict[str, int] | str | None = None,
        default_capacity: dict[str, int] | str | None = None,
        health_check_grace_period: int = 0,
        iam_instance_profile: str | None = None,
        tags: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.environment = environment
        self.version = version
        self.image_id = image_id
        self.instance_type = instance_type
        self.subnet_ids = subnet_ids
        self.security_group_ids = security_group_ids
        self.target_group_arns = target_group_arns
        self.ssm_config_path = ssm_config_path
        self.cache_key_prefix = cache_key_prefix
        self.deploy_id = deploy_id
        self.capacity = capacity
        self.default_capacity = default_capacity
        self.health_check_grace_period = health_check_grace_period
        self.iam_instance_profile = iam_instance_profile
        self.tags = tags

    def execute(self, context: Context) -> dict[str, Any]:
        from immudeploy.errors import InvalidInput
        from immudeploy.server_groups import LaunchSpec, launch_server_group, live_server_group

        clients = self._clients()
        target_group_arns = _as_list(self.target_group_arns)
        live = live_server_group(clients, self.app, self.environment, target_group_arns)
        capacity = _capacity(self.capacity) or (live.capacity if live else _capacity(self.default_capacity))
        if capacity is None:
            raise InvalidInput(
                "default_capacity", "first deploy (no live group): give capacity or default_capacity"
            )
        self.log.info(
            "Live group: %s; launching %s with %d instances",
            live.name if live else "none (first deploy)",
            self.version,
            capacity.desired,
        )
        spec = LaunchSpec(
            app=self.app,
            environment=self.environment,
            version=self.version,
            image_id=self.image_id,
            deploy_id=self.deploy_id,
            instance_type=self.instance_type,
            subnet_ids=_as_list(self.subnet_ids),
            security_group_ids=_as_list(self.security_group_ids),
            target_group_arns=[],
            capacity=capacity,
            ssm_config_path=self.ssm_config_path,
            cache_key_prefix=self.cache_key_prefix,
            health_check_grace_period=self.health_check_grace_period,
            iam_instance_profile=self.iam_instance_profile or None,
            tags=dict(self.tags or {}),
        )
        group = launch_server_group(clients, spec)
        # On a re-run after the swap the "live" group is the one this run launched: no predecessor.
        previous = live if live is not None and live.name != group.name else None
        context["ti"].xcom_push(
            key=XCOM_PREVIOUS_SERVER_GROUP, value=previous.to_xcom() if previous else None
        )
        self._push_link_values(
            context, clients, **{XCOM_SERVER_GROUP_NAME: group.name, XCOM_IMAGE_ID: group.image_id}
        )
        return group.to_xcom()


class AttachServerGroupOperator(_ServerGroupOperator):
    """Attach a server group to target groups (re-enabling it if disabled). Returns its to_xcom()."""

    template_fields: Sequence[str] = ("group_name", "target_group_arns")
    operator_extra_links = (ServerGroupLink(), TargetGroupLink())

    def __init__(self, *, group_name: str, target_group_arns: list[str] | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group_name = group_name
        self.target_group_arns = target_group_arns

    def execute(self, context: Context) -> dict[str, Any]:
        from immudeploy.server_groups import attach_server_group

        clients = self._clients()
        target_group_arns = _as_list(self.target_group_arns)
        group = attach_server_group(clients, self.group_name, target_group_arns)
        self._push_link_values(
            context,
            clients,
            **{XCOM_SERVER_GROUP_NAME: group.name, XCOM_TARGET_GROUP_ARN: target_group_arns[0]},
        )
        return group.to_xcom()


class DetachServerGroupOperator(_ServerGroupOperator):
    """Detach a server group behind the traffic guard and mark it disabled.

    An empty group name (a first deploy has no previous group) is nothing to do: returns None.
    """

    template_fields: Sequence[str] = ("group_name", "target_group_arns")
    operator_extra_links = (ServerGroupLink(), TargetGroupLink())

    def __init__(
        self,
        *,
        group_name: str | None,
        target_group_arns: list[str] | str,
        force: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.group_name = group_name
        self.target_group_arns = target_group_arns
        self.force = force

    def execute(self, context: Context) -> dict[str, Any] | None:
        from immudeploy.server_groups import detach_server_group

        if self.group_name in (None, *_ABSENT):
            self.log.info("No server group to detach (first deploy)")
            return None
        clients = self._clients()
        target_group_arns = _as_list(self.target_group_arns)
        group = detach_server_group(clients, str(self.group_name), target_group_arns, force=self.force)
        self._push_link_values(
            context,
            clients,
            **{XCOM_SERVER_GROUP_NAME: str(self.group_name), XCOM_TARGET_GROUP_ARN: target_group_arns[0]},
        )
        return group.to_xcom() if group else None


class RestoreCapacityOperator(_ServerGroupOperator):
    """End a group's swap: min/max from `capacity` or the group's restore tag; resume processes."""

    template_fields: Sequence[str] = ("group_name", "capacity")
    operator_extra_links = (ServerGroupLink(),)

    def __init__(
        self, *, group_name: str, capacity: dict[str, int] | str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.group_name = group_name
        self.capacity = capacity

    def execute(self, context: Context) -> dict[str, Any]:
        from immudeploy.server_groups import restore_capacity

        clients = self._clients()
        group = restore_capacity(clients, self.group_name, _capacity(self.capacity))
        self._push_link_values(context, clients, **{XCOM_SERVER_GROUP_NAME: group.name})
        return group.to_xcom()


class RetireServerGroupsOperator(_ServerGroupOperator):
    """Delete old server groups beyond the newest `keep` disabled ones, then unused images.

    Returns {"deleted_server_groups": [...], "deleted_images": [...]}; `keep_images=None` skips images.
    """

    template_fields: Sequence[str] = ("app", "environment", "current_group_name", "target_group_arns")

    def __init__(
        self,
        *,
        app: str,
        environment: str,
        current_group_name: str,
        target_group_arns: list[str] | str,
        keep: int = 1,
        keep_images: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.environment = environment
        self.current_group_name = current_group_name
        self.target_group_arns = target_group_arns
        self.keep = keep
        self.keep_images = keep_images

    def execute(self, context: Context) -> dict[str, list[str]]:
        from immudeploy.server_groups import delete_unused_images, retire_server_groups

        clients = self._clients()
        deleted_groups = retire_server_groups(
            clients,
            self.app,
            self.environment,
            self.keep,
            self.current_group_name,
            _as_list(self.target_group_arns),
        )
        deleted_images: list[str] = []
        if self.keep_images is not None:
            deleted_images = delete_unused_images(clients, self.app, self.keep_images)
        self.log.info(
            "Retired server groups %s, images %s", deleted_groups or "none", deleted_images or "none"
        )
        return {"deleted_server_groups": deleted_groups, "deleted_images": deleted_images}
