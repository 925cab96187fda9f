"""immudeploy-local: an AWS stand-in and Airflow's components on loopback, real deploys over REST.

`up` starts the AWS stand-in (`python -m immudeploy_dev.standin`: moto with AWS's timing, so targets
turn healthy after their health checks, detached ones drain and instances boot) and Airflow's
api-server, scheduler, dag-processor and triggerer as separate processes, each in its own session,
under a state directory (default `.local/` in the repository). It seeds a demo network, deploys
version 1.0.0 (the live fleet, baked by real Packer) and then 2.0.0 through the REST API, printing
every task's state change and, whenever it changes, which server groups stand behind the live target
group in which target states. `--time-scale` sets the stand-in's pace (0: AWS's order of events with
no waiting). `down` stops exactly the processes `up` started; `status` says what runs and where.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import requests

from immudeploy.core.config import REPO_ROOT
from immudeploy_ci.api import DEPLOY_DAG_ID, EXIT_SUCCESS, AirflowApi, CiError, Credentials
from immudeploy_ci.client import run_and_follow
from immudeploy_dev.components import (
    DEFAULT_TIME_SCALE,
    DEPLOYER,
    VIEWER,
    api_health,
    component_environment,
    describe_timing,
    standin_answers,
    standin_command,
    wait_until_ready,
    write_airflow_config,
)
from immudeploy_dev.demo import (
    DemoEnvironment,
)
from immudeploy_dev.processes import (
    STOP_GRACE_SECONDS,
    StackError,
    StackState,
    _alive,
    free_port,
    log_tail,
    say,
    start_process,
    stop_stack,
    wait_for,
    write_private,
)
from immudeploy_dev.watch import (
    APP,
    DEPLOY_TIMEOUT,
    ENVIRONMENT,
    LIVE_TARGET_GROUP,
    CompositionWatcher,
    StackClients,
    WholeLines,
    aws_clients,
    live_composition,
    live_groups,
)

LIVE_VERSION = "1.0.0"
NEW_VERSION = "2.0.0"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")

PASSWORDS_FILE = "passwords.json"
# url, username and password for `immudeploy-ci --credentials-file`.
CI_CREDENTIALS_FILE = "ci-credentials.json"

START_TIMEOUT = 240.0
MIGRATE_TIMEOUT = 300.0
# How often the live target group is looked at during a deploy: shorter than any step at the default scale.


def default_state_dir() -> Path:
    return REPO_ROOT / ".local"


def print_access(state: StackState) -> None:
    state_dir = Path(state.state_dir)
    say(f"UI:       {state.api_url}/dags/{DEPLOY_DAG_ID}")
    say(f"login:    user {DEPLOYER}, password in {state_dir / PASSWORDS_FILE} (key {DEPLOYER!r})")
    say(f"          read-only user {VIEWER} in the same file")
    say(f"AWS:      {state.aws_url} ({describe_timing(state.time_scale)})")
    say(f"logs:     {state_dir / 'logs'}")
    say(
        f"CI:       immudeploy-ci deploy --app {APP} --environment {ENVIRONMENT} --version 3.0.0 "
        f"--credentials-file {state_dir / CI_CREDENTIALS_FILE}"
    )
    say(
        "stop:     immudeploy-local down"
        + ("" if state_dir == default_state_dir() else f" --state-dir {state_dir}")
    )


def _credentials(state: StackState) -> Credentials:
    passwords = json.loads((Path(state.state_dir) / PASSWORDS_FILE).read_text())
    return Credentials(url=state.api_url, username=DEPLOYER, password=passwords[DEPLOYER])


def _running(state_dir: Path) -> StackState | None:
    state = StackState.load(state_dir)
    if state is None:
        return None
    if any(_alive(p) for p in state.processes):
        return state
    # A stack whose processes all died (a reboot, a kill): forget it.
    stop_stack(state, grace=5)
    state.path.unlink(missing_ok=True)
    return None


def _deploy(
    api: AirflowApi, clients: StackClients, network: DemoEnvironment, version: str, timeout: float
) -> tuple[int, dict[str, Any]]:
    say(f"\n== deploy {APP}/{ENVIRONMENT} {version} through the REST API")
    say(f"   ({LIVE_TARGET_GROUP}: the live target group's targets by server group, whenever they change)")
    out = cast(TextIO, WholeLines(sys.stdout))
    with CompositionWatcher(clients, network.target_group_arn, LIVE_TARGET_GROUP, out, limit=timeout + 60):
        return run_and_follow(
            api,
            DEPLOY_DAG_ID,
            {"app": APP, "environment": ENVIRONMENT, "version": version},
            timeout=timeout,
            poll_interval=1.0,
            out=out,
            note=f"immudeploy-local up: {version}",
        )


def print_change(summary: dict[str, Any]) -> None:
    say("\n== what changed")
    say(f"server group: {summary.get('replaced') or '(none)'} -> {summary.get('server_group')}")
    say(f"image:        {summary.get('image_id')}")
    say(f"version:      {summary.get('version')}")
    phases = summary.get("phase_seconds") or {}
    say("phases:       " + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases.items()))
    if summary.get("deleted_groups"):
        say(f"deleted:      {', '.join(summary['deleted_groups'])}")


def start_stack(state_dir: Path, timeout: float, time_scale: float) -> StackState:
    """Starts the AWS stand-in and Airflow, waits until the deploy DAG is parsed; on any failure stops
    what it started."""
    state_dir.mkdir(parents=True, exist_ok=True)
    home = state_dir / "airflow"
    log_dir = state_dir / "logs"
    # A fresh stack: the stand-in's state is gone, so the old run history would only mislead.
    for stale in (home, log_dir):
        shutil.rmtree(stale, ignore_errors=True)
    home.mkdir()
    log_dir.mkdir()
    aws_port, api_port = free_port(), free_port()
    while api_port == aws_port:
        api_port = free_port()
    state = StackState(
        stack_id=f"{state_dir}#{uuid.uuid4().hex[:12]}",
        state_dir=str(state_dir),
        airflow_home=str(home),
        aws_url=f"http://127.0.0.1:{aws_port}",
        api_url=f"http://127.0.0.1:{api_port}",
        started_at=time.time(),
        time_scale=time_scale,
    )
    state.save()
    try:
        passwords_file = state_dir / PASSWORDS_FILE
        passwords = {DEPLOYER: secrets.token_urlsafe(18), VIEWER: secrets.token_urlsafe(18)}
        write_private(passwords_file, json.dumps(passwords, indent=2) + "\n")
        write_private(
            state_dir / CI_CREDENTIALS_FILE,
            json.dumps(
                {"url": state.api_url, "username": DEPLOYER, "password": passwords[DEPLOYER]}, indent=2
            )
            + "\n",
        )
        write_airflow_config(home, state.api_url, api_port, passwords_file)
        env = component_environment(home, state.aws_url, state.stack_id)
        bin_dir = Path(sys.executable).parent

        say(f"starting the AWS stand-in on {state.aws_url}: {describe_timing(time_scale)}")
        standin = start_process(state, "standin", standin_command(aws_port, time_scale), env, log_dir)

        def standin_ready() -> bool | None:
            if not _alive(standin):
                raise StackError(f"the AWS stand-in exited:\n{log_tail(standin.log)}")
            return standin_answers(state.aws_url)

        wait_for("the AWS stand-in", standin_ready, timeout, interval=0.3)

        say(f"airflow db migrate (AIRFLOW_HOME={home})")
        started = time.monotonic()
        with (log_dir / "db-migrate.log").open("wb") as log:
            try:
                migrate = subprocess.run(
                    [str(bin_dir / "airflow"), "db", "migrate"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=state_dir,
                    timeout=MIGRATE_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise StackError(f"airflow db migrate took longer than {MIGRATE_TIMEOUT:.0f} s") from None
        if migrate.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{log_tail(log_dir / 'db-migrate.log')}")
        say(f"  ... migrated in {time.monotonic() - started:.1f} s")

        for component in COMPONENTS:
            process = start_process(state, component, [str(bin_dir / "airflow"), component], env, log_dir)
            say(f"started {component} (pid {process.pid}, log {process.log})")
        api = AirflowApi(_credentials(state))
        wait_until_ready(state, api, timeout)
        return state
    except BaseException:
        say("start failed: stopping what was started")
        stop_stack(state)
        state.path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _starting(state_dir: Path) -> Iterator[None]:
    """One `up` at a time per state directory."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / ".up.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `immudeploy-local up` is starting the stack in {state_dir}") from None
        yield


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    clock = time.monotonic()
    with _starting(state_dir):
        running = _running(state_dir)
        if running is not None:
            say(f"the stack in {state_dir} is already up (started {time.ctime(running.started_at)})")
            if args.time_scale is not None and args.time_scale != running.time_scale:
                say(f"  --time-scale {args.time_scale:g} ignored: `down` first to start it at another pace")
            print_access(running)
            return EXIT_SUCCESS
        time_scale = DEFAULT_TIME_SCALE if args.time_scale is None else args.time_scale
        state = start_stack(state_dir, args.timeout, time_scale)
    say(f"stack ready after {time.monotonic() - clock:.0f} s")

    from immudeploy_dev.demo import seed_demo_network

    clients = aws_clients(state.aws_url)
    network = seed_demo_network(clients, APP, ENVIRONMENT)
    say(
        f"seeded the demo network in the stand-in: VPC {network.vpc_id}, "
        f"load balancer {network.load_balancer_dns_name}"
    )
    api = AirflowApi(_credentials(state))
    try:
        # The live fleet comes from a real deploy (bake with Packer, staging, swap): a rollback
        # later finds a kept group and a baked image of 1.0.0.
        if not live_groups(state.aws_url):
            code, _ = _deploy(api, clients, network, LIVE_VERSION, args.deploy_timeout)
            if code != EXIT_SUCCESS:
                say(f"\nthe {LIVE_VERSION} deploy failed; the stack stays up for a look:")
                print_access(state)
                return code
        code, summary = _deploy(api, clients, network, args.version, args.deploy_timeout)
    except CiError as error:
        say(f"\nimmudeploy-local: {error}")
        print_access(state)
        return error.exit_code
    if code == EXIT_SUCCESS:
        print_change(summary)
    else:
        say(f"\nthe {args.version} deploy failed; the stack stays up for a look:")
    say(f"\nup in {time.monotonic() - clock:.0f} s")
    print_access(state)
    return code


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state = StackState.load(state_dir)
    if state is None:
        say(f"no stack recorded in {state_dir}: nothing to stop")
        return EXIT_SUCCESS
    started = time.monotonic()
    killed = stop_stack(state, grace=args.grace)
    state.path.unlink(missing_ok=True)
    names = ", ".join(p.name for p in state.processes)
    say(f"stopped {names} in {time.monotonic() - started:.1f} s" + (f"; killed {killed}" if killed else ""))
    return EXIT_SUCCESS


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state = StackState.load(state_dir)
    if state is None:
        say(f"not running (no state file in {state_dir})")
        return 1
    alive = [p for p in state.processes if _alive(p)]
    for process in state.processes:
        say(f"{process.name:<14} pid {process.pid:<8} {'running' if process in alive else 'STOPPED'}")
    try:
        health = api_health(state.api_url)
        say(
            "health:        "
            + ", ".join(
                f"{k} {(v or {}).get('status', '?')}" for k, v in health.items() if isinstance(v, dict)
            )
        )
    except requests.RequestException as error:
        say(f"health:        the API does not answer ({error})")
    say(f"AWS timing:    {describe_timing(state.time_scale)}")
    with contextlib.suppress(Exception):
        say(f"server groups: {', '.join(live_groups(state.aws_url)) or 'none'}")
        say(f"{LIVE_TARGET_GROUP}: {live_composition(aws_clients(state.aws_url))}")
    print_access(state)
    return EXIT_SUCCESS if len(alive) == len(state.processes) else 1


