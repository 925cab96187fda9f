"""The nightly rebuild: which opted-in targets are due, each at its live version."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from immudeploy.aws.groups.inventory import live_server_group
from immudeploy.aws.network import resolve_environment
from immudeploy.core.config import DeploymentConfig

log = logging.getLogger(__name__)


def nightly_targets(
    clients: Any, config: DeploymentConfig, due_at: datetime | None, only: list[str] | None = None
) -> list[dict[str, str]]:
    """The deploy confs of tonight's rebuilds: opted-in targets whose schedule is due, at their live version.

    `due_at` None (a manual run) takes every opted-in target; `only` narrows to "app/environment" names.
    A target with no live group has nothing to rebuild and is left out with a log line.
    """
    from croniter import croniter

    confs = []
    for env in config.nightly_targets():
        if only is not None and env.target not in only:
            continue
        if due_at is not None and not croniter.match(env.nightly_schedule, due_at):
            continue
        resolved = resolve_environment(clients.ec2, clients.elbv2, env)
        live = live_server_group(clients, env.app, env.environment, resolved.target_group_arns)
        if live is None or not live.version:
            log.info("%s has no live group: nothing to rebuild", env.target)
            continue
        confs.append({"app": env.app, "environment": env.environment, "version": live.version})
    return confs


def nightly_schedules(config: DeploymentConfig) -> list[str]:
    return sorted({env.nightly_schedule for env in config.nightly_targets()})
