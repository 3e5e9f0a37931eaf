"""calguard.monitor — the pure heart: a reading becomes an alert here.

Units, time parsing, events, the ward model, the drug library's value objects, the rules,
the timers, the 24-hour dose window, the engine and its alert transitions. It takes events
and times and returns alert transitions; it opens no file or socket, starts nothing and
reads no clock, so live runs, replays and tests give identical alerts.

Floor 0 of 4 (bottom): imports nothing of CalGuard's other packages.
    calguard (shell) -> simulators, alerts -> drivers -> config -> monitor
"""

if __name__ != "calguard.monitor":  # the repository's folder imported under its own name
    raise ImportError(
        f"CalGuard installs one name: import calguard.monitor, not {__name__} "
        "(from an installed calguard: pip install -e .)"
    )
