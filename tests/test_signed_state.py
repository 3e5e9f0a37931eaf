"""What a central station reads from the broker is the monitor's word, or it is said not to
be: the MQTT sink signs and stamps the retained bed states and its presence, and
`calguard alerts` shows only what the monitor's key signed for that very topic. It logs in
as the driver does, over TLS with a client certificate too."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import aiomqtt
import orjson
import pytest
from calguard.alerts.signed_state import (
    Untrusted,
    load_public_key,
    load_state_key,
    public_key_file,
    seal,
    unseal,
)
from calguard.alerts.sinks import open_sink
from calguard.drivers.virtual import VirtualDriver
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.brokers import Broker
from tests.live import ROOT, LiveBay, admission, now_ts
from tests.wardnet import PASSWORD_ENV, PREFIX, ward_site

CA = "Calcium gluconate 10%"


async def calguard(*args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "calguard", *args, cwd=ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def too_fast(url: str, bed: str = "B1") -> None:
    """Calcium at 180 ml/h into bed ``bed``'s PIV: rate-volume and more, at once."""
    for event in admission(now_ts(), bed=bed):
        VirtualDriver.put(url, event)
    VirtualDriver.put(url, {"t": now_ts(), "type": "reading", "pump": "P1", "rate": "180 ml/h",
                            "drug": CA})  # fmt: skip


# -- the signature ---------------------------------------------------------------------------


def test_a_state_counts_only_for_its_own_topic_and_only_with_the_monitors_key(
    tmp_path: Path,
) -> None:
    key = load_state_key(tmp_path / "keys" / "state-ed25519.key")
    public = load_public_key(public_key_file(tmp_path / "keys" / "state-ed25519.key"))
    b1, b2 = f"{PREFIX}/alerts/active/B1", f"{PREFIX}/alerts/active/B2"
    alarms = [{"alert": "a-000001", "rule": "rate-volume", "priority": "high"}]
    sealed = seal(key, b1, alarms)
    t, data = unseal(public, b1, sealed)
    assert data == alarms and t.startswith("20")
    failures = {
        "unsigned": (b1, b"[]"),
        "replayed on B2": (b2, sealed),
        "another key": (b1, seal(Ed25519PrivateKey.generate(), b1, [])),
        "altered": (b1, sealed.replace(b"rate-volume", b"rate-volumf")),
    }
    why = {}
    for name, (topic, payload) in failures.items():
        with pytest.raises(Untrusted) as caught:
            unseal(public, topic, payload)
        why[name] = str(caught.value)
    assert why["unsigned"] == "it is not a signed state"
    assert why["replayed on B2"] == f"it was signed for another topic ({b1!r})"
    assert why["another key"].startswith("it is signed with the key ")
    assert why["altered"] == "its signature does not match it"


def test_the_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys" / "state-ed25519.key"
    first = load_state_key(path)
    again = load_state_key(path)
    assert first.private_bytes_raw() == again.private_bytes_raw()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for made in (path, public_key_file(path)):
        assert stat.S_IMODE(made.stat().st_mode) == 0o600
    public_key_file(path).unlink()  # a lost public half is made again from the key
    load_state_key(path)
    assert load_public_key(public_key_file(path)) == first.public_key()


# -- calguard alerts ---------------------------------------------------------------------------


