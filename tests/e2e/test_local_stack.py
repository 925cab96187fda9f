"""The local stack end to end: `immudeploy-local up` (real components, real deploys over REST, AWS the
stand-in with its default timing, so the triggerer really defers the health gate and the drain), what
its output shows behind the load balancer, the REST API's refusals, `immudeploy-ci` against it, the
live target group's capacity during a deploy, and `down` leaving no process behind."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from immudeploy.aws.lock import current_holder
from immudeploy_dev.components import DEFAULT_TIME_SCALE

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DAG_RUNS = "/api/v2/dags/immutable_deploy/dagRuns"
UP_TIMEOUT = 900
CI_TIMEOUT = 600
LIVE_TARGET_GROUP = "shop-prod-live"
# `up` prints the live target group's composition whenever it changes, e.g.
# `  shop-prod-live: shop-prod-v001 2 draining | shop-prod-v002 1 initial, 1 healthy`.
COMPOSITION_PREFIX = f"  {LIVE_TARGET_GROUP}: "
# The first deploy's size (config/deployments.yaml, first_deploy_capacity); later deploys keep it.
FLEET_SIZE = 2


@dataclass
class RunningStack:
    state_dir: Path
    up_returncode: int
    up_output: str
    up_seconds: float
    api_url: str
    aws_url: str
    passwords: dict[str, str]

    def aws(self, service: str) -> Any:
        """A boto3 client of the stack's AWS stand-in, as a user of the demo would make one."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.aws_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def token(self, user: str) -> str:
        response = requests.post(
            f"{self.api_url}/auth/token",
            json={"username": user, "password": self.passwords[user]},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["access_token"])

    def headers(self, user: str = "deployer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def run_count(self) -> int:
        response = requests.get(f"{self.api_url}{DAG_RUNS}", headers=self.headers(), timeout=30)
        response.raise_for_status()
        return int(response.json()["total_entries"])

    def ci_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMMUDEPLOY_AIRFLOW_")}
        env.update(
            IMMUDEPLOY_AIRFLOW_URL=self.api_url,
            IMMUDEPLOY_AIRFLOW_USERNAME="deployer",
            IMMUDEPLOY_AIRFLOW_PASSWORD=self.passwords["deployer"],
        )
        return env


def local(state_dir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "immudeploy-local"), "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def ci(stack: RunningStack, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "immudeploy-ci"), *args, "--poll-interval", "1"],
        capture_output=True,
        text=True,
        timeout=CI_TIMEOUT,
        check=False,
        env=stack.ci_env(),
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    print(f"\n$ immudeploy-ci {' '.join(args)}  -> exit {result.returncode} in {seconds:.0f} s\n{output}")
    return result.returncode, output, seconds


def stack_processes(state_dir: Path, recorded: list[dict[str, Any]]) -> list[str]:
    """Live processes of the stack: a recorded pid (same create time), any process in a recorded
    session, and anything carrying the stack's marker variable."""
    import psutil

    from immudeploy_dev.processes import MARKER_VARIABLE

    alive = []
    sessions = set()
    for process in recorded:
        try:
            found = psutil.Process(process["pid"])
            if (
                abs(found.create_time() - process["create_time"]) < 1
                and found.status() != psutil.STATUS_ZOMBIE
            ):
                alive.append(f"{process['name']} pid {process['pid']}")
                sessions.add(process["pid"])
        except psutil.NoSuchProcess:
            sessions.add(process["pid"])  # the leader is gone; its session id cannot be reused yet
    for candidate in psutil.process_iter(["pid"]):
        try:
            if candidate.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(candidate.pid) in sessions or candidate.environ().get(
                MARKER_VARIABLE, ""
            ).startswith(f"{state_dir}#"):
                alive.append(f"pid {candidate.pid}: {' '.join(candidate.cmdline()[:4])}")
        except (OSError, psutil.Error):
            continue
    return alive


_STACK: RunningStack | None = None


@pytest.fixture(scope="session")
def local_stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningStack]:
    """One stack per test session (test_ui.py uses it too), stopped at the end whatever happened."""
    global _STACK
    if _STACK is not None:
        yield _STACK
        return
    state_dir = tmp_path_factory.mktemp("local-stack")
    recorded: list[dict[str, Any]] = []

    def stop() -> None:
        global _STACK
        _STACK = None
        state_file = state_dir / "stack.json"
        if state_file.exists():
            recorded[:] = json.loads(state_file.read_text())["processes"]
        started = time.monotonic()
        result = local(state_dir, "down", timeout=180)
        print(f"\n$ immudeploy-local down -> exit {result.returncode} in {time.monotonic() - started:.1f} s")
        print(result.stdout + result.stderr)
        assert result.returncode == 0
        assert not state_file.exists()
        left = stack_processes(state_dir, recorded)
        assert not left, f"processes of the stack still run after down: {left}"

    request.addfinalizer(stop)
    started = time.monotonic()
    try:
        result = local(state_dir, "up", timeout=UP_TIMEOUT)
        returncode, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as expired:
        returncode, output = -1, f"{expired.stdout or ''}{expired.stderr or ''}\n(up timed out)"
    seconds = time.monotonic() - started
    print(f"\n$ immudeploy-local up -> exit {returncode} in {seconds:.0f} s\n{output}")
    state_file = state_dir / "stack.json"
    if not state_file.exists():
        pytest.fail(f"immudeploy-local up left no running stack (exit {returncode}):\n{output}")
    state = json.loads(state_file.read_text())
    recorded[:] = state["processes"]
    _STACK = RunningStack(
        state_dir=state_dir,
        up_returncode=returncode,
        up_output=output,
        up_seconds=seconds,
        api_url=state["api_url"],
        aws_url=state["aws_url"],
        passwords=json.loads((state_dir / "passwords.json").read_text()),
    )
    yield _STACK


