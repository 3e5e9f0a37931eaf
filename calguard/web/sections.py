"""The sections the station is made of: the unit overview with its API, the bed detail, the
report, the pharmacy's page for the drug library's lifecycle. A page added later is one more
``Section`` (its routes, its link, its API schema) handed to
``Station(sections=[*SECTIONS, ...])``; it shares the login and the state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

from calguard.web import api, bed, openapi, pages, pharmacy, report
from calguard.web.server import Section

if TYPE_CHECKING:
    from calguard.web.server import Station

__all__ = ["SECTIONS"]


def _overview(station: Station) -> list[BaseRoute]:
    return [*pages.routes(station), *api.routes(station), *openapi.routes(station)]


SECTIONS = (
    Section(
        "overview",
        _overview,
        nav=("/", "Unit"),
        paths=openapi.API_PATHS,
        schemas=openapi.API_SCHEMAS,
    ),
    Section("bed", bed.routes, paths=openapi.BED_PATHS),
    Section("report", report.routes, nav=("/report", "Report"), paths=openapi.REPORT_PATHS),
    Section(
        "pharmacy",
        pharmacy.routes,
        nav=("/pharmacy", "Pharmacy"),
        paths=openapi.LIBRARY_PATHS,
        schemas=openapi.LIBRARY_SCHEMAS,
    ),
)
