"""The pharmacy's page of the central station, in a real browser (issue #14, part 6).

``calguard run`` with its station (``tests/webstation.py``), for a unit whose site config
asks for four eyes. In Chromium, a pharmacist pastes a library with a slip of unit (a
problem by its key, nothing recorded), then uploads one with a looser rate limit;
the page shows the warning by its key with the reference's default and its source, and the
diff in both units. She cannot approve before ticking the warning (and the server refuses
her when the button is forced), then approves; her own publication is refused under four
eyes, and a second pharmacist publishes. The station's own monitor switches: the page shows
the new hash, and the next alert line carries it. The publication's audit entry is on the
page with the SHA-256 of the library's text. A nurse is refused by the server itself, with
a session or a bearer token, whatever a page would show.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import httpx
import orjson
import pytest
from calguard.config.loader import builtin_text
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.people import PASSWORD, add_staff
from tests.webstation import Page, StationProcess, admitted, chromium, reading, serving

KEY = "rules.rate-volume.limit"
# 5 ml/min against the reference's 2 ml/min: loads, and is a warning to acknowledge
LOOSER = builtin_text().replace('limit = "2 ml/min"', 'limit = "5 ml/min"')


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StationProcess]:
    """NICU test, its site config asking for four eyes (read at each publication), with a
    second pharmacist besides the ward's staff."""
    with serving(tmp_path_factory.mktemp("pharmacy")) as running:
        asyncio.run(add_staff(running.db_url, {"pharm2": "pharmacist"}))
        site = running.directory / "site.toml"
        site.write_text(site.read_text().replace("[site]\n", "[site]\nfour_eyes = true\n", 1))
        yield running


@pytest.fixture
def page(browser: WebDriver, station: StationProcess) -> Iterator[Page]:
    yield Page(browser, station.url)
    browser.get("about:blank")


def alert_lines(station: StationProcess, library: str) -> list[tuple[object, object]]:
    """The (rule, state) of each alert line ``calguard run`` printed under ``library``."""
    text = (station.directory / "stdout.txt").read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [(x["rule"], x["state"]) for x in lines if x["library"] == library]


