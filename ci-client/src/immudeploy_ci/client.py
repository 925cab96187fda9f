"""immudeploy-ci: trigger a deploy or rollback from CI, follow it task by task, exit with its outcome.

A tiny client over plain HTTP (`requests`) rather than apache-airflow-client: it needs five REST
calls, and the generated client pins its own dependency versions and lags the server's API.

Exit codes: 0 the run succeeded; 1 it failed (the failed tasks and the tail of their logs are
printed); 2 the request was refused (bad arguments or credentials setup, a conf Airflow rejects
with 400, a paused or missing DAG); 3 the run did not finish within --timeout (it goes on in
Airflow); 4 Airflow could not be reached or refused the credentials.

Credentials never come from a flag (flags end up in CI logs and process lists): from the
environment (IMMUDEPLOY_AIRFLOW_URL, IMMUDEPLOY_AIRFLOW_USERNAME and IMMUDEPLOY_AIRFLOW_PASSWORD,
or IMMUDEPLOY_AIRFLOW_TOKEN) or from --credentials-file, a JSON or INI file readable by its owner only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

from immudeploy_ci.api import (
    DEPLOY_DAG_ID,
    ENV_CREDENTIALS_FILE,
    ENV_URL,
    EXIT_RUN_FAILED,
    EXIT_SUCCESS,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    FINISHED_RUN_STATES,
    LOG_TAIL_LINES,
    MAX_POLL_ERRORS,
    ROLLBACK_DAG_ID,
    AirflowApi,
    CiError,
    resolve_credentials,
)


def _task_key(ti: Mapping[str, Any]) -> str:
    index = ti.get("map_index", -1)
    return str(ti["task_id"]) if index in (-1, None) else f"{ti['task_id']}[{index}]"


def state_change_line(elapsed: float, task: str, old: str | None, new: str, try_number: int | None) -> str:
    """One line per task state change: elapsed seconds, task, old -> new (and the try after the first)."""
    retry = f" (try {try_number})" if try_number and try_number > 1 and new in ("running", "queued") else ""
    return f"{elapsed:7.1f}s  {task:<40} {old or '-':>15} -> {new}{retry}"


@dataclass
class RunOutcome:
    state: str
    task_states: dict[str, str]
    elapsed: float


def follow_run(
    api: AirflowApi,
    dag_id: str,
    run_id: str,
    *,
    timeout: float,
    poll_interval: float = 2.0,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RunOutcome:
    """Polls the run until it finishes, printing each task's state change as it is seen.

    Raises CiError(EXIT_TIMEOUT) when the run has not finished within `timeout` seconds.
    """
    out = out or sys.stdout
    started = clock()
    seen: dict[str, str] = {}
    errors = 0
    run_state = "queued"
    while True:
        elapsed = clock() - started
        try:
            run = api.dag_run(dag_id, run_id)
            tis = api.task_instances(dag_id, run_id)
            errors = 0
        except CiError as error:
            if error.exit_code != EXIT_UNREACHABLE:
                raise
            errors += 1
            if errors >= MAX_POLL_ERRORS:
                raise
            print(f"{elapsed:7.1f}s  (poll failed, retrying: {error})", file=out, flush=True)
            time.sleep(poll_interval)
            continue
        for ti in sorted(tis, key=lambda t: (t.get("start_date") or "~", _task_key(t))):
            state = ti.get("state")
            key = _task_key(ti)
            if state and seen.get(key) != state:
                print(
                    state_change_line(elapsed, key, seen.get(key), state, ti.get("try_number")),
                    file=out,
                    flush=True,
                )
                seen[key] = state
        if run["state"] != run_state:
            run_state = run["state"]
            print(f"{elapsed:7.1f}s  run {run_id}: {run_state}", file=out, flush=True)
        if run_state in FINISHED_RUN_STATES:
            return RunOutcome(run_state, seen, elapsed)
        if elapsed > timeout:
            active = sorted(
                k for k, s in seen.items() if s in ("running", "deferred", "queued", "up_for_retry")
            )
            raise CiError(
                f"timed out after {timeout:.0f} s waiting for run {run_id} of {dag_id} to finish; "
                f"it is {run_state}, waiting on: {', '.join(active) or 'the scheduler'}. "
                "The run goes on in Airflow.",
                EXIT_TIMEOUT,
            )
        time.sleep(poll_interval)


def report_failure(
    api: AirflowApi, dag_id: str, run_id: str, out: TextIO, tail: int = LOG_TAIL_LINES
) -> list[str]:
    """Names every failed task and prints the tail of its last try's log; returns the failed task ids."""
    failed = [ti for ti in api.task_instances(dag_id, run_id) if ti.get("state") == "failed"]
    failed.sort(key=lambda ti: ti.get("start_date") or "")
    for ti in failed:
        key = _task_key(ti)
        try_number = int(ti.get("try_number") or 1)
        print(f"\nFAILED: {key} (try {try_number}); last lines of its log:", file=out)
        try:
            lines = api.task_log(dag_id, run_id, ti["task_id"], try_number, ti.get("map_index", -1))
        except CiError as error:
            print(f"    (log unavailable: {error})", file=out)
            continue
        for line in lines[-tail:]:
            print(f"    {line}", file=out)
    if failed:
        undo = api.xcom(dag_id, run_id, "undo_on_failure")
        if undo:
            print("\nundo_on_failure:", file=out)
            for step in undo if isinstance(undo, list) else [undo]:
                print(f"    - {step}", file=out)
    return [_task_key(ti) for ti in failed]


