"""The central station's HTTP API and its guards, against ``calguard run`` on a free port.

Nothing is accepted without a login: an action needs a session (the HttpOnly, SameSite
cookie and the page's CSRF token, from the station's own origin) or a bearer token of
``calguard login``; the answer is the monitor's own verdict. Another host name is refused
(a web page elsewhere cannot read the ward by rebinding a DNS name to 127.0.0.1), failed
logins are throttled, the report comes as JSON and CSV, and the API holds up under
schemathesis fuzzing against its own OpenAPI schema (no 500). A station that cannot
listen leaves its monitor alarming; ``[web]`` in a site config is checked like the rest.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from calguard.alerts.report import CSV_FIELDS
from calguard.config import load_library
from calguard.config.site import WebConfig
from calguard.drivers.clock import SystemClock
from calguard.drivers.virtual import VirtualDriver
from calguard.monitor.errors import ConfigError

from calguard.app import Monitor
from calguard.site import load_site
from calguard.web import Station
from calguard.web.state import ActionMemory, StationInfo, bed_key, ward_state
from tests.people import PASSWORD
from tests.webstation import CA, StationProcess, admitted, reading, serving


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StationProcess]:
    """One monitor for this module's requests, with a high rate alarm at bed B1."""
    with serving(tmp_path_factory.mktemp("web-api")) as running:
        running.feed(*admitted("B1", "L1", "P1"), reading("P1", "180 ml/h"))
        yield running


@pytest.fixture
def client(ward: StationProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ward.url, timeout=10) as http:
        yield http


