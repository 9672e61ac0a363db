"""Writes docs/architecture.md from the code: the layers from the import-linter contracts in
pyproject.toml, every module with the first sentence of its docstring and its length, and the
two walks (``stem-rvae run`` and the Train tab) that follow one setting from each door to the
same function. Run: ``python docs/make_architecture.py`` (``make docs``)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_4dstem_rvae"

HEAD = """# Architecture

*Written by `docs/make_architecture.py` from the code (the layers from the import-linter
contracts in `pyproject.toml`, each module's first docstring sentence and length): run it
again after moving code.*

One folder (or module) per stage; data flow one way, from the file to the maps; the two doors
(the `stem-rvae` CLI and the napari docks) sit on top and drive the same runs of the core.

```
  stem-rvae (cli/)                    napari docks (_napari/)
       │ flags from the options            │ fields from the options
       └───────────────┬───────────────────┘
                       ▼
   workflows/  STEMRun · AtomRun · COMRun · ImageRun · PreprocessRun ── events: Message,
       │        Progress, Epoch, Maps, Done (the CLI prints them, the docks show them)
       ▼
 file ──io/──▶ Dataset4D ──processing/──▶ COM, images, cleaned data ──rvae/──▶ model + maps
                │ (dataset.py)                                     atoms/ (finders, windows)
                └── simulate/ (sample data)            results/ (files, figures, colours)
   options.py (every setting described once) · schema.py (every map declared once)
   units.py (every unit spelled once)
```

The contracts checked on every build (`lint-imports`, part of `make test`):
"""

WALKS = """
## Two doors, one run: a setting walked from each

**`stem-rvae run scan.h5 --epochs 50 --out results.h5`**

1. `cli.build_parser` added `--epochs` from `RVAEConfig`'s description of `epochs`
   (`cli/arguments.add_options`): its help, its default (`about 2,400 optimisation steps`), its type.
2. `cli.cmd_run` turns the parsed flags into the options objects
   (`options_from_args(RVAEConfig, args)`, `RunOptions`, `COMOptions`) and creates
   `workflows.STEMRun(path, out, config=…, options=…)`.
3. `Renderer.show(run.events())` (`cli/render.py`) prints what the run yields: `Message` →
   a log line on stderr, `Progress`/`Epoch` → a tqdm bar on stderr, `Done` → the written
   paths on stdout.
4. `STEMRun.events` claims the output (`results.claim_output`: not the input, not a foreign
   file, not held by another writer), reads the file (`io.read`), runs the COM pass with the
   overview images in it (`processing.compute_com`, progress through `workflows.events.reporting`),
   bins the detector (`inputs.prepared_data`, a reduced zarr store when it does not fit in
   memory), starts or resumes the `rvae.Trainer` (`rvae.fitting.start`/`resume_trainer`) and
   iterates `Trainer.run` — where `config.epochs` sets the length
   (`RVAEConfig.epochs_for`) — then applies the epoch rule (`Trainer.finish`), encodes every
   pattern (`Trainer.maps`, or the dask cluster's workers) and writes the results file
   (`STEMRun.write` → `results.write_results`, which claims its output again, re-entrantly).

**The Train tab: epochs = 50, Start**

1. `TrainWidget` built its fields with `OptionForm(RVAEConfig)` (`_napari/fields.py`) from the
   same descriptions: the *epochs* field's label, tooltip, bounds and default are the flag's.
2. *Start* reads the form (`OptionForm.options()` → the same `RVAEConfig`), the region drawn
   on the canvas (`RegionPicker.mask`), and the COM the COM tab made (reused when its
   `COMOptions` are the run's), and creates the same `STEMRun(dataset, config=…, options=…)`.
3. A napari thread worker iterates `run.events(stop)`; in the Qt thread `Epoch` → the progress
   bar and the live plot, `Progress` → napari's activity progress, `Maps` → layers updated by
   name, `Message` → the status line. *Stop* sets `stop`; *Resume* iterates `events` again.
4. *Save results* calls `STEMRun.write(path)` in a worker: the maps already computed, the
   same file as the CLI's (groups, attributes, parameters), guarded the same way.

Both doors reach `Trainer.run` with an `RVAEConfig` whose `epochs` is 50, through one object.
"""


def contracts() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    lines = []
    for block in text.split("[[tool.importlinter.contracts]]")[1:]:
        name = re.search(r'name = "([^"]+)"', block).group(1)
        lines.append(f"- {name}")
    return "\n".join(lines)


def first_sentence(path: Path) -> str:
    """The docstring's first sentence (its first paragraph when that ends in a colon), at most
    ~180 characters."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", paragraph)
    text = match.group(1) if match else paragraph
    if len(text) > 180:
        text = text[:180].rsplit(" ", 1)[0] + " …"
    return text.replace("|", "\\|")


def modules() -> str:
    out = ["\n## Every module\n", "| module | lines | what it holds |", "|---|---|---|"]
    for path in sorted(PACKAGE.rglob("*.py"), key=lambda p: (len(p.relative_to(PACKAGE).parts) > 1, str(p))):
        if path.name == "__main__.py":
            continue
        rel = path.relative_to(PACKAGE)
        lines = path.read_text().count("\n")
        out.append(f"| `{rel}` | {lines} | {first_sentence(path)} |")
    return "\n".join(out)


def tests() -> str:
    """The test files, their tests and how many are marked slow (read from the files)."""
    out = ["\n## Tests\n",
           "`tests/` follows the package's floors, plus the doors (`test_cli`, `test_faults`, `test_scale`, "
           "`test_options`, `test_architecture`). Shared fixtures and helpers are in `tests/conftest.py` and "
           "`tests/helpers.py` (the plugin name, clicking a button, waiting for a worker, synthetic disks and "
           "cubes, the light-import check). `@pytest.mark.slow` marks a test that trains for more than a few "
           "seconds or starts processes (the CLI in a subprocess, torchrun, dask workers, kill -9): "
           "`make test-fast` leaves them out for a quick loop (< 3 min); CI (`make test`) runs every test "
           "(< 10 min on 2 cores). A reference that a subprocess is compared with is computed in the test's "
           "own process.\n", "| file | tests | slow |", "|---|---|---|"]
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        slow = sum(any("slow" in ast.unparse(d) for d in f.decorator_list) for f in funcs)
        out.append(f"| `{path.relative_to(ROOT)}` | {len(funcs)} | {slow} |")
    return "\n".join(out)


def main() -> int:
    text = HEAD + contracts() + "\n" + WALKS + modules() + "\n" + tests() + "\n"
    target = ROOT / "docs" / "architecture.md"
    target.write_text(text)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
