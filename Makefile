# Every target that needs Python depends on the venv stamp, so a fresh clone
# bootstraps itself: `make demo` and `make test` work with nothing installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QUICK ?=

.PHONY: install demo test lint run bench clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.demo

# Two workers (pytest-xdist): most tests wait on real processes, so the two
# cores stay busy and the suite takes about two thirds of the time.
test: $(STAMP) chromium
	$(PY) -m pytest -q -n 2

# The browser tests drive the system's chromium (Playwright comes with '.[dev]').
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "chromium is missing and cannot be installed here: the browser tests will skip"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

run: $(STAMP)
	$(PY) -m broker

bench: $(STAMP)
	$(PY) -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
