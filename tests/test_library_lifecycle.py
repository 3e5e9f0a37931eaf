"""The pharmacist's lifecycle of the drug library, as the pharmacy runs it (issue #14,
part 4): draft, approve with every warning acknowledged, publish under four eyes, roll
back; who may; and every step an entry of the keyed audit chain that ``calguard audit
verify`` holds to. On SQLite and PostgreSQL, through the command line in this process.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from calguard.config.loader import builtin_text, parse_library

from calguard.cli import main
from calguard.pharmacy import Person, Pharmacy, Unit

Calguard = Callable[..., tuple[int, str]]
UNIT_LIBRARY = (
    builtin_text().replace('limit = "2 ml/min"', 'limit = "5 ml/min"')
    + """
[profiles.picu]
description = "Paediatric ICU"

[profiles.picu.rules.site-check-overdue]
medium_after = "2 h"
high_after = "3 h"
"""
)
WARNINGS = (
    "rules.rate-volume.limit",
    "profiles.picu.rules.site-check-overdue.medium_after",
    "profiles.picu.rules.site-check-overdue.high_after",
)
PASSWORDS = {"ana": "ana-pharmacy-1", "ben": "ben-pharmacy-2", "rn42": "nurse-rn42-pw"}


@pytest.fixture
def calguard(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Calguard]:
    """``calguard ARGS`` in this process: (exit status, what it printed); ``stdin``: the
    first line a ``--password-stdin`` reads."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str, stdin: str = "") -> tuple[int, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out + out.err

    yield run
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def ward(tmp_path: Path, db_url: str, calguard: Calguard) -> dict[str, str]:
    """Two pharmacists and a nurse, each logged in (a token file each); a unit library;
    the site configs of two units sharing the log: NICU North (four eyes) and PICU."""
    roles = {"ana": "pharmacist", "ben": "pharmacist", "rn42": "nurse"}
    for name, role in roles.items():
        password = PASSWORDS[name]
        assert calguard("user", "add", name, "--role", role, "--db", db_url, "--password-stdin",
                        stdin=password)[0] == 0  # fmt: skip
        token = str(tmp_path / f"token-{name}")
        assert calguard("login", "--user", name, "--db", db_url, "--password-stdin",
                        "--token-file", token, stdin=password)[0] == 0  # fmt: skip
    (tmp_path / "unit.toml").write_text(UNIT_LIBRARY)
    for name, extra in (("north", "four_eyes = true\n"), ("picu", 'profile = "picu"\n')):
        unit = "NICU North" if name == "north" else "PICU"
        (tmp_path / f"{name}.toml").write_text(
            f'[site]\nname = "{unit}"\nlibrary = "unit.toml"\ndb = "{db_url}"\n{extra}'
            f'[[drivers]]\nurl = "virtual://{name}"\n'
        )
    return {name: str(tmp_path / f"token-{name}") for name in roles} | {
        "library": str(tmp_path / "unit.toml"),
        "north": str(tmp_path / "north.toml"),
        "picu": str(tmp_path / "picu.toml"),
        "db": db_url,
    }


def _version(output: str) -> str:
    return output.split()[1]  # "drafted sha256:... (...)"


