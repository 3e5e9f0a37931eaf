"""Rules whose subject is one pump channel: rates and limits, salt, concentration, arterial
lines, the patency check before a start, unknown products, missing context, occlusion,
and the per-reading technical rules (stale, invalid, pressure trend)."""

from __future__ import annotations

from calguard.monitor import units
from calguard.monitor.library import ConfiguredQuantity, Product
from calguard.monitor.model import Bed, ChannelState, LineState
from calguard.monitor.rules import messages as say
from calguard.monitor.rules.base import RuleContext, above
from calguard.monitor.timeutil import format_duration, format_ts
from calguard.monitor.transitions import Description

__all__ = ["ChannelRules"]


class ChannelRules:
    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx

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
                and now - ch.stopped_t < self.ctx.pause_grace.us
            )
            if not resumed:
                ch.run_start, ch.run_line = now, ch.line
            ch.stopped_t = None
        elif not ca and ch.run_start is not None and ch.stopped_t is None:
            ch.stopped_t = now

    def evaluate(self, ch: ChannelState, now: int) -> None:
        """Every rule of this channel, after its settings or its context changed."""
        ctx = self.ctx
        self.track_run(ch, now)
        line = ctx.ward.documented_line(ch)
        bed = ctx.ward.beds.get(line.bed) if line is not None and line.bed is not None else None
        ca = ch.calcium_delivering
        match = ch.match
        product = match.product if match is not None else None
        if product is not None and not product.is_calcium:
            product = None
        conc = ch.concentration_mg_ml if product is not None else None
        known = product if ca and conc is not None else None  # mass rules need both
        weight = bed.weight_kg if bed is not None else None
        name = f"{ch.drug_name} on {ch.name}"

        self._rate_volume(ch, now, ca, name)
        self._rate_mass(ch, now, known, conc or 0.0, name)
        self._rate_weight(ch, now, known, conc or 0.0, weight, name)
        salt = product.salt.name if product is not None and product.salt is not None else "?"
        ctx.put(
            "salt-not-gluconate",
            ("salt-not-gluconate", ch.key),
            ca and product is not None and not product.is_gluconate,
            now,
            lambda: ctx.channel_description(ch, say.salt_not_gluconate(name, salt)),
        )
        self._concentration(ch, now, known, conc or 0.0, line, name)
        ctx.put(
            "line-arterial",
            ("line-arterial", ch.key),
            ca and line is not None and line.arterial,
            now,
            lambda: ctx.channel_description(ch, say.line_arterial(name, _describe(line))),
        )
        self._patency_missing(ch, now, ca, line, name)
        unknown = (
            match is not None and match.product is None and match.mentions_calcium and ch.delivering
        )
        ctx.put(
            "product-unknown",
            ("product-unknown", ch.key),
            unknown,
            now,
            lambda: ctx.channel_description(ch, say.product_unknown(ch.label or "", ch.name)),
        )
        ctx.put(
            "context-missing",
            ("context-missing", ch.key, "line"),
            ca and line is None,
            now,
            lambda: ctx.channel_description(ch, say.no_line(name, ch.line)),
        )
        # A pump with no drug label at all could be carrying calcium: say so, never assume.
        ctx.put(
            "context-missing",
            ("context-missing", ch.key, "drug"),
            ch.delivering and ch.label is None and line is not None,
            now,
            lambda: ctx.channel_description(
                ch, say.no_drug(ch.name, ch.rate_text, _describe(line))
            ),
        )
        bed_name = line.bed if line is not None and line.bed is not None else "?"
        ctx.put(
            "context-missing",
            ("context-missing", ch.key, "weight"),
            ca and line is not None and weight is None,
            now,
            lambda: ctx.channel_description(ch, say.no_weight(name, bed_name)),
        )
        elemental = ch.rate_ml_min * (conc or 0.0) * known.elemental_mmol_per_mg() if known else 0.0
        self._dose_contribution(ch, bed if known is not None else None, elemental)
        if ch.alarm == "occlusion" or ctx.book.is_active(("occlusion", ch.key)):
            self.occlusion(ch, now)

    def _rate_volume(self, ch: ChannelState, now: int, ca: bool, name: str) -> None:
        lim, rate = self.ctx.rate_volume, ch.rate_ml_min

        def describe() -> Description:
            value = lim.show(rate)
            return self.ctx.channel_description(
                ch, say.rate_volume(name, value, ch.rate_text, lim.text), value, lim.text
            )

        self.ctx.put(
            "rate-volume", ("rate-volume", ch.key), ca and above(rate, lim.value), now, describe
        )

    def _rate_mass(
        self, ch: ChannelState, now: int, product: Product | None, conc: float, name: str
    ) -> None:
        lim = self.ctx.rate_mass
        mg_min = ch.rate_ml_min * conc * product.gluconate_equivalent if product else 0.0

        def describe() -> Description:
            value, gluconate = lim.show(mg_min), product is None or product.is_gluconate
            text = say.rate_mass(
                name, value, gluconate, ch.rate_text, units.format_number(conc), lim.text
            )
            return self.ctx.channel_description(ch, text, value, lim.text)

        on = product is not None and above(mg_min, lim.value)
        self.ctx.put("rate-mass", ("rate-mass", ch.key), on, now, describe)

    def _rate_weight(
        self,
        ch: ChannelState,
        now: int,
        product: Product | None,
        conc: float,
        weight: float | None,
        name: str,
    ) -> None:
        ctx, key = self.ctx, ("rate-weight", ch.key)
        if product is None or weight is None:
            ctx.book.clear(key, now)
            return
        salt_mg_kg_min = ch.rate_ml_min * conc * product.gluconate_equivalent / weight
        hit: tuple[str, float, ConfiguredQuantity] | None = None
        if ch.mode == "bolus":
            if above(salt_mg_kg_min, ctx.bolus_high.value):
                hit = ("high", salt_mg_kg_min, ctx.bolus_high)
            elif above(salt_mg_kg_min, ctx.bolus_medium.value):
                hit = ("medium", salt_mg_kg_min, ctx.bolus_medium)
        else:
            elemental = ch.rate_ml_min * conc * product.elemental_mmol_per_mg() / weight
            if above(elemental, ctx.cont_high.value):
                hit = ("high", elemental, ctx.cont_high)
            elif above(salt_mg_kg_min, ctx.cont_medium.value):
                hit = ("medium", salt_mg_kg_min, ctx.cont_medium)
        if hit is None:
            ctx.book.clear(key, now)
            return
        priority, value, lim = hit

        def describe() -> Description:
            per = "mg/kg/min" if ch.mode == "bolus" else "mg/kg/h"
            salt = units.format_quantity(salt_mg_kg_min, units.SALT_PER_WEIGHT_RATE, per)
            elemental = lim.kind is units.SUBSTANCE_PER_WEIGHT_RATE
            detail = (
                f"{ch.rate_text} of {units.format_number(conc)} mg/ml at "
                f"{units.format_number(weight)} kg, {ch.mode}"
            )
            text = say.rate_weight(
                name, lim.show(value), elemental, salt, product.is_gluconate, detail, lim.text
            )
            return ctx.channel_description(ch, text, lim.show(value), lim.text)

        ctx.put("rate-weight", key, True, now, describe, priority)

    def _concentration(
        self,
        ch: ChannelState,
        now: int,
        product: Product | None,
        conc: float,
        line: LineState | None,
        name: str,
    ) -> None:
        ctx = self.ctx
        lim = ctx.conc_continuous if ch.mode == "continuous" else ctx.conc_any
        peripheral = line is not None and line.peripheral
        equivalent = conc * product.gluconate_equivalent if product is not None else 0.0
        on = product is not None and peripheral and above(equivalent, lim.value)

        def describe() -> Description:
            gluconate = product is None or product.is_gluconate
            value = lim.show(equivalent)
            text = say.concentration_peripheral(
                name, value, gluconate, ch.mode, _describe(line), lim.text
            )
            return ctx.channel_description(ch, text, value, lim.text)

        ctx.put("concentration-peripheral", ("concentration-peripheral", ch.key), on, now, describe)

    def _patency_missing(
        self, ch: ChannelState, now: int, ca: bool, line: LineState | None, name: str
    ) -> None:
        ctx = self.ctx
        start = ch.run_start
        missing = (
            ca
            and line is not None
            and start is not None
            and (line.last_pass_t is None or line.last_pass_t < start - ctx.patency_window.us)
        )
        ctx.put(
            "patency-check-missing",
            ("patency-check-missing", ch.key),
            missing,
            now,
            lambda: ctx.channel_description(
                ch,
                say.patency_missing(
                    name, _describe(line), format_ts(start or now), ctx.patency_window.text
                ),
            ),
        )

    def _dose_contribution(self, ch: ChannelState, bed: Bed | None, mmol_min: float) -> None:
        """This channel's elemental calcium per minute, counted for the bed it feeds."""
        old = ch.dose_bed
        new = bed.bed if bed is not None and mmol_min > 0 else None
        if old is not None and old != new:
            self.ctx.ward.beds[old].dose_rate.pop(ch.key, None)
        if new is not None and bed is not None:
            bed.dose_rate[ch.key] = mmol_min
        ch.dose_bed = new

    def occlusion(self, ch: ChannelState, now: int) -> None:
        ctx = self.ctx
        line = ctx.ward.lines.get(ch.line) if ch.line else None
        sharing = line is not None and any(ctx.ward.channels[k].calcium for k in line.channels)
        on = ch.alarm == "occlusion" and (ch.calcium or sharing)
        calcium_line = ch.line if sharing else None
        ctx.put(
            "occlusion",
            ("occlusion", ch.key),
            on,
            now,
            lambda: ctx.channel_description(ch, say.occlusion(ch.name, ch.drug_name, calcium_line)),
        )

    # -- per-reading technical rules --------------------------------------------------

    def stale(self, ch: ChannelState, now: int) -> None:
        ctx, key, timeout = self.ctx, ch.k_stale, self.ctx.stale_timeout
        if not ch.stale_watch or ch.latest_t is None:
            ctx.off(key, now)
            return
        last = ch.latest_t
        due = last + timeout.us
        # while the monitor lags, its inputs have only come as far as now less the lag: a
        # silence is judged against that frontier (held for the lag, at most max_hold). A
        # hold never takes back a stale alarm already raised; only a reading ends it.
        held = due + ctx.stale_hold_us
        if not ch.offline and (now < due or (now < held and key not in ctx.book.active)):
            ctx.book.clear(key, now)
            ctx.timers.schedule(key, held)
            return
        ctx.timers.cancel(key)
        ctx.put(
            "telemetry-stale",
            key,
            True,
            now,
            lambda: ctx.channel_description(
                ch,
                say.stale(
                    ch.name, ch.drug_name, timeout.text, ch.rate_text, format_ts(last), ch.offline
                ),
                timeout.show(float(now - last)),
                timeout.text,
            ),
        )

    def track_pressure(self, ch: ChannelState, pressure: float | None, t: int) -> bool:
        """Baseline = lowest pressure since the rate last changed; note when it rose by the
        limit. Returns whether the elevated state changed (the rule then needs evaluating)."""
        before = ch.elevated_since
        if not ch.calcium_delivering:
            ch.pressure_rate = ch.pressure_baseline = ch.elevated_since = None
        elif pressure is not None:
            ch.pressure_last = pressure
            if ch.pressure_rate != ch.rate_ml_min or ch.pressure_baseline is None:
                ch.pressure_rate, ch.pressure_baseline = ch.rate_ml_min, pressure
                ch.elevated_since = None
            else:
                ch.pressure_baseline = min(ch.pressure_baseline, pressure)
                if pressure < ch.pressure_baseline + self.ctx.pressure_rise.value:
                    ch.elevated_since = None
                elif ch.elevated_since is None:
                    ch.elevated_since = t
        return ch.elevated_since != before

    def pressure(self, ch: ChannelState, now: int) -> None:
        ctx, key = self.ctx, ch.k_pressure
        since = ch.elevated_since
        if since is None or not ch.calcium_delivering:
            ctx.off(key, now)
            return
        due = since + ctx.pressure_duration.us
        if now < due:
            ctx.book.clear(key, now)
            ctx.timers.schedule(key, due)
            return
        ctx.timers.cancel(key)
        base, last = ch.pressure_baseline or 0.0, ch.pressure_last or 0.0

        def describe() -> Description:
            text = say.pressure_trend(
                ch.name,
                ch.drug_name,
                ctx.pressure_rise.text,
                units.format_number(base),
                units.format_number(last),
                ctx.pressure_duration.text,
                ch.rate_text,
            )
            rise = units.format_quantity(last - base, units.PRESSURE)
            return ctx.channel_description(ch, text, rise, ctx.pressure_rise.text)

        ctx.put("pressure-trend", key, True, now, describe)

    def clock_skew(self, ch: ChannelState, skew_us: int, tolerance_us: int, now: int) -> None:
        """A pump's own time against the monitor's: outside the tolerance is a clock fault
        of that pump (one alert per pump, whichever of its channels reported it)."""
        ctx, tolerance = self.ctx, self.ctx.skew_tolerance
        off = abs(skew_us) > tolerance_us
        ctx.put(
            "clock-skew",
            ("clock-skew", ch.pump),
            off,
            now,
            lambda: ctx.channel_description(
                ch,
                say.clock_skew(ch.pump, format_duration(abs(skew_us)), skew_us > 0, tolerance.text),
                tolerance.show(float(abs(skew_us))),  # a quantity, in the limit's own unit
                tolerance.text,
            ),
        )

    def invalid(self, pump: str, channel: str, now: int, reason: str) -> None:
        ch = self.ctx.ward.channel(pump, channel)
        self.ctx.put(
            "telemetry-invalid",
            ch.k_invalid,
            True,
            now,
            lambda: self.ctx.channel_description(ch, say.telemetry_invalid(ch.name, reason)),
        )


def _describe(line: LineState | None) -> str:
    return line.describe() if line is not None else "its line"