def run_and_follow(
    api: AirflowApi,
    dag_id: str,
    conf: Mapping[str, Any],
    *,
    timeout: float,
    poll_interval: float,
    out: TextIO | None = None,
    note: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Trigger, follow, report. Returns (exit code, the summary task's result or {})."""
    out = out or sys.stdout
    api.check_dag(dag_id)
    run = api.trigger(dag_id, conf, note=note)
    run_id = run["dag_run_id"]
    print(f"triggered {dag_id} run {run_id} with {json.dumps(dict(conf), sort_keys=True)}", file=out)
    print(f"follow it in the UI: {api.base}/dags/{quote(dag_id)}/runs/{quote(run_id)}", file=out, flush=True)
    outcome = follow_run(api, dag_id, run_id, timeout=timeout, poll_interval=poll_interval, out=out)
    if outcome.state != "success":
        failed = report_failure(api, dag_id, run_id, out)
        print(
            f"\nrun {run_id} of {dag_id} {outcome.state} after {outcome.elapsed:.0f} s"
            + (f"; failed: {', '.join(failed)}" if failed else ""),
            file=out,
        )
        return EXIT_RUN_FAILED, {}
    summary = api.xcom(dag_id, run_id, "summary") or {}
    if isinstance(summary, dict) and summary.get("markdown"):
        print("\n" + str(summary["markdown"]), file=out)
    print(f"\nrun {run_id} of {dag_id} succeeded after {outcome.elapsed:.0f} s", file=out)
    return EXIT_SUCCESS, summary if isinstance(summary, dict) else {}


# --- the deploy record ------------------------------------------------------------------------------

# The task of both DAGs that writes the deploy record; its XCom carries the target's recent record.
RECORD_TASK_ID = "teardown.record_release"


def latest_record(api: AirflowApi, app: str, environment: str) -> list[dict[str, Any]]:
    """The deploy record of app/environment as the newest successful deploy or rollback left it.

    The client has no AWS access: it reads the record_release XCom of the last finished run of that
    target (newest entry first). Empty when Airflow has no such run (any more).
    """
    newest: tuple[str, str, str] | None = None
    for dag_id in (DEPLOY_DAG_ID, ROLLBACK_DAG_ID):
        for run in api.successful_runs(dag_id):
            conf = run.get("conf") or {}
            if conf.get("app") == app and conf.get("environment") == environment:
                ended = str(run.get("end_date") or "")
                if newest is None or ended > newest[0]:
                    newest = (ended, dag_id, str(run["dag_run_id"]))
                break  # the most recently finished run of this DAG for the target
    if newest is None:
        return []
    value = api.xcom(newest[1], newest[2], RECORD_TASK_ID) or {}
    history = value.get("history") if isinstance(value, dict) else None
    return [entry for entry in history or [] if isinstance(entry, dict)]


def record_lines(history: list[dict[str, Any]]) -> list[str]:
    """One line per entry: when, version, how it got there, image, group, commit, run."""
    lines = []
    for entry in history:
        how = str(entry.get("kind") or "deploy")
        if how == "rollback":
            how += f" from {entry.get('rolled_back_from_version')} ({entry.get('rolled_back_from_group')})"
        lines.append(
            f"{entry.get('recorded_at', '?')}  {entry.get('version', '?'):<16} {entry.get('image_id', '?')}  "
            f"{entry.get('group', '?')}  {how}  git {entry.get('git_sha') or '-'}  run {entry.get('run_id', '?')}"
        )
    return lines


def list_record(api: AirflowApi, app: str, environment: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    history = latest_record(api, app, environment)
    if not history:
        print(
            f"no deploy record of {app}/{environment} in Airflow's run history "
            "(no successful deploy or rollback of it since the record exists)",
            file=out,
        )
        return EXIT_SUCCESS
    print(
        f"deploy record of {app}/{environment}, newest first (a rollback can name these versions):", file=out
    )
    for line in record_lines(history):
        print(f"  {line}", file=out)
    return EXIT_SUCCESS


# --- command line ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="immudeploy-ci",
        description="Trigger an immutable deploy or rollback in Airflow and block until it finishes.",
        epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--app", required=True)
    common.add_argument("--environment", required=True)
    common.add_argument("--url", help=f"Airflow's address (default: ${ENV_URL})")
    common.add_argument(
        "--credentials-file",
        help=f"JSON or INI ([airflow]) file with url, username/password or token; mode 600 (or ${ENV_CREDENTIALS_FILE})",
    )
    common.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds to wait for the run (default 3600)"
    )
    common.add_argument("--poll-interval", type=float, default=2.0, help="seconds between polls (default 2)")
    commands = parser.add_subparsers(dest="command", required=True)
    deploy = commands.add_parser("deploy", parents=[common], help=f"run {DEPLOY_DAG_ID}")
    deploy.add_argument("--version", required=True, help="release version, e.g. 2.0.0")
    deploy.add_argument("--ami-id", help="deploy this image instead of baking")
    deploy.add_argument("--git-sha", help="commit the release was built from")
    rollback = commands.add_parser("rollback", parents=[common], help=f"run {ROLLBACK_DAG_ID}")
    rollback.add_argument("--to-version", help="version to go back to (default: the one before the live one)")
    rollback.add_argument(
        "--list",
        action="store_true",
        help="print the deploy record (the versions --to-version can name) and trigger nothing",
    )
    return parser


def conf_from_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    conf: dict[str, Any] = {"app": args.app, "environment": args.environment}
    if args.command == "deploy":
        conf["version"] = args.version
        if args.ami_id:
            conf["ami_id"] = args.ami_id
        if args.git_sha:
            conf["git_sha"] = args.git_sha
        return DEPLOY_DAG_ID, conf
    if args.to_version:
        conf["to_version"] = args.to_version
    return ROLLBACK_DAG_ID, conf


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        credentials = resolve_credentials(args.url, args.credentials_file, environ)
        dag_id, conf = conf_from_args(args)
        api = AirflowApi(credentials)
        if args.command == "rollback" and args.list:
            return list_record(api, args.app, args.environment)
        code, _ = run_and_follow(
            api,
            dag_id,
            conf,
            timeout=args.timeout,
            poll_interval=args.poll_interval,
            note=f"immudeploy-ci {args.command}",
        )
        return code
    except CiError as error:
        print(f"immudeploy-ci: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("immudeploy-ci: interrupted; the run goes on in Airflow", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