def _time_scale(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"a time scale is a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    state_help = "where logs, config and state live (default .local/ in the repository)"
    parser = argparse.ArgumentParser(prog="immudeploy-local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", default=str(default_state_dir()), help=state_help)
    # Also after the subcommand (`scripts/demo --state-dir X` runs `up --state-dir X`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS, help=state_help)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up", parents=[common], help="start the stack and run a deploy through the REST API"
    )
    up.add_argument(
        "--version",
        default=NEW_VERSION,
        help=f"version to deploy over {LIVE_VERSION} (default {NEW_VERSION})",
    )
    up.add_argument(
        "--time-scale",
        type=_time_scale,
        default=None,
        help=f"multiplies every AWS duration of the stand-in (default {DEFAULT_TIME_SCALE}: "
        f"{describe_timing(DEFAULT_TIME_SCALE).split(': ', 1)[1]}); "
        "0: AWS's order of events with no waiting; a stack already up keeps its own",
    )
    up.add_argument("--timeout", type=float, default=START_TIMEOUT, help="seconds for each start-up wait")
    up.add_argument("--deploy-timeout", type=float, default=DEPLOY_TIMEOUT, help="seconds for each deploy")
    down = commands.add_parser("down", parents=[common], help="stop every process the stack started")
    down.add_argument("--grace", type=float, default=STOP_GRACE_SECONDS, help="seconds before SIGKILL")
    commands.add_parser("status", parents=[common], help="what runs, and where")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    handler = {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command]
    try:
        return handler(args)
    except StackError as error:
        print(f"immudeploy-local: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("immudeploy-local: interrupted (`immudeploy-local down` stops what runs)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
