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

BENCHES := cni_latency convergence scale_sim throughput idle_cpu bgp_convergence policy_scale

# Every bench runs, so all their figures are shown even when one misses its target; the
# recipe fails with 1 if any bench failed, else with the last non-zero exit (2: a target
# missed), which make shows as "Error N". Ctrl-C (a bench exiting 130) stops the chain.
bench: setup
	@status=0; for b in $(BENCHES); do \
		$(PY) bench/$$b.py; rc=$$?; \
		if [ $$rc -eq 130 ]; then exit 130; fi; \
		if [ $$rc -ne 0 ] && [ $$status -ne 1 ]; then status=$$rc; fi; \
	done; exit $$status

lint: setup
	.venv/bin/ruff check .
