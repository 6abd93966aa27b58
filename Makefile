# The README's commands: `make demo` (set up and run the main job) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: demo test bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps torchattacks==3.5.1 pyautoattack==0.2.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/robustlr demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	cd benchmarks && ../$(BIN)/python run_all.py --threads 1

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
