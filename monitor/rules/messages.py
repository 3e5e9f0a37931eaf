"""Every alert message CalGuard writes, in one place, for clinical review.

A message is for a nurse at the cot side: it names the pump and the drug, gives the value
in the unit of the limit and in the pump's own unit, states the limit, and says what to
do. Values arrive already formatted; this module only words them.
"""

from __future__ import annotations

__all__ = [
    "cannula_dwell",
    "ceftriaxone",
    "clock_skew",
    "concentration_peripheral",
    "dose_daily",
    "incompatible",
    "input_unknown",
    "library_unapproved",
    "line_arterial",
    "log_unavailable",
    "medication_unknown",
    "no_drug",
    "no_line",
    "no_weight",
    "occlusion",
    "patency_failed",
    "patency_missing",
    "pressure_trend",
    "product_unknown",
    "rate_mass",
    "rate_volume",
    "rate_weight",
    "salt_not_gluconate",
    "site_abnormal",
    "site_overdue",
    "stale",
    "telemetry_invalid",
]


def _as_gluconate(is_gluconate: bool) -> str:
    """How a gluconate-based figure is labelled: a figure worked out for another salt
    (chloride) is the gluconate carrying the same elemental calcium, and says so."""
    return "calcium gluconate" if is_gluconate else "calcium gluconate equivalent"


def rate_volume(name: str, value: str, pump_rate: str, limit: str) -> str:
    return (
        f"{name} runs at {value} ({pump_rate}); the limit is {limit}: "
        "reduce the rate or stop the pump"
    )


def rate_mass(name: str, value: str, gluconate: bool, pump_rate: str, conc: str, limit: str) -> str:
    return (
        f"{name} delivers {value} of {_as_gluconate(gluconate)} "
        f"({pump_rate} of {conc} mg/ml); the limit is {limit}"
    )


def rate_weight(
    name: str,
    value: str,
    elemental: bool,
    salt_rate: str,
    gluconate: bool,
    detail: str,
    limit: str,
) -> str:
    """``value`` is elemental calcium (the mmol/kg/h limit) or, when not ``elemental``,
    calcium gluconate (equivalent) like ``salt_rate``, which is then not repeated."""
    if elemental:
        what = f"elemental calcium ({salt_rate} of {_as_gluconate(gluconate)}; {detail})"
    else:
        what = f"{_as_gluconate(gluconate)} ({detail})"
    return f"{name} gives {value} of {what}; the limit is {limit}"


def salt_not_gluconate(name: str, salt: str) -> str:
    return (
        f"{name} is calcium {salt}, not gluconate: gluconate only; chloride belongs in a "
        "confirmed central line. Stop and check the prescription"
    )


def concentration_peripheral(
    name: str, value: str, gluconate: bool, mode: str, line: str, limit: str
) -> str:
    return (
        f"{name} at {value} ({_as_gluconate(gluconate)}) runs as a {mode} infusion into "
        f"peripheral {line}; the limit there is {limit}: dilute it or use a central line"
    )


def line_arterial(name: str, line: str) -> str:
    return (
        f"{name} infuses calcium into arterial {line}: stop it now; never give calcium arterially"
    )


def patency_missing(name: str, line: str, start: str, window: str) -> str:
    return (
        f"{name} started calcium on {line} at {start} with no passing patency (blood backflow) "
        f"check in the {window} before: check blood return now and document it"
    )


def product_unknown(label: str, channel: str) -> str:
    return (
        f'The label "{label}" on {channel} mentions calcium but matches no product of the drug '
        "library: mass, weight and daily-dose limits and the gluconate-only rule cannot be "
        "checked (the salt may be chloride). Check the pump's drug and ask pharmacy to add it"
    )


def no_line(name: str, undocumented: str | None) -> str:
    note = f" (line {undocumented} has no line event)" if undocumented else ""
    return (
        f"{name} infuses calcium but no documented line is connected to it{note}: line, "
        "patency, site and co-infusion checks are suspended. Document the line and connect the pump"
    )


def no_drug(channel: str, rate: str, line: str) -> str:
    return (
        f"{channel} infuses {rate} into {line} with no drug label: CalGuard cannot tell whether "
        "it carries calcium, so no calcium rule checks it. Set the drug on the pump or map it "
        "in the site configuration"
    )


def no_weight(name: str, bed: str) -> str:
    return (
        f"{name} infuses calcium but bed {bed} has no documented weight: weight-based limits "
        "(rate-weight, dose-daily) are suspended. Document the infant's weight"
    )


def occlusion(channel: str, drug: str, calcium_line: str | None) -> str:
    where = f" on line {calcium_line}, which carries calcium" if calcium_line else ""
    return (
        f"{channel} ({drug}) reports an occlusion{where}: check the site and the line for "
        "precipitate. An occlusion alarm neither detects nor rules out extravasation"
    )


def stale(channel: str, drug: str, timeout: str, rate: str, last: str, offline: bool) -> str:
    what = (
        f"{channel} ({drug}) went offline"
        if offline
        else f"No reading from {channel} ({drug}) for {timeout}"
    )
    return (
        f"{what} while it was infusing calcium at {rate}; last reading {last}. CalGuard cannot "
        "check this infusion until readings return: check the pump and its connection"
    )


