# One command each: set up, run the demo, test, lint.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup system-deps demo test test-fast lint protos bench clean

setup: $(BIN)/ensemble

$(BIN)/ensemble: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[training,serving,registry,dev]'
	touch $@

demo: setup
	$(BIN)/ensemble demo --once

system-deps:
	bash tools/system-deps.sh

# Two workers, a test file each at a time: most end-to-end tests wait on their processes.
test: setup system-deps
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

bench: setup
	$(BIN)/python bench/train.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/shadow.py
	$(BIN)/python bench/oip.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
