"""The central station's update latency: a pump reading published on MQTT -> the tile changed
in a real browser.

    python benchmarks/bench_web.py [--beds 24] [--readings 48] [--alarms 10] [--gap 0.3]

Mosquitto, ``calguard run`` (its own process: MQTT driver, engine, alarm layer, SQLite
log, and the station in the same loop) and headless Chromium showing the unit overview,
all on this machine. Each reading changes one pump's rate; the page records (a
MutationObserver, the page's own clock) the moment that pump's tile shows the new rate,
and the publisher's clock the moment the reading was handed to the broker: both are the
wall clock of this machine. Then calcium runs too fast on one pump after another: reading
-> its rate alarm shown in the alarm list.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calguard.drivers.clock import SystemClock
from calguard.monitor.timeutil import format_ts

from tests.brokers import Broker, free_port
from tests.webstation import CA, Page, chromium

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "calguard/benchweb"
CHARTER = "bench-charting"

_WATCH = """
window.__seen = {};
window.__want = {};
new MutationObserver(() => {
  const now = performance.timeOrigin + performance.now();
  for (const [key, want] of Object.entries(window.__want)) {
    if (window.__seen[key]) continue;
    if (want.alarm) {
      const rows = document.querySelectorAll('#alarms li[data-rule="rate-volume"] .subject');
      if ([...rows].some((row) => row.textContent.endsWith(` ${want.alarm}`))) {
        window.__seen[key] = now;
      }
      continue;
    }
    const el = document.querySelector(`[data-channel="${want.channel}"] .rate .value`);
    if (el && el.textContent.startsWith(want.text)) window.__seen[key] = now;
  }
}).observe(document.body, {childList: true, subtree: true, characterData: true});
"""


def ts() -> str:
    return format_ts(SystemClock().now_us())


def bedside(beds: int) -> list[dict[str, Any]]:
    t = ts()
    out: list[dict[str, Any]] = []
    for n in range(1, beds + 1):
        out += [
            {"t": t, "type": "patient", "bed": f"B{n}", "weight": "1.2 kg"},
            {"t": t, "type": "line", "line": f"L{n}", "bed": f"B{n}", "kind": "piv"},
            {"t": t, "type": "connect", "pump": f"P{n}", "line": f"L{n}"},
            {"t": t, "type": "patency_check", "line": f"L{n}", "result": "blood_return"},
        ]
    return out


def reading(pump: int, rate: str, drug: str = "Dextrose 10%") -> tuple[str, bytes]:
    body = {"t": ts(), "type": "reading", "pump": f"P{pump}", "rate": rate, "drug": drug}
    return f"{PREFIX}/pumps/P{pump}/telemetry", orjson.dumps(body)


def start_monitor(directory: Path, broker: Broker, port: int) -> subprocess.Popen[bytes]:
    site = directory / "site.toml"
    site.write_text(
        f'[site]\nname = "bench"\ndb = "sqlite:///{directory / "log.sqlite3"}"\n'
        f'[[drivers]]\nurl = "mqtt://127.0.0.1:{broker.port}/{PREFIX}"\n'
        f'client_id = "bench-web-monitor"\n'
        f'[[broker.charting]]\naccount = "{CHARTER}"\n'
        f"[web]\nport = {port}\n"
    )
    with (directory / "stderr.txt").open("wb") as err:
        monitor = subprocess.Popen(
            [sys.executable, "-m", "calguard.cli", "run", "--site", str(site)],
            cwd=ROOT,
            env={**os.environ, "CALGUARD_DATA_DIR": str(directory / "data")},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if monitor.poll() is not None:
            raise SystemExit((directory / "stderr.txt").read_text())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/state", timeout=1).status_code == 200:
                return monitor
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the station did not answer")


def seen(page: Page, key: str, within: float = 10.0) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        at = page.script("return window.__seen[arguments[0]] || 0", key)
        if at:
            return float(at)
        time.sleep(0.01)
    raise SystemExit(f"{key}: not shown within {within} s")


async def measure(args: argparse.Namespace, page: Page, client: aiomqtt.Client) -> None:
    page.script(_WATCH)
    tiles: list[float] = []
    for i in range(args.readings):
        pump = i % args.beds + 1
        rate = 3 + (i // args.beds) % 5 + (i % 10) / 10
        page.script(
            "window.__want[arguments[0]] = {channel: arguments[1], text: arguments[2]}",
            str(i),
            f"P{pump}/A",
            f"{rate:g} ml/h ·",
        )
        sent = time.time() * 1000
        await client.publish(*reading(pump, f"{rate:g} ml/h"), qos=1)
        tiles.append(seen(page, str(i)) - sent)
        await asyncio.sleep(args.gap)
    alarms: list[float] = []
    for pump in range(1, min(args.alarms, args.beds) + 1):
        key = f"alarm{pump}"
        page.script("window.__want[arguments[0]] = {alarm: arguments[1]}", key, f"P{pump}/A")
        sent = time.time() * 1000
        await client.publish(*reading(pump, "180 ml/h", CA), qos=1)
        alarms.append(seen(page, key) - sent)
        await asyncio.sleep(args.gap)
    report("reading -> tile shows the new rate", tiles)
    report("reading over the limit -> rate alarm listed", alarms)


def report(what: str, ms: list[float]) -> None:
    ordered = sorted(ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(
        f"  {what:<46} n={len(ms):<3} median {statistics.median(ms):6.0f} ms   "
        f"p95 {p95:6.0f} ms   max {max(ms):6.0f} ms   min {min(ms):5.0f} ms"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, default=24)
    parser.add_argument("--readings", type=int, default=48)
    parser.add_argument("--alarms", type=int, default=10, help="pumps put over the limit")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between readings")
    args = parser.parse_args()
    print(
        f"CalGuard web station latency: {args.beds} beds on screen; Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        broker = Broker(directory / "mosquitto", persistence=False).start()
        monitor = start_monitor(directory, broker, port := free_port())
        driver = chromium()
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-web") as client:
                await client.publish(
                    f"{PREFIX}/events/{CHARTER}", orjson.dumps(bedside(args.beds)), qos=1
                )
                for pump in range(1, args.beds + 1):
                    await client.publish(*reading(pump, "2 ml/h"), qos=1)
                page = Page(driver, f"http://127.0.0.1:{port}").open()
                page.until(lambda: len(page.found(".tile[data-bed]")) == args.beds, 30, "the beds")
                await measure(args, page, client)
        finally:
            driver.quit()
            monitor.terminate()
            monitor.wait(30)
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
