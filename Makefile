# Redline. `make run` starts everything; `make test` runs the whole suite. Both bootstrap .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synced

.PHONY: install run test lint format bench clean up down console

install: $(STAMP)

# uv is pinned in the lock's dev group, so `uv sync` keeps itself installed.
$(STAMP): pyproject.toml uv.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || { $(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --quiet; \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9; }
	@echo "==> installing dependencies into $(VENV)"
	@$(BIN)/uv sync --frozen --quiet
	@touch $(STAMP)

run: install
	@$(BIN)/python -m deploy.run

# Lint first: ruff and mypy (strict) must be clean, then the whole suite against real servers.
# The console's browser tests drive Debian's Chromium (tests/services/api/console/): installed
# here when missing and apt is there (as root, else through sudo). Without it they skip, saying
# why; under CI=true they fail.
CHROMIUM := /usr/bin/chromium
test: lint
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "==> installing Debian's chromium for the console's browser tests"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
	    || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }; } \
	    || echo "make test: could not install chromium: the console's browser tests will skip (fail under CI=true)"; \
	fi
	@$(BIN)/python -m pytest

# The console (services/api/console/): its built files in dist/ are committed, so `make run`
# needs no Node; this rebuilds them from the locked npm packages (Node 20.19+). A source changed
# without rebuilding fails tests/services/api/console/test_build.py.
CONSOLE := services/api/console
console:
	@command -v npm >/dev/null 2>&1 || { echo "make console: needs Node 20.19+ with npm" >&2; exit 1; }
	@npm ci --prefix $(CONSOLE) --no-audit --no-fund --loglevel=error
	@npm run --prefix $(CONSOLE) build

lint: install
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy .

format: install
	@$(BIN)/ruff format .
	@$(BIN)/ruff check --fix .

# The co-editing peers (Hocuspocus, y-websocket) come from npm, pinned by bench/node's lock file;
# without Node the collab scenario runs Redline alone. Never part of `make test`.
NODE_PEERS := bench/node
bench: install
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  if [ $(NODE_PEERS)/node_modules/.package-lock.json -nt $(NODE_PEERS)/package-lock.json ]; then \
	    echo "==> co-editing peers installed in $(NODE_PEERS)"; \
	  else \
	    echo "==> installing the co-editing peers: npm ci in $(NODE_PEERS)"; \
	    npm ci --prefix $(NODE_PEERS) --no-audit --no-fund --loglevel=error \
	      || echo "make bench: npm ci failed: the collab scenario runs Redline alone"; \
	  fi; \
	else \
	  echo "make bench: node/npm not found: the collab scenario runs Redline alone"; \
	fi
	@$(BIN)/python -m bench

# Containers (compose.yaml + deploy/): needs Docker with the compose plugin; not used by tests.
COMPOSE := docker compose
define need_compose
	@$(COMPOSE) version >/dev/null 2>&1 || { echo "make $@: needs 'docker compose' (Docker Engine with the Compose plugin); see docs/deploy.md" >&2; exit 1; }
endef

up:
	$(need_compose)
	$(COMPOSE) up --build -d
	@echo 'api on http://127.0.0.1:8000/v1/docs; "docker compose ps" shows health, "docker compose logs -f" the logs'

down:
	$(need_compose)
	$(COMPOSE) down

clean:
	rm -rf .data/test-* .pytest_cache .mypy_cache .ruff_cache
