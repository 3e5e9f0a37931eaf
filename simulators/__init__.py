"""calguard.simulators — pumps and wards that speak the real wire protocols.

Pump models, scenario files, and NE-1000 serial, MQTT and HL7 front ends, for training
and for tests.

Floor 3 of 4: imports ``calguard.drivers``, ``calguard.config`` and ``calguard.monitor``;
never ``calguard.alerts`` (the same floor) nor the shell.
    calguard (shell) -> simulators, alerts -> drivers -> config -> monitor
"""

if __name__ != "calguard.simulators":  # the repository's folder imported under its own name
    raise ImportError(
        f"CalGuard installs one name: import calguard.simulators, not {__name__} "
        "(from an installed calguard: pip install -e .)"
    )
