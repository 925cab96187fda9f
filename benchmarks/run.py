"""Benchmarks that print figures: DAG parse, bake, swap at scale (seconds and AWS API calls), evaluators.

Run from the repository root:

    .venv/bin/python benchmarks/run.py           # full: fleets of 3, 30 and 100
    .venv/bin/python benchmarks/run.py --quick   # fleets of 3 and 30, fewer repetitions

Starts its own AWS stand-in (moto with the project's behaviour layer, time scale 0; in this process, on a free loopback port) and stops it at the end;
Packer runs as a child process in its own session and is always reaped. Nothing is left running.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
REGION = "us-east-1"
BASE_IMAGE = "ami-785db401"  # one of the public images moto ships
APP, ENVIRONMENT = "shop", "prod"

# Before anything imports airflow: a throwaway home, no example DAGs, and credentials for moto only.
_HOME = tempfile.mkdtemp(prefix="immudeploy-bench-home-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = REGION
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# This process only (the DAG parse subprocess gets Airflow's default): no INFO lines in the table.
_PARSE_ENV = dict(os.environ)
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
import boto3  # noqa: E402
import requests  # noqa: E402

from immudeploy_dev.standin import StandIn  # noqa: E402


def _quiet_logs() -> None:
    # Airflow's import configures logging; the domain code logs every step at INFO.
    for name in ("immudeploy", "botocore", "boto3", "urllib3", "werkzeug", "airflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------


def _packer_version() -> str:
    packer = shutil.which("packer")
    if packer is None:
        return "not installed"
    out = subprocess.run([packer, "version"], capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()[0].strip() if out else "?"


def machine_line() -> str:
    from importlib.metadata import version

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: nproc {cores}, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, moto {version('moto')}, {_packer_version()}, "
        f"Airflow {version('apache-airflow')}, boto3 {version('boto3')}; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )


# ---------------------------------------------------------------------------------------------
# 1. DAG parse
# ---------------------------------------------------------------------------------------------

# Runs in a fresh interpreter: import Airflow once (like the dag-processor manager), then fork a
# child per measurement (like the processor does per file), so every "cold" parse pays the imports
# of the DAG files' own modules (immudeploy, provider code) and nothing else.
_PARSE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from airflow.dag_processing.dagbag import DagBag

    folder, runs = Path(sys.argv[1]), int(sys.argv[2])
    files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))

    def parse(target):
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(target))
        total = time.perf_counter() - started
        return {"total": total, "dags": len(bag.dag_ids), "errors": len(bag.import_errors),
                "files": {Path(s.file).name: s.duration.total_seconds() for s in bag.dagbag_stats}}

    def in_child(target):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                payload = json.dumps(parse(target)).encode()
            except BaseException as error:
                payload = json.dumps({"error": repr(error)}).encode()
            with os.fdopen(write, "wb") as out:
                out.write(payload)
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        return json.loads(data)

    result = {"folder_cold": [], "file_cold": {f.name: [] for f in files}, "folder_warm": []}
    for _ in range(runs):
        result["folder_cold"].append(in_child(folder))
        for f in files:
            result["file_cold"][f.name].append(in_child(f)["total"])
    parse(folder)  # warm up this process
    for _ in range(runs):
        result["folder_warm"].append(parse(folder))
    print("BENCH-JSON " + json.dumps(result))
    """
)


