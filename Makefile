# The two commands a new user needs: `make demo` and `make test`. Everything else is a helper.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.floe-installed

.PHONY: demo test lint docs bench bench-small clean

$(STAMP): pyproject.toml scripts/setup-venv.sh
	scripts/setup-venv.sh

# `make demo SITE=slurm` runs it through the project's single-node SLURM, started first (root).
SITE ?= local

demo: $(STAMP)
ifeq ($(SITE),slurm)
	scripts/batch/slurm.sh up
endif
	$(VENV)/bin/floe demo --site $(SITE)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

docs: $(STAMP)
	$(VENV)/bin/floe docs config -o docs/config.md
	$(VENV)/bin/floe docs server -o docs/server.md
	$(VENV)/bin/floe docs factory -o docs/factory.md

bench: $(STAMP)
	$(PY) benchmarks/matchmaker.py
	$(PY) benchmarks/large_dataset.py
	$(PY) benchmarks/pilot.py
	$(PY) benchmarks/factory.py

bench-small: $(STAMP)
	$(PY) benchmarks/matchmaker.py --small
	$(PY) benchmarks/large_dataset.py --small
	$(PY) benchmarks/pilot.py --small
	$(PY) benchmarks/factory.py --small

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache test-artifacts
