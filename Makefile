# The two quick-start commands are `make demo` and `make test`; both set up .venv/ first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# The CPU build of torch: a local wheel here, and the small CPU wheel elsewhere. GPU users: TORCH="torch" make setup.
TORCH   ?= torch==2.13.0
# Offline, the demo reads the local TinyStories copy; without it, it downloads TinyStories from the Hugging Face hub.
DATA    ?= $(wildcard ../shared/data/tinystories)

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" || $(BIN)/python -m pip install -q "$(TORCH)" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/lmforge demo $(if $(DATA),--data $(DATA)) --out runs/demo

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf runs .pytest_cache
