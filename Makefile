# hotsock's one entry point, for people and for CI (.ci/run calls `make lint test`).
#   make run    install what is needed, build, serve the default echo handler on $(ADDR)
#   make test   install what is needed, build every handler, run every test
#   make lint   rustfmt check, clippy (warnings are errors) on every crate, and the host's layers
#   make bench  hotsock against native Rust and Python echo servers, its
#               key-value stores against redis-benchmark, and its TLS against
#               plaintext and HAProxy terminating TLS, on loopback
#   make soak   14,000 idle connections on each of the three, with memory and mappings
#   make fleet  three hotsock processes behind HAProxy (deploy/fleet.sh)
#   make bench-fleet  one hotsock process, two sharing a port, three behind HAProxy;
#                     then a binary upgrade of the three under load

CARGO       ?= cargo
PYTHON      ?= python3
ADDR        ?= 127.0.0.1:50007
WASM_TARGET := wasm32-wasip2
WASM_DIR    := target/$(WASM_TARGET)/release
HANDLER     := $(WASM_DIR)/guest_handler.wasm
HOTSOCK     := target/release/hotsock

# Rust guest components: the default handler and the examples in handlers/,
# and the fixtures only tests load.
GUESTS   := -p guest-handler -p slow-echo -p greet -p whoami -p chat -p gateway
FIXTURES := -p probe -p kit -p kit-0-2 -p not-a-handler

# Python handlers are built with componentize-py, installed into .venv at the
# version `hotsock new --lang python` tells users to install.
VENV                    := .venv
COMPONENTIZE_PY_VERSION := $(shell sed -n 's/.*COMPONENTIZE_PY_VERSION: &str = "\(.*\)";/\1/p' host/src/cli/new.rs)
COMPONENTIZE_PY         := $(VENV)/bin/componentize-py
COMPONENTIZE_PY_STAMP   := $(VENV)/.componentize-py-$(COMPONENTIZE_PY_VERSION)
PY_HANDLERS             := $(WASM_DIR)/python_echo.wasm

# JavaScript handlers are built with componentize-js, which npm installs into
# each handler's own node_modules (never globally) from its package-lock.json,
# at the version `hotsock new --lang js|ts` pins (COMPONENTIZE_JS_VERSION in
# host/src/cli/new.rs; a unit test there keeps handlers/js-echo at the same pin).
COMPONENTIZE_JS_VERSION := $(shell sed -n 's/.*COMPONENTIZE_JS_VERSION: &str = "\(.*\)";/\1/p' host/src/cli/new.rs)
JS_ECHO                 := handlers/js-echo
JS_ECHO_STAMP           := $(JS_ECHO)/node_modules/.componentize-js-$(COMPONENTIZE_JS_VERSION)
JS_HANDLERS             := $(WASM_DIR)/js_echo.wasm
COMPONENTIZE_JS         := $(JS_ECHO)/node_modules/.bin/componentize-js
# Components showing the mistakes a JavaScript author meets, for the tests of
# what hotsock says about them (tests/bad_handler.rs): js-echo built without
# `-d http fetch-event` (it imports wasi:http), and a module exporting a bare
# `handle` function instead of the `handler` interface.
JS_FIXTURES             := $(WASM_DIR)/js_wasi_http.wasm $(WASM_DIR)/js_no_handler.wasm

# The tests read /metrics with Prometheus's own Python parser, and
# deploy/kubernetes.yaml with PyYAML, in the same .venv.
PROMETHEUS_CLIENT_VERSION := 0.26.0
PROMETHEUS_CLIENT_STAMP   := $(VENV)/.prometheus-client-$(PROMETHEUS_CLIENT_VERSION)
PYYAML_VERSION            := 6.0.3
PYYAML_STAMP              := $(VENV)/.pyyaml-$(PYYAML_VERSION)

