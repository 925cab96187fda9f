"""The DAGs' settings from the environment, default task arguments, and the trigger forms' params."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

from airflow.sdk import Param

from immudeploy.core.naming import (
    AMI_ID_PATTERN,
    APP_PATTERN,
    ENVIRONMENT_PATTERN,
    GIT_SHA_PATTERN,
    SERVER_GROUP_PATTERN,
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
    """Apps and environments of the (small, local) configuration file, for the trigger form's choices.

    Broken entries are offered too: their runs fail in `prepare` with the configuration's reason,
    which says more than the form's "not one of the choices".
    """
    from immudeploy.core.config import load_config

    targets = load_config().targets()
    apps = {app for app, _ in targets if re.fullmatch(APP_PATTERN, app)}
    environments = {env for _, env in targets if env and re.fullmatch(ENVIRONMENT_PATTERN, env)}
    return sorted(apps), sorted(environments)


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
        # Set by the nightly rebuild: what it saw live when it planned, checked again under the lock.
        "expect_live_version": Param(
            None,
            type=["null", "string"],
            pattern=VERSION_PATTERN,
            description="Deploy only if the live group still serves this version (else the run is skipped).",
        ),
        "expect_live_group": Param(
            None,
            type=["null", "string"],
            pattern=SERVER_GROUP_PATTERN,
            description="Deploy only if this server group is still the live one (else the run is skipped).",
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
            # A free string, not a choice list: params are built at parse time, and the record is in
            # AWS, which a DAG file must not read then. prepare checks it against the record.
            description="Version to roll back to, one the deploy record holds (`immudeploy-ci rollback "
            "--list` prints them, the rollback's prepare log shows them); empty means the release "
            "that served before the live one.",
        ),
    }
