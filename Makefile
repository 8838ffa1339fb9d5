# The two commands a new user needs: `make demo` and `make test`. Everything else is a helper.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.floe-installed

.PHONY: setup demo test lint docs bench bench-scale bench-small clean

$(STAMP): pyproject.toml scripts/setup-venv.sh
	scripts/setup-venv.sh

# Only .venv/ with floe in it; `. .venv/bin/activate` then puts `floe` on the shell's PATH.
setup: $(STAMP)

# `make demo SITE=slurm` runs it through the project's single-node SLURM, started first (root).
SITE ?= local

demo: $(STAMP)
ifeq ($(SITE),slurm)
	scripts/batch/slurm.sh up
endif
	$(VENV)/bin/floe demo --site $(SITE)

test: $(STAMP)
	scripts/fetch-promtool.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

docs: $(STAMP)
	$(VENV)/bin/floe docs config -o docs/config.md
	$(VENV)/bin/floe docs server -o docs/server.md
	$(VENV)/bin/floe docs factory -o docs/factory.md

# Each benchmark's JSON goes to docs/bench/ (kept only when the run succeeds); report.py then
# writes the summary table of README.md from those files.
BENCHMARKS := matchmaker large_dataset pilot factory submission hostile defaults record history

bench: $(STAMP)
	@mkdir -p var docs/bench
	@for name in $(BENCHMARKS); do \
		echo "benchmarks/$$name.py"; \
		$(PY) benchmarks/$$name.py > var/$$name.json || exit 1; \
		mv var/$$name.json docs/bench/$$name.json; \
	done
	$(PY) benchmarks/report.py

# The scale run (10M queued tasks, 20,000 pilots): about 5 minutes, on its own.
bench-scale: $(STAMP)
	@mkdir -p var docs/bench
	$(PY) benchmarks/scale.py > var/scale.json
	mv var/scale.json docs/bench/scale.json
	$(PY) benchmarks/report.py

bench-small: $(STAMP)
	@for name in $(BENCHMARKS) scale; do $(PY) benchmarks/$$name.py --small || exit 1; done

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache test-artifacts floe-run
