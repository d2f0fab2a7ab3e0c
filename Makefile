# chainsignal - two commands do all the set-up: `make demo` and `make test`.
# torch is installed first, pinned (a CPU wheel); an unpinned torch would pull GBs of CUDA wheels.
# pip only: uv and poetry ignore the local torch wheel.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: help env browser demo test lock clean up down deploy

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	@touch $@

node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "Node.js/npm is required for the local Ethereum node (anvil)"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

env: $(VENV)/.installed node_modules/.installed  ## create .venv and node_modules if missing

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:  ## Debian's chromium + chromium-driver for the UI tests (MLflow and Prefect UIs), installed when missing
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver (the browser tests drive the MLflow and Prefect UIs)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: env  ## run the whole DAG offline on the embedded default, then print the MLflow UI command
	$(VENV)/bin/chainsignal demo

# One torch thread per test worker: two workers on two cores, each with torch's default thread count,
# oversubscribe the cores and a training step waits 10-50x longer.
test: env browser  ## run the test suite (2 workers, one torch thread each)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2

up: env  ## start a local Prefect server, MLflow server and workers (no docker); prints the env to export
	$(VENV)/bin/chainsignal up

down: env  ## stop what `make up` started
	$(VENV)/bin/chainsignal down

deploy: env  ## work pools, rate limits and deployments on the server in PREFECT_API_URL
	$(VENV)/bin/chainsignal setup

lock: env  ## record the installed versions into constraints.txt
	@{ echo "# Tested versions: \`make\` installs with \`pip install -c constraints.txt\`. Regenerate with \`make lock\`."; \
	  $(PIP) freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt

clean:  ## remove the demo's data (var/); keeps .venv and node_modules
	rm -rf var
