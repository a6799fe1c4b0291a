# Two commands on a fresh machine: `make run` and `make test`. Both set everything up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt scripts/install_system_deps.sh | cksum | cut -d' ' -f1)
CONFIG ?= configs/synthetic_grpo.yaml
ARGS   ?=

.PHONY: install run test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

## Train on the default config: progress on the terminal, TensorBoard logs in runs/.
run: install
	$(PY) launch.py --config $(CONFIG) $(ARGS)

## The whole suite, slow end-to-end tests included (as CI runs it).
test: install
	$(PY) -m pytest -q -ra

## The suite without the slow end-to-end tests.
test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

## Benchmarks; figures go to benchmarks/RESULTS.md by hand, with the command.
bench: install
	$(PY) benchmarks/transport.py --repeats 5 --seconds 4
	$(PY) benchmarks/envs.py
	$(PY) benchmarks/models.py

clean:
	rm -rf $(VENV) runs .pytest_cache
