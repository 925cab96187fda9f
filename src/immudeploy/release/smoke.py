"""Smoke test of a staging fleet: every instance exists, runs, and is healthy in the staging target group.

Run as `python -m immudeploy.release.smoke` with the IMMUTABLE_STAGING_* variables that immudeploy.release.staging sets;
boto3 takes credentials, region and AWS_ENDPOINT_URL from the environment. Exit 0 when all checks pass.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from immudeploy.aws.target_health import unhealthy_targets
from immudeploy.core.naming import TAG_VERSION, from_aws_tags
from immudeploy.release.staging import ENV_INSTANCE_IDS, ENV_TARGET_GROUP_ARN, ENV_VERSION


class SmokeFailure(Exception):
    """A check failed; the message says which instances and why."""


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SmokeFailure(f"{name} is not set")
    return value


def check_instances(ec2: Any, instance_ids: Sequence[str], version: str) -> list[str]:
    """Every instance exists and is running; one that carries a version tag carries this release's."""
    # A filter, not InstanceIds=: one missing id would otherwise fail the call without naming the rest.
    found: dict[str, dict[str, Any]] = {}
    paginator = ec2.get_paginator("describe_instances")
    for page in paginator.paginate(Filters=[{"Name": "instance-id", "Values": list(instance_ids)}]):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                found[instance["InstanceId"]] = instance
    problems = [f"{i} does not exist" for i in instance_ids if i not in found]
    for instance_id in instance_ids:
        instance = found.get(instance_id)
        if instance is None:
            continue
        state = instance["State"]["Name"]
        if state != "running":
            problems.append(f"{instance_id} is {state}, not running")
        tagged = from_aws_tags(instance.get("Tags")).get(TAG_VERSION)
        if tagged is not None and tagged != version:
            problems.append(f"{instance_id} runs version {tagged}, not {version}")
    if problems:
        raise SmokeFailure("; ".join(problems))
    return [f"{len(instance_ids)} instances exist and are running"]


def check_target_health(elbv2: Any, target_group_arn: str, instance_ids: Sequence[str]) -> list[str]:
    """Every instance is registered and `healthy` in the staging target group (on every port it uses)."""
    problems = unhealthy_targets(elbv2, [target_group_arn], instance_ids)
    if problems:
        raise SmokeFailure("staging target group: " + "; ".join(problems))
    return [f"{len(instance_ids)} instances are healthy in {target_group_arn}"]


def run(env: Mapping[str, str], ec2: Any = None, elbv2: Any = None) -> list[str]:
    """All checks; returns what was checked, raises SmokeFailure at the first failing check."""
    instance_ids = [i.strip() for i in _required(env, ENV_INSTANCE_IDS).split(",") if i.strip()]
    target_group_arn = _required(env, ENV_TARGET_GROUP_ARN)
    version = _required(env, ENV_VERSION)
    ec2 = ec2 or boto3.client("ec2")
    elbv2 = elbv2 or boto3.client("elbv2")
    checked = check_instances(ec2, instance_ids, version)
    checked += check_target_health(elbv2, target_group_arn, instance_ids)
    return checked


def main() -> int:
    try:
        checked = run(os.environ)
    except (SmokeFailure, ClientError, BotoCoreError) as failure:
        print(f"SMOKE TEST FAILED: {failure}", file=sys.stderr)
        return 1
    for line in checked:
        print(f"ok: {line}")
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
