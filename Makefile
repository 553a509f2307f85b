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
# The test VM of the SocketCAN suite (tests/vm): QEMU, a static busybox for its initramfs,
# can-utils (candump, canplayer) run inside it from the host's root. Missing ones are
# installed when make runs as root; otherwise the VM suite says what is missing and skips
# (fails under CI=true).
# (Asked of dpkg by name: busybox and busybox-static install the same /bin/busybox, and
# only the static one runs in the initramfs.)
VM_DEB_PACKAGES := qemu-system-x86 busybox-static can-utils

.PHONY: help venv deb-deps vm-deb-deps lint typecheck pytest test demo bench soak clean \
	vcan-prepare vcan-test vcan-shell vcan-soak

help:
	@echo "make demo   - the whole loop: simulated car -> CAN -> agent -> D-Bus HMI + MQTT cloud, and back"
	@echo "make test   - venv + packages + lint + type checks + test suite"
	@echo "make bench  - print the performance figures"
	@echo "make vcan-test  - the SocketCAN suite on real kernel CAN, in a throwaway VM (part of make test)"
	@echo "make vcan-shell - a shell in that VM: vcan0 up, the project's venv on PATH"
	@echo "make vcan-soak  - in that VM: the cloud link under netem faults (VSOAK_SCALE, default 1:"
	@echo "                  a 90 s tunnel), then VSOAK_KILLS power cuts (default 30) of QEMU itself"
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

vm-deb-deps:
	@missing=""; \
	for pkg in $(VM_DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$pkg"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "warning: the VM of the SocketCAN suite needs the Debian packages:$$missing"; \
	  echo "         sudo apt-get install -y$$missing"; exit 0; fi; \
	echo "installing Debian packages:$$missing"; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; } || \
	  echo "warning: could not install$$missing: the VM suite will say what it misses"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) deb-deps
	$(BIN)/pytest -q --ignore=tests/vm --ignore=tests/socketcan

test: lint typecheck pytest vcan-test

# The VM's kernel (Debian's, downloaded and unpacked, never installed) and initramfs,
# cached in ~/.cache/touchpoint-vm (TOUCHPOINT_VM_CACHE overrides).
vcan-prepare: $(STAMP) vm-deb-deps
	$(BIN)/python -m tests.vm prepare

vcan-test: $(STAMP) vm-deb-deps
	$(BIN)/pytest -q tests/vm

vcan-shell: $(STAMP) vm-deb-deps
	@$(BIN)/python -m tests.vm shell

# Not part of make test: about an hour under emulation. TOUCHPOINT_SEED repeats a run;
# VSOAK_KEEP=DIR keeps the guests' logs, the store's disk image and the observer's files.
VSOAK_SCALE ?= 1.0
VSOAK_KILLS ?= 30
VSOAK_KEEP ?=
vcan-soak: $(STAMP) vm-deb-deps
	@seed="$(TOUCHPOINT_SEED)"; keep="$(VSOAK_KEEP)"; \
	$(BIN)/python -m tests.vm.soak --scale $(VSOAK_SCALE) --kills $(VSOAK_KILLS) \
	  $${seed:+--seed $$seed} $${keep:+--keep $$keep}

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