def bench_dag_parse(runs: int) -> list[str]:
    env = dict(_PARSE_ENV)
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_SCRIPT, str(DAGS), str(runs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(REPO),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH-JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"DAG parse run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    data = json.loads(lines[-1].removeprefix("BENCH-JSON "))
    errors = [run for run in data["folder_cold"] if "error" in run or run["errors"]]
    if errors:
        raise RuntimeError(f"DAG parse had errors: {errors[:1]}")

    med = statistics.median
    out = [
        f"1. DAG parse: DagBag over dags/, median of {runs} (cold = forked from a process with Airflow imported)"
    ]
    out.append(f"   {'file':<32}{'cold s':>9}{'warm s':>9}")
    for name, cold in sorted(data["file_cold"].items()):
        warm = med(run["files"].get(name, 0.0) for run in data["folder_warm"])
        out.append(f"   {name:<32}{med(cold):>9.3f}{warm:>9.3f}")
    dags = data["folder_cold"][0]["dags"]
    cold_total = med(run["total"] for run in data["folder_cold"])
    warm_total = med(run["total"] for run in data["folder_warm"])
    out.append(f"   {f'whole folder ({dags} DAGs, 0 errors)':<32}{cold_total:>9.3f}{warm_total:>9.3f}")
    return out


# ---------------------------------------------------------------------------------------------
# AWS clients that count their API calls
# ---------------------------------------------------------------------------------------------


@dataclass
class CountingClients:
    """boto3 clients against moto, shaped like immudeploy.aws.AwsClients, counting every API call."""

    endpoint_url: str
    calls: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        from immudeploy.aws.connection import RETRY_CONFIG

        for service in ("ec2", "autoscaling", "elbv2", "ssm"):
            client = boto3.client(
                service, endpoint_url=self.endpoint_url, region_name=REGION, config=RETRY_CONFIG
            )
            # before-call fires once per API call (each page of a paginator is one call).
            client.meta.events.register("before-call", self._count)
            setattr(self, service, client)

    def _count(self, model: Any = None, **_: Any) -> None:
        self.calls[f"{model.service_model.service_name}.{model.name}"] += 1

    @contextmanager
    def measure(self) -> Iterator[dict[str, Any]]:
        before = Counter(self.calls)
        result: dict[str, Any] = {}
        started = time.perf_counter()
        try:
            yield result
        finally:
            result["seconds"] = time.perf_counter() - started
            result["by_api"] = self.calls - before
            result["calls"] = sum(result["by_api"].values())


class MotoServer:
    """The AWS stand-in at time scale 0: AWS's order of events (asynchronous detach, draining), no waiting."""

    def __init__(self) -> None:
        self.server: StandIn | None = None
        self.endpoint_url = ""

    def __enter__(self) -> MotoServer:
        self.server = StandIn(time_scale=0.0)
        self.endpoint_url = self.server.endpoint_url
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()

    def reset(self) -> float:
        """Fresh state, then one untimed EC2 call: moto loads its ~1,300 public AMIs on first use.

        Returns the seconds that warm-up took (a moto cost, not one of the project's)."""
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=30).raise_for_status()
        started = time.perf_counter()
        ec2 = boto3.client("ec2", endpoint_url=self.endpoint_url, region_name=REGION)
        ec2.describe_images(ImageIds=[BASE_IMAGE])
        return time.perf_counter() - started

    def connection_json(self) -> str:
        return json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"region_name": REGION, "endpoint_url": self.endpoint_url},
            }
        )


# ---------------------------------------------------------------------------------------------
# 2. Bake
# ---------------------------------------------------------------------------------------------


