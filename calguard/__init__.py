"""CalGuard: a safety monitor for intravenous calcium in neonatal intensive care.

This package is the application shell: the command line, the live wiring (drivers ->
engine -> alarms -> sinks), the warm start, the terminal view. It is the only floor that
starts processes, parses command lines and puts the parts together.

Floors, top to bottom; no package imports one above it (tests/test_layout.py checks):

    4  calguard             the shell (this package)
    3  calguard.alerts      alarms, sinks, log, audit, report
    3  calguard.simulators  pumps and wards on real wires (never imports alerts, nor it them)
    2  calguard.drivers     wires in: serial, MQTT, HL7/MLLP, replay; the real clocks
    1  calguard.config      the drug library and site config, as pharmacists write them
    0  calguard.monitor     the pure heart: units, events, model, rules, timers, engine
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calguard")
except PackageNotFoundError:  # pragma: no cover - only when run from an uninstalled tree
    __version__ = "0+unknown"

__all__ = ["__version__"]
