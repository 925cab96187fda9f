"""The Airflow UI of the local stack in headless Chromium: log in as deployer, open the finished deploy
run's grid, screenshot it, and find every phase in the page (Chrome DevTools Protocol over websocket)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from e2e.test_local_stack import DAG_RUNS, RunningStack, local_stack  # noqa: F401 (the shared stack fixture)

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
PHASES = ("bake", "staging", "launch", "cutover", "drain", "teardown")


class Browser:
    """Headless Chromium in its own session, driven over the DevTools protocol of its first page."""

    def __init__(self, profile_dir: Path, timeout: float = 30.0) -> None:
        from websockets.sync.client import connect

        self.timeout = timeout
        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile_dir}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1600,1000",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(profile_dir / "chromium.log").open("w"),
            start_new_session=True,
        )
        try:
            port_file = profile_dir / "DevToolsActivePort"
            port = self._wait(
                "Chromium's DevTools port", lambda: port_file.exists() and port_file.read_text().split()[0]
            )
            pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(p for p in pages if p["type"] == "page")
            self.socket = connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10)
        except BaseException:
            self.close()
            raise
        self.ids = itertools.count(1)

    def _wait(self, what: str, check: Callable[[], Any], timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self.socket.recv(timeout=self.timeout))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message["result"])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float | None = None) -> Any:
        return self._wait(what, check, timeout)

    def type_into(self, selector: str, text: str) -> None:
        """Focus, then type as a user would (React sees real input events)."""
        assert self.evaluate(
            f"(e => !!e && (e.focus(), true))(document.querySelector({json.dumps(selector)}))"
        )
        self.call("Input.insertText", text=text)

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the README's set-up (scripts/bootstrap) installs Debian's chromium package"
        )
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
    browser = Browser(profile)
    try:
        yield browser
    finally:
        browser.close()


def finished_deploy_run(stack: RunningStack, version: str) -> str:
    response = requests.get(
        f"{stack.api_url}{DAG_RUNS}", params={"limit": 100}, headers=stack.headers(), timeout=30
    )
    response.raise_for_status()
    runs = [
        r
        for r in response.json()["dag_runs"]
        if (r.get("conf") or {}).get("version") == version and r["state"] == "success"
    ]
    assert runs, f"no successful deploy of {version}"
    return str(runs[0]["dag_run_id"])


def test_login_and_grid_of_the_finished_deploy(
    local_stack: RunningStack,  # noqa: F811
    browser: Browser,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    run_id = finished_deploy_run(local_stack, "2.0.0")
    grid_url = f"{local_stack.api_url}/dags/immutable_deploy/runs/{quote(run_id, safe='')}"
    browser.call("Page.enable")
    browser.call("Page.navigate", url=grid_url)

    # Not logged in: the UI sends the browser to the simple auth manager's login form.
    browser.wait_for(
        "the login form", lambda: browser.evaluate("!!document.querySelector('input[name=password]')"), 60
    )
    assert "/auth/login" in browser.evaluate("location.href")
    browser.type_into("input[name=username]", "deployer")
    browser.type_into("input[name=password]", local_stack.passwords["deployer"])
    browser.evaluate("document.querySelector('button[type=submit]').click()")

    def grid_rows() -> list[str] | None:
        lines = {line.strip() for line in browser.text().splitlines()}
        return sorted(lines) if all(phase in lines for phase in PHASES) else None

    browser.wait_for("the grid with every phase after logging in", grid_rows, 60)
    time.sleep(1)  # let the grid's bars finish rendering before the screenshot
    text = browser.text()
    assert browser.evaluate("location.href") == grid_url
    lines = {line.strip() for line in text.splitlines()}
    missing = [phase for phase in PHASES if phase not in lines]
    assert not missing, f"phases missing from the grid: {missing}\n{text[:2000]}"
    assert run_id in text and "Success" in text and "deployer" in text

    shot = tmp_path / "grid.png"
    shot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot of the grid: {shot} ({time.monotonic() - started:.1f} s)")