def bench_bake(moto: MotoServer) -> list[str]:
    import airflow.providers.amazon.aws.hooks.base_aws  # noqa: F401  (configures logging: import first)

    from immudeploy.aws.connection import packer_aws_settings
    from immudeploy.release.bake import BakeRequest, BaseImage, bake_image, default_template_dir
    from immudeploy.release.packer import PackerRunner

    _quiet_logs()
    packer = shutil.which("packer")
    if packer is None:
        return ["2. Bake: skipped (no packer binary on PATH)"]
    warm_up = moto.reset()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = moto.connection_json()
    clients = CountingClients(moto.endpoint_url)
    settings = packer_aws_settings()
    phases: dict[str, float] = {}

    class TimedRunner(PackerRunner):
        def validate(self, *args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            try:
                super().validate(*args, **kwargs)
            finally:
                phases["validate"] = time.perf_counter() - started

        def build(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return super().build(*args, **kwargs)
            finally:
                phases["build"] = time.perf_counter() - started

    quiet = logging.getLogger("immudeploy.bench.packer")
    quiet.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="immudeploy-bench-packer-") as workdir:
        template = Path(workdir) / "packer"
        shutil.copytree(default_template_dir(), template)
        request = BakeRequest(
            app="web",
            version="1.4.2",
            environment="bench",
            template_dir=template,
            base_image=BaseImage(image_id=BASE_IMAGE),
            timeout_seconds=300,
        )
        with clients.measure() as first:
            baked = bake_image(
                clients.ec2, TimedRunner(packer, settings.environment, quiet), settings, request
            )
        if baked.reused:
            raise RuntimeError("the first bake against a fresh moto reused an image")
        with clients.measure() as again:
            rebaked = bake_image(
                clients.ec2, TimedRunner(packer, settings.environment, quiet), settings, request
            )
        if not rebaked.reused or rebaked.image_id != baked.image_id:
            raise RuntimeError(f"the re-bake did not reuse {baked.image_id}: {rebaked}")
    rest = first["seconds"] - phases.get("validate", 0.0) - phases.get("build", 0.0)
    return [
        "2. Bake: bake_image with the real packer binary against moto (template copied, base ami-785db401)",
        f"   {'step':<44}{'seconds':>9}{'API calls':>11}",
        f"   {'first bake (runs packer), total':<44}{first['seconds']:>9.2f}{first['calls']:>11}",
        f"   {'  packer validate':<44}{phases.get('validate', 0.0):>9.2f}{'':>11}",
        f"   {'  packer build -only=amazon-ebs.local':<44}{phases.get('build', 0.0):>9.2f}{'':>11}",
        f"   {'  lookups, fingerprint, availability wait':<44}{rest:>9.2f}{'':>11}",
        f"   {'re-bake, same inputs (image reused)':<44}{again['seconds']:>9.2f}{again['calls']:>11}",
        "   API calls: the Python side's boto3 calls only; packer's own EC2 calls are not counted.",
        f"   Excluded: moto's first EC2 call after a reset (loads its public AMIs), {warm_up:.2f} s.",
    ]


# ---------------------------------------------------------------------------------------------
# 3. Swap at scale
# ---------------------------------------------------------------------------------------------

# Row order of the table; what each step runs is in benchmarks/README.md.
SWAP_STEPS = (
    "pin live group",
    "launch new group",
    "in-service check",
    "attach new group",
    "health gate check",
    "detach old group",
    "drain check",
    "restore capacity",
    "retire old group",
)


def swap_once(moto: MotoServer, size: int) -> dict[str, Any]:
    from immudeploy.aws import target_health, waits
    from immudeploy.aws.groups import capacity, inventory, launch, retire, traffic
    from immudeploy.core.plan import Capacity
    from immudeploy_dev.demo import seed_demo_network, seed_live_fleet

    moto.reset()
    clients = CountingClients(moto.endpoint_url)
    size_limits = Capacity(min=size, max=2 * size, desired=size)
    started = time.perf_counter()
    env = seed_demo_network(clients, APP, ENVIRONMENT)
    live = seed_live_fleet(clients, env, APP, ENVIRONMENT, "1.0.0", BASE_IMAGE, size_limits)
    seed_seconds = time.perf_counter() - started
    tgs = [env.target_group_arn]
    steps: dict[str, dict[str, Any]] = {}

    def step(name: str, action: Callable[[], Any]) -> Any:
        with clients.measure() as measured:
            value = action()
        steps[name] = measured
        return value

    step("pin live group", lambda: capacity.pin_capacity(clients, live.name, live.capacity))
    spec = launch.LaunchSpec(
        app=APP,
        environment=ENVIRONMENT,
        version="1.1.0",
        image_id=BASE_IMAGE,
        deploy_id=f"bench-{size}",
        instance_type="t3.micro",
        subnet_ids=list(env.subnet_ids),
        security_group_ids=[env.security_group_id],
        target_group_arns=[],
        capacity=size_limits.pinned(),
        ssm_config_path=f"/immutable/{APP}/{ENVIRONMENT}/1.1.0",
        cache_key_prefix=f"{APP}/{ENVIRONMENT}/1.1.0",
    )
    new = step("launch new group", lambda: launch.launch_server_group(clients, spec))
    status = step(
        "in-service check",
        lambda: waits.evaluate_in_service(inventory.describe_asg(clients.autoscaling, new.name), size),
    )
    _check(status, "in-service")
    new = step("attach new group", lambda: traffic.attach_server_group(clients, new.name, tgs))
    status = step(
        "health gate check",
        lambda: target_health.evaluate_health_gate(
            target_health.describe_targets(clients.elbv2, tgs, new.instance_ids), new.instance_ids
        ),
    )
    _check(status, "health gate")
    leaving = list(live.instance_ids)
    step("detach old group", lambda: traffic.detach_server_group(clients, live.name, tgs))
    status = step(
        "drain check",
        lambda: target_health.evaluate_drain(
            target_health.describe_targets(clients.elbv2, tgs, leaving), leaving
        ),
    )
    _check(status, "drain")
    step("restore capacity", lambda: capacity.restore_capacity(clients, new.name, size_limits))
    deleted = step(
        "retire old group", lambda: retire.retire_server_groups(clients, APP, ENVIRONMENT, 0, new.name, tgs)
    )
    if deleted != [live.name] or len(new.instance_ids) != size or len(leaving) != size:
        raise RuntimeError(f"unexpected swap at N={size}: deleted {deleted}, new {len(new.instance_ids)}")
    return {"seed_seconds": seed_seconds, "steps": steps}


def _check(status: Any, what: str) -> None:
    if not status.done or status.failed:
        raise RuntimeError(f"{what} not done on moto: {status.message}")


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median seconds per step over repeated swaps; the call counts must not vary between them."""
    steps: dict[str, dict[str, Any]] = {}
    for name in runs[0]["steps"]:
        counts = {run["steps"][name]["calls"] for run in runs}
        if len(counts) != 1:
            raise RuntimeError(f"{name}: API call count varies between identical swaps: {sorted(counts)}")
        steps[name] = {
            "seconds": statistics.median(run["steps"][name]["seconds"] for run in runs),
            "calls": counts.pop(),
            "by_api": runs[-1]["steps"][name]["by_api"],
        }
    return {"seed_seconds": statistics.median(run["seed_seconds"] for run in runs), "steps": steps}


def bench_swap(moto: MotoServer, sizes: list[int], repeats: int) -> list[str]:
    _quiet_logs()
    results = {size: _median_runs([swap_once(moto, size) for _ in range(repeats)]) for size in sizes}
    col = 15
    head = "".join(f"{f'N={size}':>{col}}" for size in sizes)
    out = [
        f"3. Swap at scale: live group of N -> new group of N, median of {repeats} swaps per N, moto in-process",
        "   cells: seconds / AWS API calls (boto3 before-call events; each paginator page is one call)",
        f"   {'step':<20}{head}",
    ]

    def cell(seconds: float, calls: int | str) -> str:
        return f"{seconds:>8.3f} /{calls:>4}"

    for name in SWAP_STEPS:
        row = "".join(
            f"{cell(results[s]['steps'][name]['seconds'], results[s]['steps'][name]['calls']):>{col}}"
            for s in sizes
        )
        out.append(f"   {name:<20}{row}")
    totals = "".join(
        f"{cell(sum(v['seconds'] for v in results[s]['steps'].values()), sum(v['calls'] for v in results[s]['steps'].values())):>{col}}"
        for s in sizes
    )
    out.append(f"   {'swap total':<20}{totals}")
    seeds = "".join(f"{cell(results[s]['seed_seconds'], '-'):>{col}}" for s in sizes)
    out.append(f"   {'(seeding the N live)':<20}{seeds}")
    # Where the calls go at the largest size: ELB and Auto Scaling describe calls are what throttles.
    largest = max(sizes)
    by_service: dict[str, Counter[str]] = {}
    for name in SWAP_STEPS:
        for api, count in results[largest]["steps"][name]["by_api"].items():
            by_service.setdefault(api.split(".")[0], Counter())[api.split(".")[1]] += count
    out.append(f"   API calls of the N={largest} swap by operation:")
    for service in sorted(by_service):
        items = [f"{op} {n}" for op, n in by_service[service].most_common()]
        line = f"     {service} ({sum(by_service[service].values())}): "
        for index, item in enumerate(items):
            piece = item + ("," if index < len(items) - 1 else "")
            if len(line) + len(piece) > 104 and not line.endswith(": "):
                out.append(line.rstrip())
                line = "       "
            line += piece + " "
        out.append(line.rstrip())
    return out


# ---------------------------------------------------------------------------------------------
# 4. Evaluators
# ---------------------------------------------------------------------------------------------

_TG = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop-prod-live/0123456789abcdef"


def _targets(count: int, state: str, every_tenth: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """One target group's describe_target_health answer: `count` instances, every tenth in another state."""
    ids = [f"i-{index:017x}" for index in range(count)]
    descriptions = []
    for index, instance_id in enumerate(ids):
        health: dict[str, str] = {"State": state}
        if every_tenth is not None and index % 10 == 0:
            health = {"State": every_tenth, "Reason": "Elb.InitialHealthChecking"}
        descriptions.append(
            {"Target": {"Id": instance_id, "Port": 80}, "HealthCheckPort": "80", "TargetHealth": health}
        )
    return {_TG: descriptions}, ids


def _per_call_us(call: Callable[[], Any], repeats: int) -> float:
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeats, number=number)) / number * 1e6


