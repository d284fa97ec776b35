# `make test` is exactly what CI runs (.ci/run calls it after installing tools).
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tern/target
export CARGO_TERM_COLOR ?= never
CARGO ?= cargo

.PHONY: test ci fmt-check clippy unit build run bench

test: fmt-check clippy unit

ci: test

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --no-fail-fast

build:
	$(CARGO) build --workspace

run: build
	$(CARGO_TARGET_DIR)/debug/tern serve --data-dir ./tern-data --listen 127.0.0.1:8080
