"""Faults on demand: which AWS request to hit (service, Action), with what error or delay, and the log of hits."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger("immudeploy_dev.standin")

KINDS = ("throttle", "error", "latency", "denied")
# What IAM answers a call the role may not make (403; botocore does not retry it), per protocol.
DENIED = {
    "ec2": (403, "UnauthorizedOperation", "You are not authorized to perform this operation."),
    "json": (400, "AccessDeniedException", "User is not authorized to perform this action"),
    "query": (403, "AccessDenied", "User is not authorized to perform this action"),
}
# boto3 client names whose SigV4 signing name differs.
SERVICE_ALIASES = {"elbv2": "elasticloadbalancing", "elb": "elasticloadbalancing"}

# (HTTP status, code, message) per protocol. Throttling codes and statuses are the ones botocore's
# _retry.json treats as throttling: RequestLimitExceeded/503 for EC2, ThrottlingException/400 for JSON
# services such as SSM, Throttling/400 for query services such as Auto Scaling and ELBv2.
THROTTLE = {
    "ec2": (503, "RequestLimitExceeded", "Request limit exceeded."),
    "json": (400, "ThrottlingException", "Rate exceeded"),
    "query": (400, "Throttling", "Rate exceeded"),
}
SERVER_ERRORS = {
    ("ec2", 500): "InternalError",
    ("ec2", 503): "Unavailable",
    ("json", 500): "InternalServerError",
    ("json", 503): "ServiceUnavailable",
    ("query", 500): "InternalFailure",
    ("query", 503): "ServiceUnavailable",
}
SERVER_MESSAGES = {
    500: "We encountered an internal error. Please try again.",
    503: "The service is unavailable. Please try again shortly.",
}


@dataclass(frozen=True)
class Call:
    """What an incoming request is: SigV4 signing name, API Action, and wire protocol."""

    service: str
    operation: str
    protocol: str


def identify(environ: dict[str, Any]) -> Call:
    """Read service and Action without consuming the body moto still has to read."""
    service = ""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 5:
            service = scope[3].lower()
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return Call(service, target.rsplit(".", 1)[-1], "json")
    body = b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length:
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
    params = parse_qs(environ.get("QUERY_STRING", ""))
    if "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
        params.update(parse_qs(body.decode("utf-8", "replace")))
    operation = params.get("Action", [""])[0]
    protocol = "ec2" if service == "ec2" else ("query" if operation else "rest")
    return Call(service, operation, protocol)


@dataclass
class Injection:
    """One injected fault, as the test reads it back."""

    at: float
    fault_id: str
    service: str
    operation: str
    kind: str
    status: int | None = None
    code: str | None = None
    delay: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Fault:
    """A fault rule; bounded by `count` matching calls and/or `seconds` of wall-clock time."""

    id: str
    service: str
    operation: str
    kind: str
    count: int | None = None
    seconds: float | None = None
    delay: float = 0.0
    status: int | None = None
    code: str | None = None
    created: float = field(default_factory=time.monotonic)
    fired: int = 0
    _on_exit: Callable[[Fault], None] | None = field(default=None, repr=False, compare=False)

    def expired(self, now: float) -> bool:
        return (self.count is not None and self.fired >= self.count) or (
            self.seconds is not None and now >= self.created + self.seconds
        )

    def matches(self, call: Call) -> bool:
        return self.service in ("*", call.service) and self.operation in ("*", call.operation)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("_on_exit", "created") and not (k == "delay" and self.kind != "latency")
        }

    def remove(self) -> None:
        if self._on_exit is not None:
            self._on_exit(self)

    def __enter__(self) -> Fault:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


def make_fault(
    service: str,
    operation: str = "*",
    kind: str = "throttle",
    *,
    count: int | None = None,
    seconds: float | None = None,
    delay: float = 0.0,
    status: int | None = None,
    code: str | None = None,
    fault_id: str | None = None,
) -> Fault:
    """Validate a fault's parameters (the in-process and the HTTP API share this)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "error" and status is not None and not 500 <= int(status) <= 599:
        raise ValueError(f"an error fault needs a 5xx status, got {status}")
    if kind == "latency" and float(delay) <= 0:
        raise ValueError("a latency fault needs delay > 0 seconds")
    if count is not None and int(count) < 1:
        raise ValueError("count must be at least 1")
    service = SERVICE_ALIASES.get(service.lower(), service.lower())
    return Fault(
        id=fault_id or uuid.uuid4().hex[:12],
        service=service,
        operation=operation,
        kind=kind,
        count=None if count is None else int(count),
        seconds=None if seconds is None else float(seconds),
        delay=float(delay),
        status=None if status is None else int(status),
        code=code,
    )


class FaultRegistry:
    """Active faults and the log of what they injected; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self.injections: list[Injection] = []

    def add(self, fault: Fault) -> Fault:
        fault._on_exit = lambda f: self.remove(f.id)
        with self._lock:
            self._faults[fault.id] = fault
        log.info("standin fault on: %s", fault.to_dict())
        return fault

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            fault = self._faults.pop(fault_id, None)
        if fault is not None:
            log.info("standin fault off: %s after %d hit(s)", fault_id, fault.fired)
        return fault is not None

    def clear(self, log_too: bool = False) -> None:
        with self._lock:
            self._faults.clear()
            if log_too:
                self.injections.clear()

    def active(self) -> list[Fault]:
        now = time.monotonic()
        with self._lock:
            return [f for f in self._faults.values() if not f.expired(now)]

    def record(self, injection: Injection) -> None:
        with self._lock:
            self.injections.append(injection)
        log.warning("standin injected %s", injection.to_dict())

    def take(self, call: Call) -> tuple[float, Fault | None]:
        """Consume the faults matching this call: total added latency and the first error fault."""
        delay, error = 0.0, None
        now = time.monotonic()
        hits: list[Fault] = []
        with self._lock:
            for fault in self._faults.values():
                if fault.expired(now) or not fault.matches(call):
                    continue
                if fault.kind == "latency":
                    delay += fault.delay
                elif error is None:
                    error = fault
                else:
                    continue
                fault.fired += 1
                hits.append(fault)
        for fault in hits:
            status, code = (None, None) if fault.kind == "latency" else error_code(fault, call)[:2]
            self.record(
                Injection(
                    time.time(),
                    fault.id,
                    call.service,
                    call.operation,
                    fault.kind,
                    status,
                    code,
                    fault.delay if fault.kind == "latency" else None,
                )
            )
        return delay, error


def error_code(fault: Fault, call: Call) -> tuple[int, str, str]:
    protocol = call.protocol if call.protocol in ("ec2", "json") else "query"
    if fault.kind == "throttle":
        status, code, message = THROTTLE[protocol]
    elif fault.kind == "denied":
        status, code, message = DENIED[protocol]
    else:
        status = fault.status or 500
        code = SERVER_ERRORS.get((protocol, status), "InternalFailure")
        message = SERVER_MESSAGES.get(status, "Service error")
    return fault.status or status, fault.code or code, message


def error_response(fault: Fault, call: Call) -> tuple[int, list[tuple[str, str]], bytes]:
    """The error as the service's protocol renders it, so botocore parses code and status as from AWS."""
    status, code, message = error_code(fault, call)
    request_id = str(uuid.uuid4())
    if call.protocol == "json":
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", request_id)]
    elif call.protocol == "ec2":
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
        ).encode()
        headers = [("Content-Type", "text/xml;charset=UTF-8")]
    else:
        kind = "Sender" if status < 500 else "Receiver"
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error><Type>{kind}</Type>'
            f"<Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    headers.append(("Content-Length", str(len(body))))
    return status, headers, body
