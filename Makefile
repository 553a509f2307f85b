# touchpoint: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the test suite talks to for real (private buses and brokers per test session;
# systemd for systemd-analyze and systemd-sysusers, which check the unit in systemd/;
# faketime to run the daemon on a wrong clock).
DEB_PACKAGES := dbus mosquitto mosquitto-clients systemd faketime
# Where each package's binary lands, to tell whether it is installed (sbin may not be on PATH).
DEB_PROBES := /usr/bin/dbus-daemon /usr/sbin/mosquitto /usr/bin/mosquitto_sub /usr/bin/systemd-analyze /usr/bin/faketime

.PHONY: help venv deb-deps lint typecheck pytest test demo bench soak clean

help:
	@echo "make demo   - the whole loop: simulated car -> CAN -> agent -> D-Bus HMI + MQTT cloud, and back"
	@echo "make test   - venv + packages + lint + type checks + test suite"
	@echo "make bench  - print the performance figures"
	@echo "make soak   - the random soak over the real daemon (SOAK_S seconds, default 600; the"
	@echo "              seed from TOUCHPOINT_SEED), then the kill loop (SOAK_KILLS kills, default 100)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

deb-deps:
	@missing=""; set -- $(DEB_PROBES); \
	for pkg in $(DEB_PACKAGES); do [ -x "$$1" ] || missing="$$missing $$pkg"; shift; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "error: the tests need the Debian packages:$$missing"; \
	  echo "       run as root, or: sudo apt-get install -y$$missing"; exit 1; fi; \
	echo "installing Debian packages:$$missing"; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) deb-deps
	$(BIN)/pytest -q

test: lint typecheck pytest

demo: $(STAMP) deb-deps
	$(BIN)/touchpoint demo

bench: $(STAMP) deb-deps
	$(BIN)/python -m bench

# The soak (tests/soak): SOAK_S and TOUCHPOINT_SEED as make arguments or from the
# environment; the same seed runs both parts. SOAK_SOURCE=simlog or rav4 plays a
# recording as the car instead of the simulator.
SOAK_S ?= 600
SOAK_KILLS ?= 100
SOAK_SOURCE ?= simulator
TOUCHPOINT_SEED ?=
soak: $(STAMP) deb-deps
	@seed="$(TOUCHPOINT_SEED)"; [ -n "$$seed" ] || seed=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); \
	TOUCHPOINT_SEED=$$seed $(BIN)/python -m tests.soak walk --seconds $(SOAK_S) --source $(SOAK_SOURCE) && \
	TOUCHPOINT_SEED=$$seed $(BIN)/python -m tests.soak kill --kills $(SOAK_KILLS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