def test_draft_approve_publish_under_four_eyes_every_step_audited(
    ward: dict[str, str], calguard: Calguard, tmp_path: Path
) -> None:
    db = ward["db"]
    code, out = calguard(
        "library", "draft", ward["library"], "--db", db, "--token-file", ward["ana"]
    )
    assert code == 0, out
    version = _version(out)
    for key in WARNINGS:
        assert f"  {key}: " in out  # each warning, by its key, with what it departs from
    assert '"5 ml/min" is looser than the clinical reference\'s default "2 ml/min"' in out

    def approve(token: str, *acks: str) -> tuple[int, str]:
        flags = [arg for key in acks for arg in ("--acknowledge", key)]
        return calguard("library", "approve", version[:13], "--db", db, "--token-file", token,
                        *flags)  # fmt: skip

    code, out = approve(ward["rn42"], *WARNINGS)
    assert code == 1 and "only a pharmacist may approve a library; rn42 is nurse" in out
    code, out = approve(ward["ana"], WARNINGS[0])
    assert code == 1 and "2 warning(s) not acknowledged" in out and WARNINGS[1] in out
    code, out = approve(ward["ana"], *WARNINGS, "rules.rate-mass.limit")
    assert code == 1 and "rules.rate-mass.limit: not a warning of" in out
    code, out = approve(ward["ana"], *WARNINGS)
    assert code == 0 and f"approved {version} by ana (pharmacist); 3 warning(s)" in out

    def publish(token: str) -> tuple[int, str]:
        return calguard("library", "publish", version, "--site", ward["north"], "--site",
                        ward["picu"], "--token-file", token)  # fmt: skip

    code, out = publish(ward["ana"])
    assert code == 1 and "NICU North asks for four eyes" in out and "approved by ana only" in out
    code, out = publish(ward["ben"])
    assert code == 0, out
    assert f"published {version} for NICU North by ben (pharmacist)" in out
    assert f"published {version} for PICU (profile picu) by ben (pharmacist)" in out

    code, out = calguard("library", "status", "--db", db)
    assert code == 0 and f"published: {version} by ben" in out and f"{version}#picu by ben" in out
    code, out = calguard("library", "history", "--db", db)
    assert [line.split()[1] for line in out.splitlines()[1:]] == [
        "draft",
        "approve",
        "publish",
        "publish",
    ]

    code, out = calguard("audit", "verify", "--db", db)
    assert code == 0 and "audit verified: every check holds" in out, out
    exported = tmp_path / "audit.csv"
    assert calguard("audit", "export", "--db", db, "--out", str(exported))[0] == 0
    with exported.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"].startswith("library-")]
    assert [(r["kind"], r["actor"]) for r in rows] == [
        ("library-draft", "ana"),
        ("library-approve", "ana"),
        ("library-publish", "ben"),
        ("library-publish", "ben"),
    ]
    text_hash = hashlib.sha256(UNIT_LIBRARY.encode()).hexdigest()
    for row in rows:
        said = json.loads(row["payload"])
        assert said["version"] == version and said["sha256"] == row["digest"] == text_hash
    assert [a["key"] for a in json.loads(rows[1]["payload"])["acknowledged"]] == list(WARNINGS)
    assert json.loads(rows[3]["payload"])["profile"] == "picu"
    assert json.loads(rows[2]["payload"])["approved_by"] == ["ana"]


def test_a_library_with_a_problem_is_not_drafted(
    ward: dict[str, str], calguard: Calguard, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(UNIT_LIBRARY.replace('limit = "5 ml/min"', 'limit = "5 mEq/min"'))
    code, out = calguard("library", "draft", str(broken), "--db", ward["db"], "--token-file",
                         ward["ana"])  # fmt: skip
    assert code == 1 and "rules.rate-volume.limit" in out and "2 mEq = 1 mmol" in out
    code, out = calguard("library", "history", "--db", ward["db"])
    assert "no library steps in the log yet" in out


def test_a_token_no_longer_valid_takes_no_step(ward: dict[str, str], calguard: Calguard) -> None:
    assert calguard("user", "disable", "ana", "--db", ward["db"])[0] == 0
    code, out = calguard("library", "draft", ward["library"], "--db", ward["db"], "--token-file",
                         ward["ana"])  # fmt: skip
    assert code == 1 and "account ana is disabled" in out
    code, out = calguard("library", "draft", ward["library"], "--db", ward["db"], "--token-file",
                         "/nonexistent/token")  # fmt: skip
    assert code == 1 and "not logged in" in out


def test_rollback_returns_each_unit_to_the_version_before(
    ward: dict[str, str], db_url: str
) -> None:
    async def scenario() -> None:
        ana, ben = Person("ana", "pharmacist"), Person("ben", "pharmacist")
        north = Unit("NICU North", None, four_eyes=True)
        first = parse_library(UNIT_LIBRARY, "unit.toml").library
        assert first is not None
        second_text = UNIT_LIBRARY.replace('limit = "100 mg/min"', 'limit = "80 mg/min"')
        async with Pharmacy(db_url) as pharmacy:
            versions = []
            for text in (UNIT_LIBRARY, second_text):
                checked, _ = await pharmacy.draft(text, "unit.toml", ana)
                await pharmacy.approve(checked.version, ana, WARNINGS)
                await pharmacy.publish(checked.version, ben, [north])
                versions.append(checked.version)
            (step,) = await pharmacy.rollback(ben, [north])
            assert step.step == "rollback" and step.version == versions[0]
            assert step.detail["previous"] == versions[1]
            published = await pharmacy.store.published("NICU North")
            assert published is not None and published.version == versions[0]
            with pytest.raises(Exception, match="four eyes"):
                await pharmacy.rollback(ana, [north], to=versions[1])  # ana alone approved it

    asyncio.run(scenario())