async def test_a_forged_retained_state_is_named_untrusted_and_never_shown(
    broker: Broker, tmp_path: Path
) -> None:
    """On a broker without the ACL anyone may retain ``[]`` on a bed's topic, or copy
    another bed's genuine state there; the station is told, and shown neither."""
    key = tmp_path / "keys" / "state-ed25519.key"
    url = f"mqtt://127.0.0.1:{broker.port}/{PREFIX}"
    sink = open_sink(url, client_id="signed-alarms", signing_key=str(key))
    bedside = "virtual://signed-state"
    alerts = ("alerts", "--broker", url, "--monitor-key", str(public_key_file(key)), "--json")
    async with LiveBay([VirtualDriver(bedside)], sinks=[sink]) as bay:
        too_fast(bedside)
        await bay.until(lambda: bay.of("rate-volume") and sink.pending == 0 and sink.connected)
        code, out, err = await calguard(*alerts)
        assert code == 0, err
        assert {a["bed"] for a in map(orjson.loads, out.splitlines())} == {"B1"}

        async with aiomqtt.Client(broker.host, broker.port, identifier="forger") as forger:
            await forger.subscribe(f"{PREFIX}/alerts/active/B1", qos=1)
            genuine = (await anext(aiter(forger.messages))).payload
            assert isinstance(genuine, bytes)
            await forger.publish(f"{PREFIX}/alerts/active/B1", b"[]", qos=1, retain=True)
            await forger.publish(f"{PREFIX}/alerts/active/B2", genuine, qos=1, retain=True)
        code, out, err = await calguard(*alerts)
    assert code == 3 and out == ""
    assert (
        "the retained state of B1 is not signed by the monitor (it is not a signed state): "
        "not shown" in err
    )
    assert f"the retained state of B2 is not signed by the monitor (it was signed for another " \
        f"topic ('{PREFIX}/alerts/active/B1')): not shown" in err  # fmt: skip


async def test_without_the_monitors_key_nothing_is_trusted(broker: Broker, tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{broker.port}/{PREFIX}"
    sink = open_sink(url, client_id="keyless", signing_key=str(tmp_path / "monitor" / "k.key"))
    other = tmp_path / "other" / "state-ed25519.key"
    load_state_key(other)  # another monitor's
    async with LiveBay([VirtualDriver("virtual://keyless")], sinks=[sink]) as bay:
        await bay.until(lambda: sink.connected)
        missing = await calguard("alerts", "--broker", url, "--monitor-key", "/nonexistent")
        wrong = await calguard(
            "alerts", "--broker", url, "--monitor-key", str(public_key_file(other))
        )
    assert missing[0] == 2 and missing[1] == ""
    assert "no public key of the monitor at /nonexistent" in missing[2]
    assert wrong[0] == 3 and wrong[1] == ""
    assert f"the monitor's presence under '{PREFIX}' is not signed by the monitor" in wrong[2]


async def test_alerts_over_tls_with_a_client_certificate_and_a_station_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = ward_site(tmp_path)
    pki = certificates(tmp_path / "pki")
    monkeypatch.setenv(PASSWORD_ENV, site.credentials["calguard-monitor"])
    tls = (
        f"cafile {pki['ca.pem']}\ncertfile {pki['server.pem']}\nkeyfile {pki['server.key']}\n"
        "require_certificate true\n"
    )
    url = f"mqtts://127.0.0.1:{site.port}/{PREFIX}"
    client_files = {"ca_file": "ca.pem", "cert_file": "client.pem", "key_file": "client.key"}
    sink = open_sink(
        url,
        client_id="tls-alarms",
        username="calguard-monitor",
        password_env=PASSWORD_ENV,
        signing_key=str(site.key),
        **{option: str(pki[name]) for option, name in client_files.items()},
    )
    bedside = "virtual://signed-tls"
    with site.broker(tls):
        async with LiveBay([VirtualDriver(bedside)], sinks=[sink]) as bay:
            too_fast(bedside)
            await bay.until(lambda: bay.of("rate-volume") and sink.pending == 0 and sink.connected)
            options = [f"--{o.replace('_', '-')}={pki[n]}" for o, n in client_files.items()]
            code, out, err = await calguard(
                "alerts", "--broker", url, *options, "--username", "station-1",
                "--password-env", "CG_STATION", "--monitor-key", str(public_key_file(site.key)),
                CG_STATION=site.credentials["station-1"],
            )  # fmt: skip
    # the broker asks for a client certificate (require_certificate): it was given
    assert code == 0, err
    assert "rate-volume" in out and out.splitlines()[0].startswith("PRIORITY")


def certificates(directory: Path) -> dict[str, Path]:
    """A CA, the broker's certificate for 127.0.0.1 and a client's, all signed by it."""
    directory.mkdir()
    names = ("ca.key", "ca.pem", "server.key", "server.pem", "client.key", "client.pem")
    files = {name: directory / name for name in (*names, "san.ext")}
    files["san.ext"].write_text("subjectAltName=IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=CalGuard test CA",
            "-keyout", str(files["ca.key"]), "-out", str(files["ca.pem"]))  # fmt: skip
    for who, name in (("server", "/CN=127.0.0.1"), ("client", "/CN=station-1")):
        csr = directory / f"{who}.csr"
        openssl("req", *ec, "-subj", name, "-keyout", str(files[f"{who}.key"]), "-out", str(csr))
        openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca.pem"]), "-CAkey",
                str(files["ca.key"]), "-CAcreateserial", "-days", "1",
                "-extfile", str(files["san.ext"]), "-out", str(files[f"{who}.pem"]))  # fmt: skip
    return files