def test_up_deploys_v2_over_the_rest_api(local_stack: RunningStack) -> None:
    output = local_stack.up_output
    assert local_stack.up_returncode == 0, output
    assert "server group: shop-prod-v001 -> shop-prod-v002" in output
    assert "shop/prod now runs 2.0.0" in output
    assert "bake.bake_image" in output and "running -> success" in output
    assert f"UI:       {local_stack.api_url}/dags/immutable_deploy" in output
    passwords = local_stack.state_dir / "passwords.json"
    assert f"user deployer, password in {passwords}" in output
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    assert stat.S_IMODE((local_stack.state_dir / "airflow" / "airflow.cfg").stat().st_mode) == 0o600
    print(f"up took {local_stack.up_seconds:.0f} s")


def parse_composition(text: str) -> dict[str, dict[str, int]]:
    """`shop-prod-v001 2 draining | shop-prod-v002 1 initial, 1 healthy` -> {group: {state: count}}."""
    if text == "no targets":
        return {}
    groups: dict[str, dict[str, int]] = {}
    for part in text.split(" | "):
        group, _, counts = part.partition(" ")
        groups[group] = {state: int(n) for n, state in (count.split(" ", 1) for count in counts.split(", "))}
    return groups


def compositions(output: str, version: str) -> list[dict[str, dict[str, int]]]:
    """The live target group as `up` showed it during its deploy of `version`, oldest first."""
    section = output.split(f"== deploy shop/prod {version} through the REST API", 1)[1].split("\n== ", 1)[0]
    return [
        parse_composition(line[len(COMPOSITION_PREFIX) :])
        for line in section.splitlines()
        if line.startswith(COMPOSITION_PREFIX)
    ]


