# hotsock's one entry point, for people and for CI (.ci/run calls `make lint test`).
#   make run    install what is needed, build, serve the default echo handler on $(ADDR)
#   make test   install what is needed, build the guests, run every test
#   make lint   rustfmt check and clippy (warnings are errors) on host and guests

CARGO       ?= cargo
ADDR        ?= 127.0.0.1:50007
WASM_TARGET := wasm32-wasip2
WASM_DIR    := target/$(WASM_TARGET)/release
HANDLER     := $(WASM_DIR)/guest_handler.wasm
HOTSOCK     := target/release/hotsock

# Guest components: the default handler, and the fixtures only tests load.
GUESTS   := -p guest-handler -p slow-echo -p greet -p whoami
FIXTURES := -p probe -p not-a-handler

.PHONY: all setup build guests run test lint fmt clean

all: build

## Install everything the build and tests need (idempotent).
setup:
	rustup target add $(WASM_TARGET)
	rustup component add rustfmt clippy

## Build the default handler and the host (release).
build: setup
	$(CARGO) build --release --target $(WASM_TARGET) $(GUESTS)
	$(CARGO) build --release -p hotsock

## Build every guest component, test fixtures included.
guests: setup
	$(CARGO) build --release --target $(WASM_TARGET) $(GUESTS) $(FIXTURES)

## Serve the default echo handler on $(ADDR); try `nc 127.0.0.1 50007`.
run: build
	$(HOTSOCK) serve --addr $(ADDR) $(HANDLER)

## Run all tests: the real server over TCP, and the guests' unit tests.
test: guests
	$(CARGO) test --release -p hotsock
	$(CARGO) test -p guest-handler

## Formatting and clippy, warnings as errors, for host and guests.
lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy -p hotsock --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) $(GUESTS) $(FIXTURES) --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
