"""Rules whose subject is one infant (bed): the 24-hour elemental calcium dose, calcium
near ceftriaxone in a neonate, and a calcium medication the library does not know."""

from __future__ import annotations

from calguard.monitor import units
from calguard.monitor.model import Bed, ChannelState
from calguard.monitor.rules import messages as say
from calguard.monitor.rules.base import DAY_US, DOSE_EPSILON, RuleContext
from calguard.monitor.timeutil import format_ts
from calguard.monitor.transitions import Description

__all__ = ["PatientRules"]


class PatientRules:
    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx

    def evaluate(self, bed: Bed, now: int) -> None:
        bed.ledger.set_rate(now, sum(bed.dose_rate.values()))
        self.dose(bed, now)
        self.ceftriaxone(bed, now)
        self.medication_unknown(bed, now)

    def dose(self, bed: Bed, now: int) -> None:
        ctx, key = self.ctx, ("dose-daily", bed.bed)
        weight = bed.weight_kg
        if weight is None or not ctx.enabled["dose-daily"]:
            ctx.off(key, now)  # without a weight: suspended, and context-missing says so
            return
        limit = ctx.dose_limit.value * weight * (1 + DOSE_EPSILON)
        total = bed.ledger.total(now)
        over = total > limit
        ctx.schedule(key, bed.ledger.next_change(now, limit, over), now)

        def describe() -> Description:
            per_kg = ctx.dose_limit.show(total / weight)
            text = say.dose_daily(
                bed.bed,
                per_kg,
                ctx.dose_window.text,
                units.format_number(total),
                units.format_number(weight),
                units.format_number(bed.ledger.rate_mmol_min * 60),
                ctx.dose_limit.text,
            )
            return Description(text, bed.bed, value=per_kg, limit=ctx.dose_limit.text)

        ctx.put("dose-daily", key, over, now, describe)

    def _channels(self, bed: Bed) -> list[ChannelState]:
        ward = self.ctx.ward
        return [c for line in ward.lines_of(bed) if line.documented for c in ward.channels_on(line)]

    def ceftriaxone(self, bed: Bed, now: int) -> None:
        ctx, key = self.ctx, ("ceftriaxone-neonate", bed.bed)
        chans = self._channels(bed)
        running = any(c.delivering and c.drug_class == "ceftriaxone" for c in chans)
        if running:
            bed.ceftriaxone_last = now
        neonate = bed.birth is None or now - bed.birth < ctx.neonate_until
        last = bed.ceftriaxone_last
        recent = last is not None and now - last < ctx.cef_lookback.us
        calcium = [c for c in chans if c.calcium_delivering]
        on = neonate and bool(calcium) and (running or recent)
        ends = []
        if on and not running and last is not None:
            ends.append(last + ctx.cef_lookback.us)
        if on and bed.birth is not None:
            ends.append(bed.birth + ctx.neonate_until)
        ctx.schedule(key, min(ends) if ends else None, now)

        def describe() -> Description:
            if bed.birth is None:
                age = "age unknown, treated as a neonate"
            else:
                age = f"{(now - bed.birth) // DAY_US} days old"
            when = "infusing now" if running else f"last given {format_ts(last or now)}"
            ca = ", ".join(f"{c.name} {c.drug_name}" for c in calcium)
            return Description(
                say.ceftriaxone(bed.bed, age, ca, ctx.cef_lookback.text, when), bed.bed
            )

        ctx.put("ceftriaxone-neonate", key, on, now, describe)

    def medication_unknown(self, bed: Bed, now: int) -> None:
        ctx, key = self.ctx, ("product-unknown", bed.bed)
        med = bed.unknown_medication
        if med is None or now >= med[0] + ctx.dose_window.us:
            ctx.off(key, now)
            return
        given, label = med
        ctx.schedule(key, given + ctx.dose_window.us, now)
        text = say.medication_unknown(label, bed.bed, format_ts(given), ctx.dose_window.text)
        ctx.put("product-unknown", key, True, now, lambda: Description(text, bed.bed))