def alarm(http: httpx.Client, rule: str, bed: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for a in http.get("/api/alarms", params={"bed": bed}).json()["alarms"]:
            if a["rule"] == rule:
                return a  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no {rule} alarm at {bed}")


def test_an_action_needs_a_login_a_csrf_token_and_the_stations_own_origin(
    client: httpx.Client,
) -> None:
    alert = alarm(client, "rate-volume", "B1")["alert"]
    ack = f"/api/alarms/{alert}/ack"
    refused = client.post(ack)
    assert refused.status_code == 401
    assert refused.json() == {"error": "log in first: actions need a CalGuard account"}

    wrong = client.post("/api/login", json={"user": "rn1", "password": "not the password"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "unknown user or wrong password"})
    form = client.post("/api/login", content=f"user=rn1&password={PASSWORD}")
    assert form.status_code == 415  # a form of another site cannot log anyone in
    login = client.post("/api/login", json={"user": "rn1", "password": PASSWORD})
    assert login.status_code == 200
    session = login.json()
    assert (session["user"], session["role"]) == ("rn1", "nurse")
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert cookie.startswith(f"calguard_session_{client.base_url.port}=")

    assert client.get("/api/session").json()["user"] == "rn1"
    no_csrf = client.post(ack)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
    csrf = {"x-csrf-token": session["csrf"]}
    elsewhere = client.post(ack, headers={**csrf, "origin": "http://evil.example"})
    assert elsewhere.status_code == 403
    assert (
        elsewhere.json()["error"]
        == "a request from http://evil.example may not act at this station"
    )

    done = client.post(ack, headers=csrf)
    assert done.status_code == 200
    assert done.json() == {
        "alert": alert,
        "action": "ack",
        "by": "rn1",
        "role": "nurse",
        "applied": True,
        "verdict": "done",
    }
    again = client.post(ack, headers=csrf)
    assert again.status_code == 409 and not again.json()["applied"]
    assert "already by rn1" in again.json()["verdict"]  # the monitor's own words

    assert client.post("/api/logout", headers=csrf).json()["user"] is None
    assert client.get("/api/session").json()["user"] is None
    assert client.post(ack, headers=csrf).status_code == 401


def test_a_token_of_calguard_login_acts_as_a_bearer(
    ward: StationProcess, client: httpx.Client
) -> None:
    alert = alarm(client, "rate-weight", "B1")["alert"]
    bearer = {"authorization": f"Bearer {ward.token('charge1')}"}
    assert client.get("/api/session", headers=bearer).json()["user"] == "charge1"
    override = f"/api/alarms/{alert}/override"
    unknown = client.post(override, headers=bearer, json={"reason": "resuscitation", "by": "x"})
    assert unknown.status_code == 400
    assert unknown.json()["error"].startswith("unknown field(s) by: an action takes")
    coded = client.post(override, headers=bearer, json={"reason": "not one of the library's"})
    assert coded.status_code == 409 and "resuscitation" in coded.json()["verdict"]
    done = client.post(
        override, headers=bearer, json={"reason": "resuscitation", "duration": "1 h"}
    )
    assert done.status_code == 200 and done.json()["by"] == "charge1"
    shown = next(a for a in client.get("/api/alarms").json()["alarms"] if a["alert"] == alert)
    assert (shown["state"], shown["override_reason"]) == ("overridden", "resuscitation")
    assert client.post(f"/api/alarms/{alert}/silence", headers=bearer).status_code == 404
    forged = {"authorization": "Bearer not.a.token"}
    assert client.post(override, headers=forged).status_code == 401
    assert client.post("/api/logout", headers=bearer).status_code == 400


def test_a_request_naming_another_host_is_refused(client: httpx.Client) -> None:
    """A DNS name rebound to 127.0.0.1 by a web page elsewhere does not reach the ward."""
    assert client.get("/api/state", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/api/state", headers={"host": "localhost"}).status_code == 200


def test_failed_logins_of_an_account_are_throttled(client: httpx.Client) -> None:
    for _ in range(5):
        wrong = client.post("/api/login", json={"user": "dr7", "password": "wrong password"})
        assert wrong.status_code == 401
    throttled = client.post("/api/login", json={"user": "dr7", "password": PASSWORD})
    assert throttled.status_code == 429
    assert throttled.json()["error"].startswith("too many failed logins for 'dr7': try again in")


def test_every_page_says_that_only_its_own_assets_run(client: httpx.Client) -> None:
    for path in ("/", "/report", "/bed/B1", "/static/station.js", "/api/state"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    unknown = client.get("/bed/B99")
    assert (
        unknown.status_code == 404
        and "<h1>no bed &#x27;B99&#x27; at this monitor</h1>" in unknown.text
    )
    assert client.get("/api/beds/B99").json() == {"error": "no bed 'B99' at this monitor"}


def test_the_report_as_a_page_as_json_and_as_csv(client: httpx.Client) -> None:
    alarm(client, "rate-volume", "B1")
    deadline = time.monotonic() + 15
    while not (report := client.get("/api/report").json())["alarms"]:  # the log's batches
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    assert report["timezone"] == "Europe/London"
    (bed,) = report["per_bed"]
    assert bed["bed"] == "B1" and bed["high"] >= 2
    assert report["per_day"][-1]["alarms"] == report["alarms"]
    csv = client.get("/api/report.csv", params={"since": "1 day"})
    assert csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv.text.splitlines()[0] == ",".join(CSV_FIELDS)
    page = client.get("/report", params={"tz": "UTC"})
    assert "<caption>per day</caption>" in page.text and "<caption>per bed</caption>" in page.text
    assert "alarms per bed, by priority" in page.text
    bad = client.get("/api/report", params={"since": "last week"})
    assert bad.status_code == 400 and "a time" in bad.json()["error"]
    assert client.get("/api/report", params={"tz": "Mars/Olympus"}).status_code == 400


def test_the_api_holds_its_openapi_schema_under_fuzzing(ward: StationProcess) -> None:
    """schemathesis generates requests from /api/openapi.json (a charge nurse's token, so
    actions reach the monitor); not one answer may be a server error."""
    schemathesis = Path(sys.executable).parent / "schemathesis"
    done = subprocess.run(
        [
            str(schemathesis), "run", f"{ward.url}/api/openapi.json",
            "--checks", "not_a_server_error",
            "--max-examples", "12",
            "--exclude-path", "/api/events",  # a stream that never ends by itself
            "--header", f"Authorization: Bearer {ward.token('charge1')}",
            "--request-timeout", "20",
            "--seed", "13",
        ],
        cwd=ward.directory,  # its example database and reports stay out of the checkout
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    cases = re.search(r"(\d+) generated, \1 passed", done.stdout)
    assert cases is not None and int(cases[1]) >= 100, done.stdout[-2000:]


# -- in the monitor's own process ----------------------------------------------------------


async def test_a_station_that_cannot_listen_leaves_the_monitor_alarming(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "virtual://web-no-port"
    VirtualDriver.forget(url)
    library = load_library()
    monitor = Monitor(library, [VirtualDriver(url)], clock=SystemClock(), file_actions=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        station = Station(monitor, WebConfig(port=port), title="NICU", mode="live")
        running = asyncio.create_task(monitor.run())
        listening = asyncio.create_task(station.run())
        await asyncio.wait_for(station.started.wait(), 10)
        assert station.problem is not None and "Address already in use" in station.problem
        for event in (*admitted("B1", "L1", "P1"), reading("P1", "180 ml/h", CA)):
            VirtualDriver.put(url, event)
        async with asyncio.timeout(10):
            while "rate-volume" not in {a.rule for a in monitor.engine.active.values()}:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        monitor.stop()
        await asyncio.wait_for(running, 20)
        await asyncio.wait_for(listening, 5)
    assert f"cannot listen on 127.0.0.1 port {port}" in caplog.text
    assert "the monitor goes on without it" in caplog.text


def test_web_in_a_site_config_is_checked_with_the_rest(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[[drivers]]\nurl = "virtual://bedside"\n'
        '[web]\nhost = "0.0.0.0"\nport = 70000\ntimezone = "Europe/Londn"\nsession = "2 days"\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_site(site)
    problems = {p.key: p.message for p in raised.value.problems}
    assert problems["web.host"].startswith("'0.0.0.0' — a loopback address is expected")
    assert problems["web.port"].startswith("70000 — a whole number from 0 to 65535")
    assert 'did you mean "Europe/London"' in problems["web.timezone"]
    assert problems["web.session"] == "'2 days' — from 1 min to 12 h is expected"
    site.write_text('[[drivers]]\nurl = "virtual://bedside"\n[web]\nhost = "::1"\nport = 0\n')
    assert load_site(site).web == WebConfig(host="::1", port=0)
    site.write_text('[[drivers]]\nurl = "virtual://bedside"\n')
    assert load_site(site).web == WebConfig()  # served by default, on 127.0.0.1:8470


def test_beds_are_ordered_as_people_count_them() -> None:
    beds = ["B10", "B2", "b1", "NICU-3 B12", "B1", "NICU-3 B2", "Iso 1"]
    assert sorted(beds, key=bed_key) == [
        "b1",
        "B1",
        "B2",
        "B10",
        "Iso 1",
        "NICU-3 B2",
        "NICU-3 B12",
    ]


def test_failures_are_banners_the_screen_cannot_miss() -> None:
    """An input not connected, a pump offline (and so silent), the log unavailable, a
    lagging monitor and no log at all: each a banner with its priority written out, the
    worst first."""
    monitor = Monitor(load_library(), [VirtualDriver("virtual://web-banners")], clock=SystemClock())
    t = reading("P1", "1 ml/h")["t"]
    for event in (
        *admitted("B1", "L1", "P1", t=t),
        reading("P1", "1 ml/h", CA),
        {"t": t, "type": "pump_status", "pump": "P1", "online": False},
        {"t": t, "type": "monitor", "condition": "log-unavailable", "active": True},
    ):
        monitor.emit(monitor.pipeline.feed_object(event, raw="{}", source="test"))
    info = StationInfo("NICU", "live", "UTC", logged=False)
    state = ward_state(monitor, info, ActionMemory(), lag_s=3.2)
    banners = [(b["label"], b["kind"], b["text"]) for b in state["banners"]]
    assert banners[:3] == [
        ("HIGH", "driver", "input virtual://web-banners is connecting"),
        ("HIGH", "pump", "pump P1 is offline (P1/A)"),
        ("HIGH", "monitor-lagging", "monitor-lagging: the monitor's loop ran 3.2 s late"),
    ]
    assert [(label, kind) for label, kind, _ in banners[3:]] == [
        ("MEDIUM", "telemetry-stale"),  # the pump's silence while it infused calcium
        ("MEDIUM", "log-unavailable"),
        ("MEDIUM", "log-unavailable"),
    ]
    assert banners[3][2].startswith(
        "telemetry-stale: P1/A (Calcium gluconate 20 mg/ml) went offline"
    )
    assert banners[4][2].startswith("log-unavailable: The log database cannot be written.")
    assert banners[5][2].startswith("no durable log: nothing is recorded")