def test_up_shows_both_fleets_serving_then_the_old_one_draining(local_stack: RunningStack) -> None:
    """What a user watching `up` sees behind the load balancer during the 2.0.0 deploy."""
    moments = compositions(local_stack.up_output, "2.0.0")
    shown = "\n".join(map(str, moments))
    old, new = "shop-prod-v001", "shop-prod-v002"
    full = {"healthy": FLEET_SIZE}
    assert moments and moments[0] == {old: full}, shown
    # The new targets came up through `initial` while the old ones served: the health gate waited.
    assert any(m.get(old) == full and "initial" in m.get(new, {}) for m in moments), shown
    both = [
        i for i, m in enumerate(moments) if m.get(old, {}).get("healthy") and m.get(new, {}).get("healthy")
    ]
    draining = [i for i, m in enumerate(moments) if m.get(old, {}).get("draining") and m.get(new) == full]
    assert both, f"never both versions healthy at once:\n{shown}"
    assert draining, f"never the old group draining behind a healthy new one:\n{shown}"
    assert both[0] < draining[-1], shown
    # At every moment of the swap, at least the live fleet's size in healthy targets.
    assert all(sum(c.get("healthy", 0) for c in m.values()) >= FLEET_SIZE for m in moments), shown
    assert moments[-1] == {new: full}, shown
    # The deploy of 1.0.0 had no fleet to drain: its targets only went from `initial` to `healthy`.
    first = compositions(local_stack.up_output, "1.0.0")
    assert first[0] == {} and first[-1] == {old: full}, first