# Debian packages the tests run as real components, as COMMAND:PACKAGE:
# HAProxy in front of a fleet (and terminating TLS in `make bench`), openssl
# to make test certificates (for the TLS tests and the docs' TLS example),
# systemd's socket activator and unit checker, curl, which the docs'
# admin API and metrics examples use (tests/docs.rs); Node and npm, which
# build the JavaScript handlers and the `--lang js|ts` scaffolds; and
# valgrind, whose callgrind counts the instructions per round trip in
# `make bench`.
SYSTEM_PACKAGES := haproxy:haproxy openssl:openssl systemd-socket-activate:systemd systemd-analyze:systemd redis-server:redis-server curl:curl node:nodejs npm:npm valgrind:valgrind

# `make bench` plots the hot swap with matplotlib, in the same .venv.
MATPLOTLIB_VERSION := 3.11.2
MATPLOTLIB_STAMP   := $(VENV)/.matplotlib-$(MATPLOTLIB_VERSION)
BENCH_OUT          := target/bench
SOAK_OUT           := target/soak
BENCH_FLEET_OUT    := target/bench-fleet
SOAK_CONNECTIONS   ?= 14000

.PHONY: all setup rust-setup system-packages build guests python-handlers js-handlers js-fixtures run test handler-cost bench bench-fleet soak fleet lint fmt clean

all: build

## Install everything the build and tests need (idempotent).
setup: rust-setup system-packages $(COMPONENTIZE_PY_STAMP) $(PROMETHEUS_CLIENT_STAMP) $(PYYAML_STAMP)

rust-setup:
	rustup target add $(WASM_TARGET)
	rustup component add rustfmt clippy

$(COMPONENTIZE_PY_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)
	touch $@

