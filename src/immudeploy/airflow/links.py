"""Operator extra links to the AWS console: Auto Scaling group, target group and image of a task's XCom."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

# XCom keys an operator pushes for its links (the bake operator pushes image_id and region too).
XCOM_REGION = "region"
XCOM_IMAGE_ID = "image_id"
XCOM_SERVER_GROUP_NAME = "server_group_name"
XCOM_TARGET_GROUP_ARN = "target_group_arn"

# The region becomes part of a host name: accept only what a region looks like.
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


def console_url(region: str, fragment: str) -> str:
    """An EC2 console page in a region ("" for a malformed region)."""
    if not _REGION_RE.fullmatch(region):
        return ""
    return f"https://{region}.console.aws.amazon.com/ec2/home?region={region}#{fragment}"


def image_console_url(region: str, image_id: str) -> str:
    return console_url(region, f"ImageDetails:imageId={quote(image_id, safe='')}")


def server_group_console_url(region: str, group_name: str) -> str:
    return console_url(region, f"AutoScalingGroupDetails:id={quote(group_name, safe='')};view=details")


def target_group_console_url(region: str, target_group_arn: str) -> str:
    return console_url(region, f"TargetGroup:targetGroupArn={quote(target_group_arn, safe=':/')}")


class _XComConsoleLink(BaseOperatorLink):
    """A console link built from two XCom values of the task: the region and one resource id."""

    name: ClassVar[str]
    value_key: ClassVar[str]

    def url(self, region: str, value: str) -> str:
        raise NotImplementedError

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # Airflow 3 calls this in the worker when the task finishes and stores the result as an
        # XCom; imported here so a DAG file that only names the link stays light.
        from airflow.sdk.execution_time.xcom import XCom

        region: Any = XCom.get_value(ti_key=ti_key, key=XCOM_REGION)
        value: Any = XCom.get_value(ti_key=ti_key, key=self.value_key)
        if not region or not value:
            return ""
        return self.url(str(region), str(value))


class ImageLink(_XComConsoleLink):
    """The baked AMI (XCom keys "image_id" and "region")."""

    name = "AWS Image"
    value_key = XCOM_IMAGE_ID

    def url(self, region: str, value: str) -> str:
        return image_console_url(region, value)


class ServerGroupLink(_XComConsoleLink):
    """The server group's Auto Scaling group (XCom keys "server_group_name" and "region")."""

    name = "Auto Scaling Group"
    value_key = XCOM_SERVER_GROUP_NAME

    def url(self, region: str, value: str) -> str:
        return server_group_console_url(region, value)


class TargetGroupLink(_XComConsoleLink):
    """The (first) target group the task worked on (XCom keys "target_group_arn" and "region")."""

    name = "Target Group"
    value_key = XCOM_TARGET_GROUP_ARN

    def url(self, region: str, value: str) -> str:
        return target_group_console_url(region, value)