def test_up_again_reuses_the_running_stack(local_stack: RunningStack) -> None:
    before = json.loads((local_stack.state_dir / "stack.json").read_text())
    result = local(local_stack.state_dir, "up", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is already up" in result.stdout
    assert json.loads((local_stack.state_dir / "stack.json").read_text()) == before
    status = local(local_stack.state_dir, "status", timeout=60)
    assert status.returncode == 0, status.stdout
    assert "scheduler healthy" in status.stdout and "shop-prod-v002" in status.stdout
    assert f"AWS timing:    the stand-in at time scale {DEFAULT_TIME_SCALE:g}" in status.stdout
    assert f"{LIVE_TARGET_GROUP}: shop-prod-v002 {FLEET_SIZE} healthy" in status.stdout


def test_invalid_conf_gets_400_naming_the_field_and_no_run(local_stack: RunningStack) -> None:
    before = local_stack.run_count()
    response = requests.post(
        f"{local_stack.api_url}{DAG_RUNS}",
        json={
            "logical_date": None,
            "conf": {"app": "shop", "environment": "prod", "version": "1.0; rm -rf /"},
        },
        headers=local_stack.headers(),
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert "param version" in response.json()["detail"]
    assert local_stack.run_count() == before


def test_viewer_cannot_trigger(local_stack: RunningStack) -> None:
    before = local_stack.run_count()
    response = requests.post(
        f"{local_stack.api_url}{DAG_RUNS}",
        json={"logical_date": None, "conf": {"app": "shop", "environment": "prod", "version": "9.9.9"}},
        headers=local_stack.headers("viewer"),
        timeout=30,
    )
    assert response.status_code == 403, response.text
    assert local_stack.run_count() == before


def test_ci_client_deploys_3_0_0(local_stack: RunningStack) -> None:
    code, output, _ = ci(
        local_stack, "deploy", "--app", "shop", "--environment", "prod", "--version", "3.0.0"
    )
    assert code == 0, output
    assert "launch.launch_fleet" in output and "-> success" in output
    assert "server group: `shop-prod-v003` (2 instances), replacing `shop-prod-v002`" in output
    assert "run manual__" in output and "succeeded after" in output


def test_ci_client_failed_deploy_names_the_task_and_its_log(local_stack: RunningStack) -> None:
    code, output, _ = ci(
        local_stack,
        "deploy",
        "--app",
        "shop",
        "--environment",
        "prod",
        "--version",
        "3.1.0",
        "--ami-id",
        "ami-00000000000000000",
    )
    assert code == 1, output
    # The plan checks the given image before anything changes: `prepare` fails with InvalidInput.
    assert "FAILED: prepare" in output
    assert "ami_id: image ami-00000000000000000 does not exist" in output
    assert "failed: prepare" in output


def test_ci_client_rolls_back_to_the_kept_group(local_stack: RunningStack) -> None:
    code, output, _ = ci(local_stack, "rollback", "--app", "shop", "--environment", "prod")
    assert code == 0, output
    assert "now runs 2.0.0" in output and "shop-prod-v002" in output


def _trigger(stack: RunningStack, dag_id: str, conf: dict[str, Any]) -> str:
    response = requests.post(
        f"{stack.api_url}/api/v2/dags/{dag_id}/dagRuns",
        json={"logical_date": None, "conf": conf},
        headers=stack.headers(),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["dag_run_id"])


def _wait_for_run(
    stack: RunningStack, dag_id: str, run_id: str, timeout: float = CI_TIMEOUT
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(
            f"{stack.api_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=stack.headers(), timeout=30
        )
        response.raise_for_status()
        run = response.json()
        if run["state"] in ("success", "failed"):
            return dict(run)
        assert time.monotonic() < deadline, (
            f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f} s"
        )
        time.sleep(2)


def test_nightly_rebuild_triggers_a_deploy_of_the_live_version(local_stack: RunningStack) -> None:
    """Through the real scheduler and triggerer: the nightly DAG triggers immutable_deploy and waits for it."""
    started = time.monotonic()
    run_id = _trigger(local_stack, "immutable_nightly_rebuild", {"targets": ["shop/prod"]})
    nightly = _wait_for_run(local_stack, "immutable_nightly_rebuild", run_id)
    print(f"\nnightly rebuild finished {nightly['state']} in {time.monotonic() - started:.0f} s")
    assert nightly["state"] == "success"

    runs = requests.get(
        f"{local_stack.api_url}/api/v2/dags/immutable_deploy/dagRuns",
        params={"order_by": "-start_date", "limit": 1},
        headers=local_stack.headers(),
        timeout=30,
    ).json()["dag_runs"]
    triggered = runs[0]
    # The live version after the rollback test is 2.0.0: the nightly run redeployed exactly that.
    # The live group and version the nightly saw: the deploy checks them again under the lock.
    assert triggered["conf"] == {
        "app": "shop",
        "environment": "prod",
        "version": "2.0.0",
        "expect_live_group": "shop-prod-v002",
        "expect_live_version": "2.0.0",
    }
    assert triggered["state"] == "success"


class TargetSampler(threading.Thread):
    """Looks at a target group every `interval` seconds until stopped: the fewest healthy targets seen,
    every state seen, and each look (seconds, healthy count, states) for the failure message."""

    def __init__(self, elbv2: Any, target_group_arn: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.elbv2 = elbv2
        self.arn = target_group_arn
        self.interval = interval
        self.halt = threading.Event()
        self.looks: list[tuple[float, int, list[str]]] = []
        self.states_seen: set[str] = set()
        self.error: Exception | None = None

    def run(self) -> None:
        started = time.monotonic()
        while not self.halt.is_set():
            try:
                found = self.elbv2.describe_target_health(TargetGroupArn=self.arn)["TargetHealthDescriptions"]
            except Exception as error:  # the test fails on it: a sampler that stopped proves nothing
                self.error = error
                return
            states = sorted(d["TargetHealth"]["State"] for d in found)
            self.looks.append((time.monotonic() - started, states.count("healthy"), states))
            self.states_seen |= set(states)
            self.halt.wait(self.interval)

    @property
    def lowest(self) -> int | None:
        return min((healthy for _, healthy, _ in self.looks), default=None)

    def __enter__(self) -> TargetSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(timeout=30)


def test_a_deploy_over_rest_never_has_fewer_healthy_targets_than_the_live_fleet(
    local_stack: RunningStack,
) -> None:
    """Sampled from outside, during a deploy the real scheduler and triggerer run: new targets come
    up through `initial`, old ones leave through `draining`, and capacity never drops meanwhile."""
    elbv2, autoscaling = local_stack.aws("elbv2"), local_stack.aws("autoscaling")
    arn = elbv2.describe_target_groups(Names=[LIVE_TARGET_GROUP])["TargetGroups"][0]["TargetGroupArn"]
    live = [
        g
        for g in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
        if arn in g["TargetGroupARNs"]
    ]
    assert len(live) == 1, live
    size, old_ids = live[0]["DesiredCapacity"], {i["InstanceId"] for i in live[0]["Instances"]}
    started = time.monotonic()
    with TargetSampler(elbv2, arn) as sampler:
        run_id = _trigger(
            local_stack, "immutable_deploy", {"app": "shop", "environment": "prod", "version": "4.0.0"}
        )
        run = _wait_for_run(local_stack, "immutable_deploy", run_id)
    print(
        f"\ndeploy of 4.0.0 {run['state']} in {time.monotonic() - started:.0f} s: "
        f"{len(sampler.looks)} looks, fewest healthy {sampler.lowest} (fleet of {size}), "
        f"states {sorted(sampler.states_seen)}"
    )
    assert run["state"] == "success", run
    assert sampler.error is None and len(sampler.looks) > 50
    assert sampler.lowest is not None and sampler.lowest >= size, [
        look for look in sampler.looks if look[1] < size
    ][:5]
    assert {"initial", "draining"} <= sampler.states_seen, sampler.states_seen
    found = elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    serving = {d["Target"]["Id"] for d in found if d["TargetHealth"]["State"] == "healthy"}
    assert len(serving) == size == len(found) and not serving & old_ids


def _task_state(stack: RunningStack, run_id: str, task_id: str) -> str | None:
    response = requests.get(
        f"{stack.api_url}/api/v2/dags/immutable_deploy/dagRuns/{run_id}/taskInstances/{task_id}",
        headers=stack.headers(),
        timeout=30,
    )
    response.raise_for_status()
    state = response.json().get("state")
    return str(state) if state else None


def _until(what: str, check: Any, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def test_a_run_marked_failed_mid_swap_through_the_rest_api_is_undone_and_capacity_never_drops(
    local_stack: RunningStack,
) -> None:
    """An operator marks the run failed while both fleets are attached: undo (a teardown task) still
    runs, puts the live group alone behind the load balancer and removes the new group; the lock is free."""
    elbv2, autoscaling = local_stack.aws("elbv2"), local_stack.aws("autoscaling")
    arn = elbv2.describe_target_groups(Names=[LIVE_TARGET_GROUP])["TargetGroups"][0]["TargetGroupArn"]
    (live,) = [
        g
        for g in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
        if arn in g["TargetGroupARNs"]
    ]
    size = live["DesiredCapacity"]
    with TargetSampler(elbv2, arn) as sampler:
        run_id = _trigger(
            local_stack, "immutable_deploy", {"app": "shop", "environment": "prod", "version": "5.0.0"}
        )
        # Mid-swap: the new group is attached beside the live one, the health gate is waiting.
        _until(
            "the health gate",
            # Deferred: marking the run failed then skips the gate instead of failing it.
            lambda: _task_state(local_stack, run_id, "cutover.health_gate") == "deferred",
        )
        marked = requests.patch(
            f"{local_stack.api_url}/api/v2/dags/immutable_deploy/dagRuns/{run_id}",
            params={"update_mask": "state"},
            json={"state": "failed"},
            headers=local_stack.headers(),
            timeout=30,
        )
        assert marked.status_code == 200, marked.text
        undo = _until(
            "undo_on_failure to finish",
            lambda: (
                (state := _task_state(local_stack, run_id, "undo_on_failure")) in ("success", "failed")
                and state
            ),
        )
        _until(
            "the lock's release",
            lambda: _task_state(local_stack, run_id, "release_lock") in ("success", "failed"),
        )
    assert undo == "success"

    def groups_of(version: str) -> list[str]:
        found = autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
        return [
            g["AutoScalingGroupName"]
            for g in found
            if {t["Key"]: t["Value"] for t in g["Tags"]}.get("immutable:version") == version
        ]

    attached = [
        g["AutoScalingGroupName"]
        for g in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
        if arn in g["TargetGroupARNs"]
    ]
    assert attached == [live["AutoScalingGroupName"]]
    # The new group was force-deleted: AWS shows it `Delete in progress` for a while, then it is gone.
    _until("the new group's deletion", lambda: not groups_of("5.0.0"), timeout=120)
    assert current_holder(local_stack.aws("dynamodb"), "shop", "prod") is None
    assert sampler.error is None and sampler.lowest is not None and sampler.lowest >= size, sampler.looks[:5]


def _clear(stack: RunningStack, run_id: str, task_id: str) -> None:
    """The UI's "Clear" with "Downstream" on one task of a finished run."""
    response = requests.post(
        f"{stack.api_url}/api/v2/dags/immutable_deploy/clearTaskInstances",
        json={
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [task_id],
            "include_downstream": True,
            "only_failed": False,
            "reset_dag_runs": True,
        },
        headers=stack.headers(),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    cleared = {ti["task_id"] for ti in response.json()["task_instances"]}
    assert {task_id, "release_lock"} <= cleared, cleared


def _task_log(stack: RunningStack, run_id: str, task_id: str) -> str:
    from immudeploy_ci.api import format_log_content

    instance = requests.get(
        f"{stack.api_url}/api/v2/dags/immutable_deploy/dagRuns/{run_id}/taskInstances/{task_id}",
        headers=stack.headers(),
        timeout=30,
    ).json()
    response = requests.get(
        f"{stack.api_url}/api/v2/dags/immutable_deploy/dagRuns/{run_id}/taskInstances/{task_id}"
        f"/logs/{instance['try_number']}",
        params={"full_content": "true"},
        headers={**stack.headers(), "Accept": "application/json"},
        timeout=30,
    )
    response.raise_for_status()
    return "\n".join(format_log_content(response.json().get("content", [])))


def test_a_failed_task_cleared_through_the_rest_api_reruns_only_under_the_lock(
    local_stack: RunningStack,
) -> None:
    """A deploy fails at launch (the role may not create groups); the operator fixes that and clears
    the launch "and downstream" in the UI. While another run holds the lock, the cleared launch fails
    naming it and nothing changes; once the lock is free, the cleared run takes it back and completes
    the swap, the healthy count never below the live size, and gives the lock back."""
    from immudeploy.aws.lock import LockHolder, acquire_lock, release_lock
    from immudeploy_dev.standin.client import StandInClient

    elbv2, autoscaling = local_stack.aws("elbv2"), local_stack.aws("autoscaling")
    dynamodb = local_stack.aws("dynamodb")
    standin = StandInClient(local_stack.aws_url)
    arn = elbv2.describe_target_groups(Names=[LIVE_TARGET_GROUP])["TargetGroups"][0]["TargetGroupArn"]

    def attached() -> list[dict[str, Any]]:
        groups = autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
        return [g for g in groups if arn in g["TargetGroupARNs"]]

    (live,) = attached()
    size = live["DesiredCapacity"]
    groups_before = {
        g["AutoScalingGroupName"] for g in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    }

    run_id = _trigger(
        local_stack, "immutable_deploy", {"app": "shop", "environment": "prod", "version": "7.0.0"}
    )
    # The staging group exists by now; the fleet's group is the next one the run creates.
    _until(
        "the staging group", lambda: _task_state(local_stack, run_id, "staging.wait_in_service") == "success"
    )
    with standin.inject("autoscaling", "CreateAutoScalingGroup", "denied"):
        assert _wait_for_run(local_stack, "immutable_deploy", run_id)["state"] == "failed"
    assert _task_state(local_stack, run_id, "launch.launch_fleet") == "failed"
    assert "AccessDenied" in _task_log(local_stack, run_id, "launch.launch_fleet")
    assert current_holder(dynamodb, "shop", "prod") is None  # released at the end of the failed run
    # launch_fleet had pinned the live group before the refused create: undo gave its scaling back.
    (after,) = attached()
    assert (after["MinSize"], after["MaxSize"], after["DesiredCapacity"]) == (
        live["MinSize"],
        live["MaxSize"],
        size,
    )
    assert after["SuspendedProcesses"] == live["SuspendedProcesses"]

    # Meanwhile a run of another Airflow installation took the lock (fresh heartbeat).
    other = LockHolder("immutable_deploy", "manual__other-installation")
    acquire_lock(dynamodb, "shop", "prod", other, wait_seconds=0, poll_interval=1, stale_after_seconds=300)
    _clear(local_stack, run_id, "launch.launch_fleet")
    assert _wait_for_run(local_stack, "immutable_deploy", run_id)["state"] == "failed"
    assert _task_state(local_stack, run_id, "launch.launch_fleet") == "failed"
    log = _task_log(local_stack, run_id, "launch.launch_fleet")
    assert "locked by run manual__other-installation of immutable_deploy" in log, log[-2000:]
    groups_now = {
        g["AutoScalingGroupName"] for g in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    }
    assert groups_now == groups_before  # the cleared launch changed nothing while it did not hold the lock
    holder = current_holder(dynamodb, "shop", "prod")
    assert holder is not None and holder.same_run(other)  # and its release_lock left the other's lock alone

    assert release_lock(dynamodb, "shop", "prod", other)
    with TargetSampler(elbv2, arn) as sampler:
        _clear(local_stack, run_id, "launch.launch_fleet")
        run = _wait_for_run(local_stack, "immutable_deploy", run_id)
    assert run["state"] == "success", run
    (serving,) = attached()
    assert serving["AutoScalingGroupName"] != live["AutoScalingGroupName"]
    assert serving["DesiredCapacity"] == size
    assert {t["Key"]: t["Value"] for t in serving["Tags"]}["immutable:version"] == "7.0.0"
    assert current_holder(dynamodb, "shop", "prod") is None
    assert sampler.error is None and sampler.lowest is not None and sampler.lowest >= size, sampler.looks[:5]


def test_a_second_run_started_mid_swap_waits_for_the_lock_then_deploys_over_the_finished_swap(
    local_stack: RunningStack,
) -> None:
    """CI triggers 8.1.0 while 8.0.0 is mid-swap (both fleets attached): the second run waits in
    `prepare` for the lock, changes nothing meanwhile, then deploys over 8.0.0; capacity never drops."""
    elbv2, autoscaling = local_stack.aws("elbv2"), local_stack.aws("autoscaling")
    arn = elbv2.describe_target_groups(Names=[LIVE_TARGET_GROUP])["TargetGroups"][0]["TargetGroupArn"]

    def attached() -> list[dict[str, Any]]:
        groups = autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
        return [g for g in groups if arn in g["TargetGroupARNs"]]

    (live,) = attached()
    size = live["DesiredCapacity"]
    with TargetSampler(elbv2, arn) as sampler:
        first = _trigger(
            local_stack, "immutable_deploy", {"app": "shop", "environment": "prod", "version": "8.0.0"}
        )
        _until("the first run's health gate", lambda: len(attached()) == 2)
        second = _trigger(
            local_stack, "immutable_deploy", {"app": "shop", "environment": "prod", "version": "8.1.0"}
        )
        assert _wait_for_run(local_stack, "immutable_deploy", first)["state"] == "success"
        # While the first run swapped, the second one only waited: it launched nothing.
        assert _task_state(local_stack, second, "launch.launch_fleet") in (None, "scheduled", "queued")
        assert _wait_for_run(local_stack, "immutable_deploy", second)["state"] == "success"
    assert "waiting up to" in _task_log(local_stack, second, "prepare")
    (serving,) = attached()
    assert {t["Key"]: t["Value"] for t in serving["Tags"]}["immutable:version"] == "8.1.0"
    assert serving["DesiredCapacity"] == size
    assert sampler.error is None and sampler.lowest is not None and sampler.lowest >= size, sampler.looks[:5]
