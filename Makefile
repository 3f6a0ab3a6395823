# Casebook — `make run` serves it, `make test` proves it. Both start with `make install` (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080
CHROMIUM ?= /usr/bin/chromium

.PHONY: install install-test run test test-fast lint format browser nginx prometheus axe oidc clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Casebook needs Python >= 3.11 (set PYTHON=python3.x)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo 'python3 -m venv failed: on Debian/Ubuntu run: apt-get install python3-venv'; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-test.lock
	@touch $@

run: install
	$(BIN)/casebook serve --host $(HOST) --port $(PORT)

# Chromium for the browser tests comes from Debian's packages (Playwright's own download is not used).
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		echo 'Installing Chromium for the browser tests (apt-get)'; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# apt-get install $(1) for the tests, only the program: the package would also start its system service, which a
# temporary policy-rc.d forbids (on a systemd machine the unit is stopped and disabled too).
define apt_program
	echo 'Installing $(1) for the tests (apt-get)'; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	POLICY=/usr/sbin/policy-rc.d; ADDED=; \
	if [ ! -e $$POLICY ]; then \
		printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$POLICY >/dev/null && $$SUDO chmod 755 $$POLICY && ADDED=1; \
	fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(1) >/dev/null; \
	STATUS=$$?; \
	if [ -n "$$ADDED" ]; then $$SUDO rm -f $$POLICY; fi; \
	if [ -d /run/systemd/system ]; then $$SUDO systemctl disable --now $(1) >/dev/null 2>&1 || true; fi; \
	exit $$STATUS
endef

# nginx for deploy/cluster and its tests (tests/cluster), from Debian's packages (the program, not the service).
nginx:
	@if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then $(call apt_program,nginx); fi

# Prometheus for the test that scrapes a served Casebook with a real one (tests/browser/test_prometheus.py), from
# Debian's packages. Only the program: the test starts its own on a free port with its own config (the system service
# would take port 9090 and start a node exporter).
prometheus:
	@if [ ! -x /usr/bin/prometheus ]; then $(call apt_program,prometheus); fi

define need_npm
	if ! command -v npm >/dev/null 2>&1; then \
		echo 'Installing npm for $(1) (apt-get)'; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq npm >/dev/null; \
	fi
endef

# axe-core for the accessibility tests, from the npm registry, at the version pinned in the lock file.
AXE := tests/browser/axe/node_modules/axe-core/axe.min.js
axe: $(AXE)
$(AXE): tests/browser/axe/package.json tests/browser/axe/package-lock.json
	@$(call need_npm,axe-core)
	cd tests/browser/axe && npm ci --no-audit --no-fund --silent
	touch $@

# The OpenID provider the single sign-on tests start (panva's oidc-provider, tests/oidc/provider.mjs), pinned likewise.
OIDC := tests/oidc/node_modules/oidc-provider/package.json
oidc: $(OIDC)
$(OIDC): tests/oidc/package.json tests/oidc/package-lock.json
	@$(call need_npm,oidc-provider)
	cd tests/oidc && npm ci --no-audit --no-fund --silent
	touch $@

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Two workers (the machine CI runs on has two cores); each takes whole test files, so a file's servers and
# fixtures stay in one process. TEST_WORKERS=0 runs everything in this process, one test after another.
TEST_WORKERS ?= 2

test: install-test browser nginx prometheus axe oidc lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Everything but the real-browser tests: for a quick run while working.
test-fast: install-test
	$(BIN)/python -m pytest -m 'not browser'

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
