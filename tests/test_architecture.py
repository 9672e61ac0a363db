"""The layout keeps the architecture: contracts checked by import-linter, a headless import that
loads neither Qt, napari nor torch, and modules of a readable size."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_4dstem_rvae"
HEAVY = ("qtpy", "napari", "magicgui", "torch", "PyQt6", "matplotlib")


@pytest.mark.parametrize("module", ["napari_4dstem_rvae.pipeline", "napari_4dstem_rvae.cli",
                                    "napari_4dstem_rvae.results", "napari_4dstem_rvae.io",
                                    "napari_4dstem_rvae.processing", "napari_4dstem_rvae.rvae.config"])
def test_headless_imports_stay_light(module):
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"import {module} loaded {loaded}"


def test_import_contracts_are_kept():
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter)], capture_output=True, text=True, cwd=PACKAGE.parents[1])
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_long_modules_say_why():
    """No module over ~500 lines without a reason given in its docstring."""
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().count("\n")
        if lines > 520:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "longer than 500 lines because" in doc, f"{path.relative_to(PACKAGE)}: {lines} lines"
