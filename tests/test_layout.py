"""The house: one installed name, and floors that no import climbs.

4  calguard             the shell (CLI, live wiring, warm start, view)
3  calguard.alerts      alarms, sinks, log, audit, report
3  calguard.simulators  pumps and wards on real wires
2  calguard.drivers     wires in; the real clocks
1  calguard.config      the drug library and site config
0  calguard.monitor     the pure heart
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: package -> (folder in the repository, floor)
FLOORS = {
    "calguard": ("calguard", 4),
    "calguard.alerts": ("alerts", 3),
    "calguard.simulators": ("simulators", 3),
    "calguard.drivers": ("drivers", 2),
    "calguard.config": ("config", 1),
    "calguard.monitor": ("monitor", 0),
}

#: what the pure heart may import from outside CalGuard: no I/O, no clock, no event loop
HEART_MAY_IMPORT = {
    "__future__", "bisect", "collections", "dataclasses", "datetime", "functools",
    "hashlib", "heapq", "itertools", "json", "math", "orjson", "pint", "re", "types",
    "typing", "unicodedata", "enum", "decimal", "fractions", "operator", "string",
}  # fmt: skip


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "calguard":
        return None
    if len(parts) > 1 and f"calguard.{parts[1]}" in FLOORS:
        return f"calguard.{parts[1]}"
    return "calguard"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in a module, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_import_runs_back_up_the_house() -> None:
    arrows = []
    for package, (folder, floor) in FLOORS.items():
        for path in _modules(folder):
            for line, module in _imports(path):
                target = _package_of(module)
                if target is None or target == package:
                    continue
                if FLOORS[target][1] >= floor:
                    rel = path.relative_to(ROOT)
                    arrows.append(f"{rel}:{line} ({package}, floor {floor}) imports {module}")
    assert arrows == []


def test_relative_imports_are_not_used() -> None:
    """Absolute ``calguard.`` imports only, so the floor check above sees every arrow."""
    relative = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for folder, _ in FLOORS.values()
        for path in _modules(folder)
        for node in ast.walk(ast.parse(path.read_text("utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []


def test_the_heart_does_no_io() -> None:
    outside = []
    for path in _modules("monitor"):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top != "calguard" and top not in HEART_MAY_IMPORT:
                outside.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert outside == []


@pytest.mark.parametrize("name", ["monitor", "drivers", "alerts", "config", "simulators"])
def test_a_card_folder_is_not_importable_under_its_own_name(name: str, tmp_path: Path) -> None:
    """Not from elsewhere (nothing is installed at the top level), and not from the
    repository's root either, where the folder itself is on the path."""
    for cwd in (tmp_path, ROOT):
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode != 0, f"`import {name}` worked from {cwd}"
        if cwd == ROOT:
            assert f"import calguard.{name}" in done.stderr


def test_a_wheel_installs_only_calguard(tmp_path: Path) -> None:
    """Build the wheel as pip would and look inside: one top-level name. (From a copy:
    setuptools builds in the source tree, and the checkout must stay as it was.)"""
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".*"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("calguard-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"calguard"}
    for data in (
        "calguard/config/default_library.toml",
        "calguard/simulators/scenarios/demo.toml",
        "calguard/monitor/py.typed",
    ):
        assert data in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert "calguard = calguard.cli:main" in archive.read(entry).decode()


def test_the_venv_holds_no_card_folder_at_the_top() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    for name in ("monitor", "drivers", "alerts", "config", "simulators"):
        assert not (site / name).exists()
