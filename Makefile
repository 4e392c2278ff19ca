# The two commands: `make demo` (set up, then run the embedded default job) and `make test` (set up, then the tests).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit test-slow clean-runs

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/sppo-ray run jobs/tiny-cpu.yaml --fresh
	.venv/bin/sppo-ray report runs/tiny-cpu

test: setup
	@bash scripts/test-tools.sh
	$(PY) -m pytest tests -m "(unit or integration or e2e) and not slow" --durations=25 $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests -m unit $(PYTEST_ARGS)

# The tests `make test` leaves out for CI's time: every benchmark at its smallest size, the Llama and disaggregated
# rehearsals, a whole colocated round losing a node.
test-slow: setup
	$(PY) -m pytest tests -m slow --durations=10 $(PYTEST_ARGS)

clean-runs:
	rm -rf runs bench-results
