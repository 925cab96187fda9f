"""The DAGs' settings from the environment, default task arguments, and the trigger forms' params."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Param

from immudeploy.core.naming import (
    AMI_ID_PATTERN,
    APP_PATTERN,
    ENVIRONMENT_PATTERN,
    GIT_SHA_PATTERN,
    VERSION_PATTERN,
)

AWS_CONN_ID = os.environ.get("IMMUDEPLOY_AWS_CONN_ID", "aws_default")
POLL_SECONDS = float(os.environ.get("IMMUDEPLOY_POLL_SECONDS", "10"))

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "platform",
    "retries": int(os.environ.get("IMMUDEPLOY_RETRIES", "2")),
    "retry_delay": timedelta(seconds=float(os.environ.get("IMMUDEPLOY_RETRY_DELAY_SECONDS", "30"))),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}


def _configured_choices() -> tuple[list[str], list[str]]:
    """Apps and environments of the (small, local) configuration file, for the trigger form's choices."""
    from immudeploy.core.config import load_config

    targets = load_config().environments
    return sorted({app for app, _ in targets}), sorted({env for _, env in targets})


def deploy_params() -> dict[str, Param]:
    apps, environments = _configured_choices()
    return {
        "app": Param(
            type="string",
            pattern=APP_PATTERN,
            enum=apps,
            description="App to deploy, as named in the configuration file.",
        ),
        "environment": Param(
            type="string",
            pattern=ENVIRONMENT_PATTERN,
            enum=environments,
            description="Environment to deploy to, e.g. prod.",
        ),
        "version": Param(
            type="string",
            pattern=VERSION_PATTERN,
            description="Release version to bake and deploy, e.g. 1.4.2.",
        ),
        "ami_id": Param(
            None,
            type=["null", "string"],
            pattern=AMI_ID_PATTERN,
            description="Deploy this already-baked image instead of baking (Packer does not run).",
        ),
        "git_sha": Param(
            None,
            type=["null", "string"],
            pattern=GIT_SHA_PATTERN,
            description="Commit the release was built from.",
        ),
    }


def rollback_params() -> dict[str, Param]:
    chosen = deploy_params()
    return {
        "app": chosen["app"],
        "environment": chosen["environment"],
        "to_version": Param(
            None,
            type=["null", "string"],
            pattern=VERSION_PATTERN,
            description="Version to roll back to; empty means the newest version before the live one.",
        ),
    }
