"""The layout keeps the architecture: contracts checked by import-linter, a headless import that
loads neither Qt, napari nor torch, modules of a readable size, and no package reaching into
another's private names."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import loaded_after_import

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_4dstem_rvae"
HEAVY = ("qtpy", "napari", "magicgui", "torch", "PyQt6", "matplotlib")
#: A module longer than this holds more than one job: split it.
MAX_LINES = 450


@pytest.mark.parametrize("module", ["napari_4dstem_rvae.workflows", "napari_4dstem_rvae.cli",
                                    "napari_4dstem_rvae.results", "napari_4dstem_rvae.io",
                                    "napari_4dstem_rvae.processing", "napari_4dstem_rvae.atoms",
                                    "napari_4dstem_rvae.rvae.config", "napari_4dstem_rvae._napari"])
def test_headless_imports_stay_light(module):
    assert loaded_after_import(module, HEAVY) == set(), f"import {module} loaded heavy packages"


def test_import_contracts_are_kept():
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter)], capture_output=True, text=True, cwd=PACKAGE.parents[1])
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_modules_hold_one_job():
    """No module over MAX_LINES lines: there is no escape phrase; a long module is split."""
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := p.read_text().count("\n")) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_no_package_imports_a_private_name_of_another():
    """``from ..other import _name`` couples two packages through what one keeps to itself."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        here = ".".join(relative.parts[:-1] if path.name == "__init__.py" else relative.parts)
        this_package = _package_of(here)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level and not (node.module or "").startswith(
                    "napari_4dstem_rvae"):
                continue
            if node.level:
                base = here.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if _package_of(target) == this_package:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{here} imports {target}.{alias.name}")
    assert not found, found


def test_the_light_import_check_sees_a_heavy_import():
    """The check above would fail if a module did import torch."""
    assert "torch" in loaded_after_import("napari_4dstem_rvae.rvae.model", ("torch",))


def test_every_name_the_napari_side_takes_from_the_workflows_exists():
    """The napari side imports the core through ``workflows`` (lazily, often inside functions):
    each name it asks for is offered there."""
    import napari_4dstem_rvae.workflows as workflows

    missing = []
    for path in (PACKAGE / "_napari").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module == "workflows":
                missing += [f"{path.name}: {a.name}" for a in node.names if a.name not in workflows.__all__]
    assert not missing, missing
    for name in workflows.__all__:
        getattr(workflows, name)
