# Two entry points: `make demo` (the main job) and `make test` (every check CI runs).
.PHONY: setup demo test lint unit e2e conformance bench-quick bench k8s-binaries clean

VENV := .venv/bin

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/cmcpctl demo --out demo-out

k8s-binaries: setup
	$(VENV)/python -m tests.e2e.binaries

lint: setup
	$(VENV)/ruff check .
	$(VENV)/mypy

unit: setup
	$(VENV)/pytest tests/unit -q

e2e: k8s-binaries
	$(VENV)/pytest tests/e2e -q -m e2e

conformance: setup
	$(VENV)/cmcpctl conformance --target local --junit .cache/conformance-local.xml

bench-quick: setup
	$(VENV)/python -m bench run --quick

bench: setup
	$(VENV)/python -m bench run

test: setup k8s-binaries lint
	$(VENV)/pytest tests -q -ra
	$(MAKE) --no-print-directory conformance
	$(MAKE) --no-print-directory bench-quick

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache demo-out .cache
