# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
VENV_LOWEST ?= .venv-lowest
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: demo test test-fast lint env system-deps bench screenshots dose-figure clean package-check test-lowest

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch pinned first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[testing]"
	touch $@

env: $(VENV)/.installed

system-deps:
	bash scripts/install_system_deps.sh

# Headless pipeline on the built-in simulated graphene: results in $(OUT)/
demo: env
	$(VENV)/bin/stem-rvae demo --out $(OUT)

# The architecture contracts (pyproject.toml [tool.importlinter]): a broken one fails the build.
lint: env
	$(VENV)/bin/lint-imports

# Everything the tests need (apt packages for headless Qt, the Python environment), the
# architecture contracts, then pytest under Xvfb.
test: system-deps env lint
	$(PY) -m pytest tests

# Leaves out the tests marked slow (training, subprocesses), for a quick local loop; CI runs everything.
test-fast: env
	$(PY) -m pytest tests -m "not slow" -q

# Screenshots for the docs at two screen sizes (docs/screenshots/), the way a user clicks.
screenshots: system-deps env
	xvfb-run -a -s "-screen 0 1366x768x24" $(PY) docs/make_screenshots.py 1366x768
	xvfb-run -a -s "-screen 0 1920x1080x24" $(PY) docs/make_screenshots.py 1920x1080

# The user guide's figure of the maps at 10⁵, 10⁴ and 10³ e⁻ next to the COM (~6 min on 2 threads).
dose-figure: env
	$(PY) docs/make_dose_figure.py

bench: env
	$(PY) benchmarks/bench_com.py
	$(PY) benchmarks/bench_rvae.py
	xvfb-run -a -s "-screen 0 1920x1080x24" $(PY) benchmarks/bench_ui_latency.py

# Builds the sdist and wheel, installs the wheel (no extras) into a fresh venv and checks the CLI,
# a headless run without napari/Qt, the quick demo, the packaged data files and the npe2 manifest.
package-check: env
	PYTHON=$(PY) bash scripts/check_package.sh

# The fast tests against the lowest versions pyproject.toml allows (ci/lowest-constraints.txt),
# in a fresh $(VENV_LOWEST): torch's CPU build first, then the package with the constraints.
test-lowest: system-deps
	rm -rf $(VENV_LOWEST)
	$(PYTHON) -m venv $(VENV_LOWEST)
	$(VENV_LOWEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_LOWEST)/bin/python -m pip install -q torch==2.13.0
	$(VENV_LOWEST)/bin/python -m pip install -q --only-binary=:all: -c ci/lowest-constraints.txt -e ".[testing]"
	$(VENV_LOWEST)/bin/python -m pip check
	$(VENV_LOWEST)/bin/python -m pytest tests -m "not slow" -q -p no:cacheprovider --ignore=tests/plugin/test_workflow.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
