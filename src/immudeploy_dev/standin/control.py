"""The JSON control API under /_standin/, so tests and the demo can drive a stand-in in another process."""

from __future__ import annotations

import http
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.wsgi import ClosingIterator

from .faults import make_fault

if TYPE_CHECKING:
    from .server import StandIn

CONTROL_PREFIX = "/_standin/"

# Routes (JSON in, JSON out):
#   GET    /_standin/health                  {"ok": true, "endpoint_url", "settings", "faults", "pending_events"}
#   GET    /_standin/settings                current settings
#   POST   /_standin/settings                {"drain_fraction": 1.0, "boot_seconds": 30, ...} -> settings
#   POST   /_standin/target-groups           {"target_group_arn", "drain_fraction"}
#   POST   /_standin/broken                  {"image_id" | "instance_id", "broken": true}
#   GET    /_standin/faults                  active faults
#   POST   /_standin/faults                  {"service", "operation", "kind", "count", "seconds", "delay",
#                                             "status", "code"} -> the fault, with its "id"
#   DELETE /_standin/faults                  every fault off
#   DELETE /_standin/faults/ID               one fault off
#   GET    /_standin/injections              what was injected, oldest first
#   POST   /_standin/outage                  {"seconds"}: 202, then the port closes once this answer is sent
#   POST   /_standin/connections-closed      {"instance_id"} -> {"drains_ended": n}
#   POST   /_standin/reset                   moto reset plus the layer's state (settings stay)

StartResponse = Callable[..., Any]


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _reply(start_response: StartResponse, status: int, data: Any) -> list[bytes]:
    body = json.dumps(data, default=str).encode()
    start_response(
        f"{status} {http.HTTPStatus(status).phrase}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ControlError(400, "the body must be a JSON object")
    return data


def handle_control(
    standin: StandIn, environ: dict[str, Any], start_response: StartResponse
) -> Iterable[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    route = environ.get("PATH_INFO", "")[len(CONTROL_PREFIX) :].strip("/")
    try:
        body = _body(environ) if method in ("POST", "PUT") else {}
        if method == "POST" and route == "outage":
            seconds = float(body["seconds"])
            reply = _reply(start_response, 202, {"outage_seconds": seconds})
            # The port must close only after this answer went out, or the caller sees its own outage.
            return ClosingIterator(reply, [lambda: standin.outage(seconds)])
        status, data = _dispatch(standin, method, route, body)
    except ControlError as error:
        status, data = error.status, {"error": str(error)}
    except (KeyError, TypeError, ValueError) as error:
        status, data = 400, {"error": f"{type(error).__name__}: {error}"}
    return _reply(start_response, status, data)


def _dispatch(standin: StandIn, method: str, route: str, body: dict[str, Any]) -> tuple[int, Any]:
    if method == "GET" and route == "health":
        return 200, {"ok": True, **standin.describe()}
    if route == "settings":
        if method == "GET":
            return 200, standin.settings.to_dict()
        if method == "POST":
            return 200, standin.configure(**body)
    if method == "POST" and route == "target-groups":
        standin.set_target_group(body["target_group_arn"], drain_fraction=float(body["drain_fraction"]))
        return 200, standin.settings.to_dict()
    if method == "POST" and route == "broken":
        broken = bool(body.get("broken", True))
        if "image_id" in body:
            standin.mark_image_broken(body["image_id"], broken)
        elif "instance_id" in body:
            standin.mark_instance_broken(body["instance_id"], broken)
        else:
            raise ControlError(400, "give image_id or instance_id")
        return 200, standin.settings.to_dict()
    if route == "faults":
        if method == "GET":
            return 200, [f.to_dict() for f in standin.faults.active()]
        if method == "POST":
            fault = make_fault(
                body["service"],
                body.get("operation", "*"),
                body.get("kind", "throttle"),
                count=body.get("count"),
                seconds=body.get("seconds"),
                delay=body.get("delay", 0.0),
                status=body.get("status"),
                code=body.get("code"),
            )
            return 201, standin.faults.add(fault).to_dict()
        if method == "DELETE":
            standin.clear_faults()
            return 200, []
    if method == "DELETE" and route.startswith("faults/"):
        fault_id = route.split("/", 1)[1]
        if not standin.faults.remove(fault_id):
            raise ControlError(404, f"no active fault {fault_id}")
        return 200, {"removed": fault_id}
    if method == "GET" and route == "injections":
        return 200, [i.to_dict() for i in standin.injections]
    if method == "POST" and route == "connections-closed":
        return 200, {"drains_ended": standin.set_connections_closed(body["instance_id"])}
    if method == "POST" and route == "reset":
        standin.reset()
        return 200, {"reset": True}
    raise ControlError(404, f"no control route {method} {CONTROL_PREFIX}{route}")
