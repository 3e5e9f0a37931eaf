"""calguard.alerts — everything that leaves the engine.

The alarm manager (IEC 60601-1-8 states on the engine's alerts), the notification sinks,
the durable log and its schema, the audit chain and the alarm-burden report.

Floor 3 of 4: imports ``calguard.drivers``, ``calguard.config`` and ``calguard.monitor``;
never ``calguard.simulators`` (the same floor) nor the shell.
    calguard (shell) -> simulators, alerts -> drivers -> config -> monitor
"""

if __name__ != "calguard.alerts":  # the repository's folder imported under its own name
    raise ImportError(
        f"CalGuard installs one name: import calguard.alerts, not {__name__} "
        "(from an installed calguard: pip install -e .)"
    )