def bench_evaluators(sizes: list[int], repeats: int) -> list[str]:
    from immudeploy.aws.target_health import evaluate_drain, evaluate_health_gate

    def gate(state: str, every_tenth: str | None = None) -> Callable[[int], Callable[[], Any]]:
        def make(count: int) -> Callable[[], Any]:
            response, ids = _targets(count, state, every_tenth)
            return lambda: evaluate_health_gate(response, ids)

        return make

    def drain(state: str, every_tenth: str | None = None) -> Callable[[int], Callable[[], Any]]:
        def make(count: int) -> Callable[[], Any]:
            response, ids = _targets(count, state, every_tenth)
            return lambda: evaluate_drain(response, ids)

        return make

    cases = [
        ("health gate, all healthy", gate("healthy")),
        ("health gate, 10% initial", gate("healthy", "initial")),
        ("health gate, 10% unhealthy", gate("healthy", "unhealthy")),
        ("drain, all draining", drain("draining")),
        ("drain, 10% draining", drain("unused", "draining")),
    ]
    # Let the CPU leave its idle clock before the first figure.
    deadline = time.perf_counter() + 0.5
    while time.perf_counter() < deadline:
        pass
    col = 15
    head = "".join(f"{f'{n:,} targets':>{col}}" for n in sizes)
    out = [
        "4. Evaluators on synthetic describe_target_health answers (one target group, every target wanted):",
        f"   microseconds per evaluation, best of {repeats} timeit rounds",
        f"   {'case':<30}{head}",
    ]
    for label, make in cases:
        row = "".join(f"{_per_call_us(make(n), repeats):>{col},.0f}" for n in sizes)
        out.append(f"   {label:<30}{row}")
    return out


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fleets of 3 and 30, fewer repetitions")
    args = parser.parse_args(argv)
    sizes = [3, 30] if args.quick else [3, 30, 100]
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    print(f"immudeploy benchmarks ({mode}), {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(machine_line())
    print()
    try:
        for line in bench_dag_parse(runs=3):
            print(line, flush=True)
        print()
        # Pure Python, measured before Airflow and moto fill this process with threads and objects.
        evaluators = bench_evaluators([1_000, 10_000], repeats=3 if args.quick else 5)
        with MotoServer() as moto:
            for section in (lambda: bench_bake(moto), lambda: bench_swap(moto, sizes, repeats=3)):
                for line in section():
                    print(line, flush=True)
                print()
        for line in evaluators:
            print(line, flush=True)
    finally:
        shutil.rmtree(_HOME, ignore_errors=True)
    print()
    print(f"total benchmark wall time: {time.perf_counter() - started:.1f} s ({mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
