"""The nightly rebuild: which opted-in targets are due, each at its live version, and the guard its deploys run."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from immudeploy.aws.groups.inventory import live_server_group
from immudeploy.aws.network import resolve_environment
from immudeploy.core.config import DeploymentConfig
from immudeploy.core.errors import DeployError
from immudeploy.core.plan import ServerGroup

log = logging.getLogger(__name__)


class LiveChanged(DeployError):
    """What serves is no longer what the run was planned against: the run has nothing to do."""


def nightly_targets(
    clients: Any, config: DeploymentConfig, due_at: datetime | None, only: list[str] | None = None
) -> list[dict[str, str]]:
    """The deploy confs of tonight's rebuilds: opted-in targets whose schedule is due, at their live version.

    Each conf carries the live group and version read here (`expect_live_group`, `expect_live_version`):
    this read happens without the lock, so the deploy checks them again under it (`refuse_if_live_changed`).

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
        confs.append(
            {
                "app": env.app,
                "environment": env.environment,
                "version": live.version,
                "expect_live_version": live.version,
                "expect_live_group": live.name,
            }
        )
    return confs


def refuse_if_live_changed(
    live: ServerGroup | None, expect_version: str | None, expect_group: str | None
) -> None:
    """LiveChanged when the live group or its version is not what the triggering run saw.

    A nightly rebuild read the live version before it held the lock; a deploy that ran since (a CI
    release at 02:55) must not be overwritten by a rebuild of the version it replaced.
    """
    if expect_version is None and expect_group is None:
        return
    seen = f"{expect_group or '?'} at {expect_version or '?'}"
    if live is None:
        raise LiveChanged(f"expected {seen} live, but no group is live now: not deploying")
    now = f"{live.name} at {live.version or 'an unknown version'}"
    if (expect_group is not None and live.name != expect_group) or (
        expect_version is not None and live.version != expect_version
    ):
        raise LiveChanged(f"planned against {seen}, but {now} is live now: not deploying over it")


def nightly_schedules(config: DeploymentConfig) -> list[str]:
    return sorted({env.nightly_schedule for env in config.nightly_targets()})
