"""Command-line pieces every ``calguard`` command shares."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["RenamedOption", "retire_config"]


class RenamedOption(argparse.Action):
    """An option that was renamed: using the old spelling is an error that names the new
    one (an old script must not silently do something else)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.instead: str = kwargs.pop("instead")
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, nargs="?", **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> NoReturn:
        parser.error(f"{option_string} was split in two: {self.instead}")


def retire_config(parser: argparse.ArgumentParser) -> None:
    """Refuse the old ``--config``, which meant the drug library for some commands and the
    site file for others."""
    parser.add_argument(
        "--config",
        action=RenamedOption,
        dest="retired_config",
        instead="use --library LIBRARY.toml for a drug library, --site SITE.toml for a site config",
    )
