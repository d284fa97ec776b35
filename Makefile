# `make test` is exactly what CI runs (.ci/run calls it after installing tools).
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tern/target
export CARGO_TERM_COLOR ?= never
CARGO ?= cargo

.PHONY: test ci fmt-check clippy unit build run lambda bench bench-api bench-states bench-disk bench-e2e bench-scale bench-lambda

test: fmt-check clippy unit

ci: test

fmt-check:
	$(CARGO) fmt --all -- --check

# The connector's libvirt source is an optional feature (it links libvirt, so it needs libvirt-dev):
# checked and tested here with the feature on, on top of the default build.
clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p tern-connector -p tern-cli -p tern-acceptance --features libvirt --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --no-fail-fast
	$(CARGO) test -p tern-connector --features libvirt --no-fail-fast libvirt
	$(CARGO) test -p tern-acceptance --features libvirt --test wire --no-fail-fast libvirt

build:
	$(CARGO) build --workspace

# The five Lambda bootstraps as `sam build` makes them (BuildMethod rust-cargolambda): arm64,
# release, into their own target directory. Needs cargo-lambda and zig (pip install
# cargo-lambda ziglang) and the aarch64-unknown-linux-gnu target (rustup target add); .ci/run
# installs them and runs this.
LAMBDA_TARGET_DIR ?= $(HOME)/.cache/tern/target-lambda
LAMBDA_BINS := api tasks upload-complete scheduler event-publisher
lambda:
	CARGO_TARGET_DIR=$(LAMBDA_TARGET_DIR) cargo lambda build --release --arm64 $(addprefix --bin ,$(LAMBDA_BINS))

run: build
	$(CARGO_TARGET_DIR)/debug/tern serve --data-dir ./tern-data --listen 127.0.0.1:8080

# Benchmarks print numbers; they are not tests and CI does not run them (release builds).
bench: bench-api bench-states bench-disk bench-e2e bench-scale bench-lambda

bench-api:
	$(CARGO) run --release -p tern-acceptance --bin api-bench -- --concurrency 16

bench-states:
	bench/states/run.sh

bench-disk:
	$(CARGO) run --release -p tern-disk --example bench

# A seed and an incremental run of a 4 GiB VM through `tern serve`, next to qemu-img convert
# (needs qemu-img; about 10 GiB free in the temporary directory, or pass --dir).
bench-e2e:
	$(CARGO) run --release -p tern-acceptance --bin e2e-bench -- --size-gib 4 --changed-pct 5

# 10,000 servers imported through a connector (one shared GPT disk), 1,000 jobs whose runs are
# due in the same minute, GetServers/GetReplicationJobs pages read during the storm (tern serve
# on SQLite; the active-job limit raised through configuration). About 5 minutes.
bench-scale:
	$(CARGO) run --release -p tern-acceptance --bin scale-bench -- --servers 10000 --jobs 1000

# Cold init of each bootstrap (x86_64 release builds, started against a local Runtime API) next
# to a lambda_runtime function that sets up nothing, and the zip size of the arm64 builds
# `make lambda` made.
bench-lambda:
	$(CARGO) build --release -p tern-acceptance --bin lambda-bench --bin lambda-floor -p tern-fn-api -p tern-fn-tasks -p tern-fn-upload-complete -p tern-fn-scheduler -p tern-fn-event-publisher
	$(CARGO_TARGET_DIR)/release/lambda-bench --floor $(CARGO_TARGET_DIR)/release/lambda-floor \
	  $(foreach b,$(LAMBDA_BINS),$(b)=$(CARGO_TARGET_DIR)/release/$(b)) \
	  $(foreach b,$(LAMBDA_BINS),--zip $(b)=$(LAMBDA_TARGET_DIR)/lambda/$(b)/bootstrap)