def test_a_pharmacist_signs_off_a_looser_limit_and_the_units_monitor_switches_to_it(
    station: StationProcess, page: Page, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # 150 ml/h is 2.5 ml/min for this infant: over the reference's rate limit
    station.feed(*admitted("B1", "L1", "P1"), reading("P1", "150 ml/h"))
    page.open("/pharmacy")
    reference = page.until(
        lambda: (text := page.find("#running-version").text).startswith("sha256:") and text,
        what="the version this monitor runs",
    )
    raised = ("rate-volume", "raised")
    page.until(lambda: raised in alert_lines(station, reference), what="the rate alarm")
    page.log_in("pharm1")

    # pasted with a slip of unit: a problem by its key, and nothing recorded
    pasted = builtin_text().replace('limit = "2 ml/min"', 'limit = "2 ml/h"')
    page.script("arguments[0].value = arguments[1]", page.find("#draft-text"), pasted)
    page.find("#draft-submit").click()
    page.until(lambda: page.find("#draft-verdict").text.startswith("refused"), what="refused")
    assert page.find("#draft-verdict").text == "refused: 1 problem(s): nothing was recorded"
    problem = page.find(f'#draft-problems li[data-key="{KEY}"]').text
    assert problem == (
        f'{KEY} "2 ml/h" is 0.0333 ml/min, outside the plausible range 0.1 ml/min to 10 ml/min '
        "for this setting; check the unit: this setting is usually written in ml/min"
    )
    assert page.find("#version").get_attribute("hidden") is not None

    library = tmp_path_factory.mktemp("upload") / "nicu-library.toml"
    library.write_text(LOOSER)
    page.find("#draft-file").send_keys(str(library))
    page.find("#draft-submit").click()
    page.until(lambda: page.find("#draft-verdict").text.startswith("drafted "), what="drafted")
    version = page.find("#version-hash").text
    assert version.startswith("sha256:") and version != reference

    warning = page.find(f'#warnings li[data-key="{KEY}"]').text
    assert warning == (
        f'{KEY} "5 ml/min" is looser than the clinical reference\'s default "2 ml/min" '
        "([Case], [USP-Ca])"
    )
    assert page.find(f'#diff li[data-key="{KEY}"]').text == (
        f'~ {KEY}: "2 ml/min" -> "5 ml/min" (= 120 -> 300 ml/h, x2.5, looser)'
    )
    assert page.find("#diff-from").text == f"{reference} (1 change(s))"

    approve = page.find("#approve")
    assert not approve.is_enabled()  # the warning is not ticked yet ...
    page.script("arguments[0].disabled = false", approve)  # ... and the server says so too
    approve.click()
    page.until(lambda: page.find("#approve-verdict").text.startswith("refused"), what="refusal")
    assert "has 1 warning(s) not acknowledged" in page.find("#approve-verdict").text
    page.find(f'#warnings input[data-key="{KEY}"]').click()
    assert approve.is_enabled()
    approve.click()
    page.until(
        lambda: page.find("#approve-verdict").text.startswith("approved by pharm1 (pharmacist)"),
        what="approved",
    )

    page.find("#publish").click()  # her own approval only, and the unit asks for four eyes
    page.until(lambda: "refused" in page.find("#publish-verdict").text, what="four eyes")
    assert "NICU test asks for four eyes" in page.find("#publish-verdict").text
    page.log_in("pharm2")
    page.find("#publish").click()
    page.until(
        lambda: page.find("#publish-verdict").text.startswith("published to NICU test by pharm2"),
        what="published",
    )

    # the station's own monitor takes it at its next look at the log (every 5 s)
    page.until(lambda: page.find("#running-version").text == version, within=30, what="switch")
    assert page.find("#running-approval").text == "approved"
    # 2.5 ml/min is within the new limit: the next alert line, under the new hash, clears it
    cleared = ("rate-volume", "cleared")
    page.until(lambda: cleared in alert_lines(station, version), what="the line of the switch")

    # the publication's audit entry: who, the content hash, the SHA-256 of the text
    (row,) = page.until(lambda: page.found('#steps tr[data-step="publish"]'), what="publish")
    assert "library-publish by pharm2: content " + version in row.text
    assert "approved by pharm1; four eyes yes; before: -" in row.text
    sha256 = row.find_element(By.CSS_SELECTOR, "code.sha256").get_attribute("title")
    assert sha256 == hashlib.sha256(LOOSER.encode()).hexdigest()
    steps = [r.get_attribute("data-step") for r in page.found("#steps tbody tr")]
    assert steps == ["draft", "approve", "publish"]
    seqs = [int(r.get_attribute("data-seq") or 0) for r in page.found("#steps tbody tr")]
    assert 0 < seqs[0] < seqs[1] < seqs[2]  # one entry each, in the chain's order
    assert page.screenshot("pharmacy.png", whole=True).stat().st_size > 10_000
    assert page.errors() == []


def test_a_nurse_is_refused_by_the_server_not_just_by_the_page(station: StationProcess) -> None:
    with httpx.Client(base_url=station.url, timeout=10) as http:
        drafts = "/api/library/drafts"
        text = LOOSER.replace('limit = "5 ml/min"', 'limit = "4 ml/min"')
        draft = {"text": text, "source": "unit.toml"}
        assert http.post(drafts, json=draft).status_code == 401

        session = http.post("/api/login", json={"user": "rn1", "password": PASSWORD}).json()
        assert http.post(drafts, json=draft).status_code == 403  # no CSRF token
        csrf = {"x-csrf-token": session["csrf"]}
        drafted = http.post(drafts, json=draft, headers=csrf)
        assert drafted.status_code == 201  # anyone logged in may draft
        version = drafted.json()["version"]
        assert [w["key"] for w in drafted.json()["warnings"]] == [KEY]

        approve = f"/api/library/versions/{version}/approve"
        refused = http.post(approve, json={"acknowledged": [KEY]}, headers=csrf)
        assert refused.status_code == 403
        assert refused.json() == {"error": "only a pharmacist may approve a library; rn1 is nurse"}
        bearer = {"authorization": f"Bearer {station.token('rn1')}"}
        published = http.post(f"/api/library/versions/{version}/publish", headers=bearer)
        assert published.status_code == 403
        assert published.json()["error"] == "only a pharmacist may publish a library; rn1 is nurse"

        shown = http.get(f"/api/library/versions/{version[:13]}").json()
        assert shown["approved_by"] == []  # nothing was recorded for the nurse
        assert [s["step"] for s in shown["steps"]] == ["draft"]
        assert shown["steps"][0]["audit"]["kind"] == "library-draft"

        bad = http.post(drafts, json={"text": '[library]\nname = "x"\n'}, headers=csrf)
        assert bad.status_code == 422 and bad.json()["problems"]  # every problem, no draft
        assert http.get("/api/library/versions/sha256:000000").status_code == 404