async def test_a_bed_named_like_a_topic_or_a_wildcard_neither_hides_nor_stops_anything(
    broker: Broker, tmp_path: Path
) -> None:
    """A charting app may name a bed ``B#`` or ``B9/x``: its retained state goes to one
    percent-encoded topic level, the sink keeps running, and the station shows its alarms
    under the bed's own name."""
    key = tmp_path / "keys" / "state-ed25519.key"
    url = f"mqtt://127.0.0.1:{broker.port}/{PREFIX}"
    sink = open_sink(url, client_id="odd-beds", signing_key=str(key))
    bedside = "virtual://odd-beds"
    alerts = ("alerts", "--broker", url, "--monitor-key", str(public_key_file(key)), "--json")
    async with LiveBay([VirtualDriver(bedside)], sinks=[sink]) as bay:
        too_fast(bedside, bed="B#")
        for event in admission(now_ts(), bed="B9/x", line="L2", pump="P2"):
            VirtualDriver.put(bedside, event)
        VirtualDriver.put(bedside, {"t": now_ts(), "type": "reading", "pump": "P2",
                                    "rate": "180 ml/h", "drug": CA})  # fmt: skip
        await bay.until(
            lambda: (
                {a["bed"] for a in bay.of("rate-volume")} == {"B#", "B9/x"}
                and sink.pending == 0
                and sink.connected
            )
        )
        code, out, err = await calguard(*alerts)
        assert sink.connected and sink.stats.undelivered == 0
        one = await calguard(*alerts, "--bed", "B9/x")
    assert code == 0, err
    shown = {a["bed"] for a in map(orjson.loads, out.splitlines())}
    assert shown == {"B#", "B9/x"}
    assert one[0] == 0 and {orjson.loads(x)["bed"] for x in one[1].splitlines()} == {"B9/x"}


