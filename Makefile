# The two commands of the quick start are `make demo` and `make test`; both run `setup` first.
PY := .venv/bin/python

.PHONY: setup demo test test-unit test-integration bench lint clean-labs

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q -m unit tests

test-integration: setup
	$(PY) -m pytest -q -m "integration or conformance" tests

bench: setup
	$(PY) bench/cni_latency.py && $(PY) bench/convergence.py && $(PY) bench/throughput.py \
		&& $(PY) bench/idle_cpu.py

lint: setup
	.venv/bin/ruff check .
