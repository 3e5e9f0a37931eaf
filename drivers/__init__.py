"""calguard.drivers — one wire format in, event-format v1 out.

The driver base class and registry, NE-1000 serial, MQTT, HL7 PCD-01 over MLLP, replay
and virtual drivers, and the real clocks (the wall clock is one more input from outside).
Nothing above this floor knows pyserial, aiomqtt or MLLP.

Floor 2 of 4: imports ``calguard.config`` and ``calguard.monitor``.
    calguard (shell) -> simulators, alerts -> drivers -> config -> monitor
"""

if __name__ != "calguard.drivers":  # the repository's folder imported under its own name
    raise ImportError(
        f"CalGuard installs one name: import calguard.drivers, not {__name__} "
        "(from an installed calguard: pip install -e .)"
    )
