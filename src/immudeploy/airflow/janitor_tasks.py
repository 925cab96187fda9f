"""The janitor DAG's tasks: each phase over every configured target, under that target's lock."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import Any

from airflow.sdk import TriggerRule, get_current_context, task

from immudeploy.core.errors import DeployError

log = logging.getLogger(__name__)

LockFactory = Callable[[Any, str, str], AbstractContextManager[Any]]


def _default_lock() -> LockFactory:
    from immudeploy.airflow.locking import holding_lock

    return holding_lock


def _default_release() -> Callable[[Any, str, str], Any]:
    from immudeploy.airflow.locking import give_back_lock

    return give_back_lock


def run_locked(
    clients: Any,
    app: str,
    environment: str,
    work: Callable[[], Sequence[Any]],
    *,
    lock: LockFactory | None = None,
    release: Callable[[Any, str, str], Any] | None = None,
) -> dict[str, Any]:
    """`work` while this run holds the target's lock, then the lock back; skipped when another live run has it.

    A deploy, rollback or rebuild of the target owns every group it made while it runs: the janitor
    does not wait for it, it tries again on its next schedule.
    """
    target = f"{app}/{environment}"
    stack = ExitStack()
    try:
        stack.enter_context((lock or _default_lock())(clients, app, environment))
    except DeployError as error:
        log.warning("Skipping %s: %s", target, error)
        return {"target": target, "removed": [], "skipped": str(error)}
    try:
        with stack:
            removed = work()
    finally:
        (release or _default_release())(clients, app, environment)
    return {"target": target, "removed": [item.to_json() for item in removed], "skipped": None}


def _dry_run() -> bool:
    return bool(get_current_context()["params"].get("dry_run", False))


def _clients() -> Any:
    from immudeploy.airflow.params import AWS_CONN_ID
    from immudeploy.aws.connection import AwsClients

    return AwsClients(AWS_CONN_ID)


def _targets() -> Iterator[Any]:
    """Every usable app/environment of the configuration file (a broken entry is left alone)."""
    from immudeploy.core.config import load_config

    config = load_config()
    for key in sorted(config.environments):
        yield config.environments[key]


def _each_target(phase: str, work: Callable[[Any, Any, bool], Sequence[Any]]) -> list[dict[str, Any]]:
    clients, dry_run = _clients(), _dry_run()
    results, failures = [], []
    for env in _targets():
        try:
            results.append(
                run_locked(clients, env.app, env.environment, lambda env=env: work(clients, env, dry_run))
            )
        except Exception as error:  # one target's failure does not stop the others
            log.exception("%s failed for %s", phase, env.target)
            failures.append(f"{env.target}: {error}")
            results.append({"target": env.target, "removed": [], "skipped": f"failed: {error}"})
    if failures:
        raise DeployError(f"{phase} failed for {len(failures)} target(s): {'; '.join(failures)}")
    return results


def _target_groups(clients: Any, env: Any) -> list[str]:
    from immudeploy.aws.network import resolve_environment

    return list(resolve_environment(clients.ec2, clients.elbv2, env).target_group_arns)


@task
def retire_expired_groups() -> list[dict[str, Any]]:
    """Kept groups past their `immutable:expires-at`, deleted like a deploy's retirement (never a serving one)."""
    from immudeploy.release import janitor

    return _each_target(
        "retire_expired_groups",
        lambda clients, env, dry_run: janitor.retire_expired_groups(
            clients,
            env.app,
            env.environment,
            _target_groups(clients, env),
            keep_for_minutes=env.keep_for_minutes,
            dry_run=dry_run,
        ),
    )


@task
def scale_down_zero_kept() -> list[dict[str, Any]]:
    """Kept groups of `kept_capacity: zero` environments that have instances again, scaled to 0."""
    from immudeploy.release import janitor

    return _each_target(
        "scale_down_zero_kept",
        lambda clients, env, dry_run: janitor.scale_down_zero_kept(
            clients,
            env.app,
            env.environment,
            _target_groups(clients, env),
            env.kept_capacity,
            dry_run=dry_run,
        ),
    )


@task
def remove_abandoned_staging() -> list[dict[str, Any]]:
    """Staging groups and launch templates of runs that are no longer running."""
    from immudeploy.release import janitor

    return _each_target(
        "remove_abandoned_staging",
        lambda clients, env, dry_run: janitor.remove_dead_runs_staging(
            clients, env.app, env.environment, dry_run=dry_run
        ),
    )


@task
def remove_packer_leftovers() -> list[dict[str, Any]]:
    """Build instances, temporary key pairs and security groups of bakes older than the longest bake timeout.

    Region-wide, not per target (key pairs and security groups carry no app), so without a lock:
    their age is what keeps a running bake's resources safe.
    """
    from immudeploy.release import janitor

    envs = list(_targets())
    if not envs:
        return []
    removed = janitor.remove_packer_leftovers(
        _clients(),
        older_than_seconds=max(env.bake_timeout_seconds for env in envs),
        apps=sorted({env.app for env in envs}),
        dry_run=_dry_run(),
    )
    return [{"target": "packer (region)", "removed": [item.to_json() for item in removed], "skipped": None}]


@task
def apply_image_retention() -> list[dict[str, Any]]:
    """Images beyond `keep_images` that nothing uses, per app, under the locks of all its environments."""
    from immudeploy.release import janitor

    clients, dry_run = _clients(), _dry_run()
    lock, release = _default_lock(), _default_release()
    by_app: dict[str, list[Any]] = {}
    for env in _targets():
        by_app.setdefault(env.app, []).append(env)
    results = []
    for app, envs in sorted(by_app.items()):
        # Retention counts per environment, so an image may be any environment's: every lock of the app.
        held: list[str] = []
        skipped = None
        removed: list[Any] = []
        try:
            with ExitStack() as stack:
                for env in envs:
                    try:
                        stack.enter_context(lock(clients, app, env.environment))
                    except DeployError as error:
                        skipped = str(error)
                        log.warning("Skipping image retention of %s: %s", app, error)
                        break
                    held.append(env.environment)
                if skipped is None:
                    keep = max(env.keep_images for env in envs)
                    removed = janitor.remove_unused_images(clients, app, keep, dry_run=dry_run)
        finally:
            for environment in held:
                release(clients, app, environment)
        results.append(
            {"target": f"{app}/*", "removed": [item.to_json() for item in removed], "skipped": skipped}
        )
    return results


@task(trigger_rule=TriggerRule.ALL_DONE)
def janitor_summary(
    expired: list[dict[str, Any]] | None,
    zero_kept: list[dict[str, Any]] | None,
    staging: list[dict[str, Any]] | None,
    packer: list[dict[str, Any]] | None,
    images: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """What each phase removed (or would remove), per app and environment, and the retired instance-hours."""
    from immudeploy.release.janitor import summarize_janitor

    result = summarize_janitor(
        {
            "retire_expired_groups": expired,
            "scale_down_zero_kept": zero_kept,
            "remove_abandoned_staging": staging,
            "remove_packer_leftovers": packer,
            "apply_image_retention": images,
        },
        dry_run=_dry_run(),
    )
    for line in result["markdown"].splitlines():
        log.info("%s", line)
    return result
