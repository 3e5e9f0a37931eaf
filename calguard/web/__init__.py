"""The central station in the browser: the unit overview, the alarms with sound and
one-click actions, each bed's last 24 h, the alarm-burden report, and an HTTP API with
its OpenAPI schema, served by the monitor itself (``calguard run``, ``calguard demo``).

``Station`` is a task of the monitor's own event loop: it reads the engine and the alarm
layer as they are, and acts through ``Monitor.command`` like any central station.
"""

from calguard.web.server import Section, Station

__all__ = ["Section", "Station"]