async def test_a_command_the_checks_cannot_read_is_refused_and_the_sink_stays(
    broker: Broker, tmp_path: Path
) -> None:
    """A token whose header PyJWT refuses (a key id that is not text), a command of 1 MB:
    each is refused with its reason, and the alarm sink's command reader keeps going."""
    url = f"mqtt://127.0.0.1:{broker.port}/{PREFIX}"
    sink = open_sink(url, client_id="hostile-commands", signing_key=str(tmp_path / "k.key"))
    bedside = "virtual://hostile-commands"

    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    bad_kid = f"{b64({'alg': 'EdDSA', 'kid': {'a': 1}})}.{b64({'sub': 'x'})}.c2ln"
    async with LiveBay([VirtualDriver(bedside)], sinks=[sink]) as bay:
        too_fast(bedside)
        await bay.until(lambda: bay.of("rate-volume") and sink.connected)
        alert_id = bay.of("rate-volume")[0]["alert"]
        async with aiomqtt.Client(broker.host, broker.port, identifier="hostile") as station:
            await station.subscribe(f"{PREFIX}/commands/results", qos=1)
            results = aiter(station.messages)
            answers = []
            for n, body in enumerate(
                (
                    {"action": "ack", "alert": alert_id, "token": bad_kid},
                    {"action": "ack", "alert": alert_id, "token": "x" * 1_000_000},
                )
            ):
                await station.publish(
                    f"{PREFIX}/commands", orjson.dumps({"id": f"h-{n}", **body}), qos=1
                )
                async with asyncio.timeout(15):
                    answer = (await anext(results)).payload
                assert isinstance(answer, bytes)
                answers.append(orjson.loads(answer))
        assert sink.connected and sink.stats.retries == 0  # the reader never fell over
    assert [a["ok"] for a in answers] == [False, False]
    assert "not a signed token" in answers[0]["reason"]
    assert "1000" in answers[1]["reason"] and "at most" in answers[1]["reason"]
    assert bay.monitor.pipeline.alarms is not None
    assert bay.monitor.pipeline.alarms.alarms[alert_id].state == "active"
    assert not any("x" * 100 in r.raw for r in bay.records)  # logged by its digest only


async def test_an_old_genuine_state_or_presence_replayed_is_not_taken_for_the_current_one(
    broker: Broker, tmp_path: Path
) -> None:
    """Signed is not enough: the presence is signed again every heartbeat with the time of
    each bed's latest state, so an earlier genuine state of B1 retained again, or a
    captured "online" presence retained after the monitor stopped, is named and not shown."""
    key = tmp_path / "keys" / "state-ed25519.key"
    url = f"mqtt://127.0.0.1:{broker.port}/{PREFIX}"
    sink = open_sink(url, client_id="beating", signing_key=str(key), heartbeat=1.0)
    bedside = "virtual://beating"
    alerts = ("alerts", "--broker", url, "--monitor-key", str(public_key_file(key)), "--json")
    b1, presence = f"{PREFIX}/alerts/active/B1", f"{PREFIX}/alerts/status"
    async with aiomqtt.Client(broker.host, broker.port, identifier="recorder") as recorder:
        await recorder.subscribe(b1, qos=1)
        await recorder.subscribe(presence, qos=1)
        heard: dict[str, list[bytes]] = {b1: [], presence: []}

        async def record() -> None:
            async for message in recorder.messages:
                assert isinstance(message.payload, bytes)
                heard[str(message.topic)].append(message.payload)

        def listed() -> bool:
            """The newest presence heard names the newest state of B1 heard."""
            if not heard[presence] or not heard[b1]:
                return False
            public = load_public_key(public_key_file(key))  # made by the sink at its start
            _, said = unseal(public, presence, heard[presence][-1])
            latest, _ = unseal(public, b1, heard[b1][-1])
            return isinstance(said, dict) and said.get("beds", {}).get("B1") == latest

        recording = asyncio.create_task(record())
        try:
            async with LiveBay([VirtualDriver(bedside)], sinks=[sink]) as bay:
                too_fast(bedside)
                await bay.until(lambda: len(heard[b1]) >= 2 and sink.pending == 0)
                await bay.until(listed, within=30)  # a heartbeat lists B1's latest state
                code, _, err = await calguard(*alerts)
                assert code == 0, err
                online = heard[presence][-1]
                await recorder.publish(b1, heard[b1][0], qos=1, retain=True)  # the first one
                code, _, replayed = await calguard(*alerts)
            # the monitor stopped (its presence says so); a captured "online" one retained
            await recorder.publish(presence, online, qos=1, retain=True)
            await asyncio.sleep(2.5)
            gone = await calguard(*alerts, "--max-age", "2")
        finally:
            recording.cancel()
    assert code == 3 and "the retained state of B1 is not signed by the monitor" in replayed
    assert "a replay" in replayed
    assert gone[0] == 3 and "was last signed at" in gone[2] and "s ago" in gone[2]
