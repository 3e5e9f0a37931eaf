"""The central station for tests: ``calguard run`` as its own process, serving its station on
a free loopback port, fed by a file of bedside events and pump readings (the replay
driver follows it), with the ward's staff in its log; and a real Chromium to look at it.

The browser is Debian's chromium driven by its chromedriver through Selenium (no download
of a browser or a driver). Where it is missing, the tests fail with how to install it
(``.ci/run`` installs it), as the broker and database tests do: a skipped test checks
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from calguard.drivers.clock import SystemClock
from calguard.monitor.timeutil import format_ts
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tests.brokers import free_port
from tests.live import ROOT
from tests.people import PASSWORD, add_staff, keyring, token

CHROMIUM = os.environ.get("CALGUARD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("CALGUARD_CHROMEDRIVER")
    or shutil.which("chromedriver")
    or "/usr/bin/chromedriver"
)
SCREENSHOTS = ROOT / "build" / "screenshots"
CA = "Calcium gluconate 20 mg/ml"
SCREEN = (1366, 768)


def now_ts() -> str:
    return format_ts(SystemClock().now_us())


def admitted(bed: str, line: str, pump: str, *, t: str | None = None) -> list[dict[str, Any]]:
    """An infant, a PIV, a pump connected to it and a blood-backflow check."""
    t = t or now_ts()
    return [
        {"t": t, "type": "patient", "bed": bed, "weight": "1 kg"},
        {"t": t, "type": "line", "line": line, "bed": bed, "kind": "piv", "site": "left hand"},
        {"t": t, "type": "connect", "pump": pump, "line": line},
        {"t": t, "type": "patency_check", "line": line, "result": "blood_return"},
    ]


def reading(pump: str, rate: str, drug: str = CA) -> dict[str, Any]:
    return {"t": now_ts(), "type": "reading", "pump": pump, "rate": rate, "drug": drug}


class StationProcess:
    """``calguard run`` with its station; ``feed`` appends events its driver reads."""

    def __init__(self, directory: Path, *, timezone: str = "Europe/London") -> None:
        self.directory = directory
        self.events = directory / "ward.jsonl"
        self.db_url = f"sqlite:///{directory / 'log.sqlite3'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.timezone = timezone
        self.process: subprocess.Popen[bytes] | None = None
        self.err = directory / "stderr.txt"

    def start(self) -> StationProcess:
        self.events.write_text("")
        site = self.directory / "site.toml"
        site.write_text(
            f'[site]\nname = "NICU test"\ndb = "{self.db_url}"\ntimezone = "{self.timezone}"\n'
            f'[[drivers]]\nurl = "replay://{self.events}"\npoll = 0.05\n'
            f'[web]\nport = {self.port}\nsession = "1 h"\n'
        )
        asyncio.run(add_staff(self.db_url))
        with (self.directory / "stdout.txt").open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "calguard.cli", "run", "--site", str(site)],
                cwd=ROOT,
                env={**os.environ, "CALGUARD_DATA_DIR": str(self.directory / "data")},
                stdout=out,
                stderr=err,
            )
        self._wait_until_serving()
        return self

    def _wait_until_serving(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"calguard run exited: {self.stderr()}", pytrace=False)
            try:
                if httpx.get(f"{self.url}/api/state", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the station did not answer in {within} s: {self.stderr()}", pytrace=False)

    def feed(self, *events: dict[str, Any]) -> None:
        with self.events.open("ab") as out:
            out.write(b"".join(orjson.dumps(e) + b"\n" for e in events))

    def token(self, name: str) -> str:
        """A token of ``calguard login`` for one of the staff (tests.people.STAFF)."""
        return token(keyring(self.directory / "data"), name)

    def stderr(self) -> str:
        return self.err.read_text()[-3000:] if self.err.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> int | None:
        """SIGTERM, as a ward's service manager stops it; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[StationProcess]:
    """A station for the length of a ``with``: stopped (SIGTERM) afterwards."""
    running = StationProcess(directory).start()
    try:
        yield running
    finally:
        running.stop()


# -- the browser ---------------------------------------------------------------------------


def _missing(what: str) -> None:
    message = (
        f"{what} is needed for the browser tests and was not found. Install Debian's "
        "chromium and chromium-driver (apt-get install chromium chromium-driver), or set "
        "CALGUARD_CHROMIUM and CALGUARD_CHROMEDRIVER."
    )
    pytest.fail(message, pytrace=False)  # as the broker and database tests: never a skip


def chromium() -> WebDriver:
    """Headless Chromium at the size of a ward's 1366x768 screen."""
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not Path(path).exists():
            _missing(what)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI's container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={SCREEN[0]},{SCREEN[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    Page(driver, "")._screen(*SCREEN)  # the page itself 1366x768, whatever the window adds
    return driver


class Page:
    """What a person does at the station, and what they see."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base

    def open(self, path: str = "/") -> Page:
        self.driver.get(self.base + path)
        self.until(lambda: self.script("return document.getElementById('clock').title"))
        return self

    def script(self, code: str, *args: object) -> Any:
        return self.driver.execute_script(code, *args)

    def until(self, condition: Callable[[], Any], within: float = 15.0, what: str = "") -> Any:
        """Wait for ``condition`` (polled every 50 ms); fail saying what was awaited."""
        # the page redraws what updates touch: an element found a moment ago may be gone
        wait = WebDriverWait(
            self.driver,
            within,
            poll_frequency=0.05,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        return wait.until(lambda _: condition(), message=what or "condition not met")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def found(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def alarm(self, rule: str, bed: str) -> WebElement | None:
        for li in self.found(f'#alarms li[data-rule="{rule}"]'):
            if f" {bed} " in f" {li.find_element(By.CSS_SELECTOR, '.subject').text} ":
                return li
        return None

    def log_in(self, name: str, password: str = PASSWORD) -> None:
        if self.find("#login").text == "log out":
            self.log_out()
        self.find("#login").click()
        self.until(lambda: self.find("#login-dialog").is_displayed(), what="the login dialog")
        for field, text in (("#login-user", name), ("#login-password", password)):
            self.find(field).clear()
            self.find(field).send_keys(text)
        self.find("#login-submit").click()
        self.until(lambda: self.find("#who").text.startswith(f"{name} ("), what=f"{name} in")

    def log_out(self) -> None:
        self.find("#login").click()
        self.until(lambda: self.find("#who").text == "not logged in", what="logged out")

    def verdict_of(self, li: WebElement) -> str:
        return str(li.find_element(By.CSS_SELECTOR, "output.verdict").text)

    def screenshot(self, name: str, *, whole: bool = False) -> Path:
        """The screen (``whole``: the whole page, as tall as it is) as a test artefact."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        height = self.script("return document.documentElement.scrollHeight") if whole else 0
        if height > SCREEN[1]:
            self._screen(SCREEN[0], height)
        try:
            self.driver.save_screenshot(str(path))
        finally:
            if height > SCREEN[1]:
                self._screen(*SCREEN)
        return path

    def _screen(self, width: int, height: int) -> None:
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def errors(self) -> list[str]:
        """What the page's scripts complained of (none is expected; a refused action's 409
        is the monitor's verdict, not an error of the page)."""
        return [
            e["message"]
            for e in self.driver.get_log("browser")
            if e["level"] == "SEVERE" and e.get("source") == "javascript"
        ]
