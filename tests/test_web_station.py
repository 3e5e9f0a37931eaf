"""The central station in a real browser (Chromium), as a charge nurse uses it.

Each test runs ``calguard run`` as its own process with its station, feeds it bedside
events and pump readings through the file its replay driver follows, and looks at the
page: a rate alarm within 2 s of the reading, the sound the page decides on, an
acknowledgement with the monitor's verdict and its audit entry, a nurse refused an
override that a charge nurse may make, a killed monitor shown offline within 5 s, and 24
beds on one 1366x768 screen in the order people need them. The overview and a bed's
chart are kept as screenshots in build/screenshots/. And what a new user does first:
``calguard demo`` prints its station and an account, which logs in and acknowledges.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select

from tests.brokers import free_port
from tests.live import ROOT
from tests.webstation import (
    CA,
    SCREEN,
    Page,
    StationProcess,
    admitted,
    chromium,
    reading,
    serving,
)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def station(tmp_path: Path) -> Iterator[StationProcess]:
    with serving(tmp_path) as running:
        yield running


@pytest.fixture
def page(browser: WebDriver, station: StationProcess) -> Iterator[Page]:
    yield Page(browser, station.url)
    browser.get("about:blank")  # the page lets go of this monitor before the next test's


def test_a_nurse_sees_a_rate_alarm_within_2_s_hears_it_and_acknowledges_it(
    station: StationProcess, page: Page
) -> None:
    station.feed(*admitted("B1", "L1", "P1"), reading("P1", "1 ml/h"))
    page.open()
    page.until(lambda: page.found('.tile[data-bed="B1"] [data-channel="P1/A"]'), what="B1")
    page.log_in("rn1")

    station.feed(reading("P1", "180 ml/h"))
    sent = time.monotonic()
    li = page.until(lambda: page.alarm("rate-volume", "B1"), within=2.0, what="alarm in 2 s")
    assert time.monotonic() - sent < 2.0
    assert li.get_attribute("data-state") == "active" and li.text.startswith("HIGH")
    tile = page.find('.tile[data-bed="B1"]')
    assert tile.get_attribute("data-worst") == "high" and "HIGH" in tile.text  # words too
    assert "180 ml/h · 3 ml/min OVER 120" in tile.text
    # the sound: the worst alarm that annunciates; logging in was the click it waited for
    sound = page.find("#sound")
    assert sound.get_attribute("data-playing") == "high"
    assert sound.text == "sound on: HIGH alarm sounding"

    alert = li.get_attribute("data-alert")
    li.find_element(By.CSS_SELECTOR, 'button[data-action="ack"]').click()
    page.until(lambda: page.verdict_of(li) == "done", what="the monitor's verdict")
    page.until(lambda: li.get_attribute("data-state") == "acknowledged", what="acknowledged")
    assert li.find_element(By.CSS_SELECTOR, ".state").text == "acknowledged by rn1"
    assert not li.find_element(By.CSS_SELECTOR, 'button[data-action="ack"]').is_displayed()
    entry = page.until(
        lambda: page.found(f'#audit li[data-alert="{alert}"][data-action="ack"]'),
        what="the audit chain's entry",
    )[0]
    assert "rn1 (nurse) ack " in entry.text and entry.text.endswith(": done")
    assert page.errors() == []

    # the bed's last 24 h, from the log: the rate against the limit, the alarm, the check
    page.open("/bed/B1")

    def charted() -> bool:
        if page.found('svg polyline.rate[data-channel="P1/A"]') and page.found("g.alarm"):
            return True
        page.driver.refresh()  # the log writes in batches (every 0.25 s)
        return False

    page.until(charted, what="the chart from the log")
    assert page.found("svg line.limit") and page.found('g.check[data-kind="patency_check"]')
    raised = page.found('g.alarm[data-state="raised"][data-priority="high"]')
    title = raised[0].find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert "rate-volume raised" in title
    assert page.found('g.alarm[data-state="acknowledged"]')
    assert page.screenshot("bed-detail.png", whole=True).stat().st_size > 10_000


def test_a_nurse_may_not_override_a_high_alarm_and_a_charge_nurse_may(
    station: StationProcess, page: Page
) -> None:
    station.feed(*admitted("B2", "L2", "P2"), reading("P2", "180 ml/h"))
    page.open()
    page.log_in("rn1")
    li = page.until(lambda: page.alarm("rate-volume", "B2"), what="the rate alarm")

    def override() -> None:
        Select(li.find_element(By.CSS_SELECTOR, "select.reason")).select_by_value(
            "prescriber-approved"
        )
        li.find_element(By.CSS_SELECTOR, 'button[data-action="override"]').click()

    override()
    page.until(lambda: page.verdict_of(li).startswith("refused"), what="the refusal")
    assert "role nurse may not override a high rate-volume alarm" in page.verdict_of(li)
    assert "(the library allows charge-nurse, prescriber)" in page.verdict_of(li)
    assert li.get_attribute("data-state") == "active"
    alert = li.get_attribute("data-alert")
    refused = page.until(
        lambda: page.found(f'#audit li.action-refused[data-alert="{alert}"]'),
        what="the refusal in the audit",
    )[0]
    assert "rn1 (nurse) override" in refused.text

    page.log_in("charge1")
    override()
    page.until(lambda: li.get_attribute("data-state") == "overridden", what="overridden")
    state = li.find_element(By.CSS_SELECTOR, ".state")
    assert state.text.startswith("overridden until ")
    assert state.text.endswith("by charge1 (prescriber-approved)")
    # local time on the page, UTC when the pointer rests on it
    until = state.find_element(By.TAG_NAME, "time")
    assert until.get_attribute("title").endswith("Z (UTC)")
    assert page.verdict_of(li) == "done"
    page.until(
        lambda: page.found(f'#audit li.action[data-alert="{alert}"][data-action="override"]'),
        what="the override in the audit",
    )
    assert page.errors() == []


def test_a_killed_monitor_is_shown_offline_within_5_s(station: StationProcess, page: Page) -> None:
    station.feed(*admitted("B3", "L3", "P3"), reading("P3", "1 ml/h"))
    page.open()
    page.until(lambda: page.found('.tile[data-bed="B3"]'), what="B3")
    assert not page.find("#offline").is_displayed()

    station.kill()
    killed = time.monotonic()
    page.until(lambda: page.find("#offline").is_displayed(), within=5.0, what="offline in 5 s")
    assert time.monotonic() - killed < 5.0
    text = page.find("#offline").text
    assert text.startswith("MONITOR OFFLINE: connection lost last heard at ")
    assert "The ward is not being watched from this screen." in text
    assert "offline" in page.find("body").get_attribute("class")


def test_24_beds_fit_one_screen_worst_alarm_first_then_as_people_count(
    station: StationProcess, page: Page
) -> None:
    events = []
    alarmed = (7, 20)
    for n in range(1, 25):
        events += admitted(f"B{n}", f"L{n}", f"P{n}")
    for n in range(1, 25):
        events.append(
            reading(f"P{n}", "180 ml/h", CA)
            if n in alarmed
            else reading(f"P{n}", "3 ml/h", "Dextrose 10%")
        )
    station.feed(*events)
    page.open()
    expected = ["B7", "B20"] + [f"B{n}" for n in range(1, 25) if n not in alarmed]

    def layout() -> list[list[Any]]:
        """Each tile's bed, bottom and right edge, read in one script: the page redraws
        tiles as updates arrive, so elements found earlier may be gone a moment later."""
        return page.script(  # type: ignore[no-any-return]
            "return [...document.querySelectorAll('.tile[data-bed]')].map(t => {"
            " const r = t.getBoundingClientRect();"
            " return [t.dataset.bed, t.dataset.worst, r.bottom, r.right]; })"
        )

    tiles = page.until(
        lambda: (found := layout()) and [t[0] for t in found] == expected and found,
        what=f"24 beds in the order {expected}",
    )
    assert [t[1] for t in tiles[:2]] == ["high", "high"]
    assert page.script("return document.documentElement.scrollHeight") <= SCREEN[1]
    for _, _, bottom, right in tiles:
        assert bottom <= SCREEN[1] and right <= SCREEN[0]
    assert page.screenshot("overview.png").stat().st_size > 10_000
    assert page.errors() == []


def test_a_new_user_acknowledges_a_demo_alarm_with_the_account_the_demo_prints(
    browser: WebDriver, tmp_path: Path
) -> None:
    port = free_port()
    err = tmp_path / "stderr.txt"
    with err.open("wb") as errors, (tmp_path / "stdout.txt").open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "calguard.cli", "demo", "--speed", "120", "--no-view",
             "--web-port", str(port)],
            cwd=ROOT,
            env={**os.environ, "CALGUARD_DATA_DIR": str(tmp_path / "data")},
            stdout=out,
            stderr=errors,
        )  # fmt: skip
    try:
        said = (
            r"log in as demo-charge \(charge-nurse\), password (\S+) "
            r"or demo-nurse \(nurse\), password (\S+)"
        )
        deadline = time.monotonic() + 60
        while not (found := re.search(said, err.read_text())):
            assert demo.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        assert f"central station: http://127.0.0.1:{port}/" in err.read_text()
        page = Page(browser, f"http://127.0.0.1:{port}").open()
        page.until(lambda: page.found("#alarms li.alarm"), within=30, what="the bay alarming")
        page.log_in("demo-nurse", found[2])
        li = page.found("#alarms li.alarm")[0]
        li.find_element(By.CSS_SELECTOR, 'button[data-action="ack"]').click()
        page.until(lambda: page.verdict_of(li) == "done", what="acknowledged")
        assert "acknowledged by demo-nurse" in li.find_element(By.CSS_SELECTOR, ".state").text
    finally:
        browser.get("about:blank")
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, err.read_text()[-3000:]
