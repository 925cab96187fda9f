"""Deploys on the AWS behaviour layer with time: targets take time to turn healthy, detaches are
asynchronous, old targets drain. A sampler of the live target group checks capacity never drops."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_fixtures import APP, BASE_IMAGE, ENVIRONMENT

from e2e.test_deploy_dag import REPO, load_dag, orphan_instances, task_states
from immudeploy.core.naming import TAG_APP, TAG_ENVIRONMENT, TAG_VERSION, as_aws_tags
from immudeploy.core.plan import Capacity
from immudeploy_dev.demo import seed_live_fleet

# 60 s of boot is 1.2 s here; the demo target group's 5 s x 2 health checks are 0.2 s.
TIME_SCALE = 0.02


class HealthySampler(threading.Thread):
    """Counts the healthy targets of a target group every `interval` seconds while a run goes on."""

    def __init__(self, elbv2: Any, target_group_arn: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.elbv2 = elbv2
        self.arn = target_group_arn
        self.interval = interval
        self.halt = threading.Event()
        self.lowest: int | None = None
        self.samples = 0
        self.unreachable = 0
        self.states_seen: set[str] = set()
        self.timeline: list[tuple[float, int, list[str]]] = []

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                found = self.elbv2.describe_target_health(TargetGroupArn=self.arn)["TargetHealthDescriptions"]
            except Exception:  # an outage of the endpoint: nothing to count, not zero healthy
                self.unreachable += 1
            else:
                healthy = sum(1 for d in found if d["TargetHealth"]["State"] == "healthy")
                self.timeline.append(
                    (time.monotonic(), healthy, sorted(d["TargetHealth"]["State"] for d in found))
                )
                self.states_seen |= {d["TargetHealth"]["State"] for d in found}
                self.lowest = healthy if self.lowest is None else min(self.lowest, healthy)
                self.samples += 1
            self.halt.wait(self.interval)

    def __enter__(self) -> HealthySampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(timeout=10)


def write_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, staging: bool = True, **env: Any
) -> None:
    config = yaml.safe_load((REPO / "config" / "deployments.yaml").read_text())
    app = config["apps"][APP]
    app["packer_template"] = str(REPO / "packer")
    target = app["environments"][ENVIRONMENT]
    target["observation_minutes"] = 0
    if not staging:
        del target["staging"]
    target.update(env)
    path = tmp_path / "deployments.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("IMMUDEPLOY_CONFIG", str(path))


def healthy_ids(clients: Any, target_group_arn: str) -> set[str]:
    found = clients.elbv2.describe_target_health(TargetGroupArn=target_group_arn)["TargetHealthDescriptions"]
    return {d["Target"]["Id"] for d in found if d["TargetHealth"]["State"] == "healthy"}


def wait_healthy(clients: Any, target_group_arn: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(healthy_ids(clients, target_group_arn)) < count:
        assert time.monotonic() < deadline, f"{count} healthy targets never showed up"
        time.sleep(0.05)


def group_names(clients: Any) -> set[str]:
    return {
        g["AutoScalingGroupName"]
        for g in clients.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    }


@pytest.mark.parametrize("size", [3, 30])
def test_both_fleets_serve_while_the_old_one_drains_and_capacity_never_drops(
    airflow_db, aws, fleet_clients, demo_network, live_of, tmp_path, monkeypatch, size
) -> None:
    write_config(tmp_path, monkeypatch)
    old = live_of(size)
    # Draining runs the whole deregistration delay, not the idle tenth of it: ten times longer on
    # the time scale, so the sampler sees it even on a busy machine.
    aws.standin.set_target_group(demo_network.target_group_arn, drain_fraction=1.0)
    with HealthySampler(fleet_clients.elbv2, demo_network.target_group_arn) as sampler:
        run = load_dag("immutable_deploy").test(
            run_conf={"app": APP, "environment": ENVIRONMENT, "version": "2.0.0"}
        )
    assert str(run.state) == "success", task_states(run)
    print(
        f"fleet of {size}: {sampler.samples} samples, lowest healthy {sampler.lowest}, saw {sampler.states_seen}"
    )
    assert sampler.samples > 10 and sampler.lowest is not None
    assert sampler.lowest >= size, [s for s in sampler.timeline if s[1] < size][:5]
    # The waits waited for something: new targets came up through `initial`, old ones left through `draining`.
    assert {"initial", "draining"} <= sampler.states_seen
    serving = healthy_ids(fleet_clients, demo_network.target_group_arn)
    assert len(serving) == size and not serving & old
    assert orphan_instances(fleet_clients) == set()


def _broken_image(clients: Any, version: str) -> str:
    """An image of the app whose instances fail their health checks on the stand-in."""
    image_id = clients.ec2.copy_image(
        SourceImageId=BASE_IMAGE, SourceRegion="us-east-1", Name=f"shop-{version}"
    )["ImageId"]
    tags = {TAG_APP: APP, TAG_ENVIRONMENT: ENVIRONMENT, TAG_VERSION: version, "standin:health": "broken"}
    clients.ec2.create_tags(Resources=[image_id], Tags=as_aws_tags(tags))
    return image_id


def test_a_broken_image_fails_the_health_gate_naming_the_instance_and_the_live_fleet_keeps_serving(
    airflow_db, aws, fleet_clients, demo_network, live_of, tmp_path, monkeypatch, capfd
) -> None:
    # A short grace period: the gate tolerates `unhealthy` during it, then fails at once.
    write_config(tmp_path, monkeypatch, staging=False, health_check_grace_period_seconds=5)
    old = live_of(3)
    image_id = _broken_image(fleet_clients, "2.0.0")
    with HealthySampler(fleet_clients.elbv2, demo_network.target_group_arn) as sampler:
        run = load_dag("immutable_deploy").test(
            run_conf={"app": APP, "environment": ENVIRONMENT, "version": "2.0.0", "ami_id": image_id}
        )
    states = task_states(run)
    assert str(run.state) == "failed"
    assert states["cutover.health_gate"] == "failed" and states["undo_on_failure"] == "success"
    # The task's log (dag.test() prints it) names each instance and AWS's reason.
    out, err = capfd.readouterr()
    failure = next(line for line in (out + err).splitlines() if "DeployError: Failed waiting for" in line)
    assert "Target.FailedHealthChecks" in failure
    new_ids = [word for word in failure.replace(",", " ").split() if word.startswith("i-")]
    assert len(set(new_ids)) == 3 and not set(new_ids) & old
    assert sampler.lowest is not None and sampler.lowest >= 3
    assert healthy_ids(fleet_clients, demo_network.target_group_arn) == old
    assert group_names(fleet_clients) == {"shop-prod-v001"}
    assert orphan_instances(fleet_clients) == set()


# --- the drain sensor against AWS's asynchronous detach and draining ----------------------------


def _detach_live(fleet_clients: Any, demo_network: Any, new_size: int = 3) -> list[str]:
    """Put a second group in front (healthy), then detach the live one; returns its instance ids."""
    from immudeploy.aws.groups.traffic import detach_server_group

    old = sorted(healthy_ids(fleet_clients, demo_network.target_group_arn))
    capacity = Capacity(min=new_size, max=new_size, desired=new_size)
    seed_live_fleet(fleet_clients, demo_network, APP, ENVIRONMENT, "2.0.0", BASE_IMAGE, capacity)
    wait_healthy(fleet_clients, demo_network.target_group_arn, len(old) + new_size)
    detach_server_group(fleet_clients, "shop-prod-v001", [demo_network.target_group_arn])
    return old


def _drain_sensor(demo_network: Any, instance_ids: list[str], **kwargs: Any) -> Any:
    from immudeploy.airflow.operators.waits import DrainSensor

    return DrainSensor(
        task_id="wait_drained",
        target_group_arns=[demo_network.target_group_arn],
        instance_ids=instance_ids,
        deferrable=False,
        poll_interval=0.02,
        **kwargs,
    )


def _states(clients: Any, arn: str, ids: list[str]) -> set[str]:
    found = clients.elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    return {d["TargetHealth"]["State"] for d in found if d["Target"]["Id"] in ids}


def test_the_drain_sensor_waits_until_the_old_targets_left_not_while_they_are_still_healthy(
    aws, fleet_clients, demo_network, live_of
) -> None:
    live_of(3)
    aws.standin.configure(time_scale=0.1)  # detach takes effect 0.2 s later; draining 10% of 30 s = 0.3 s
    # Counted from the detach call: the targets cannot have left before 0.2 + 0.3 s after it.
    started = time.monotonic()
    old = _detach_live(fleet_clients, demo_network)
    # AWS deregisters after the call returned: right now the old targets still look healthy.
    assert _states(fleet_clients, demo_network.target_group_arn, old) == {"healthy"}
    _drain_sensor(demo_network, old).execute({})
    waited = time.monotonic() - started
    assert _states(fleet_clients, demo_network.target_group_arn, old) == set()
    assert waited >= 0.2 + 0.3 - 0.05, f"returned after {waited:.2f}s, before the targets could have drained"


def test_the_drain_ends_early_when_the_old_instances_have_no_connections_left(
    aws, fleet_clients, demo_network, live_of
) -> None:
    live_of(3)
    aws.standin.configure(time_scale=0.1)
    aws.standin.set_target_group(demo_network.target_group_arn, drain_fraction=1.0)  # 30 s -> 3 s
    old = _detach_live(fleet_clients, demo_network)

    def connections_closed() -> None:
        time.sleep(0.8)
        for instance_id in old:
            aws.standin.set_connections_closed(instance_id)

    closer = threading.Thread(target=connections_closed)
    started = time.monotonic()
    closer.start()
    _drain_sensor(demo_network, old).execute({})
    closer.join()
    waited = time.monotonic() - started
    assert 0.8 <= waited < 2.5, f"took {waited:.2f}s: the drain should end when the connections closed"


def test_a_drain_that_outlasts_its_timeout_fails_naming_the_targets(
    aws, fleet_clients, demo_network, live_of
) -> None:
    from immudeploy.core.errors import WaitTimeout

    live_of(3)
    aws.standin.configure(time_scale=0.1)
    aws.standin.set_target_group(demo_network.target_group_arn, drain_fraction=1.0)
    old = _detach_live(fleet_clients, demo_network)
    with pytest.raises(WaitTimeout) as timed_out:
        _drain_sensor(demo_network, old, timeout_seconds=1).execute({})
    message = str(timed_out.value)
    assert "draining" in message and all(instance_id in message for instance_id in old)


# --- throttling ---------------------------------------------------------------------------------


def test_a_burst_of_throttling_on_every_call_site_is_absorbed_and_the_deploy_succeeds(
    airflow_db, aws, fleet_clients, demo_network, live_of, tmp_path, monkeypatch
) -> None:
    write_config(tmp_path, monkeypatch)
    live_of(3)
    stop = threading.Event()

    def bursts() -> None:
        # Every 2 s, 0.4 s during which every call to every service is throttled, whichever step
        # makes it: bursts, as AWS's rate limits produce them, not sustained throttling. And the
        # first two calls to each service, so that the lock's and the bake's rare calls get theirs.
        for service in ("ec2", "autoscaling", "elasticloadbalancing", "ssm"):
            aws.standin.inject(service, "*", "throttle", count=2)
        while not stop.is_set():
            for service in ("ec2", "autoscaling", "elasticloadbalancing", "ssm"):
                aws.standin.inject(service, "*", "throttle", seconds=0.4)
            stop.wait(2.0)

    burster = threading.Thread(target=bursts, daemon=True)
    with HealthySampler(fleet_clients.elbv2, demo_network.target_group_arn) as sampler:
        burster.start()
        try:
            run = load_dag("immutable_deploy").test(
                run_conf={"app": APP, "environment": ENVIRONMENT, "version": "2.0.0"}
            )
        finally:
            stop.set()
            burster.join()
            aws.standin.clear_faults()
    throttled = [i for i in aws.standin.injections if i.kind == "throttle"]
    print(f"{len(throttled)} calls throttled across {sorted({i.service for i in throttled})}")
    assert str(run.state) == "success", task_states(run)
    assert len({i.service for i in throttled}) == 4 and len(throttled) > 10
    assert sampler.lowest is not None and sampler.lowest >= 3


# --- an outage of the endpoint ------------------------------------------------------------------


def test_a_30_second_outage_mid_swap_recovers_or_fails_clearly_and_never_empties_the_target_group(
    airflow_db, aws, fleet_clients, demo_network, live_of, tmp_path, monkeypatch, capfd
) -> None:
    write_config(tmp_path, monkeypatch, staging=False)
    old = live_of(3)
    outages: list[Any] = []

    def cut_when_the_new_fleet_registers() -> None:
        # Mid-swap: the new group's targets have joined the target group beside the old ones.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = fleet_clients.elbv2.describe_target_health(TargetGroupArn=demo_network.target_group_arn)
            if len(found["TargetHealthDescriptions"]) > len(old):
                outages.append(aws.standin.outage(30))
                return
            time.sleep(0.05)

    cutter = threading.Thread(target=cut_when_the_new_fleet_registers, daemon=True)
    with HealthySampler(fleet_clients.elbv2, demo_network.target_group_arn) as sampler:
        cutter.start()
        run = load_dag("immutable_deploy").test(
            run_conf={"app": APP, "environment": ENVIRONMENT, "version": "2.0.0"}
        )
        cutter.join()
    assert outages and outages[0].ended.is_set(), "the outage happened and ended during the run"
    out, err = capfd.readouterr()
    print(
        f"outage mid-swap: run {run.state}; {sampler.unreachable} samples refused, lowest healthy {sampler.lowest}"
    )
    # Whatever the outcome, the target group always had the live fleet's capacity when it answered.
    assert sampler.unreachable > 0 and sampler.lowest is not None and sampler.lowest >= 3
    serving = healthy_ids(fleet_clients, demo_network.target_group_arn)
    if str(run.state) == "success":
        assert len(serving) == 3 and not serving & old
    else:
        # A clear failure: a failed task whose error names the endpoint, and the old fleet serving.
        assert "Could not connect to the endpoint URL" in out + err
        assert serving == old and task_states(run)["undo_on_failure"] == "success"
    assert orphan_instances(fleet_clients) == set()