def pressure_trend(
    channel: str, drug: str, rise: str, base: str, last: str, duration: str, rate: str
) -> str:
    return (
        f"Advisory: line pressure of {channel} ({drug}) has been at least {rise} above its "
        f"baseline ({base} -> {last} mmHg) for {duration} at an unchanged {rate}. This is NOT "
        "infiltration detection: a normal pressure does not mean the site is fine. Look at the site"
    )


def clock_skew(pump: str, skew: str, ahead: bool, tolerance: str) -> str:
    way = "ahead of" if ahead else "behind"
    return (
        f"The clock of pump {pump} is {skew} {way} the monitor's (more than {tolerance}): its "
        "readings are timed by the monitor's clock instead. Set the pump's clock or check "
        "its gateway's time zone"
    )


def input_unknown(source: str, first: str, quiet: str) -> str:
    return (
        f"Inputs from {source} could not be understood and name no pump CalGuard knows"
        f" (first: {first}). Each is logged with its reason; check what publishes "
        f"there. Clears after {quiet} without another"
    )


def log_unavailable(recorded: bool, detail: str | None) -> str:
    why = f" ({detail})" if detail else ""
    if recorded:
        return (
            f"The log database cannot be written{why}. Monitoring and alarms go on; every "
            "input and alarm is kept in the monitor's local spool and written to the log "
            "when the database returns. Call IT / clinical engineering to restore it"
        )
    return (
        f"NOTHING IS BEING RECORDED: neither the log database nor the monitor's local spool "
        f"can be written{why}. Monitoring and alarms go on, but a restart now would forget "
        "this unit's documentation and calcium doses. Call IT / clinical engineering now"
    )


def library_unapproved(detail: str | None) -> str:
    which = f" ({detail})" if detail else ""
    return (
        f"This monitor runs a drug library no pharmacist has approved{which}: its limits "
        "have not been signed off. Monitoring and alarms go on; ask the pharmacy to approve "
        "and publish the unit's library (calguard library approve, then publish)"
    )


def monitor_lagging(lag: str, max_hold: str, detail: str | None) -> str:
    why = f" ({detail})" if detail else ""
    return (
        f"The monitor is {lag} behind its inputs{why}: readings wait that long before they "
        "are checked, and so does every alarm they raise. A pump is called silent only once "
        f"the lag is allowed for, never more than {max_hold} late. Call IT / clinical "
        "engineering: the monitor needs more capacity or fewer channels"
    )


def telemetry_invalid(channel: str, reason: str) -> str:
    return (
        f"A reading from {channel} could not be understood: {reason}. CalGuard keeps the "
        "channel's last valid state; check the pump's configuration and connection"
    )


def incompatible(line: str, calcium: str, others: str) -> str:
    return (
        f"{line} carries calcium ({calcium}) and {others} at the same time: they precipitate. "
        "Stop one, flush, and use separate lines"
    )


def patency_failed(line: str, when: str) -> str:
    return (
        f"The last patency check of {line} failed (flush_failed at {when}) and it carries "
        "calcium: do not infuse calcium through it; re-site the cannula"
    )


def site_abnormal(line: str, grade: int, findings: tuple[str, ...]) -> str:
    seen = f" ({', '.join(findings)})" if findings else ""
    return (
        f"Site check of {line} found grade {grade}{seen} while calcium infuses: STOP the "
        "infusion and start the extravasation protocol"
    )


def site_overdue(line: str, elapsed: str, last: str) -> str:
    return (
        f"No site check of {line} for {elapsed} while calcium infuses ({last}): look at the "
        "site now and document the check"
    )


def cannula_dwell(line: str, elapsed: str, inserted: str, interval: str) -> str:
    return (
        f"{line} has been in place {elapsed} (inserted {inserted}) and has carried calcium: "
        f"re-site the cannula (rotation interval {interval})"
    )


def dose_daily(
    bed: str, per_kg: str, window: str, mmol: str, weight: str, rate: str, limit: str
) -> str:
    return (
        f"Bed {bed} has received {per_kg} of elemental calcium in the last {window} ({mmol} "
        f"mmol at {weight} kg; now {rate} mmol/h); the limit is {limit}: review the calcium "
        "prescription"
    )


def ceftriaxone(bed: str, age: str, calcium: str, lookback: str, when: str) -> str:
    return (
        f"Bed {bed} ({age}) receives calcium ({calcium}) within {lookback} of ceftriaxone "
        f"({when}): calcium-ceftriaxone precipitates can be fatal in neonates, even on separate "
        "lines. Stop and call the prescriber"
    )


def medication_unknown(label: str, bed: str, when: str, window: str) -> str:
    return (
        f'The medication "{label}" given to bed {bed} at {when} mentions calcium but matches no '
        f"product of the drug library: its calcium is not counted in the {window} dose. "
        "Identify the product with pharmacy"
    )