$(PROMETHEUS_CLIENT_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check prometheus_client==$(PROMETHEUS_CLIENT_VERSION)
	touch $@

$(PYYAML_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check PyYAML==$(PYYAML_VERSION)
	touch $@

## Debian packages the tests use: apt-get as root, else the command to run
## (and under CI=true, a failure).
system-packages:
	tools/system-packages.sh $(SYSTEM_PACKAGES)

## Build the host and every handler, Rust, Python and JavaScript (release).
build: setup python-handlers js-handlers
	$(CARGO) build --release --target $(WASM_TARGET) $(GUESTS)
	$(CARGO) build --release -p hotsock

## Build every Rust guest component, test fixtures included.
guests: rust-setup
	$(CARGO) build --release --target $(WASM_TARGET) $(GUESTS) $(FIXTURES)

python-handlers: $(PY_HANDLERS)

$(WASM_DIR)/python_echo.wasm: handlers/python-echo/app.py wit/plugin.wit $(wildcard wit/deps/*/*.wit) $(COMPONENTIZE_PY_STAMP)
	mkdir -p $(WASM_DIR)
	$(COMPONENTIZE_PY) --quiet -d wit -w plugin componentize -p handlers/python-echo app -o $@

js-handlers: $(JS_HANDLERS)

$(JS_ECHO_STAMP): $(JS_ECHO)/package.json $(JS_ECHO)/package-lock.json | system-packages
	cd $(JS_ECHO) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(WASM_DIR)/js_echo.wasm: $(JS_ECHO)/app.js wit/plugin.wit $(wildcard wit/deps/*/*.wit) $(JS_ECHO_STAMP)
	mkdir -p $(WASM_DIR)
	cd $(JS_ECHO) && npm run --silent build
	mv $(JS_ECHO)/js-echo.wasm $@

js-fixtures: $(JS_FIXTURES)

$(WASM_DIR)/js_wasi_http.wasm: $(JS_ECHO)/app.js wit/plugin.wit $(wildcard wit/deps/*/*.wit) $(JS_ECHO_STAMP)
	mkdir -p $(WASM_DIR)
	$(COMPONENTIZE_JS) $(JS_ECHO)/app.js --wit wit --world-name plugin -o $@ >/dev/null

$(WASM_DIR)/js_no_handler.wasm: tests/fixtures/js-no-handler/app.js tests/fixtures/js-no-handler/world.wit $(JS_ECHO_STAMP)
	mkdir -p $(WASM_DIR)
	$(COMPONENTIZE_JS) tests/fixtures/js-no-handler/app.js --wit tests/fixtures/js-no-handler/world.wit \
		--world-name plugin -d http fetch-event -o $@ >/dev/null

## Serve the default echo handler on $(ADDR); try `nc 127.0.0.1 50007`.
run: rust-setup
	$(CARGO) build --release --target $(WASM_TARGET) -p guest-handler
	$(CARGO) build --release -p hotsock
	$(HOTSOCK) serve --addr $(ADDR) $(HANDLER)

## Run all tests: the real server over TCP, and the guests' unit tests.
test: setup guests python-handlers js-handlers js-fixtures
	$(CARGO) test --release -p hotsock
	$(CARGO) test --release -p hotsock-bench
	$(CARGO) test --release -p testkit
	$(CARGO) test -p ctime

## What a handler costs: start-up (compiling, then cached), new connection, memory per connection.
handler-cost: build
	$(PYTHON) bench/handler_cost.py $(HOTSOCK) rust-echo=$(HANDLER) python-echo=$(WASM_DIR)/python_echo.wasm js-echo=$(WASM_DIR)/js_echo.wasm

## hotsock against the same echo server in plain Rust and in Python, on loopback:
## round trips, new connections, memory per idle connection (RSS, PSS and
## mappings), instantiate time, instructions per round trip (callgrind, hotsock
## and native), a hot swap under load; increments/s through each key-value store against
## redis-benchmark (the kit fixture, Debian's redis-server and redis-tools);
## new TLS connections and round trips over TLS, hotsock's own against
## plaintext and against HAProxy terminating TLS (`--tls` runs that alone).
## Writes $(BENCH_OUT)/bench.json, swap.csv, swap-latency.png.
bench: build $(MATPLOTLIB_STAMP)
	$(CARGO) build --release --target $(WASM_TARGET) -p kit
	$(CARGO) build --release -p hotsock-bench
	target/release/hotsock-bench --out $(BENCH_OUT)
	$(VENV)/bin/python bench/plot_swap.py $(BENCH_OUT)

## The same echo handler served by one hotsock process, by two sharing a port
## (--reuse-port) and by three behind HAProxy (deploy/haproxy.cfg), on loopback:
## round trips, new connections and CPU per operation, against one process;
## then SIGUSR2 to each of the three under load, counting failed operations.
## Writes $(BENCH_FLEET_OUT)/fleet.json.
bench-fleet: build
	$(CARGO) build --release -p hotsock-bench
	target/release/hotsock-bench --fleet --out $(BENCH_FLEET_OUT)

## 14,000 idle connections held at once by hotsock, native-echo and Python:
## time to open, RSS, memory mappings and threads per connection, all answered.
## Writes $(SOAK_OUT)/soak.json.
soak: build
	$(CARGO) build --release -p hotsock-bench
	target/release/hotsock-bench --soak $(SOAK_CONNECTIONS) --out $(SOAK_OUT)

## Three hotsock processes behind HAProxy on 127.0.0.1:50007, sharing rooms and
## buckets through a Redis of their own (deploy/fleet.sh):
## `deploy/fleet.sh status|swap FILE|upgrade|stop` from there.
fleet: build
	deploy/fleet.sh start

$(MATPLOTLIB_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check matplotlib==$(MATPLOTLIB_VERSION)
	touch $@

## Formatting, clippy (warnings are errors) for host, guests, bench and testkit,
## and the host's layers: no import cycles, dependencies one way (tools/layers.py).
lint: rust-setup
	$(PYTHON) tools/layers.py --self-test
	$(PYTHON) tools/layers.py host/src
	$(CARGO) fmt --all --check
	$(CARGO) clippy -p hotsock --all-targets -- -D warnings
	$(CARGO) clippy -p hotsock-bench --all-targets -- -D warnings
	$(CARGO) clippy -p testkit --all-targets -- -D warnings
	$(CARGO) clippy -p ctime --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) $(GUESTS) $(FIXTURES) --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
