"""The rule table of the clinical reference, evaluated on the ward model.

Rules are evaluated per subject when something that affects the subject changes: a pump
channel (rates, limits, context), a line (checks, co-infusion, timers) or a bed (the daily
dose, ceftriaxone). Rules that depend on time alone (a check becoming overdue, a pump
falling silent, the dose window moving) schedule a timer at the exact moment their outcome
would change; the engine fires it at that moment and the rule is evaluated again.

"Calcium channel" = a channel whose drug is calcium (a calcium product, or an unknown
label that mentions calcium: never assumed safe) and that is delivering (status infusing,
rate above zero). Mass-based limits are written for calcium gluconate; another salt is
compared by its gluconate equivalent (the gluconate carrying the same elemental calcium).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from config.library import ConfiguredQuantity, Library, Product
from monitor import units
from monitor.model import Bed, ChannelState, LineState, Ward
from monitor.timers import TimerQueue
from monitor.timeutil import format_ts
from monitor.transitions import AlertBook, Description

__all__ = ["Rules"]

_DAY_US = 86_400_000_000
# A value exactly at a limit must not alarm because unit conversion rounded it up by one
# ulp (120 ml/h is 2 ml/min, not 2.0000000000000004): limits are "above", with this slack.
_EPSILON = 1e-9


def _above(value: float, limit: float) -> bool:
    return value > limit * (1 + _EPSILON)


# The daily dose is an integral whose crossing time is computed: a relative slack of 1e-9
# would delay it by microseconds over hours, so it gets a slack far below a microsecond.
_DOSE_EPSILON = 1e-12


def _fmt(value: float, q: ConfiguredQuantity) -> str:
    return q.show(value)


def _duration(us: int, q: ConfiguredQuantity) -> str:
    return q.show(float(us))


class Rules:
    """Evaluates rules for subjects and keeps their alerts and timers up to date."""

    def __init__(self, library: Library, ward: Ward, book: AlertBook, timers: TimerQueue) -> None:
        self.library = library
        self.ward = ward
        self.book = book
        self.timers = timers
        self.enabled = {rid: cfg.enabled for rid, cfg in library.rules.items()}
        self.priority = {rid: cfg.priority or "medium" for rid, cfg in library.rules.items()}
        r = library.rule
        self.rate_volume = r("rate-volume").q("limit")
        self.rate_mass = r("rate-mass").q("limit")
        rw = r("rate-weight")
        self.cont_medium, self.cont_high = rw.q("continuous_medium"), rw.q("continuous_high")
        self.bolus_medium, self.bolus_high = rw.q("bolus_medium"), rw.q("bolus_high")
        self.dose_limit = r("dose-daily").q("limit")
        self.dose_window = r("dose-daily").q("window")
        cp = r("concentration-peripheral")
        self.conc_continuous, self.conc_any = cp.q("continuous_limit"), cp.q("any_mode_limit")
        co = r("incompatible-coinfusion").class_lists
        self.incompatible = {c: "high" for c in co.get("high", ())} | {
            c: "medium" for c in co.get("medium", ())
        }
        cx = r("ceftriaxone-neonate")
        # "<= 28 days" counts completed days: the whole 28th day is included.
        self.neonate_until = cx.q("max_postnatal_age").us + _DAY_US
        self.cef_age_q = cx.q("max_postnatal_age")
        self.cef_lookback = cx.q("lookback")
        pc = r("patency-check-missing")
        self.patency_window, self.pause_grace = pc.q("window"), pc.q("pause_grace")
        so = r("site-check-overdue")
        self.site_medium, self.site_high = so.q("medium_after"), so.q("high_after")
        self.min_grade = r("site-abnormal").ints["min_grade"]
        self.dwell = r("cannula-dwell").q("interval")
        self.stale_timeout = r("telemetry-stale").q("timeout")
        pt = r("pressure-trend")
        self.pressure_rise, self.pressure_duration = pt.q("rise"), pt.q("duration")
        self._timer_handlers: dict[str, Callable[[Hashable, int], None]] = {
            "telemetry-stale": self._on_channel_timer(self.stale),
            "pressure-trend": self._on_channel_timer(self.pressure),
            "site-check-overdue": self._on_line_timer(self.site_overdue),
            "cannula-dwell": self._on_line_timer(self.dwell_timer),
            "dose-daily": self._on_bed_timer(self.dose),
            "ceftriaxone-neonate": self._on_bed_timer(self.ceftriaxone),
            "product-unknown": self._on_bed_timer(self.medication_unknown),
        }

    # -- plumbing -------------------------------------------------------------------------

    def _put(
        self, rule: str, key: Hashable, on: bool, t: int, describe: Callable[[], Description],
        priority: str | None = None,
    ) -> None:
        if on and self.enabled[rule]:
            self.book.set(key, rule, t, priority or self.priority[rule], describe)
        else:
            self.book.clear(key, t)

    def _schedule(self, key: Hashable, due: int | None, now: int) -> None:
        if due is None:
            self.timers.cancel(key)
        else:
            self.timers.schedule(key, max(due, now))

    def timer(self, key: Hashable, now: int) -> None:
        assert isinstance(key, tuple)
        self._timer_handlers[key[0]](key, now)

    def _on_channel_timer(self, fn: Callable[[ChannelState, int], None]) -> Callable[[Hashable, int], None]:
        def fire(key: Hashable, now: int) -> None:
            assert isinstance(key, tuple)
            ch = self.ward.channels.get(key[1])
            if ch is not None:
                fn(ch, now)
        return fire

    def _on_line_timer(self, fn: Callable[[LineState, int], None]) -> Callable[[Hashable, int], None]:
        def fire(key: Hashable, now: int) -> None:
            assert isinstance(key, tuple)
            line = self.ward.lines.get(key[1])
            if line is not None:
                fn(line, now)
        return fire

    def _on_bed_timer(self, fn: Callable[[Bed, int], None]) -> Callable[[Hashable, int], None]:
        def fire(key: Hashable, now: int) -> None:
            assert isinstance(key, tuple)
            bed = self.ward.beds.get(key[1])
            if bed is not None:
                fn(bed, now)
        return fire

    def _ch_desc(self, ch: ChannelState, message: str, value: str | None = None, limit: str | None = None) -> Description:
        line = self.ward.lines.get(ch.line) if ch.line else None
        return Description(message, line.bed if line else None, ch.line, ch.pump, ch.channel, value, limit)

    @staticmethod
    def _line_desc(line: LineState, message: str, value: str | None = None, limit: str | None = None) -> Description:
        return Description(message, line.bed, line.line, None, None, value, limit)

    # -- channel rules --------------------------------------------------------------------

    def track_run(self, ch: ChannelState, now: int) -> None:
        """Start of a calcium run (for the patency check); short pauses are not a new start."""
        ca = ch.calcium_delivering
        if ca and ch.run_start is not None and ch.stopped_t is None and ch.run_line != ch.line:
            ch.run_start, ch.run_line = now, ch.line  # moved to another line while running
        elif ca and (ch.run_start is None or ch.stopped_t is not None):
            resumed = (
                ch.run_start is not None
                and ch.stopped_t is not None
                and ch.run_line == ch.line
                and now - ch.stopped_t < self.pause_grace.us
            )
            if not resumed:
                ch.run_start, ch.run_line = now, ch.line
            ch.stopped_t = None
        elif not ca and ch.run_start is not None and ch.stopped_t is None:
            ch.stopped_t = now

    def channel(self, ch: ChannelState, now: int) -> None:
        self.track_run(ch, now)
        line = self.ward.documented_line(ch)
        bed = self.ward.beds.get(line.bed) if line is not None and line.bed is not None else None
        ca = ch.calcium_delivering
        match = ch.match
        product = match.product if match is not None and match.product is not None and match.product.is_calcium else None
        conc = ch.concentration_mg_ml if product is not None else None
        key = ch.key
        rate = ch.rate_ml_min
        name = f"{ch.drug_name} on {ch.name}"

        lim = self.rate_volume
        self._put("rate-volume", ("rate-volume", key), ca and _above(rate, lim.value), now, lambda: self._ch_desc(
            ch,
            f"{name} runs at {_fmt(rate, lim)} ({ch.rate_text}); the limit is {lim.text}: "
            "reduce the rate or stop the pump",
            _fmt(rate, lim), lim.text,
        ))

        mg_min = rate * conc * product.gluconate_equivalent if product is not None and conc is not None else 0.0
        lim = self.rate_mass
        self._put("rate-mass", ("rate-mass", key), ca and _above(mg_min, lim.value), now, lambda: self._ch_desc(
            ch,
            f"{name} delivers {_fmt(mg_min, self.rate_mass)} of calcium gluconate"
            f"{'' if product is None or product.is_gluconate else ' equivalent'} "
            f"({ch.rate_text} of {units.format_number(conc or 0)} mg/ml); the limit is {self.rate_mass.text}",
            _fmt(mg_min, self.rate_mass), self.rate_mass.text,
        ))

        weight = bed.weight_kg if bed is not None else None
        self._rate_weight(ch, now, ca, product, conc, weight, name)

        self._put("salt-not-gluconate", ("salt-not-gluconate", key), ca and product is not None and not product.is_gluconate, now,
                  lambda: self._ch_desc(
                      ch,
                      f"{name} is calcium {product.salt.name if product and product.salt else '?'}, not gluconate: "
                      "gluconate only; chloride belongs in a confirmed central line. Stop and check the prescription",
                  ))

        self._concentration(ch, now, ca, product, conc, line, name)

        self._put("line-arterial", ("line-arterial", key), ca and line is not None and line.arterial, now, lambda: self._ch_desc(
            ch, f"{name} infuses calcium into arterial {line.describe() if line else ''}: stop it now; never give calcium arterially",
        ))

        missing = (
            ca and line is not None and ch.run_start is not None
            and (line.last_pass_t is None or line.last_pass_t < ch.run_start - self.patency_window.us)
        )
        self._put("patency-check-missing", ("patency-check-missing", key), missing, now, lambda: self._ch_desc(
            ch,
            f"{name} started calcium on {line.describe() if line else ''} at {format_ts(ch.run_start or now)} "
            f"with no passing patency (blood backflow) check in the {self.patency_window.text} before: "
            "check blood return now and document it",
        ))

        unknown = match is not None and match.product is None and match.mentions_calcium and ch.delivering
        self._put("product-unknown", ("product-unknown", key), unknown, now, lambda: self._ch_desc(
            ch,
            f'The label "{ch.label}" on {ch.name} mentions calcium but matches no product of the drug library: '
            "mass, weight and daily-dose limits and the gluconate-only rule cannot be checked "
            "(the salt may be chloride). Check the pump's drug and ask pharmacy to add the product",
        ))

        self._put("context-missing", ("context-missing", key, "line"), ca and line is None, now, lambda: self._ch_desc(
            ch,
            f"{name} infuses calcium but no documented line is connected to it"
            f"{f' (line {ch.line} has no line event)' if ch.line else ''}: line, patency, site and "
            "co-infusion checks are suspended. Document the line and connect the pump",
        ))
        no_weight = ca and line is not None and weight is None
        self._put("context-missing", ("context-missing", key, "weight"), no_weight, now, lambda: self._ch_desc(
            ch,
            f"{name} infuses calcium but bed {line.bed if line else '?'} has no documented weight: weight-based "
            "limits (rate-weight, dose-daily) are suspended. Document the infant's weight",
        ))

        self._dose_contribution(ch, bed if ca and product is not None and conc is not None else None,
                                rate * (conc or 0.0) * (product.elemental_mmol_per_mg() if product else 0.0))
        if ch.alarm == "occlusion" or self.book.is_active(("occlusion", key)):
            self.occlusion(ch, now)

    def _rate_weight(
        self, ch: ChannelState, now: int, ca: bool, product: Product | None, conc: float | None,
        weight: float | None, name: str,
    ) -> None:
        key = ("rate-weight", ch.key)
        if not ca or product is None or conc is None or weight is None:
            self.book.clear(key, now)
            return
        salt_mg_kg_min = ch.rate_ml_min * conc * product.gluconate_equivalent / weight
        hit: tuple[str, float, ConfiguredQuantity] | None = None
        if ch.mode == "bolus":
            if _above(salt_mg_kg_min, self.bolus_high.value):
                hit = ("high", salt_mg_kg_min, self.bolus_high)
            elif _above(salt_mg_kg_min, self.bolus_medium.value):
                hit = ("medium", salt_mg_kg_min, self.bolus_medium)
        else:
            elemental = ch.rate_ml_min * conc * product.elemental_mmol_per_mg() / weight
            if _above(elemental, self.cont_high.value):
                hit = ("high", elemental, self.cont_high)
            elif _above(salt_mg_kg_min, self.cont_medium.value):
                hit = ("medium", salt_mg_kg_min, self.cont_medium)
        if hit is None:
            self.book.clear(key, now)
            return
        priority, value, lim = hit

        def describe() -> Description:
            salt = units.format_quantity(salt_mg_kg_min, units.SALT_PER_WEIGHT_RATE, "mg/kg/min" if ch.mode == "bolus" else "mg/kg/h")
            what = "elemental calcium" if lim.kind is units.SUBSTANCE_PER_WEIGHT_RATE else "calcium gluconate"
            return self._ch_desc(
                ch,
                f"{name} gives {lim.show(value)} of {what} ({salt} of gluconate{'' if product.is_gluconate else ' equivalent'}; "
                f"{ch.rate_text} of {units.format_number(conc)} mg/ml at {units.format_number(weight)} kg, {ch.mode}); "
                f"the limit is {lim.text}",
                lim.show(value), lim.text,
            )

        self._put("rate-weight", key, True, now, describe, priority)

    def _concentration(
        self, ch: ChannelState, now: int, ca: bool, product: Product | None, conc: float | None,
        line: LineState | None, name: str,
    ) -> None:
        key = ("concentration-peripheral", ch.key)
        lim = self.conc_continuous if ch.mode == "continuous" else self.conc_any
        if not ca or product is None or conc is None or line is None or not line.peripheral:
            self.book.clear(key, now)
            return
        equivalent = conc * product.gluconate_equivalent
        self._put("concentration-peripheral", key, _above(equivalent, lim.value), now, lambda: self._ch_desc(
            ch,
            f"{name} at {lim.show(equivalent)} (gluconate{'' if product.is_gluconate else ' equivalent'}) runs "
            f"as a {ch.mode} infusion into peripheral {line.describe()}; the limit there is {lim.text}: dilute it or use a central line",
            lim.show(equivalent), lim.text,
        ))

    def _dose_contribution(self, ch: ChannelState, bed: Bed | None, mmol_min: float) -> None:
        old = ch.dose_bed
        new = bed.bed if bed is not None and mmol_min > 0 else None
        if old is not None and old != new:
            self.ward.beds[old].dose_rate.pop(ch.key, None)
        if new is not None and bed is not None:
            bed.dose_rate[ch.key] = mmol_min
        ch.dose_bed = new

    def occlusion(self, ch: ChannelState, now: int) -> None:
        line = self.ward.lines.get(ch.line) if ch.line else None
        sharing = line is not None and any(self.ward.channels[k].calcium for k in line.channels)
        on = ch.alarm == "occlusion" and (ch.calcium or sharing)
        self._put("occlusion", ("occlusion", ch.key), on, now, lambda: self._ch_desc(
            ch,
            f"{ch.name} ({ch.drug_name}) reports an occlusion"
            f"{f' on line {ch.line}, which carries calcium' if sharing else ''}: check the site and the line "
            "for precipitate. An occlusion alarm neither detects nor rules out extravasation",
        ))

    def stale(self, ch: ChannelState, now: int) -> None:
        key = ch.k_stale
        if not ch.stale_watch or ch.latest_t is None:
            self.book.clear(key, now)
            self.timers.cancel(key)
            return
        due = ch.latest_t + self.stale_timeout.us
        if now >= due:
            self._put("telemetry-stale", key, True, now, lambda: self._ch_desc(
                ch,
                f"No reading from {ch.name} ({ch.drug_name}) for {self.stale_timeout.text} while it was infusing "
                f"calcium at {ch.rate_text}; last reading {format_ts(ch.latest_t or 0)}. CalGuard cannot check this "
                "infusion until readings return: check the pump and its connection",
                _duration(now - (ch.latest_t or now), self.stale_timeout), self.stale_timeout.text,
            ))
            self.timers.cancel(key)
        else:
            self.book.clear(key, now)
            self.timers.schedule(key, due)

    def pressure(self, ch: ChannelState, now: int) -> None:
        key = ch.k_pressure
        since = ch.elevated_since
        if since is None or not ch.calcium_delivering:
            self.book.clear(key, now)
            self.timers.cancel(key)
            return
        due = since + self.pressure_duration.us
        if now < due:
            self.book.clear(key, now)
            self.timers.schedule(key, due)
            return
        self.timers.cancel(key)
        base, last = ch.pressure_baseline or 0.0, ch.pressure_last or 0.0
        self._put("pressure-trend", key, True, now, lambda: self._ch_desc(
            ch,
            f"Advisory: line pressure of {ch.name} ({ch.drug_name}) has been at least {self.pressure_rise.text} above "
            f"its baseline ({units.format_number(base)} -> {units.format_number(last)} mmHg) for "
            f"{self.pressure_duration.text} at an unchanged {ch.rate_text}. This is NOT infiltration detection: "
            "a normal pressure does not mean the site is fine. Look at the site",
            units.format_quantity(last - base, units.PRESSURE), self.pressure_rise.text,
        ))

    def track_pressure(self, ch: ChannelState, pressure: float | None, t: int) -> bool:
        """Baseline = lowest pressure since the rate last changed; note when it rose by the
        limit. Returns whether the elevated state changed (the rule then needs evaluating)."""
        before = ch.elevated_since
        if not ch.calcium_delivering or pressure is None:
            if not ch.calcium_delivering:
                ch.pressure_rate = ch.pressure_baseline = ch.elevated_since = None
            return ch.elevated_since != before
        ch.pressure_last = pressure
        if ch.pressure_rate != ch.rate_ml_min or ch.pressure_baseline is None:
            ch.pressure_rate, ch.pressure_baseline, ch.elevated_since = ch.rate_ml_min, pressure, None
        else:
            ch.pressure_baseline = min(ch.pressure_baseline, pressure)
            if pressure >= ch.pressure_baseline + self.pressure_rise.value:
                if ch.elevated_since is None:
                    ch.elevated_since = t
            else:
                ch.elevated_since = None
        return ch.elevated_since != before

    def invalid(self, pump: str, channel: str, now: int, reason: str) -> None:
        ch = self.ward.channel(pump, channel)
        self._put("telemetry-invalid", ("telemetry-invalid", ch.key), True, now, lambda: self._ch_desc(
            ch,
            f"A reading from {ch.name} could not be understood: {reason}. CalGuard keeps the channel's last valid "
            "state; check the pump's configuration and connection",
        ))

    # -- line rules -----------------------------------------------------------------------

    def line(self, line: LineState, now: int) -> None:
        chans = self.ward.channels_on(line)
        calcium = [c for c in chans if c.calcium_delivering]
        self._track_session(line, bool(calcium), now)
        documented = line.documented
        self._incompatible(line, now, calcium, chans if documented else [])

        failed = documented and line.last_patency_result == "flush_failed" and any(c.calcium for c in chans)
        self._put("patency-check-failed", ("patency-check-failed", line.line), failed, now, lambda: self._line_desc(
            line,
            f"The last patency check of {line.describe()} failed (flush_failed at "
            f"{format_ts(line.last_patency_t or now)}) and it carries calcium: do not infuse calcium through it; "
            "re-site the cannula",
        ))

        abnormal = documented and line.calcium_on and (line.abnormal_while_calcium or line.last_site_abnormal)
        self._put("site-abnormal", ("site-abnormal", line.line), abnormal, now, lambda: self._line_desc(
            line,
            f"Site check of {line.describe()} found grade {line.last_site_grade}"
            f"{' (' + ', '.join(line.last_site_findings) + ')' if line.last_site_findings else ''} while calcium "
            "infuses: STOP the infusion and start the extravasation protocol",
        ))
        self.site_overdue(line, now)
        self.dwell_timer(line, now)
        for ch in chans:
            if ch.alarm == "occlusion" or self.book.is_active(("occlusion", ch.key)):
                self.occlusion(ch, now)

    def _track_session(self, line: LineState, calcium_on: bool, now: int) -> None:
        if calcium_on and not line.calcium_on:
            resumed = (
                line.session_start is not None
                and line.calcium_off_since is not None
                and now - line.calcium_off_since < self.pause_grace.us
            )
            if not resumed:
                line.session_start = now
            line.calcium_on = line.carried_calcium = True
        elif not calcium_on and line.calcium_on:
            line.calcium_on = False
            line.calcium_off_since = now
            line.abnormal_while_calcium = False

    def _incompatible(self, line: LineState, now: int, calcium: list[ChannelState], chans: list[ChannelState]) -> None:
        key = ("incompatible-coinfusion", line.line)
        others = [
            (c, self.incompatible[c.drug_class]) for c in chans
            if c.delivering and not c.calcium and c.drug_class in self.incompatible
        ] if calcium else []
        priority = "high" if any(p == "high" for _, p in others) else "medium"

        def describe() -> Description:
            ca = ", ".join(f"{c.name} {c.drug_name}" for c in calcium)
            bad = ", ".join(f"{c.name} {c.drug_name} ({c.drug_class})" for c, _ in others)
            return self._line_desc(
                line,
                f"{line.describe()} carries calcium ({ca}) and {bad} at the same time: they precipitate. "
                "Stop one, flush, and use separate lines",
            )

        self._put("incompatible-coinfusion", key, bool(others), now, describe, priority)

    def site_overdue(self, line: LineState, now: int) -> None:
        key = ("site-check-overdue", line.line)
        if not (line.documented and line.peripheral and line.calcium_on and line.session_start is not None):
            self.book.clear(key, now)
            self.timers.cancel(key)
            return
        base = line.session_start
        if line.last_site_check_t is not None:
            base = max(base, line.last_site_check_t)
        due_medium, due_high = base + self.site_medium.us, base + self.site_high.us
        if now < due_medium:
            self.book.clear(key, now)
            self._schedule(key, due_medium, now)
            return
        high = now >= due_high
        self._schedule(key, None if high else due_high, now)
        lim = self.site_high if high else self.site_medium
        last = (
            f"last check {format_ts(line.last_site_check_t)}"
            if line.last_site_check_t is not None and line.last_site_check_t >= line.session_start
            else f"none since calcium started at {format_ts(line.session_start)}"
        )
        self._put("site-check-overdue", key, True, now, lambda: self._line_desc(
            line,
            f"No site check of {line.describe()} for {_duration(now - base, lim)} while calcium infuses ({last}): "
            "look at the site now and document the check",
            _duration(now - base, lim), lim.text,
        ), "high" if high else "medium")

    def dwell_timer(self, line: LineState, now: int) -> None:
        key = ("cannula-dwell", line.line)
        if not (line.documented and line.peripheral and line.carried_calcium):
            self.book.clear(key, now)
            self.timers.cancel(key)
            return
        due = line.inserted + self.dwell.us
        if now < due:
            self.book.clear(key, now)
            self._schedule(key, due, now)
            return
        self.timers.cancel(key)
        self._put("cannula-dwell", key, True, now, lambda: self._line_desc(
            line,
            f"{line.describe()} has been in place {_duration(now - line.inserted, self.dwell)} (inserted "
            f"{format_ts(line.inserted)}) and has carried calcium: re-site the cannula (rotation interval "
            f"{self.dwell.text})",
            _duration(now - line.inserted, self.dwell), self.dwell.text,
        ))

    def line_removed(self, line: LineState, now: int) -> None:
        for rule in ("incompatible-coinfusion", "patency-check-failed", "site-abnormal", "site-check-overdue", "cannula-dwell"):
            self.book.clear((rule, line.line), now)
            self.timers.cancel((rule, line.line))

    # -- bed rules ------------------------------------------------------------------------

    def bed(self, bed: Bed, now: int) -> None:
        bed.ledger.set_rate(now, sum(bed.dose_rate.values()))
        self.dose(bed, now)
        self.ceftriaxone(bed, now)
        self.medication_unknown(bed, now)

    def dose(self, bed: Bed, now: int) -> None:
        key = ("dose-daily", bed.bed)
        if bed.weight_kg is None or not self.enabled["dose-daily"]:
            self.book.clear(key, now)
            self.timers.cancel(key)
            return
        weight = bed.weight_kg
        limit = self.dose_limit.value * weight * (1 + _DOSE_EPSILON)
        total = bed.ledger.total(now)
        above = total > limit
        self._schedule(key, bed.ledger.next_change(now, limit, above), now)

        def describe() -> Description:
            rate = bed.ledger.rate_mmol_min * 60
            return Description(
                f"Bed {bed.bed} has received {self.dose_limit.show(total / weight)} of elemental calcium in the last "
                f"{self.dose_window.text} ({units.format_number(total)} mmol at {units.format_number(weight)} kg; "
                f"now {units.format_number(rate)} mmol/h); the limit is {self.dose_limit.text}: review the calcium "
                "prescription",
                bed.bed, value=self.dose_limit.show(total / weight), limit=self.dose_limit.text,
            )

        self._put("dose-daily", key, above, now, describe)

    def _bed_channels(self, bed: Bed) -> list[ChannelState]:
        return [c for line in self.ward.lines_of(bed) if line.documented for c in self.ward.channels_on(line)]

    def ceftriaxone(self, bed: Bed, now: int) -> None:
        key = ("ceftriaxone-neonate", bed.bed)
        chans = self._bed_channels(bed)
        if any(c.delivering and c.drug_class == "ceftriaxone" for c in chans):
            bed.ceftriaxone_last = now
            ceftriaxone_now = True
        else:
            ceftriaxone_now = False
        neonate = bed.birth is None or now - bed.birth < self.neonate_until
        last = bed.ceftriaxone_last
        recent = last is not None and now - last < self.cef_lookback.us
        calcium = [c for c in chans if c.calcium_delivering]
        on = neonate and bool(calcium) and (ceftriaxone_now or recent)
        ends = []
        if on and not ceftriaxone_now and last is not None:
            ends.append(last + self.cef_lookback.us)
        if on and bed.birth is not None:
            ends.append(bed.birth + self.neonate_until)
        self._schedule(key, min(ends) if ends else None, now)

        def describe() -> Description:
            age = "age unknown, treated as a neonate" if bed.birth is None else f"{(now - bed.birth) // _DAY_US} days old"
            when = "infusing now" if ceftriaxone_now else f"last given {format_ts(last or now)}"
            ca = ", ".join(f"{c.name} {c.drug_name}" for c in calcium)
            return Description(
                f"Bed {bed.bed} ({age}) receives calcium ({ca}) within {self.cef_lookback.text} of ceftriaxone ({when}): "
                "calcium-ceftriaxone precipitates can be fatal in neonates, even on separate lines. Stop and call "
                "the prescriber",
                bed.bed,
            )

        self._put("ceftriaxone-neonate", key, on, now, describe)

    def medication_unknown(self, bed: Bed, now: int) -> None:
        key = ("product-unknown", bed.bed)
        med = bed.unknown_medication
        on = med is not None and now < med[0] + self.dose_window.us
        self._schedule(key, med[0] + self.dose_window.us if on and med else None, now)
        self._put("product-unknown", key, on, now, lambda: Description(
            f'The medication "{med[1] if med else ""}" given to bed {bed.bed} at {format_ts(med[0] if med else now)} '
            "mentions calcium but matches no product of the drug library: its calcium is not counted in the "
            f"{self.dose_window.text} dose. Identify the product with pharmacy",
            bed.bed,
        ))
